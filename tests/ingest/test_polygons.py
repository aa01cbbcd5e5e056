"""Segmentations without their image (ingest.polygons): morphology from polygons alone, and bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from polygon_fixtures import shapes, write_geojson

from nucleograph.errors import InputError
from nucleograph.ingest.cohort import ImageRecord, discover
from nucleograph.ingest.features import (
    MORPHOLOGY_COLUMNS,
    PIXEL_COLUMNS,
    nucleus_features,
    shape_features,
    shape_features_reference,
)
from nucleograph.ingest.outlines import rasterise
from nucleograph.ingest.pipeline import IngestParams, content_hash, feature_names, process_image
from nucleograph.ingest.polygons import SegmentationParams, import_segmentation, polygon_features


def test_polygon_features_equal_the_whole_image_raster_and_the_detected_definitions():
    polys = shapes()
    whole = rasterise(polys, (130, 170))
    tiled = polygon_features(polys, tile=64)
    ref = shape_features(whole)
    assert tiled["nucleus_id"].tolist() == list(range(1, len(polys) + 1))
    for name in ("centroid_x", "centroid_y", *MORPHOLOGY_COLUMNS):
        np.testing.assert_allclose(tiled[name], ref[name], rtol=1e-12, atol=1e-12, err_msg=name)
    # the same numbers the detected (or imported with pixels) nuclei get from nucleus_features
    detected = nucleus_features(np.full((130, 170, 3), 200, np.uint8), whole)
    for name in MORPHOLOGY_COLUMNS:
        np.testing.assert_allclose(tiled[name], detected[name], rtol=1e-12, err_msg=name)


def test_polygon_features_agree_with_the_shapes_geometry():
    polys = shapes()
    f = polygon_features(polys, tile=64)
    area, perimeter = shapely.area(np.asarray(polys, dtype=object)), shapely.length(np.asarray(polys, dtype=object))
    # pixel counts: a pixel whose centre lies on the outline counts (Pick: area + perimeter/2 + 1 for the
    # square and the L, whose corners are lattice points)
    assert np.all(np.abs(f["area"] - area) <= perimeter / 2 + 1)
    assert f["area"][3] == 336 + 100 / 2 + 1
    disc, ellipse = 0, 1
    assert abs(f["area"][disc] - np.pi * 81) / (np.pi * 81) < 0.03
    assert f["eccentricity"][disc] < 0.15 and f["circularity"][disc] > 0.85 and f["solidity"][disc] > 0.95
    assert abs(f["major_axis"][ellipse] - 24) < 1.0 and abs(f["minor_axis"][ellipse] - 10) < 1.0
    # skimage's orientation: from the row (y) axis to the major axis; the ellipse's major axis is 30 deg from x
    assert abs(abs(f["orientation"][ellipse]) - np.deg2rad(60)) < 0.05
    assert f["solidity"][3] < 0.8  # the concave L
    assert np.allclose(f["centroid_x"][disc], 20.3, atol=0.2) and np.allclose(f["centroid_y"][disc], 18.7, atol=0.2)


def test_a_geojson_segmentation_gets_morphology_only(tmp_path):
    seg = write_geojson(tmp_path / "slide.geojson", shapes(), classes=["a", "b", "a", "b", "a", "b"])
    (record,) = discover([seg])
    assert record.path == seg.resolve()
    params = SegmentationParams.for_record(IngestParams(), record, sha=content_hash(seg))
    assert params.detector == "import:geojson" and (params.width, params.height) == (None, None)
    graph = process_image(record, params)
    assert graph.image_id == content_hash(seg)
    assert (graph.width, graph.height) == (156, 119)  # the polygons' extent from (0, 0), corner convention
    assert graph.n_nuclei == 6 and graph.n_edges > 0
    assert not set(PIXEL_COLUMNS) & set(graph.nuclei)  # absent, not zero
    assert feature_names(graph.nuclei) == list(MORPHOLOGY_COLUMNS)
    assert graph.nuclei["source_id"].tolist() == [f"n{k}" for k in range(6)]
    assert graph.nuclei["type"].tolist() == ["a", "b", "a", "b", "a", "b"]
    assert all(6 <= len(o) <= 64 for o in graph.nuclei["outline"])
    ref = polygon_features(shapes())
    np.testing.assert_allclose(graph.nuclei["area"], ref["area"])


def test_manifest_width_and_height_clip_and_key_the_segmentation(tmp_path):
    seg = write_geojson(tmp_path / "seg.geojson", shapes())
    record = ImageRecord(seg, "x", meta={"width": "100", "height": "80"})
    params = SegmentationParams.for_record(IngestParams(), record, sha=content_hash(seg))
    width, height, nuclei, notes = import_segmentation(params)
    assert (width, height) == (100, 80)
    assert notes.get("clipped", 0) + notes.get("outside", 0) >= 3 and len(nuclei["nucleus_id"]) < 6
    assert nuclei["centroid_x"].max() < 100 and nuclei["centroid_y"].max() < 80
    free = SegmentationParams.for_record(IngestParams(), ImageRecord(seg, "x"), sha=content_hash(seg))
    assert free.key() != params.key()


@pytest.mark.parametrize(("meta", "match"), [
    ({"width": "100"}, r"only one of width and height"),
    ({"width": "0", "height": "10"}, r"width is '0'; give the image's width in pixels as a positive integer"),
    ({"width": "12.5", "height": "10"}, r"positive integer"),
    ({"nuclei": "/x/other.geojson"}, r"path is a segmentation .* also names the nuclei file"),
])
def test_bad_manifest_columns_name_the_file_and_the_fix(tmp_path, meta, match):
    seg = write_geojson(tmp_path / "seg.geojson", shapes())
    with pytest.raises(InputError, match=match) as info:
        SegmentationParams.for_record(IngestParams(), ImageRecord(seg, "x", meta=meta), sha="0" * 16)
    assert str(seg) in str(info.value)


def test_bad_segmentation_files_fail_with_the_file_and_the_fix(tmp_path):
    def run(path: Path):
        params = SegmentationParams.for_record(IngestParams(), ImageRecord(path, "x"), sha=content_hash(path))
        return process_image(ImageRecord(path, "x"), params)

    empty = tmp_path / "empty.geojson"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.geojson: the nuclei file is empty \(0 bytes\); export") as err:
        run(empty)
    assert "drop its row" in str(err.value) and "detects nuclei" not in str(err.value)  # no image to detect in
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [{"type": "Feat')
    with pytest.raises(InputError, match=r"broken\.geojson: not valid JSON .*export it again"):
        run(broken)
    negative = write_geojson(tmp_path / "negative.geojson", [shapely.Point(3, 40).buffer(8)] + shapes())
    with pytest.raises(InputError, match=r"negative\.geojson: its polygons reach negative coordinates \(x = -4\.5"):
        run(negative)
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}]}))
    with pytest.raises(InputError, match=r"points\.geojson: none of its 1 objects is a usable nucleus \(1 skipped: "
                                         r"not a polygon"):
        run(points)
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"bad\.parquet: not a readable Parquet file"):
        run(bad_parquet)


def test_a_region_annotation_is_skipped_not_rasterised(tmp_path):
    tissue = shapely.box(0, 0, 5000, 4000)  # a tissue outline among the nuclei: painting it would be 20 Mpx
    seg = write_geojson(tmp_path / "with_region.geojson", [tissue, *shapes()])
    params = SegmentationParams.for_record(IngestParams(), ImageRecord(seg, "x"), sha=content_hash(seg))
    width, height, nuclei, notes = import_segmentation(params, tile=256)
    assert notes == {"too_large": 1} and len(nuclei["nucleus_id"]) == 6
    assert (width, height) == (5001, 4001)
    assert nuclei["source_id"].tolist() == [f"n{k}" for k in range(1, 7)]


def test_a_folder_never_takes_a_sidecar_for_a_segmentation(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32), (230, 200, 220)).save(tmp_path / "a.png")
    write_geojson(tmp_path / "a.geojson", shapes())
    assert [r.path.name for r in discover([tmp_path])] == ["a.png"]


def test_vectorised_shape_features_equal_regionprops_on_touching_blobs():
    from scipy import ndimage
    from skimage.measure import label

    rng = np.random.default_rng(3)
    labels = label(ndimage.gaussian_filter(rng.random((160, 220)), 2.5) > 0.5)
    labels[:, 110:] = np.where(labels[:, 110:] > 0, labels[:, 110:] + 500, 0)  # regions cut in two, touching
    labels[labels % 7 == 0] = 0  # gaps in the numbering
    fast, ref = shape_features(labels), shape_features_reference(labels)
    assert len(ref["nucleus_id"]) > 20 and fast["nucleus_id"].tolist() == ref["nucleus_id"].tolist()
    for name in ref:
        np.testing.assert_allclose(fast[name], ref[name], rtol=1e-9, atol=1e-9, err_msg=name)
