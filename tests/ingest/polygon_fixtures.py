"""Hand-made nucleus polygons and a plain GeoJSON writer for the tests of segmentations without an image.
The writer is independent of nucleograph's own code (json and shapely only), so a test can fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
from shapely import affinity


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
