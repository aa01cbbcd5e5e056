"""Small hand-made segmentations for the import tests: an H&E-like image with known round nuclei, and
writers for each format as the tools themselves write them (QuPath, HoVer-Net, GeoJSON, GeoParquet,
masks). The writers are independent of nucleograph's own code, so a test can fail."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
import tifffile
from PIL import Image

WIDTH, HEIGHT = 160, 120
# (centre x, centre y, radius, class) in pixel-index coordinates (pixel centres at integers)
NUCLEI = [
    (20.0, 20.0, 7.0, "Tumor"), (60.0, 25.0, 6.0, "Stroma"), (110.0, 22.0, 8.0, "Tumor"),
    (30.0, 80.0, 6.5, "Lymphocyte"), (85.0, 70.0, 7.5, "Tumor"), (135.0, 95.0, 5.5, "Stroma"),
]
HOVERNET_TYPES = {"Tumor": 1, "Stroma": 3, "Lymphocyte": 2}


@dataclass
class Truth:
    image: Path
    centroids: np.ndarray  # (N, 2) x, y
    areas: np.ndarray  # digital disc pixel counts
    classes: list[str]
    mask: np.ndarray


def disc_mask() -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    mask = np.zeros((HEIGHT, WIDTH), np.int32)
    for k, (x, y, r, _) in enumerate(NUCLEI, start=1):
        mask[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = k
    return mask


def write_image(folder: Path, name: str = "tile.png") -> Truth:
    """An eosin-pink image with dark haematoxylin discs at :data:`NUCLEI` (with a little texture)."""
    rng = np.random.default_rng(7)
    mask = disc_mask()
    rgb = np.empty((HEIGHT, WIDTH, 3), np.float64)
    rgb[:] = (236, 190, 214)
    nuc = mask > 0
    rgb[nuc] = (88, 52, 128)
    rgb += rng.normal(0, 6, rgb.shape)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
    areas = np.bincount(mask.ravel())[1:]
    return Truth(path, np.array([(x, y) for x, y, _, _ in NUCLEI]), areas, [c for *_, c in NUCLEI], mask)


def circle(x: float, y: float, r: float, n: int = 40) -> list[list[float]]:
    """A closed ring in GeoJSON/QuPath coordinates (pixel corners at integers, so the centre moves by +0.5);
    0.2 px wider than r so that its chords do not cut off the disc's outermost pixel centres."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.column_stack([x + 0.5 + (r + 0.2) * np.cos(t), y + 0.5 + (r + 0.2) * np.sin(t)])
    return np.vstack([ring, ring[:1]]).round(3).tolist()


def qupath_cells(uuids: bool = True) -> list[dict]:
    """QuPath 0.4+ cells: cell boundary as geometry, the nucleus as nucleusGeometry, class and measurements."""
    features = []
    for k, (x, y, r, cls) in enumerate(NUCLEI):
        features.append({
            "type": "Feature",
            "id": f"00000000-0000-4000-8000-{k:012d}" if uuids else "PathCellObject",
            "geometry": {"type": "Polygon", "coordinates": [circle(x, y, r + 4)]},
            "nucleusGeometry": {"type": "Polygon", "coordinates": [circle(x, y, r)]},
            "properties": {"objectType": "cell", "classification": {"name": cls, "color": [200, 0, 0]},
                           "measurements": {"Nucleus: Area": 3.14 * r * r}},
        })
    return features


def write_qupath(path: Path, *, collection: bool = True, extra: list[dict] | None = None) -> Path:
    features = qupath_cells() + (extra or [])
    data = {"type": "FeatureCollection", "features": features} if collection else features
    path.write_text(json.dumps(data))
    return path


def _boundary_pixel_centres(mask: np.ndarray, cx: float, cy: float) -> list[list[int]]:
    """OpenCV-style contour (as HoVer-Net writes it): the boundary pixels' centres, in order around."""
    inner = mask.copy()
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    ys, xs = np.nonzero(mask & ~inner)
    order = np.argsort(np.arctan2(ys - cy, xs - cx))
    return [[int(xs[i]), int(ys[i])] for i in order]


def write_hovernet(path: Path, mask: np.ndarray) -> Path:
    nuc = {}
    for k, (x, y, _r, cls) in enumerate(NUCLEI, start=1):
        m = mask == k
        ys, xs = np.nonzero(m)
        nuc[str(k)] = {
            "bbox": [[int(ys.min()), int(xs.min())], [int(ys.max()) + 1, int(xs.max()) + 1]],
            "centroid": [float(xs.mean()), float(ys.mean())],
            "contour": _boundary_pixel_centres(m, x, y),
            "type_prob": 0.9,
            "type": HOVERNET_TYPES[cls],
        }
    path.write_text(json.dumps({"mag": 40, "nuc": nuc}))
    return path


def write_plain_geojson(path: Path) -> Path:
    """Plain polygons with a class_name property, plus a CellViT-style MultiPolygon of the last two."""
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [circle(x, y, r)]},
                 "properties": {"class_name": cls}} for x, y, r, cls in NUCLEI[:4]]
    features.append({"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [
        [circle(x, y, r)] for x, y, r, _ in NUCLEI[4:]]}, "properties": {"classification": {"name": "Tumor"}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_geoparquet(path: Path, *, class_column: str = "class_name") -> Path:
    geoms = [shapely.Polygon(circle(x, y, r)) for x, y, r, _ in NUCLEI]
    table = pa.table({"geometry": pa.array(shapely.to_wkb(geoms).tolist(), pa.binary()),
                      class_column: [c for *_, c in NUCLEI]})
    geo = {"version": "1.0.0", "primary_column": "geometry",
           "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Polygon"]}}}
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    pq.write_table(table, path)
    return path


def write_mask(path: Path, mask: np.ndarray, *, values: list[int] | None = None) -> Path:
    """The disc mask with labels renamed to ``values`` (non-consecutive, as tools often leave them)."""
    out = np.zeros(mask.shape, np.int64)
    for k, v in enumerate(values or range(1, len(NUCLEI) + 1), start=1):
        out[mask == k] = v
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, out.astype(np.int32))
    elif suffix == ".npz":
        np.savez_compressed(path, inst_map=out.astype(np.int32), type_map=np.zeros_like(out, np.uint8))
    elif suffix in (".tif", ".tiff"):
        tifffile.imwrite(path, out.astype(np.uint32))
    else:
        Image.fromarray(out.astype(np.uint16)).save(path)
    return path
