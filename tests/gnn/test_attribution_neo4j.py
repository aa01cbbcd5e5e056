"""Gradient x input, integrated gradients, GNNExplainer, local evidence and local contribution on a cohort in the real local Neo4j: each
method's scores written to its own property, read back, exported and drawn through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nucleograph.cli import main
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.gnn.attribution import gnnexplainer_scores, integrated_gradients
from nucleograph.gnn.contribution import local_contribution
from nucleograph.gnn.local import local_evidence
from nucleograph.gnn.service import explain_run, graph_from_arrays, load_run_models, train_cohort
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = [pytest.mark.neo4j, pytest.mark.slow, pytest.mark.usefixtures("one_thread")]




@pytest.fixture(scope="module")
def cohort(tmp_path_factory, neo4j_settings, graphdb):
    out = tmp_path_factory.mktemp("prostate")
    synthesize_cohort("prostate", n_per_class=3, out_dir=out, seed=12, size=(384, 384))
    name = "attr-" + out.name[-8:]
    summary = ingest_records(discover([out]), cohort=name, params=IngestParams(), settings=neo4j_settings,
                             db=graphdb)
    assert summary.ok == 6
    return name


@pytest.fixture(scope="module")
def edge_run(cohort, neo4j_settings, graphdb):
    return train_cohort(graphdb, neo4j_settings, cohort, model="rsf-edge", epochs=2, seed=3, split_by="image")


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def _stored(graphdb, cohort, image_id, prop):
    return np.array([r["score"] for r in db_runs.image_scores(graphdb, cohort, image_id, prop)], dtype=float)


def test_explain_ig_end_to_end_through_the_cli(cohort, edge_run, test_environ, graphdb, capsys, tmp_path):
    run_id = edge_run["run_id"]
    images = store.cohort_images(graphdb, cohort)
    first = images[0]["id"]
    assert main(["explain", "--run", run_id, "--method", "ig", "--json"]) == 0
    out = _json(capsys)
    assert (out["images"], out["property"], out["hops"]) == (6, f"imp_{run_id}_ig", None)

    # what is stored is what integrated_gradients gives for the image (the run has one fold)
    _, models = load_run_models(graphdb, test_environ, run_id)
    graph = graph_from_arrays(next(store.read_graphs(graphdb, cohort, [first])))
    stored = _stored(graphdb, cohort, first, out["property"])
    assert stored.size == images[0]["n_nuclei"] and np.isfinite(stored).all() and np.abs(stored).max() > 0
    np.testing.assert_allclose(stored, integrated_gradients(models[0], graph), rtol=0, atol=1e-9)

    assert main(["explain", "--run", run_id, "--method", "ig", "--json"]) == 0
    assert _json(capsys)["reused"] == 6
    assert main(["scores", "--run", run_id, "--method", "ig", "--format", "json", "--image", first]) == 0
    rows = _json(capsys)
    assert len(rows) == stored.size and sorted(r["score"] for r in rows) == sorted(stored.tolist())
    png = tmp_path / "ig.png"
    assert main(["render", "--image", first, "--run", run_id, "--method", "ig", "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_each_method_has_its_own_property(cohort, edge_run, test_environ, graphdb):
    run_id = edge_run["run_id"]
    first = store.cohort_images(graphdb, cohort)[0]["id"]
    outs = {m: explain_run(graphdb, test_environ, run_id, method=m, image_ids=[first], force=True)
            for m in ("gradxinput", "gnnexplainer")}
    assert {m: o["property"] for m, o in outs.items()} == {m: f"imp_{run_id}_{m}" for m in outs}
    grad = _stored(graphdb, cohort, first, outs["gradxinput"]["property"])
    gnnx = _stored(graphdb, cohort, first, outs["gnnexplainer"]["property"])
    assert np.isfinite(grad).all() and ((gnnx >= 0) & (gnnx <= 1)).all() and not np.array_equal(grad, gnnx)
    _, models = load_run_models(graphdb, test_environ, run_id)
    graph = graph_from_arrays(next(store.read_graphs(graphdb, cohort, [first])))
    np.testing.assert_allclose(gnnx, gnnexplainer_scores(models[0], graph), rtol=0, atol=1e-9)  # seed 0
    expl = {e["method"]: e for e in db_runs.list_explanations(graphdb, run_id=run_id)}
    assert {"gradxinput", "gnnexplainer"} <= set(expl)
    assert all(expl[m]["hops"] is None and expl[m]["images"] >= 1 for m in ("gradxinput", "gnnexplainer"))


def test_local_evidence_is_stored_window_by_window_as_computed(cohort, edge_run, test_environ, graphdb, capsys,
                                                               tmp_path):
    run_id = edge_run["run_id"]
    first = store.cohort_images(graphdb, cohort)[0]
    # windows of 7 nuclei: the image is written in several transactions (ScoreWriter), as a slide is
    out = explain_run(graphdb, test_environ, run_id, method="local", image_ids=[first["id"]], force=True, window=7)
    assert (out["property"], out["hops"], out["images"]) == (f"imp_{run_id}_local", None, 1)
    assert first["n_nuclei"] > 7
    stored = _stored(graphdb, cohort, first["id"], out["property"])
    _, models = load_run_models(graphdb, test_environ, run_id)
    graph = graph_from_arrays(next(store.read_graphs(graphdb, cohort, [first["id"]])))
    expected = local_evidence(models[0], graph)  # one batch; the windows batch other neighbourhoods together
    np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert np.ptp(stored) > 0
    assert explain_run(graphdb, test_environ, run_id, method="local", image_ids=[first["id"]])["reused"] == 1
    png = tmp_path / "local-rank.png"  # drawn by rank in the image, as such maps are read
    assert main(["render", "--image", first["id"], "--run", run_id, "--method", "local", "--scaling", "rank",
                 "--out", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and "wrote" in capsys.readouterr().out
    unscaled = tmp_path / "local.png"  # no scaling: by rank, as `--scaling rank` draws it
    assert main(["render", "--image", first["id"], "--run", run_id, "--method", "local", "--out", str(unscaled)]) == 0
    relative = tmp_path / "relative.png"
    assert main(["render", "--image", first["id"], "--run", run_id, "--method", "local", "--scaling", "relative",
                 "--out", str(relative)]) == 0
    assert unscaled.read_bytes() == png.read_bytes() != relative.read_bytes()


def test_local_contribution_through_the_cli_window_by_window(cohort, edge_run, test_environ, graphdb, capsys,
                                                              tmp_path):
    run_id = edge_run["run_id"]
    first = store.cohort_images(graphdb, cohort)[0]
    assert first["n_nuclei"] > 7
    # windows of 7 nuclei, each written as computed; a window's scores need its neighbours' neighbourhoods too
    out = explain_run(graphdb, test_environ, run_id, method="contribution", image_ids=[first["id"]], force=True,
                      window=7)
    assert (out["property"], out["hops"], out["images"]) == (f"imp_{run_id}_contribution", None, 1)
    stored = _stored(graphdb, cohort, first["id"], out["property"])
    _, models = load_run_models(graphdb, test_environ, run_id)
    graph = graph_from_arrays(next(store.read_graphs(graphdb, cohort, [first["id"]])))
    expected = local_contribution(models[0], graph)
    np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-5 * max(1.0, np.abs(expected).max()))
    assert np.ptp(stored) > 0 and not np.allclose(stored, local_evidence(models[0], graph))  # another measure
    assert main(["explain", "--run", run_id, "--image", first["id"], "--json"]) == 0  # the default method
    assert _json(capsys)["reused"] == 1
    rank, relative = tmp_path / "rank.png", tmp_path / "relative.png"  # drawn by rank unless asked otherwise
    assert main(["render", "--image", first["id"], "--run", run_id, "--method", "contribution", "--out", str(rank)]) == 0
    default = tmp_path / "default.png"  # no method: local contribution, the default
    assert main(["render", "--image", first["id"], "--run", run_id, "--out", str(default)]) == 0
    assert default.read_bytes() == rank.read_bytes()
    assert main(["render", "--image", first["id"], "--run", run_id, "--method", "contribution", "--scaling",
                 "relative", "--out", str(relative)]) == 0
    assert rank.read_bytes()[:4] == b"\x89PNG" and rank.read_bytes() != relative.read_bytes()
    capsys.readouterr()


def test_gnnexplainer_needs_an_rsf_run(cohort, test_environ, graphdb, capsys):
    assert main(["train", "--cohort", cohort, "--model", "mlp", "--epochs", "1", "--split-by", "image", "--json"]) == 0
    run_id = _json(capsys)["run_id"]
    assert main(["explain", "--run", run_id, "--method", "gnnexplainer"]) == 1
    assert "--method ig" in capsys.readouterr().err
    first = store.cohort_images(graphdb, cohort)[0]["id"]
    assert main(["explain", "--run", run_id, "--method", "gradxinput", "--image", first, "--json"]) == 0
    assert _json(capsys)["images"] == 1
