"""Bring your own nuclei: read a precomputed segmentation instead of detecting.

Formats (:data:`FORMATS`; the segmentation's detector is ``import:<format>``):

``qupath``
    QuPath GeoJSON (*Export objects as GeoJSON*): a FeatureCollection, or the plain list of features
    older versions write. Cells contribute their ``nucleusGeometry``; ``classification.name`` becomes
    the nucleus type. When a file holds detections or cells, its annotations (regions) are ignored.
``geojson``
    Any other GeoJSON of polygons (CellViT's per-class MultiPolygons are split into one nucleus per
    polygon). The class comes from ``classification`` or a ``class_name``/``type``/``class`` property.
``hovernet``
    HoVer-Net's JSON, ``{"mag": ..., "nuc": {id: {"centroid", "contour", "type", ...}}}``; contours run
    through boundary pixel centres (OpenCV), the integer ``type`` is kept as the type.
``geoparquet``
    GeoParquet (histolytics, CellViT, geopandas ``to_parquet``): WKB polygons in the ``geo`` metadata's
    primary column (else ``geometry``) and an optional ``class_name``/``type``/``class`` column.
``mask``
    An instance label image the size of the image (PNG, TIFF, NPY or NPZ); 0 is background.

Polygons are in full-resolution pixels with the image's corner at (0, 0) (QuPath's convention). They are
repaired (``shapely.make_valid``) or skipped when invalid, clipped to the image (or skipped when wholly
outside), painted into an instance label image and measured by the same code as detected nuclei
(:func:`nucleograph.ingest.features.nucleus_features`), so the features have the same names and meaning.
What was repaired, clipped or skipped is counted in the returned notes.

Which file: the manifest's ``nuclei`` column (relative to the manifest; a ``.csv`` there is a table of
true centroids, as ``nucleograph synth`` writes, not a segmentation), else a sidecar next to the image
(:data:`SIDECAR_SUFFIXES`, e.g. ``IMAGE.geojson``, ``IMAGE.mask.png``), else none: ingest detects.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image
from scipy import ndimage

from nucleograph.errors import InputError
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.detect import SLIDE_OVERLAP
from nucleograph.ingest.features import concat_features, nucleus_features
from nucleograph.ingest.outlines import EDGE_OFFSET, compact_rings, outlines, rasterise, shift_outlines
from nucleograph.ingest.readers import iter_slide_tiles

__all__ = [
    "FORMATS",
    "IMPORT_VERSION",
    "SIDECAR_SUFFIXES",
    "ImportParams",
    "ParsedNuclei",
    "describe_notes",
    "find_nuclei_file",
    "import_image",
    "import_slide",
    "nuclei_format",
    "read_nuclei",
]

FORMATS = ("qupath", "geojson", "hovernet", "geoparquet", "mask")
#: Bumped when the way a file becomes nuclei changes; part of every import's key.
IMPORT_VERSION = 1
#: Sidecar files looked for next to ``IMAGE.ext`` (as ``IMAGE<suffix>`` or ``IMAGE.ext<suffix>``), in order.
SIDECAR_SUFFIXES = (
    ".geojson", ".json", ".nuclei.geojson", ".nuclei.json", ".nuclei.parquet", ".parquet", ".geoparquet",
    ".mask.png", ".mask.tif", ".mask.tiff", ".mask.npy", ".mask.npz",
)
MASK_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".npy", ".npz"})
_JSON_SUFFIXES = frozenset({".json", ".geojson"})
_PARQUET_SUFFIXES = frozenset({".parquet", ".geoparquet"})
#: Property (or column) names read as a nucleus's class when there is no QuPath classification.
CLASS_KEYS = ("classification", "class_name", "type", "class", "cell_type")
#: QuPath object types (QuPath also reads a "type" property as the object type when objectType is absent).
_OBJECT_TYPES = frozenset({"annotation", "detection", "cell", "tile", "tmaCore", "tma_core", "root"})
_ID_COLUMNS = ("id", "uid", "cell_id", "nucleus_id", "object_id")
_NPZ_KEYS = ("inst_map", "instance_map", "instances", "inst", "labels", "label", "mask", "nuc_raster")
#: QuPath 0.2 wrote the object's class name as its "id"; those ids are not unique.
_LEGACY_TYPE_IDS = frozenset({"PathCellObject", "PathDetectionObject", "PathAnnotationObject", "PathTileObject",
                              "TMACoreObject", "PathRootObject"})
_DETECTION_TYPES = frozenset({"detection", "cell", "PathCellObject", "PathDetectionObject"})
_SKIPPED_TYPES = frozenset({"tile", "tmaCore", "tma_core", "root", "PathTileObject", "TMACoreObject", "PathRootObject"})
#: First Douglas-Peucker tolerance (pixels) of the outlines kept from a file's polygons.
POLYGON_TOLERANCE = 0.2
_POLYGON, _MULTIPOLYGON = 3, 6

_NOTE_TEXT = {
    "repaired": "invalid polygon(s) repaired",
    "clipped": "clipped to the image",
    "outside": "skipped: outside the image",
    "invalid": "skipped: invalid geometry that could not be repaired",
    "not_polygon": "skipped: not a polygon (points or lines)",
    "empty": "skipped: covering no pixel (smaller than a pixel, or hidden under other nuclei)",
    "annotations": "annotation(s) ignored (the file has detections)",
    # segmentations without their image (ingest.polygons)
    "too_large": "skipped: larger than a tile across (a region, not a nucleus?)",
}


@dataclass(frozen=True)
class ImportParams:
    """Options of a segmentation read from a file: the stand-in for :class:`IngestParams` then.

    Parameters
    ----------
    format : str
        One of :data:`FORMATS`.
    nuclei : str
        The segmentation file.
    nuclei_sha : str
        Its content hash: part of :meth:`key`, so a changed file makes a new segmentation.
    threshold, threshold_unit, slide_tile
        As :class:`nucleograph.ingest.pipeline.IngestParams`.

    Attributes
    ----------
    detector : str
        ``import:<format>``, stored as the segmentation's detector.
    """

    format: str
    nuclei: str
    nuclei_sha: str
    threshold: float
    threshold_unit: str
    slide_tile: int
    detector: str = field(init=False)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise InputError(f"unknown nuclei format {self.format!r}: choose one of {', '.join(FORMATS)}")
        object.__setattr__(self, "detector", f"import:{self.format}")

    @classmethod
    def of(cls, params, path: Path, *, sha: str) -> ImportParams:
        """The import of ``path`` with the edge options of ``params`` (an ``IngestParams``)."""
        return cls(format=nuclei_format(path), nuclei=str(path), nuclei_sha=sha, threshold=params.threshold,
                   threshold_unit=params.threshold_unit, slide_tile=params.slide_tile)

    def key(self) -> str:
        """A short stable hash of the file's bytes, its format and the edge options (not its path)."""
        payload = {k: v for k, v in asdict(self).items() if k != "nuclei"}
        text = json.dumps({**payload, "import_version": IMPORT_VERSION}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class ParsedNuclei:
    """A segmentation file as read: polygons (GeoJSON pixel coordinates) or a label image, with classes."""

    geometries: np.ndarray | None = None  # (N,) object array of shapely geometries (None: unreadable)
    labels: np.ndarray | None = None  # (H, W) instance labels, for masks
    types: list[Any] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    pixel_centres: bool = False  # contours through boundary pixel centres (HoVer-Net): grow by half a pixel
    notes: Counter = field(default_factory=Counter)


# --- which file, which format -------------------------------------------------------------------------------
def find_nuclei_file(record: ImageRecord) -> Path | None:
    """The segmentation file of ``record``: its manifest ``nuclei`` column, else one sidecar, else None.

    Parameters
    ----------
    record : ImageRecord

    Returns
    -------
    Path or None

    Raises
    ------
    InputError
        The named file does not exist, or two sidecars compete.
    """
    named = (record.meta or {}).get("nuclei")
    if named and Path(named).suffix.lower() != ".csv":  # .csv: synthetic truth (centroids), not outlines
        path = Path(named)
        if not path.is_file():
            raise InputError(f"{record.path}: its nuclei file {path} does not exist; fix the manifest's nuclei "
                             "column (paths are relative to the manifest) or remove it to detect nuclei")
        return path
    image = Path(record.path)
    found: list[Path] = []
    for suffix in SIDECAR_SUFFIXES:
        for candidate in (image.with_name(image.stem + suffix), image.with_name(image.name + suffix)):
            if candidate != image and candidate.is_file() and candidate not in found:
                found.append(candidate)
    if len(found) > 1:
        raise InputError(f"{image}: several nuclei files next to it ({', '.join(p.name for p in found)}); keep "
                         "one, or name the one to use in the manifest's nuclei column")
    return found[0] if found else None


def nuclei_format(path: Path) -> str:
    """The format of a segmentation file, from its extension and, for JSON, its first bytes.

    Parameters
    ----------
    path : Path

    Returns
    -------
    str
        One of :data:`FORMATS`.

    Raises
    ------
    InputError
        The extension is none of the supported ones.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in _PARQUET_SUFFIXES:
        return "geoparquet"
    if suffix in MASK_SUFFIXES:
        return "mask"
    if suffix in _JSON_SUFFIXES:
        try:
            with path.open("rb") as fh:
                head = fh.read(1 << 16).decode("utf-8", errors="replace")
        except OSError as exc:
            raise InputError(f"{path}: cannot read the nuclei file ({exc.strerror}); check the path and its "
                             "permissions") from exc
        if re.search(r'"nuc"\s*:\s*\{', head):
            return "hovernet"
        if re.search(r'"(objectType|object_type|nucleusGeometry)"|"Path(Cell|Detection|Annotation)Object"', head):
            return "qupath"
        return "geojson"
    raise InputError(
        f"{path}: unknown nuclei format {suffix or '(no extension)'!r}; give QuPath or plain GeoJSON (.geojson, "
        ".json), HoVer-Net JSON (.json), GeoParquet (.parquet) or an instance mask (.png, .tif, .npy, .npz)"
    )


# --- reading -------------------------------------------------------------------------------------------------
def read_nuclei(path: Path, fmt: str | None = None, *, without_image: bool = False) -> ParsedNuclei:
    """Read a segmentation file.

    Parameters
    ----------
    path : Path
    fmt : str, optional
        One of :data:`FORMATS` (default: :func:`nuclei_format`).
    without_image : bool, optional
        The file is ingested without its image: errors do not suggest removing it so that nuclei are
        detected.

    Returns
    -------
    ParsedNuclei
        Geometries in GeoJSON pixel coordinates (corner at 0), or a label image.

    Raises
    ------
    InputError
        The file is empty, malformed, of an unknown structure, holds no nuclei or repeats an id.
    """
    path = Path(path)
    fmt = fmt or nuclei_format(path)
    # what else the user can do: an image's nuclei file can go (ingest then detects); a file ingested
    # without its image is all there is
    instead = ("or drop its row (there is no image to detect nuclei in)" if without_image
               else "or remove the file so that ingest detects nuclei itself")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InputError(f"{path}: cannot read the nuclei file ({exc.strerror}); check the path") from exc
    if size == 0:
        raise InputError(f"{path}: the nuclei file is empty (0 bytes); export the nuclei again, {instead}")
    if fmt == "mask":
        parsed = ParsedNuclei(labels=_read_mask(path))
    elif fmt == "geoparquet":
        parsed = _read_geoparquet(path)
    elif fmt == "hovernet":
        parsed = _read_hovernet(path)
    elif fmt in ("qupath", "geojson"):
        parsed = _read_geojson(path)
    else:
        raise InputError(f"unknown nuclei format {fmt!r}: choose one of {', '.join(FORMATS)}")
    n = len(parsed.geometries) if parsed.geometries is not None else int(parsed.labels.any())
    if n == 0:
        raise InputError(f"{path}: holds no nuclei (no objects); export the nuclei again, {instead}")
    _check_unique(path, parsed.ids)
    return parsed


def _check_unique(path: Path, ids: list[str]) -> None:
    counts = Counter(i for i in ids if i is not None)
    dup = sorted(k for k, v in counts.items() if v > 1)
    if dup:
        raise InputError(f"{path}: {len(dup)} nucleus id(s) appear more than once ({', '.join(map(str, dup[:5]))}"
                         f"{', ...' if len(dup) > 5 else ''}); remove the duplicated objects or give each a unique "
                         "id, then ingest again")


def _load_json(path: Path, **kwargs) -> Any:
    try:
        with path.open("rb") as fh:
            return json.load(fh, **kwargs)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); the file is "
                         "truncated or not JSON: export it again") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 JSON text ({exc.reason}); export it again as GeoJSON") from exc


class _DuplicateKeys(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: Counter = Counter(k for k, _ in pairs)
        raise _DuplicateKeys(sorted(k for k, v in seen.items() if v > 1))
    return out


def _read_hovernet(path: Path) -> ParsedNuclei:
    try:
        data = _load_json(path, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKeys as exc:
        dup = exc.args[0]
        raise InputError(f"{path}: {len(dup)} key(s) appear more than once ({', '.join(dup[:5])}); nucleus ids "
                         "must be unique: remove the duplicates, then ingest again") from None
    if not isinstance(data, dict) or not isinstance(data.get("nuc"), dict):
        raise InputError(f"{path}: not HoVer-Net JSON (expected {{\"nuc\": {{id: {{\"contour\": ...}}}}}}); "
                         "give HoVer-Net's json/ output, or name the file .geojson if it is GeoJSON")
    geoms, types, ids = [], [], []
    notes: Counter = Counter()
    for key, inst in data["nuc"].items():
        contour = inst.get("contour") if isinstance(inst, dict) else None
        try:
            # OpenCV points are pixel indices (centres); + 0.5 puts them in GeoJSON's corner convention
            xy = np.asarray(contour, dtype=np.float64).reshape(-1, 2) + EDGE_OFFSET
            geom = shapely.Polygon(xy) if len(xy) >= 3 else shapely.LineString(xy) if len(xy) == 2 else shapely.Point(xy[0])
        except (TypeError, ValueError, IndexError):
            geom = None
        geoms.append(geom)
        types.append(inst.get("type") if isinstance(inst, dict) else None)
        ids.append(str(key))
    return ParsedNuclei(geometries=_as_array(geoms), types=types, ids=ids, pixel_centres=True, notes=notes)


def _as_array(geoms: list) -> np.ndarray:
    out = np.empty(len(geoms), dtype=object)
    out[:] = geoms
    return out


def _features_of(data: Any, path: Path) -> list:
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if isinstance(data.get("features"), list):
            return data["features"]
        if kind == "Feature":
            return [data]
        if kind in ("Polygon", "MultiPolygon"):
            return [{"type": "Feature", "geometry": data, "properties": {}}]
        if "nuc" in data:
            raise InputError(f"{path}: looks like HoVer-Net JSON but the \"nuc\" map is not where expected; give "
                             "HoVer-Net's json/ output unchanged")
    raise InputError(f"{path}: unknown structure (expected a GeoJSON FeatureCollection, a list of GeoJSON features "
                     "as QuPath writes them, or HoVer-Net's {\"nuc\": ...}); export the nuclei again as GeoJSON")


def _object_type(feature: dict, props: dict) -> str | None:
    kind = props.get("objectType") or props.get("object_type")
    if kind is None and props.get("type") in _OBJECT_TYPES:
        kind = props["type"]
    if kind is None and feature.get("id") in _LEGACY_TYPE_IDS:
        kind = feature["id"]
    return kind


def _class_of(props: dict) -> Any:
    for key in CLASS_KEYS:
        value = props.get(key)
        if key == "type" and value in _OBJECT_TYPES:
            continue
        if isinstance(value, dict):  # QuPath: {"name": "Tumor", "color": [...]} or {"names": [...]}
            value = value.get("name") if value.get("name") is not None else (
                ": ".join(map(str, value["names"])) if isinstance(value.get("names"), list) else None)
        if value is not None and not isinstance(value, (dict, list)):
            return value
    return None


def _read_geojson(path: Path) -> ParsedNuclei:
    features = _features_of(_load_json(path), path)
    notes: Counter = Counter()
    rows = []
    for k, feature in enumerate(features):
        if not isinstance(feature, dict):
            notes["invalid"] += 1
            continue
        props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        kind = _object_type(feature, props)
        if kind in _SKIPPED_TYPES:
            continue
        geometry = feature.get("nucleusGeometry") or props.get("nucleusGeometry") or feature.get("geometry")
        fid = feature.get("id")
        fid = None if fid is None or fid in _LEGACY_TYPE_IDS else str(fid)
        rows.append((kind, geometry, _class_of(props), fid, k))
    if any(kind in _DETECTION_TYPES for kind, *_ in rows):
        kept = [r for r in rows if r[0] in _DETECTION_TYPES]
        notes["annotations"] += len(rows) - len(kept)
        rows = kept
    geoms, types, ids = [], [], []
    for (kind, _, cls, fid, k), geom in zip(rows, _shapes([r[1] for r in rows]), strict=True):
        if geom is not None and kind not in _DETECTION_TYPES and shapely.get_type_id(geom) == _MULTIPOLYGON:
            # CellViT and other exporters put all nuclei of one class in one MultiPolygon annotation
            parts = shapely.get_parts(geom)
            geoms.extend(parts)
            types.extend([cls] * len(parts))
            ids.extend(f"{fid if fid is not None else k}.{j}" for j in range(len(parts)))
            continue
        geoms.append(geom)
        types.append(cls)
        ids.append(fid if fid is not None else None)
    return ParsedNuclei(geometries=_as_array(geoms), types=types, ids=ids, notes=notes)


def _shapes(geometries: list) -> list:
    """Shapely geometries of GeoJSON geometry dicts (None where unreadable). Simple polygons, nearly all of
    a nucleus file, are built in one vectorised call; the rest one by one."""
    out: list = [None] * len(geometries)
    rings, where = [], []
    for i, g in enumerate(geometries):
        coords = g.get("coordinates") if isinstance(g, dict) and g.get("type") == "Polygon" else None
        if isinstance(coords, list) and len(coords) == 1 and isinstance(coords[0], list) and len(coords[0]) >= 4:
            try:
                ring = np.asarray(coords[0], dtype=np.float64)
            except (TypeError, ValueError):
                ring = None
            if ring is not None and ring.ndim == 2 and ring.shape[1] in (2, 3) and np.isfinite(ring).all():
                rings.append(ring[:, :2])
                where.append(i)
                continue
        out[i] = _shape(g)
    if rings:
        counts = np.array([len(r) for r in rings])
        built = shapely.polygons(shapely.linearrings(np.concatenate(rings), indices=np.repeat(np.arange(len(rings)),
                                                                                              counts)))
        for i, geom in zip(where, built, strict=True):
            out[i] = geom
    return out


def _shape(geometry: Any):
    if not isinstance(geometry, dict):
        return None
    try:
        return shapely.geometry.shape(geometry)
    except Exception:  # any malformed coordinate structure: counted as invalid, never fatal for the file
        return None


def _read_geoparquet(path: Path) -> ParsedNuclei:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(f"{path}: not a readable Parquet file ({exc}); write it again with geopandas "
                         "GeoDataFrame.to_parquet()") from exc
    column, encoding = _geometry_column(table, path)
    if encoding.upper() != "WKB":
        raise InputError(f"{path}: geometry column {column!r} is encoded as {encoding!r}; nucleograph reads WKB "
                         "(geopandas' default): write it with to_parquet(geometry_encoding='WKB')")
    raw = table.column(column).to_numpy(zero_copy_only=False)
    if raw.dtype != object or not all(v is None or isinstance(v, (bytes, bytearray)) for v in raw[:16]):
        raise InputError(f"{path}: geometry column {column!r} does not hold WKB bytes; write the file with "
                         "geopandas GeoDataFrame.to_parquet()")
    geoms = shapely.from_wkb(raw, on_invalid="ignore")
    names = table.column_names
    class_col = next((c for c in CLASS_KEYS if c in names and c != column), None)
    types = [_py(v) for v in table.column(class_col).to_pylist()] if class_col else [None] * len(geoms)
    id_col = next((c for c in _ID_COLUMNS if c in names), None)
    ids = [None if v is None else str(v) for v in table.column(id_col).to_pylist()] if id_col else \
        [str(i) for i in range(len(geoms))]
    return ParsedNuclei(geometries=np.asarray(geoms, dtype=object), types=types, ids=ids)


def _geometry_column(table, path: Path) -> tuple[str, str]:
    meta = table.schema.metadata or {}
    if b"geo" in meta:
        try:
            geo = json.loads(meta[b"geo"])
            column = geo["primary_column"]
            return column, str(geo["columns"][column].get("encoding", "WKB"))
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: its GeoParquet 'geo' metadata is malformed ({exc}); write the file again "
                             "with geopandas GeoDataFrame.to_parquet()") from exc
    column = next((c for c in ("geometry", "geom", "wkb", "wkb_geometry") if c in table.column_names), None)
    if column is None:
        raise InputError(f"{path}: no geometry column (no GeoParquet 'geo' metadata and none of geometry, geom, "
                         f"wkb among {table.column_names}); write it with geopandas GeoDataFrame.to_parquet()")
    return column, "WKB"


def _py(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _read_mask(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            array = _npz_array(path)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            with Image.open(path) as im:
                array = np.asarray(im)
    except InputError:
        raise
    except Exception as exc:  # numpy, tifffile and Pillow raise many types for a broken file
        raise InputError(f"{path}: cannot read the mask ({type(exc).__name__}: {exc}); save it again as a "
                         "single-channel integer PNG, TIFF or .npy") from exc
    return _check_mask(path, array)


def _npz_array(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        keys = list(npz.files)
        key = keys[0] if len(keys) == 1 else next((k for k in _NPZ_KEYS if k in keys), None)
        if key is None:
            raise InputError(f"{path}: holds arrays {keys}; save the instance labels alone, or under one of the "
                             f"names {list(_NPZ_KEYS)}")
        return npz[key]


def _check_mask(path: Path, array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(f"{path}: a mask must be one channel of instance labels (H, W); got shape {array.shape} "
                         "(a colour mask?): save one integer label per nucleus, 0 for background")
    if array.dtype == bool or np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path}: the mask holds non-integer values ({array.dtype}); save integer labels")
        array = array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{path}: the mask's values are {array.dtype}, not integers; save integer labels")
    if array.size and array.min() < 0:
        raise InputError(f"{path}: the mask holds negative labels; 0 is background and nuclei are 1, 2, ...")
    return array


# --- from parsed file to measured nuclei ------------------------------------------------------------------
def describe_notes(notes: dict[str, int]) -> str:
    """The counts of repaired, clipped and skipped objects in words (empty when there are none)."""
    return "; ".join(f"{n} {_NOTE_TEXT.get(k, k)}" for k, n in sorted(notes.items()) if n)


def _polygonal(geom):
    """The polygonal part of a geometry (largest polygon), or None."""
    if geom is None or shapely.is_empty(geom):
        return None
    kind = shapely.get_type_id(geom)
    if kind == _POLYGON:
        return geom
    parts = [p for p in shapely.get_parts(geom) if shapely.get_type_id(p) in (_POLYGON, _MULTIPOLYGON)]
    parts = [q for p in parts for q in shapely.get_parts(p)]
    parts = [p for p in parts if p.area > 0]
    return max(parts, key=lambda p: p.area) if parts else None


def clean_geometries(
    parsed: ParsedNuclei, *, width: int, height: int
) -> tuple[list, list[int], Counter]:
    """Repair, clip and convert a file's geometries to pixel-centre coordinates.

    Parameters
    ----------
    parsed : ParsedNuclei
    width, height : int
        The image's size in pixels.

    Returns
    -------
    geometries : list of shapely.Polygon
        In :mod:`nucleograph.ingest.outlines` coordinates (pixel centres at integers).
    kept : list of int
        The index into ``parsed`` of each geometry.
    notes : Counter
        ``repaired, clipped, outside, invalid, not_polygon`` (and the parser's).
    """
    notes = Counter(parsed.notes)
    frame = shapely.box(-EDGE_OFFSET, -EDGE_OFFSET, width - EDGE_OFFSET, height - EDGE_OFFSET)
    geoms = np.asarray(parsed.geometries, dtype=object)
    kind = shapely.get_type_id(geoms)  # -1 where None
    usable = kind >= 0
    notes["invalid"] += int((~usable).sum())
    if not parsed.pixel_centres:
        polygonal = np.isin(kind, (_POLYGON, _MULTIPOLYGON))
        notes["not_polygon"] += int((usable & ~polygonal).sum())
        usable &= polygonal
    idx = np.flatnonzero(usable)
    work = geoms[idx]
    broken = ~shapely.is_valid(work)
    work[broken] = shapely.make_valid(work[broken])
    if parsed.pixel_centres:
        # OpenCV contours join the centres of boundary pixels: grow by half a pixel to their edges
        work = shapely.buffer(work, EDGE_OFFSET, join_style="mitre")
    simple = shapely.get_type_id(work) == _POLYGON
    work[~simple] = [_polygonal(g) for g in work[~simple]]  # largest polygon of a repaired or multi-part one
    good = shapely.get_type_id(work) >= 0
    notes["invalid"] += int((~good).sum())
    notes["repaired"] += int((broken & good).sum())
    idx, work = idx[good], shapely.transform(work[good], lambda c: c - EDGE_OFFSET)
    inside = shapely.within(work, frame)
    for j in np.flatnonzero(~inside):
        cut = _polygonal(shapely.intersection(work[j], frame)) if shapely.intersects(work[j], frame) else None
        work[j] = cut
        notes["outside" if cut is None else "clipped"] += 1
    keep = shapely.get_type_id(work) >= 0
    return list(work[keep]), idx[keep].tolist(), notes


def _no_nuclei_left(path: str, total: int, notes: Counter, width: int, height: int) -> InputError:
    hint = ""
    if notes.get("outside"):
        hint = (f" The nuclei lie outside the {width}x{height} image: the file belongs to another image, or its "
                "coordinates are at another resolution (give full-resolution pixel coordinates).")
    return InputError(f"{path}: none of its {total} objects is a usable nucleus ({describe_notes(notes)}).{hint} "
                      "Fix or export the file again, or remove it so that ingest detects nuclei")


def _measure(
    image: np.ndarray, labels: np.ndarray, types: list, ids: list, geoms: list | None = None
) -> tuple[dict[str, np.ndarray], int]:
    """Features and outlines of ``labels`` (label k = entry k-1 of ``types``/``ids``/``geoms``), renumbered
    1..N. Outlines come from the polygons where given (the file's own shapes), else are traced."""
    feats = nucleus_features(image, labels)
    lab = feats["nucleus_id"]
    if geoms is None:
        feats["outline"] = outlines(labels, lab)
    else:
        # a finer first tolerance than for traced pixel staircases: Douglas-Peucker cuts inside a convex
        # outline, and these vertices are the file's own, not pixel corners
        feats["outline"] = compact_rings([shapely.get_coordinates(geoms[k - 1].exterior)[:-1] for k in lab],
                                         tolerance=POLYGON_TOLERANCE)
    feats["source_id"] = _objects([ids[k - 1] for k in lab])
    if any(t is not None for t in types):
        feats["type"] = _objects([types[k - 1] for k in lab])
    feats["nucleus_id"] = np.arange(1, len(lab) + 1, dtype=np.int64)
    return feats, len(types) - len(lab)


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def import_image(image: np.ndarray, params: ImportParams) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Measure the nuclei of ``params.nuclei`` on ``image``.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
    params : ImportParams

    Returns
    -------
    nuclei : dict of str to ndarray
        :func:`nucleograph.ingest.features.nucleus_features` columns plus ``outline`` (flat lists),
        ``source_id`` (the file's id of each nucleus) and, when the file has classes, ``type``.
    notes : dict of str to int
        How many objects were repaired, clipped or skipped, by reason (zeros left out).

    Raises
    ------
    InputError
        The file is unusable (see :func:`read_nuclei`), a mask's size differs from the image's, or no
        object is a usable nucleus.
    """
    path = Path(params.nuclei)
    height, width = image.shape[:2]
    parsed = read_nuclei(path, params.format)
    if parsed.labels is not None:
        labels = parsed.labels
        if labels.shape != (height, width):
            raise InputError(f"{path}: the mask is {labels.shape[1]}x{labels.shape[0]} pixels but the image is "
                             f"{width}x{height}; a mask needs one label per image pixel: give the mask made for "
                             "this image at full resolution")
        labels, present = _sequential(path, labels)
        feats, _ = _measure(image, labels, [None] * len(present), [str(v) for v in present])
        return feats, {}
    geoms, kept, notes = clean_geometries(parsed, width=width, height=height)
    if not geoms:
        raise _no_nuclei_left(str(path), len(parsed.geometries), notes, width, height)
    labels = rasterise(geoms, (height, width))
    feats, lost = _measure(image, labels, [parsed.types[i] for i in kept], [_id(parsed, i) for i in kept], geoms)
    notes["empty"] += lost
    if not len(feats["nucleus_id"]):
        raise _no_nuclei_left(str(path), len(parsed.geometries), notes, width, height)
    return feats, {k: int(v) for k, v in notes.items() if v}


def _sequential(path: Path, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels 1..N (int32) and the file's label of each; refuses a binary mask of many blobs."""
    present = np.unique(mask)
    present = present[present > 0]
    if len(present) == 1 and ndimage.label(mask > 0)[1] > 1:
        raise InputError(f"{path}: every nucleus has the same label ({present[0]}): this is a binary mask, not "
                         "instance labels; give each nucleus its own label (e.g. skimage.measure.label(mask))")
    labels = np.zeros(mask.shape, dtype=np.int32)
    fg = mask > 0
    labels[fg] = np.searchsorted(present, mask[fg]) + 1
    return labels, present


def _id(parsed: ParsedNuclei, i: int) -> str:
    return parsed.ids[i] if parsed.ids[i] is not None else str(i + 1)


def _tile_grid(size: int, tile: int, step: int) -> int:
    """How many tiles :func:`iter_slide_tiles` reads along a side of ``size`` pixels."""
    n = 1
    while (n - 1) * step + tile < size:
        n += 1
    return n


def import_slide(
    path: Path, params: ImportParams, *, width: int, height: int, overlap: int = SLIDE_OVERLAP
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """:func:`import_image` for a whole slide, measured tile by tile.

    A nucleus is measured on the tile in whose core (the tile less half the overlap on shared sides) its
    centroid lies, like detected nuclei (:func:`nucleograph.ingest.detect.detect_slide`): whole as long
    as it is smaller than ``overlap / 2`` beyond that core.

    Parameters
    ----------
    path : Path
        The slide.
    params : ImportParams
    width, height : int
        The slide's full-resolution size.
    overlap : int, optional

    Returns
    -------
    nuclei, notes
        As :func:`import_image`; coordinates in full-resolution slide pixels.

    Raises
    ------
    InputError
        As :func:`import_image`; masks are refused (give polygons for slides).
    """
    nuclei_path = Path(params.nuclei)
    if params.format == "mask":
        raise InputError(f"{nuclei_path}: label masks of whole slides are not read (they would not fit in memory); "
                         "give the nuclei as GeoJSON or GeoParquet polygons")
    parsed = read_nuclei(nuclei_path, params.format)
    geoms, kept, notes = clean_geometries(parsed, width=width, height=height)
    if not geoms:
        raise _no_nuclei_left(str(nuclei_path), len(parsed.geometries), notes, width, height)
    tile = params.slide_tile
    step, half = tile - overlap, overlap / 2.0
    cols = _tile_grid(width, tile, step)
    centre = shapely.get_coordinates(shapely.centroid(np.asarray(geoms, dtype=object)))
    tx = np.clip(np.floor((centre[:, 0] - half) / step), 0, cols - 1).astype(np.int64)
    ty = np.clip(np.floor((centre[:, 1] - half) / step), 0, _tile_grid(height, tile, step) - 1).astype(np.int64)
    by_tile: dict[int, list[int]] = {}
    for j, t in enumerate(ty * cols + tx):
        by_tile.setdefault(int(t), []).append(j)
    parts, lost = [], 0
    for x0, y0, rgb in _tiles_with_nuclei(path, tile, overlap, by_tile, cols, step):
        members = by_tile[(y0 // step) * cols + x0 // step]
        local = [shapely.transform(geoms[j], lambda c, x0=x0, y0=y0: c - (x0, y0)) for j in members]
        labels = rasterise(local, rgb.shape[:2])
        feats, n_lost = _measure(rgb, labels, [parsed.types[kept[j]] for j in members],
                                 [_id(parsed, kept[j]) for j in members], local)
        lost += n_lost
        feats["centroid_x"] = feats["centroid_x"] + x0
        feats["centroid_y"] = feats["centroid_y"] + y0
        feats["outline"] = shift_outlines(feats["outline"], x0, y0)
        parts.append(feats)
    out = concat_features(parts) if parts else {}
    notes["empty"] += lost
    if not parts or not len(out["nucleus_id"]):
        raise _no_nuclei_left(str(nuclei_path), len(parsed.geometries), notes, width, height)
    out["nucleus_id"] = np.arange(1, len(out["nucleus_id"]) + 1, dtype=np.int64)
    return out, {k: int(v) for k, v in notes.items() if v}


def _tiles_with_nuclei(path, tile, overlap, by_tile, cols, step) -> Iterator[tuple[int, int, np.ndarray]]:
    for x0, y0, rgb in iter_slide_tiles(path, tile=tile, overlap=overlap):
        if (y0 // step) * cols + x0 // step in by_tile:
            yield x0, y0, rgb


