"""Discover the images of a cohort: folders, class sub-folders and CSV manifests.

The one home of manifest parsing and of the annotation-folder names (the scheduler's watched folders
use the same functions). Every error a user can cause is an :class:`nucleograph.errors.InputError`
whose message names the file and says what to do.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nucleograph.errors import InputError
from nucleograph.ingest.readers import IMAGE_EXTENSIONS, SLIDE_EXTENSIONS

__all__ = ["MASK_DIRS", "SEGMENTATION_EXTENSIONS", "ImageRecord", "discover", "is_image_file",
           "is_segmentation_file", "read_manifest"]

#: Folders that hold annotations next to images; never scanned for images.
MASK_DIRS = frozenset({"masks", "mask", "labels", "annotations", "maps"})
#: A manifest row (or a path given alone) with one of these extensions is a segmentation ingested without
#: its image (:mod:`nucleograph.ingest.polygons`). Folders are never scanned for them: next to an image
#: such a file is the image's nuclei (a sidecar). Label masks (.png, .tif) always count as images.
SEGMENTATION_EXTENSIONS = frozenset({".geojson", ".json", ".parquet", ".geoparquet"})


@dataclass
class ImageRecord:
    """One image of a cohort.

    Attributes
    ----------
    path : Path
        Absolute path of the image or slide.
    label : str or None
        Class label (e.g. ``"Invasive"``); None when unknown.
    patient : str or None
        Patient or case id, for patient-level splits.
    mpp : float or None
        Microns per pixel, when known.
    meta : dict
        Any other manifest columns. ``mask`` and ``nuclei`` columns are resolved to absolute
        paths against the manifest's folder, like ``path``.
    """

    path: Path
    label: str | None
    patient: str | None = None
    mpp: float | None = None
    meta: dict = field(default_factory=dict)


_REQUIRED = ("path", "label")
_PATH_COLUMNS = ("mask", "nuclei")
_LABEL_KEY_COLUMNS = ("path", "image", "filename", "file", "name")


def is_image_file(p: Path) -> bool:
    # IMAGE.mask.png is the nuclei of IMAGE.png (a sidecar label mask, ingest.importers), not an image
    return (
        p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS | SLIDE_EXTENSIONS
        and not p.stem.lower().endswith(".mask")
    )


def is_segmentation_file(p: Path) -> bool:
    """Whether ``p`` (a manifest row's path, or a path given alone) is a segmentation without an image."""
    return Path(p).suffix.lower() in SEGMENTATION_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if any(part.lower() in MASK_DIRS for part in rel[:-1]):
            continue
        if is_image_file(p):
            found.append(p.resolve())
    return sorted(found)


def _read_csv_rows(csv_path: Path) -> tuple[list[str], list[dict]]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(
            f"{csv_path}: cannot read CSV ({exc}); save it as UTF-8 comma-separated text."
        ) from exc
    return columns, rows


def read_manifest(csv_path: Path, *, missing_ok: bool = False) -> list[ImageRecord]:
    """Read a ``path,label[,patient,mpp]`` CSV manifest; paths are relative to its folder.

    Parameters
    ----------
    csv_path : Path
    missing_ok : bool
        Keep rows whose image is not there (yet) instead of raising; a watched folder's manifest
        may name files still being copied.

    Returns
    -------
    records : list of ImageRecord
        In the manifest's row order.

    Raises
    ------
    nucleograph.errors.InputError
        The CSV is unreadable, lacks a column, has an empty path, names a missing image (unless
        ``missing_ok``) or has an mpp that is not a positive number.
    """
    csv_path = csv_path.resolve()
    columns, rows = _read_csv_rows(csv_path)
    missing = [c for c in _REQUIRED if c not in columns]
    if missing:
        raise InputError(
            f"{csv_path}: manifest is missing required column(s) {missing}; found {columns}. "
            "A manifest needs a header row with path,label[,patient,mpp]."
        )
    base = csv_path.parent
    records = []
    for lineno, row in enumerate(rows, start=2):
        if not row.get("path"):
            raise InputError(f"{csv_path}, line {lineno}: empty path; fill it in or delete the row.")
        path = (base / row["path"]).resolve()
        if not missing_ok and not path.is_file():
            raise InputError(
                f"{csv_path}, line {lineno}: image {row['path']!r} not found (looked for {path}); "
                "paths are relative to the manifest's folder."
            )
        mpp = None
        if row.get("mpp"):
            try:
                mpp = float(row["mpp"])
            except ValueError:
                mpp = math.nan
            if not (math.isfinite(mpp) and mpp > 0):
                raise InputError(
                    f"{csv_path}, line {lineno}: mpp must be a positive number (microns per pixel); "
                    f"got {row['mpp']!r}."
                )
        meta = {k: v for k, v in row.items() if k not in ("path", "label", "patient", "mpp")}
        for key in _PATH_COLUMNS:
            if meta.get(key):
                meta[key] = (base / meta[key]).resolve()
        records.append(
            ImageRecord(
                path=path,
                label=row.get("label") or None,
                patient=row.get("patient") or None,
                mpp=mpp,
                meta=meta,
            )
        )
    return records


def _labels_table(csv_path: Path) -> dict[str, str]:
    """Map image keys (relative path, file name and stem) to labels from a labels CSV."""
    columns, rows = _read_csv_rows(csv_path)
    key_col = next((c for c in _LABEL_KEY_COLUMNS if c in columns), None)
    if key_col is None or "label" not in columns:
        raise InputError(
            f"{csv_path}: a labels file needs a 'label' column and one of {list(_LABEL_KEY_COLUMNS)}; "
            f"found {columns}."
        )
    table = {}
    for row in rows:
        key = row.get(key_col, "")
        if key and row.get("label"):
            table[key] = row["label"]
            table[Path(key).name] = row["label"]
            table[Path(key).stem] = row["label"]
    return table


def _discover_dir(folder: Path) -> list[ImageRecord]:
    folder = folder.resolve()
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return read_manifest(manifest)
    images_dir = folder / "images"
    if images_dir.is_dir():
        # Gleason2018-style images/ + masks/: images only; labels from labels.csv if present.
        labels_csv = folder / "labels.csv"
        if not labels_csv.is_file():
            return _discover_class_folders(images_dir)
        table = _labels_table(labels_csv)
        records = []
        for p in _images_under(images_dir):
            rel = p.relative_to(images_dir)
            label = (
                table.get(str(rel))
                or table.get(str(Path("images") / rel))
                or table.get(p.name)
                or table.get(p.stem)
            )
            records.append(ImageRecord(path=p, label=label))
        return records
    return _discover_class_folders(folder)


def _discover_class_folders(folder: Path) -> list[ImageRecord]:
    records = [
        ImageRecord(path=p.resolve(), label=None) for p in sorted(folder.iterdir()) if is_image_file(p)
    ]
    for sub in sorted(folder.iterdir()):
        if not sub.is_dir() or sub.name.startswith(".") or sub.name.lower() in MASK_DIRS:
            continue
        records.extend(ImageRecord(path=p, label=sub.name) for p in _images_under(sub))
    return records


def discover(
    paths: str | Path | Iterable[str | Path], *, classes: Iterable[str] | None = None
) -> list[ImageRecord]:
    """Find the images of a cohort and their labels.

    Each path may be

    * an image or slide file (label None);
    * a segmentation file without its image (:data:`SEGMENTATION_EXTENSIONS`; label None);
    * a CSV manifest with columns ``path,label[,patient,mpp]`` (other columns go to
      ``meta``; relative paths are resolved against the CSV's folder);
    * a folder holding ``manifest.csv`` (used as above);
    * a folder with ``images/`` (and e.g. ``masks/``), Gleason2018-style: images are read
      from ``images/`` only, labelled from a ``labels.csv`` beside it (columns ``label`` and
      one of path/image/filename/file/name) or else from class sub-folders of ``images/``;
    * a folder with one sub-folder per class (BACH: ``Benign/ InSitu/ Invasive/ Normal/``),
      labelled by folder name; images directly inside the folder get label None;
    * a flat folder of images (label None).

    Folders named masks/labels/annotations are never scanned for images.

    Parameters
    ----------
    paths : path or iterable of paths
    classes : iterable of str, optional
        Keep only images with these labels.

    Returns
    -------
    records : list of ImageRecord
        Sorted by path; a path listed twice with the same label kept once. Manifest rows naming
        missing files are kept (ingest records them as failed).

    Raises
    ------
    nucleograph.errors.InputError
        A path does not exist, a manifest lacks columns, nothing is found, or a requested class
        has no images.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    records: list[ImageRecord] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"{p}: no such file or folder; check the path.")
        if p.is_dir():
            found = _discover_dir(p)
        elif p.suffix.lower() == ".csv":
            # a row naming a missing file fails alone at ingest (README: a bad file never stops the batch)
            found = read_manifest(p, missing_ok=True)
        elif is_image_file(p) or (p.is_file() and is_segmentation_file(p)):
            found = [ImageRecord(path=p.resolve(), label=None)]
        else:
            raise InputError(
                f"{p}: not an image, slide, CSV manifest or folder (image extensions: "
                f"{sorted(IMAGE_EXTENSIONS | SLIDE_EXTENSIONS)}), nor a segmentation to ingest without its image "
                f"({sorted(SEGMENTATION_EXTENSIONS)})."
            )
        if not found:
            raise InputError(
                f"{p}: no images found (looked for {sorted(IMAGE_EXTENSIONS | SLIDE_EXTENSIONS)}); "
                "check the folder or give a manifest.csv."
            )
        records.extend(found)
    # the same file twice with the same label is one image; with two labels both rows stay, and
    # ingest refuses them together, naming both (a label must never be dropped silently)
    seen: set[tuple[Path, str | None]] = set()
    unique = []
    for r in sorted(records, key=lambda r: (str(r.path), str(r.label))):
        if (r.path, r.label) not in seen:
            seen.add((r.path, r.label))
            unique.append(r)
    if classes is not None:
        wanted = list(classes)
        present = sorted({r.label for r in unique if r.label is not None})
        absent = [c for c in wanted if c not in present]
        if absent:
            raise InputError(f"classes {absent} have no images; labels found: {present}. Fix --classes.")
        unique = [r for r in unique if r.label in set(wanted)]
    return unique
