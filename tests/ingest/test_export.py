"""`nucleograph export`: a run's explanation as QuPath GeoJSON, and import(export(x)) == x."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import shapely
from nuclei_fixtures import NUCLEI, write_image, write_qupath
from PIL import Image

from nucleograph.cli import main
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.export import IMPORTANCE, feature_collection
from nucleograph.ingest.features import FEATURE_COLUMNS
from nucleograph.ingest.importers import ImportParams, read_nuclei
from nucleograph.ingest.pipeline import IngestParams, content_hash, process_image


def _stored(graphdb, cohort: str) -> dict[str, dict]:
    """Each image's stored nuclei in the cohort, by image file name, as columns."""
    rows = graphdb.read(
        "MATCH (:Cohort {name: $c})<-[m:IN_COHORT]-(i:Image) "
        "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
        "WITH m, n ORDER BY n.nid "
        "RETURN m.path AS path, collect(n {.*}) AS nuclei", c=cohort)
    return {Path(r["path"]).name: r["nuclei"] for r in rows}


def _explain(graphdb, cohort: str) -> tuple[str, dict[str, dict[int, float]]]:
    """A run of ``cohort`` with made-up occlusion scores on every nucleus (what `explain` writes)."""
    run_id = "r" + uuid.uuid4().hex[:12]
    db_runs.save_run(graphdb, run_id=run_id, cohort=cohort, props={"model": "test"})
    scores = {}
    for g in store.read_graphs(graphdb, cohort, [r["id"] for r in store.cohort_images(graphdb, cohort)]):
        values = np.linspace(-1, 1, len(g["nids"]))
        db_runs.save_scores(graphdb, run_id=run_id, method="occlusion", hops=1, segmentation=g["segmentation"],
                            nids=g["nids"], scores=values)
        scores[Path(g["path"]).name] = dict(zip(g["nids"].tolist(), values.tolist(), strict=True))
    return run_id, scores


def _nearest(xy_a: np.ndarray, xy_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.linalg.norm(xy_a[:, None] - xy_b[None], axis=-1)
    return d.argmin(axis=1), d.min(axis=1)


@pytest.mark.neo4j
def test_export_is_qupath_geojson_and_reimports_to_the_same_nuclei(tmp_path, test_environ, graphdb, unique_name,
                                                                    capsys):
    folder = tmp_path / "cohort"
    imported = write_image(folder, "typed.png")
    write_qupath(folder / "typed.geojson")
    detected = write_image(folder, "detected.png").image  # no nuclei file: detected
    im = Image.open(detected).convert("RGB")
    im.putpixel((0, 0), (1, 2, 3))  # other bytes than typed.png: another image
    im.save(detected)
    assert main(["ingest", str(folder), "--cohort", unique_name, "--json"]) == 0
    capsys.readouterr()
    run_id, scores = _explain(graphdb, unique_name)

    out = tmp_path / "qupath"
    assert main(["export", "--run", run_id, "--method", "occlusion", "--hops", "1", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(Path(f["file"]).name for f in summary["files"]) == ["detected.geojson", "typed.geojson"]
    stored = _stored(graphdb, unique_name)
    for name in ("typed", "detected"):
        collection = json.loads((out / f"{name}.geojson").read_text())
        assert collection["type"] == "FeatureCollection"
        assert collection["nucleograph"]["run_id"] == run_id
        assert collection["nucleograph"]["output"] == "logodds"  # save_scores' and export's default
        assert collection["nucleograph"]["explanation"] == "occlusion k=1, log-odds drop"
        nuclei = stored[f"{name}.png"]
        assert len(collection["features"]) == len(nuclei)
        for feature, nucleus in zip(collection["features"], nuclei, strict=True):
            assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
            uuid.UUID(feature["id"])  # QuPath 0.4+ reads object ids as UUIDs
            props = feature["properties"]
            assert props["objectType"] == "detection"
            m = props["measurements"]
            assert set(m) == {*FEATURE_COLUMNS, IMPORTANCE}
            assert m[IMPORTANCE] == pytest.approx(scores[f"{name}.png"][nucleus["nid"]])
            for col in FEATURE_COLUMNS:
                assert m[col] == pytest.approx(nucleus[col])
            if name == "typed":
                assert props["classification"] == {"name": nucleus["type"]}
            else:
                assert "classification" not in props
            ring = feature["geometry"]["coordinates"][0]
            assert ring[0] == ring[-1] and len(ring) <= 33

    # import(export(x)) == x: the exported file, read back as QuPath GeoJSON on the same image
    for name, truth in (("typed", imported), ("detected", None)):
        image = folder / f"{name}.png"
        path = out / f"{name}.geojson"
        assert read_nuclei(path).geometries.size == len(stored[f"{name}.png"])
        graph = process_image(ImageRecord(image, None), ImportParams.of(IngestParams(), path, sha=content_hash(path)))
        before = stored[f"{name}.png"]
        assert graph.n_nuclei == len(before) and graph.notes == {}
        xy_before = np.array([[n["centroid_x"], n["centroid_y"]] for n in before])
        rows, dist = _nearest(xy_before, np.c_[graph.nuclei["centroid_x"], graph.nuclei["centroid_y"]])
        assert sorted(rows) == list(range(len(before))) and dist.max() < 0.5
        for col, rtol in (("area", 0.1), ("perimeter", 0.15), ("hematoxylin_od_mean", 0.1), ("eccentricity", 0.15)):
            np.testing.assert_allclose(graph.nuclei[col][rows], [n[col] for n in before], rtol=rtol, err_msg=col)
        if truth is not None:
            assert list(graph.nuclei["type"][rows]) == [n["type"] for n in before]
            assert sorted(n["type"] for n in before) == sorted(c for *_, c in NUCLEI)
            # the file's own ids survive the round trip
            assert list(graph.nuclei["source_id"][rows]) == [n["source_id"] for n in before]


@pytest.mark.neo4j
def test_export_leaves_out_reingested_images_and_needs_an_explanation(tmp_path, test_environ, graphdb, unique_name,
                                                                      capsys):
    folder = tmp_path / "cohort"
    write_image(folder, "a.png")
    sidecar = write_qupath(folder / "a.geojson")
    assert main(["ingest", str(folder), "--cohort", unique_name, "--json"]) == 0
    capsys.readouterr()
    run_id = "r" + uuid.uuid4().hex[:12]
    db_runs.save_run(graphdb, run_id=run_id, cohort=unique_name, props={"model": "test"})
    assert main(["export", "--run", run_id, "--method", "occlusion", "--out", str(tmp_path / "none")]) == 1
    assert (f"no occlusion k=1, log-odds drop scores of run {run_id} to export: run `nucleograph explain --run "
            f"{run_id} --method occlusion --hops 1 --output logodds` first") in capsys.readouterr().err

    run_id, _ = _explain(graphdb, unique_name)
    data = json.loads(sidecar.read_text())
    data["features"] = data["features"][1:]
    sidecar.write_text(json.dumps(data))
    assert main(["ingest", str(folder), "--cohort", unique_name, "--json"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", run_id, "--method", "occlusion", "--out", str(tmp_path / "stale")]) == 1
    assert "its images were re-ingested since" in capsys.readouterr().err


def test_nuclei_without_outline_are_drawn_as_their_ellipse():
    names = list(FEATURE_COLUMNS)
    feats = dict.fromkeys(names, 0.5)
    feats.update(area=math.pi * 10 * 4, major_axis=20.0, minor_axis=8.0, orientation=0.0)
    nuclei = [[1, 50.0, 40.0, None, None, [feats[n] for n in names], 0.25, None],
              [2, 10.0, 10.0, 3, [8.5, 8.5, 11.5, 8.5, 11.5, 11.5, 8.5, 11.5], [feats[n] for n in names], None, None]]
    collection = feature_collection(nuclei, names, segmentation="img:key")
    ellipse = shapely.Polygon(collection["features"][0]["geometry"]["coordinates"][0])
    # orientation 0: the major axis along the rows (y), centred on the centroid in QuPath's convention
    minx, miny, maxx, maxy = ellipse.bounds
    assert (maxy - miny) == pytest.approx(20, abs=0.5) and (maxx - minx) == pytest.approx(8, abs=0.5)
    assert ellipse.centroid.x == pytest.approx(50.5) and ellipse.centroid.y == pytest.approx(40.5)
    assert collection["features"][0]["properties"]["measurements"][IMPORTANCE] == 0.25
    square = collection["features"][1]
    assert square["geometry"]["coordinates"][0][0] == [9.0, 9.0]  # +0.5: QuPath's pixel corners
    assert square["properties"]["classification"] == {"name": "3"}
    assert IMPORTANCE not in square["properties"]["measurements"]
    assert collection["features"][0]["id"] == feature_collection(nuclei, names, segmentation="img:key")["features"][0]["id"]
