"""Segmentations ingested without their image, end to end into the real local Neo4j: a small GeoJSON,
bad files in a manifest, and a window of the real histolytics slide segmentation (GeoParquet)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from polygon_fixtures import histolytics_file, shapes, write_geojson

from nucleograph.cli import main
from nucleograph.db import store
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.features import MORPHOLOGY_COLUMNS
from nucleograph.ingest.pipeline import IngestParams, content_hash
from nucleograph.ingest.run import ingest_records

pytestmark = pytest.mark.neo4j

_STORED = (
    "MATCH (:Cohort {name: $c})<-[m:IN_COHORT]-(i:Image) MATCH (s:Segmentation {key: m.segmentation}) "
    "MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "RETURN i.id AS id, i.width AS width, i.height AS height, i.mpp AS mpp, m.path AS path, m.label AS label, "
    "s.detector AS detector, s.feature_names AS names, count(n) AS n, collect(size(n.features)) AS sizes, "
    "collect(n.area) AS areas, count(n.hematoxylin_od_mean) AS stained, count(n.texture_contrast) AS textured, "
    "count(n.outline) AS outlined"
)


def _stored(graphdb, cohort: str) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in graphdb.read(_STORED, c=cohort)}


def test_a_geojson_alone_is_stored_with_morphology_only_and_reingest_is_a_no_op(tmp_path, test_environ, graphdb,
                                                                                 unique_name, capsys):
    seg = write_geojson(tmp_path / "slide.geojson", shapes(), classes=["a", "b", "a", "b", "a", "b"])
    assert main(["ingest", str(seg), "--cohort", unique_name, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["stored"], summary["nuclei"], summary["failed"]) == (1, 6, 0)
    row = _stored(graphdb, unique_name)["slide.geojson"]
    assert row["id"] == content_hash(seg) and row["detector"] == "import:geojson"
    assert (row["width"], row["height"], row["mpp"]) == (156, 119, None)
    assert row["names"] == list(MORPHOLOGY_COLUMNS) and set(row["sizes"]) == {len(MORPHOLOGY_COLUMNS)}
    # stain and texture are absent (no property), not zero
    assert (row["n"], row["stained"], row["textured"], row["outlined"]) == (6, 0, 0, 6)
    assert all(a > 40 for a in row["areas"])
    types = graphdb.read("MATCH (n:Nucleus {image_id: $i}) RETURN n.type AS t, count(*) AS k ORDER BY t", i=row["id"])
    assert {r["t"]: r["k"] for r in types} == {"a": 3, "b": 3}

    assert main(["ingest", str(seg), "--cohort", unique_name, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["unchanged"], again["stored"], again["replaced"]) == (1, 0, 0)
    assert store.cohort_counts(graphdb, unique_name)["nuclei"] == 6


def test_manifest_rows_of_segmentations_and_bad_files_failing_alone(tmp_path, test_environ, graphdb, unique_name,
                                                                   capsys):
    folder = tmp_path / "segs"
    write_geojson(folder / "good.geojson", shapes())
    write_geojson(folder / "shifted.geojson", [shapely.Point(3, 40).buffer(8), *shapes()])
    (folder / "empty.geojson").write_bytes(b"")
    (folder / "cut.json").write_text('{"type": "FeatureCollection", "features": [{"ty')
    (folder / "manifest.csv").write_text(
        "path,label,mpp,width,height\ngood.geojson,A,0.25,400,300\nshifted.geojson,B,,,\nempty.geojson,A,,,\n"
        "cut.json,B,,,\n")
    assert main(["ingest", str(folder / "manifest.csv"), "--cohort", unique_name, "--json"]) == 3
    summary = json.loads(capsys.readouterr().out)
    assert (summary["ok"], summary["failed"]) == (1, 3)
    errors = {Path(f["path"]).name: f["error"] for f in summary["failures"]}
    assert "shifted.geojson: its polygons reach negative coordinates" in errors["shifted.geojson"]
    assert "top-left corner at (0, 0)" in errors["shifted.geojson"]
    assert "empty.geojson: the nuclei file is empty (0 bytes); export the nuclei again" in errors["empty.geojson"]
    assert "cut.json: not valid JSON" in errors["cut.json"]
    stored = _stored(graphdb, unique_name)
    assert set(stored) == {"good.geojson"}  # nothing of a failed file
    assert (stored["good.geojson"]["width"], stored["good.geojson"]["height"]) == (400, 300)
    assert stored["good.geojson"]["mpp"] == 0.25 and stored["good.geojson"]["label"] == "A"
    for name in ("shifted.geojson", "empty.geojson", "cut.json"):
        left = graphdb.read("MATCH (i:Image {id: $i}) RETURN count(i) AS n", i=content_hash(folder / name))
        assert left[0]["n"] == 0



def test_a_window_of_the_real_slide_segmentation(tmp_path, neo4j_settings, graphdb, unique_name):
    table = pq.read_table(histolytics_file("hgsc_nuclei_wsi.parquet"))
    polygons = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    centre = shapely.get_coordinates(shapely.centroid(polygons))
    # the 6,000 nuclei nearest the slide's median centroid (a square window), in slide coordinates
    chebyshev = np.abs(centre - np.median(centre, axis=0)).max(axis=1)
    keep = np.zeros(len(polygons), bool)
    keep[np.argpartition(chebyshev, 6000)[:6000]] = True
    window = tmp_path / "hgsc_window.parquet"
    pq.write_table(table.filter(keep), window)  # keeps the GeoParquet 'geo' metadata
    t = time.perf_counter()
    summary = ingest_records([ImageRecord(window, "hgsc", mpp=0.5)], cohort=unique_name, params=IngestParams(),
                             settings=neo4j_settings, db=graphdb)
    seconds = time.perf_counter() - t
    assert (summary.ok, summary.failed) == (1, 0), summary.failures
    assert 5900 <= summary.nuclei <= 6000 and summary.edges > 5 * summary.nuclei
    assert seconds < 30
    row = _stored(graphdb, unique_name)["hgsc_window.parquet"]
    assert row["detector"] == "import:geoparquet" and row["names"] == list(MORPHOLOGY_COLUMNS)
    assert (row["stained"], row["textured"], row["n"]) == (0, 0, summary.nuclei)
    bounds = shapely.total_bounds(polygons[keep])
    assert row["width"] == int(np.ceil(bounds[2])) and row["height"] == int(np.ceil(bounds[3]))
    # the measured areas follow the polygons' own areas
    areas = np.sort(np.asarray(row["areas"]))
    truth = np.sort(shapely.area(polygons[keep]))
    assert abs(np.median(areas) - np.median(truth)) / np.median(truth) < 0.05
    roi = store.window_nuclei(graphdb, unique_name, row["id"], *bounds)
    assert len(roi["nids"]) == summary.nuclei and roi["features"].shape == (summary.nuclei, len(MORPHOLOGY_COLUMNS))


def test_the_progress_bar_shows_a_large_graph_going_in(tmp_path, neo4j_settings, graphdb, unique_name, capsys):
    # 5,000 squares 40 px apart: about 10 neighbours each within 100 px, so nuclei plus edges exceed
    # store.ATOMIC_ROWS and the graph is stored batch by batch
    xs, ys = np.meshgrid(np.arange(100) * 40.0 + 10, np.arange(50) * 40.0 + 10)
    path = write_geojson(tmp_path / "grid.geojson", [shapely.box(x, y, x + 12, y + 12) for x, y in zip(
        xs.ravel(), ys.ravel(), strict=True)])
    summary = ingest_records([ImageRecord(path, "A")], cohort=unique_name, params=IngestParams(),
                             settings=neo4j_settings, db=graphdb, progress=True)
    assert (summary.ok, summary.nuclei) == (1, 5000) and summary.nuclei + summary.edges > store.ATOMIC_ROWS
    err = capsys.readouterr().err
    assert "writing nuclei 5,000/5,000" in err and f"writing edges {summary.edges:,}/{summary.edges:,}" in err
    assert err.strip().splitlines()[-1].endswith("s")  # the last line, after the store, without the postfix
