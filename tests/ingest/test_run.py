"""Ingest end to end: synthetic images -> nuclei -> graphs -> the real local Neo4j (+ SQL records)."""

from __future__ import annotations

import json
from pathlib import Path

import neo4j
import numpy as np
import pytest

from nucleograph.cli import main
from nucleograph.db import records as rec
from nucleograph.db import store
from nucleograph.errors import NucleographError
from nucleograph.ingest.cohort import ImageRecord, discover
from nucleograph.ingest.pipeline import IngestParams, feature_names, process_image
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = pytest.mark.neo4j


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    synthesize_cohort("breast", n_per_class=2, out_dir=out, seed=3, size=(640, 480))
    return out


def _counts(graphdb, cohort):
    return store.cohort_counts(graphdb, cohort)


def test_ingest_counts_match_and_rerun_is_noop(small_cohort, test_environ, graphdb, unique_name, capsys):
    assert main(["ingest", str(small_cohort), "--cohort", unique_name, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == summary["images"] == 4 and summary["stored"] == 4
    counts = _counts(graphdb, unique_name)
    assert counts == {"images": 4, "nuclei": summary["nuclei"], "edges": summary["edges"]}
    assert summary["nuclei"] > 40 and summary["edges"] > 0

    assert main(["ingest", str(small_cohort), "--cohort", unique_name, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["unchanged"] == 4 and again["stored"] == 0
    assert (again["nuclei"], again["edges"]) == (summary["nuclei"], summary["edges"])
    assert _counts(graphdb, unique_name) == counts

    labels = {r["label"] for r in store.cohort_images(graphdb, unique_name)}
    assert labels == {"InSitu", "Invasive"}


def test_new_parameters_replace_the_graph(small_cohort, test_environ, graphdb, unique_name, capsys):
    assert main(["ingest", str(small_cohort), "--cohort", unique_name, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["ingest", str(small_cohort), "--cohort", unique_name, "--threshold", "50", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["replaced"] == 4
    assert second["nuclei"] == first["nuclei"] and second["edges"] < first["edges"]
    assert _counts(graphdb, unique_name) == {"images": 4, "nuclei": second["nuclei"], "edges": second["edges"]}
    # weights follow the new threshold: 1 - d/50, every d < 50
    rows = graphdb.read(
        "MATCH (:Cohort {name: $c})<-[m:IN_COHORT]-(:Image) "
        "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->()-[r:NEAR]->() "
        "RETURN max(r.dist) AS dmax, max(abs(r.weight - (1 - r.dist / 50.0))) AS err",
        c=unique_name)
    assert rows[0]["dmax"] < 50 and rows[0]["err"] < 1e-9


def test_bad_files_fail_alone(small_cohort, tmp_path, test_environ, graphdb, unique_name):
    good = discover([small_cohort])[:2]
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(good[0].path).read_bytes()[:300])
    records = [ImageRecord(empty, "InSitu"), good[0], ImageRecord(truncated, "Invasive"), good[1]]
    summary = ingest_records(records, cohort=unique_name, params=IngestParams(), settings=test_environ, db=graphdb)
    assert (summary.ok, summary.failed) == (2, 2)
    errors = {f["path"]: f["error"] for f in summary.failures}
    assert str(empty) in errors[str(empty)] and str(truncated) in errors[str(truncated)]
    assert _counts(graphdb, unique_name)["images"] == 2
    engine = rec.open_engine(test_environ)
    failed = [r for r in rec.ingest_records(engine, cohort=unique_name) if r["status"] == "failed"]
    engine.dispose()
    assert {r["path"] for r in failed} == {str(empty), str(truncated)}


def test_an_image_is_stored_whole_or_not_at_all(tmp_path, test_environ, graphdb, unique_name):
    """A write that fails half-way (after the Image and some rows) leaves nothing, and a failed
    replacement leaves the previous graph intact."""
    synthesize_cohort("prostate", n_per_class=1, out_dir=tmp_path, seed=77, size=(512, 512))
    record = discover([tmp_path])[0]  # an image no other test stored (ids are content hashes)
    params = IngestParams()
    graph = process_image(record, params)
    names = feature_names()
    broken = process_image(record, params)
    # a property Neo4j cannot store (a list of maps), in the LAST nucleus: the first rows and the
    # Image node are already written inside the transaction when it fails
    bad = np.empty(broken.n_nuclei, dtype=object)
    bad[:] = None
    bad[-1] = [{"not": "storable"}]
    broken.nuclei = {**broken.nuclei, "bad": bad}
    with pytest.raises(neo4j.exceptions.ClientError, match="Property values"):
        store.store_image_graph(graphdb, broken, cohort=unique_name, params=params, feature_names=names, batch=10)
    key = store.segmentation_key(graph.image_id, params.key())
    assert store.image_state(graphdb, graph.image_id, unique_name, key)["cohort_segmentation"] is None

    store.store_image_graph(graphdb, graph, cohort=unique_name, params=params, feature_names=names)
    before = _counts(graphdb, unique_name)
    new_params = IngestParams(threshold=60)
    broken.threshold_px = 60.0
    with pytest.raises(neo4j.exceptions.ClientError, match="Property values"):
        store.store_image_graph(graphdb, broken, cohort=unique_name, params=new_params, feature_names=names,
                                batch=10)
    assert _counts(graphdb, unique_name) == before
    assert store.image_state(graphdb, graph.image_id, unique_name, key)["cohort_segmentation"] == key


def test_read_graphs_returns_arrays(small_cohort, test_environ, graphdb, unique_name):
    summary = ingest_records(discover([small_cohort]), cohort=unique_name, params=IngestParams(),
                             settings=test_environ, db=graphdb)
    ids = [r["id"] for r in store.cohort_images(graphdb, unique_name)]
    graphs = list(store.read_graphs(graphdb, unique_name, ids, batch=3))
    assert [g["id"] for g in graphs] == ids
    assert sum(len(g["nids"]) for g in graphs) == summary.nuclei
    assert sum(len(g["src"]) for g in graphs) == summary.edges
    g = graphs[0]
    assert g["features"].shape == (len(g["nids"]), len(feature_names()))
    assert g["feature_names"] == feature_names()
    d = np.linalg.norm(g["centroids"][g["src"]] - g["centroids"][g["dst"]], axis=1)
    np.testing.assert_allclose(d, g["dist"], rtol=1e-4, atol=1e-3)


def test_missing_unet_weights_or_bad_detector_is_clear():
    with pytest.raises(NucleographError, match="detector"):
        IngestParams(detector="magic")
