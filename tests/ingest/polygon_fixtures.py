"""Hand-made nucleus polygons and a plain GeoJSON writer for the tests of segmentations without an image
(the writer is independent of nucleograph's own code, json and shapely only, so a test can fail), and
the real files of the histolytics wheel that the Makefile's test install brings."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely import affinity


def histolytics_file(name: str) -> Path:
    """A file of ``histolytics/data`` from the installed wheel (the test fails, with the fix, without it)."""
    if importlib.util.find_spec("histolytics") is None:
        pytest.fail("histolytics is not installed: `pip install --no-deps histolytics==0.3.0` ships the real "
                    "H&E crop, its nuclei and the slide segmentation used here (the Makefile's test install does)")
    path = Path(importlib.metadata.distribution("histolytics").locate_file(f"histolytics/data/{name}"))
    if not path.is_file():
        pytest.fail(f"histolytics is installed but lacks {name}: install histolytics==0.3.0")
    return path


def shapes() -> list:
    """Nucleus-like shapes in pixel-centre coordinates, spread over several 64-px tiles (one straddling two)."""
    disc = shapely.Point(20.3, 18.7).buffer(9.0)
    ellipse = affinity.rotate(affinity.scale(shapely.Point(90, 30).buffer(1.0), 12, 5), 30)
    square = shapely.box(140, 10, 155.5, 25.5)
    ell = shapely.Polygon([(30, 90), (52, 90), (52, 98), (38, 98), (38, 118), (30, 118)])  # concave
    triangle = shapely.Polygon([(120, 100), (131, 100), (124, 109)])
    straddling = affinity.rotate(affinity.scale(shapely.Point(63, 70).buffer(1.0), 9, 4), -65)
    return [disc, ellipse, square, ell, triangle, straddling]


def write_geojson(path: Path, polygons, *, shift: float = 0.5, classes=None) -> Path:
    """A plain GeoJSON FeatureCollection in GeoJSON pixel coordinates (corner at 0: centres + ``shift``),
    feature ids ``n0, n1, ...``."""
    features = []
    for k, poly in enumerate(polygons):
        ring = (np.asarray(poly.exterior.coords) + shift).round(4).tolist()
        props = {} if classes is None else {"class_name": classes[k]}
        features.append({"type": "Feature", "id": f"n{k}", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": props})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path
