"""Bad segmentation files: a clear error naming the file and the fix, or a counted repair (no database)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from nuclei_fixtures import NUCLEI, circle, write_hovernet, write_image, write_mask, write_qupath

from nucleograph.errors import InputError
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.importers import ImportParams, describe_notes, find_nuclei_file, nuclei_format
from nucleograph.ingest.pipeline import IngestParams, content_hash, process_image


@pytest.fixture
def truth(tmp_path):
    return write_image(tmp_path / "img")


def _import(truth, nuclei: Path):
    p = ImportParams.of(IngestParams(), nuclei, sha=content_hash(nuclei))
    return process_image(ImageRecord(truth.image, None), p)


def _feature(ring, fid=None, **props):
    out = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
           "properties": {"objectType": "detection", **props}}
    if fid is not None:
        out["id"] = fid
    return out


def _write(path: Path, features) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_malformed_json_names_the_file_line_and_fix(truth, tmp_path):
    path = write_qupath(tmp_path / "cut.geojson")
    path.write_text(path.read_text()[:500])
    with pytest.raises(InputError, match=r"cut\.geojson: not valid JSON \(line 1, column \d+.*export it again"):
        _import(truth, path)


def test_empty_file_and_file_without_objects(truth, tmp_path):
    empty = tmp_path / "empty.geojson"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.geojson: the nuclei file is empty.*remove the file"):
        _import(truth, empty)
    none = _write(tmp_path / "none.geojson", [])
    with pytest.raises(InputError, match=r"none\.geojson: holds no nuclei"):
        _import(truth, none)
    blank = write_mask(tmp_path / "blank.mask.npy", np.zeros_like(truth.mask))
    with pytest.raises(InputError, match=r"blank\.mask\.npy: holds no nuclei"):
        _import(truth, blank)


def test_unknown_format_and_unknown_structure(truth, tmp_path):
    with pytest.raises(InputError, match=r"nuclei\.xml: unknown nuclei format '\.xml'.*GeoJSON.*HoVer-Net"):
        nuclei_format(tmp_path / "nuclei.xml")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps({"cells": 3}))
    with pytest.raises(InputError, match=r"odd\.json: unknown structure \(expected a GeoJSON FeatureCollection"):
        _import(truth, odd)
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_text("hello")
    with pytest.raises(InputError, match=r"x\.parquet: not a readable Parquet file"):
        _import(truth, not_parquet)
    no_geometry = tmp_path / "table.parquet"
    pq.write_table(pa.table({"area": [1.0, 2.0]}), no_geometry)
    with pytest.raises(InputError, match=r"table\.parquet: no geometry column"):
        _import(truth, no_geometry)


def test_polygons_outside_the_image_are_clipped_or_skipped_and_counted(truth, tmp_path):
    features = [_feature(circle(x, y, r)) for x, y, r, _ in NUCLEI]
    features.append(_feature(circle(500, 500, 6)))  # wholly outside the 160x120 image
    features.append(_feature(circle(158, 60, 6)))  # half over the right edge
    graph = _import(truth, _write(tmp_path / "out.geojson", features))
    assert graph.n_nuclei == len(NUCLEI) + 1
    assert graph.notes == {"outside": 1, "clipped": 1}
    assert graph.nuclei["centroid_x"].max() <= 159
    assert "1 skipped: outside the image" in describe_notes(graph.notes)
    far = _write(tmp_path / "far.geojson", [_feature(circle(900 + 20 * k, 900, 6)) for k in range(3)])
    with pytest.raises(InputError, match=r"far\.geojson: none of its 3 objects.*outside the 160x120 image.*"
                                         "another resolution"):
        _import(truth, far)


def test_invalid_polygons_are_repaired_or_skipped_and_counted(truth, tmp_path):
    features = [_feature(circle(x, y, r)) for x, y, r, _ in NUCLEI[:4]]
    # self-intersecting bow tie: make_valid splits it, the larger part is kept
    features.append(_feature([[70, 90], [84, 104], [84, 90], [70, 104], [70, 90]]))
    features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[1, 1], [2, 2]]]},
                     "properties": {"objectType": "detection"}})  # two points: no polygon at all
    features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [40, 40]},
                     "properties": {"objectType": "detection"}})
    graph = _import(truth, _write(tmp_path / "bad.geojson", features))
    assert graph.n_nuclei == 5
    assert graph.notes == {"repaired": 1, "invalid": 1, "not_polygon": 1}
    text = describe_notes(graph.notes)
    assert "1 invalid polygon(s) repaired" in text and "could not be repaired" in text


def test_mask_of_another_size(truth, tmp_path):
    path = write_mask(tmp_path / "small.mask.png", truth.mask[:100, :150])
    with pytest.raises(InputError, match=r"small\.mask\.png: the mask is 150x100 pixels but the image is 160x120.*"
                                         "full resolution"):
        _import(truth, path)


def test_masks_that_are_not_instance_labels(truth, tmp_path):
    binary = tmp_path / "binary.mask.npy"
    np.save(binary, (truth.mask > 0).astype(np.uint8) * 255)
    with pytest.raises(InputError, match=r"binary\.mask\.npy: every nucleus has the same label.*binary mask"):
        _import(truth, binary)
    rgb = tmp_path / "rgb.mask.npy"
    np.save(rgb, np.stack([truth.mask] * 3, axis=-1))
    with pytest.raises(InputError, match=r"rgb\.mask\.npy: a mask must be one channel"):
        _import(truth, rgb)
    garbage = tmp_path / "garbage.mask.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(InputError, match=r"garbage\.mask\.png: cannot read the mask"):
        _import(truth, garbage)


def test_duplicate_ids(truth, tmp_path):
    features = [_feature(circle(x, y, r), fid=f"id-{min(k, 2)}") for k, (x, y, r, _) in enumerate(NUCLEI)]
    with pytest.raises(InputError, match=r"dup\.geojson: 1 nucleus id\(s\) appear more than once \(id-2\).*unique"):
        _import(truth, _write(tmp_path / "dup.geojson", features))
    hovernet = write_hovernet(tmp_path / "h.json", truth.mask)
    text = hovernet.read_text()
    # HoVer-Net JSON with a repeated key: json.load would silently keep the last one
    first = text.index('"1": ')
    hovernet.write_text(text.replace('"2": ', '"1": ', 1))
    assert text.index('"1": ') == first
    with pytest.raises(InputError, match=r"h\.json: 1 key\(s\) appear more than once \(1\)"):
        _import(truth, hovernet)


def test_missing_and_ambiguous_nuclei_files(truth, tmp_path):
    folder = truth.image.parent
    with pytest.raises(InputError, match=r"tile\.png: its nuclei file .*gone\.geojson does not exist.*manifest"):
        find_nuclei_file(ImageRecord(truth.image, None, meta={"nuclei": tmp_path / "gone.geojson"}))
    write_qupath(folder / "tile.geojson")
    write_mask(folder / "tile.mask.png", truth.mask)
    with pytest.raises(InputError, match=r"tile\.png: several nuclei files next to it \(tile\.geojson, "
                                         r"tile\.mask\.png\).*keep one"):
        find_nuclei_file(ImageRecord(truth.image, None))
