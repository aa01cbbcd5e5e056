"""Export a run's explanation as QuPath-readable GeoJSON: one FeatureCollection per image.

Each nucleus becomes a QuPath detection (``objectType: detection``) whose polygon is its stored outline
(:mod:`nucleograph.ingest.outlines`, shifted to QuPath's pixel-corner convention), with
``classification: {"name": type}`` where the nucleus has a type and ``measurements`` (the object QuPath
0.4+ reads as name -> value) holding its features and the explanation's score as ``importance``. QuPath
opens the files with *File > Import objects from file* (or drag and drop); ``nucleograph ingest`` reads
them back (format ``qupath``). Nuclei stored before outlines existed, and those detected on whole
slides, are drawn as the ellipse of their measured axes.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from nucleograph.db import runs as db_runs
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import InputError
from nucleograph.ingest.outlines import EDGE_OFFSET, outline_polygon
from nucleograph.progress import progress as progress_bar

__all__ = ["EXPORT_FORMATS", "IMPORTANCE", "export_explanation", "feature_collection"]

EXPORT_FORMATS = ("geojson",)
#: The measurement holding the explanation's score.
IMPORTANCE = "importance"
_ELLIPSE_POINTS = 16
_NAMESPACE = uuid.UUID("6f1c2d5e-8a43-4f0b-9c7e-2b1d3a4e5f60")  # nucleograph's uuid5 namespace for object ids


def _ring(outline, feats: dict[str, float], x: float, y: float) -> list[list[float]]:
    """The nucleus's closed ring in QuPath coordinates: its outline, else its ellipse, else a disc."""
    if outline and len(outline) >= 6:
        ring = shapely.get_coordinates(outline_polygon(outline, offset=EDGE_OFFSET).exterior)
        return np.round(ring, 2).tolist()
    major, minor = feats.get("major_axis"), feats.get("minor_axis")
    theta = feats.get("orientation") or 0.0
    if not (major and minor and major > 0 and minor > 0):
        r = math.sqrt(max(feats.get("area") or 1.0, 1.0) / math.pi)
        major = minor = 2 * r
    t = np.linspace(0, 2 * np.pi, _ELLIPSE_POINTS, endpoint=False)
    # skimage's orientation: angle between the row (y) axis and the major axis
    a, b = major / 2, minor / 2
    dy = a * np.cos(t) * math.cos(theta) - b * np.sin(t) * math.sin(theta)
    dx = a * np.cos(t) * math.sin(theta) + b * np.sin(t) * math.cos(theta)
    xy = np.column_stack([x + dx, y + dy]) + EDGE_OFFSET
    return np.round(np.vstack([xy, xy[:1]]), 2).tolist()


def _object_id(source_id: Any, segmentation: str, nid: int) -> str:
    """The nucleus's own UUID where its file gave one (a QuPath round trip keeps ids), else a stable one."""
    if isinstance(source_id, str):
        try:
            return str(uuid.UUID(source_id))
        except ValueError:
            pass
    return str(uuid.uuid5(_NAMESPACE, f"{segmentation}:{nid}"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def feature_collection(
    nuclei: Sequence[Sequence[Any]], feature_names: Sequence[str], *, segmentation: str,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of QuPath detections (pure: no database).

    Parameters
    ----------
    nuclei : sequence of sequence
        ``[nid, centroid_x, centroid_y, type, outline, features, score, source_id]`` per nucleus, as
        :func:`nucleograph.db.runs.export_nuclei` returns them.
    feature_names : sequence of str
        The names of the ``features`` vector's entries.
    segmentation : str
        The segmentation key (seeds the object ids of nuclei without one of their own).
    meta : dict, optional
        Written as the collection's ``nucleograph`` member (QuPath ignores it).

    Returns
    -------
    dict
        ``{"type": "FeatureCollection", "features": [...], "nucleograph": meta}``.
    """
    features = []
    for nid, x, y, kind, outline, vector, score, source_id in nuclei:
        feats = dict(zip(feature_names, vector or [], strict=False))
        measurements = {k: float(v) for k, v in feats.items() if _finite(v)}
        if _finite(score):
            measurements[IMPORTANCE] = float(score)
        props: dict[str, Any] = {"objectType": "detection"}
        if kind is not None:
            props["classification"] = {"name": str(kind)}
        props["measurements"] = measurements
        features.append({
            "type": "Feature",
            "id": _object_id(source_id, segmentation, int(nid)),
            "geometry": {"type": "Polygon", "coordinates": [_ring(outline, feats, float(x), float(y))]},
            "properties": props,
        })
    return {"type": "FeatureCollection", "features": features, "nucleograph": meta or {}}


def _file_name(row: dict[str, Any], taken: set[str]) -> str:
    stem = Path(row["path"]).stem if row.get("path") else row["image_id"]
    stem = re.sub(r"[^\w.-]+", "_", stem) or row["image_id"]
    name = f"{stem}.geojson"
    if name in taken:
        name = f"{stem}-{row['image_id'][:12]}.geojson"
    taken.add(name)
    return name


def export_explanation(
    db: GraphDB, *, run_id: str, method: str, hops: int | None, out_dir: str | Path, fmt: str = "geojson",
    image_ids: list[str] | None = None, progress: bool = False, output: str = "logodds",
) -> dict[str, Any]:
    """Write one GeoJSON FeatureCollection per image the explanation scored.

    Images whose nuclei the run's cohort replaced after they were scored are left out (their scores
    belong to nuclei the cohort no longer uses) and listed as ``stale``.

    Parameters
    ----------
    db : GraphDB
    run_id : str
    method : str
        One of :data:`nucleograph.db.runs.METHODS`.
    hops : int or None
        Occlusion's neighbourhood size.
    out_dir : path-like
        Created if missing; files are named after the images (``IMAGE.geojson``).
    fmt : {"geojson"}
    image_ids : list of str, optional
        Only these images.
    progress : bool
        Show a progress bar.
    output : {"logodds", "prob"}
        Which occlusion scores (:func:`nucleograph.db.runs.score_property`); ignored for other methods.
        Each file's ``nucleograph`` metadata records the explanation's ``output`` and its ``explanation``
        title (e.g. "occlusion k=1, log-odds drop").

    Returns
    -------
    dict
        ``run_id, method, hops, output, explanation, out, files (list of {image_id, path, file, nuclei}),
        nuclei, stale``.

    Raises
    ------
    InputError
        Unknown format, or the run has no such explanation.
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"unknown export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    key = db_runs.explanation_key(run_id, method, hops, output=output)
    occ = method == "occlusion"
    title = db_runs.explanation_title(method, hops if occ else None, output if occ else None)
    rows = db_runs.export_images(db, key, image_ids=image_ids)
    current = [r for r in rows if r["current"]]
    if not current:
        how = f" --hops {hops} --output {output}" if occ else ""
        raise InputError(f"no {title} scores of run {run_id} to export: run `nucleograph explain --run {run_id} "
                         f"--method {method}{how}` first" + (" (its images were re-ingested since)" if rows else ""))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files, taken = [], set()
    bar = progress_bar(total=len(current), desc=f"export {run_id}", unit="image") if progress else None
    try:
        for row in current:
            nuclei = db_runs.export_nuclei(db, key, row["segmentation"])
            meta = {"run_id": run_id, "method": method, "hops": hops, "output": row["output"], "explanation": title,
                    "score_property": row["property"],
                    "image_id": row["image_id"], "path": row["path"], "label": row["label"],
                    "segmentation": row["segmentation"], "detector": row["detector"],
                    "width": row["width"], "height": row["height"]}
            collection = feature_collection(nuclei, row["feature_names"] or [], segmentation=row["segmentation"],
                                            meta=meta)
            target = out / _file_name(row, taken)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(json.dumps(collection, separators=(",", ":")), encoding="utf-8")
            tmp.replace(target)  # a reader never sees half a file
            files.append({"image_id": row["image_id"], "path": row["path"], "file": str(target),
                          "nuclei": len(nuclei)})
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return {"run_id": run_id, "method": method, "hops": hops, "output": output if occ else None,
            "explanation": title, "out": str(out), "files": files,
            "nuclei": sum(f["nuclei"] for f in files), "stale": sorted(r["image_id"] for r in rows if not r["current"])}
