"""Training and explaining on cohorts stored in the real local Neo4j, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nucleograph.cli import main
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.gnn.service import load_cohort, train_cohort
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, neo4j_settings, graphdb):
    out = tmp_path_factory.mktemp("prostate")
    synthesize_cohort("prostate", n_per_class=6, out_dir=out, seed=11, size=(512, 512))
    name = "svc-" + out.name[-8:]
    summary = ingest_records(discover([out]), cohort=name, params=IngestParams(), settings=neo4j_settings,
                             db=graphdb)
    assert summary.ok == 12
    return name


def _json(capsys):
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def attention_run(cohort, neo4j_settings, graphdb):
    return train_cohort(graphdb, neo4j_settings, cohort, model="rsf-attention", epochs=3, seed=1)


def test_train_records_run_and_predictions(cohort, test_environ, graphdb, capsys):
    assert main(["train", "--cohort", cohort, "--model", "rsf", "--epochs", "2", "--json"]) == 0
    out = _json(capsys)
    assert out["run_id"].startswith("r") and 200_000 < out["n_parameters"] < 400_000
    run = db_runs.get_run(graphdb, out["run_id"])
    assert run["cohort"] == cohort and run["model"] == "rsf" and run["status"] == "finished"
    preds = db_runs.predictions(graphdb, out["run_id"])
    assert len(preds) == 12 and {p["split"] for p in preds} == {"train", "val", "test"}
    assert all(0.5 <= p["prob"] <= 1.0 and p["pred"] in ("Gleason3", "Gleason4") for p in preds)
    assert "accuracy" in out["metrics"] and Path(out["checkpoints"][0]).exists()
    assert main(["runs", "--cohort", cohort, "--json"]) == 0
    assert out["run_id"] in {r["id"] for r in _json(capsys)}


def test_second_load_comes_from_the_disk_cache(cohort, graphdb, neo4j_settings):
    first = load_cohort(graphdb, neo4j_settings, cohort)
    second = load_cohort(graphdb, neo4j_settings, cohort)
    assert second.from_cache and second.data_version == first.data_version
    assert second.image_ids == first.image_ids and (second.labels == first.labels).all()
    assert [g.num_edges() for g in second.graphs] == [g.num_edges() for g in first.graphs]


def test_missing_and_one_class_cohorts_are_explained(test_environ, graphdb, unique_name, tmp_path, capsys):
    assert main(["train", "--cohort", unique_name]) == 1
    assert "nucleograph ingest" in capsys.readouterr().err
    synthesize_cohort("prostate", n_per_class=2, out_dir=tmp_path, seed=5, size=(384, 384))
    one_class = [r for r in discover([tmp_path]) if r.label == "Gleason3"]
    ingest_records(one_class, cohort=unique_name, params=IngestParams(), settings=test_environ, db=graphdb)
    assert main(["train", "--cohort", unique_name]) == 1
    assert "two" in capsys.readouterr().err


def test_explain_occlusion_and_attention_side_by_side(cohort, attention_run, test_environ, graphdb, capsys, tmp_path):
    run_id = attention_run["run_id"]
    images = store.cohort_images(graphdb, cohort)
    first = images[0]["id"]
    assert main(["explain", "--run", run_id, "--method", "attention", "--json"]) == 0
    att = _json(capsys)
    assert att["images"] == 12
    assert main(["explain", "--run", run_id, "--method", "occlusion", "--image", first, "--json"]) == 0
    occ = _json(capsys)
    assert occ["images"] == 1 and occ["property"] != att["property"]
    scores_att = db_runs.image_scores(graphdb, first, att["property"])
    scores_occ = db_runs.image_scores(graphdb, first, occ["property"])
    assert len(scores_att) == images[0]["n_nuclei"]
    assert all(r["score"] is not None for r in scores_att + scores_occ)
    assert all(0.0 <= r["score"] <= 1.0 for r in scores_att)
    assert [r["score"] for r in scores_att] != [r["score"] for r in scores_occ]

    assert main(["scores", "--run", run_id, "--method", "attention", "--format", "json", "--image", first]) == 0
    rows = _json(capsys)
    assert len(rows) == images[0]["n_nuclei"]
    assert set(rows[0]) == {"image_id", "path", "label", "nucleus_id", "centroid_x", "centroid_y", "score"}

    png = tmp_path / "heat.png"
    assert main(["render", "--image", first, "--run", run_id, "--method", "attention", "--edges",
                 "--out", str(png)]) == 0
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_explain_errors_are_clear(cohort, attention_run, test_environ, capsys, tmp_path):
    run_id = attention_run["run_id"]
    assert main(["explain", "--run", run_id, "--image", "0000000000000000"]) == 1
    assert "not in the run's cohort" in capsys.readouterr().err
    assert main(["explain", "--run", "rdeadbeef00"]) == 1
    assert "no model run" in capsys.readouterr().err
    assert main(["render", "--image", "0000000000000000", "--run", run_id, "--out", str(tmp_path / "x.png")]) == 1
    capsys.readouterr()


def test_gone_checkpoint_is_a_clear_error(cohort, test_environ, capsys):
    assert main(["train", "--cohort", cohort, "--model", "mlp", "--epochs", "1", "--json"]) == 0
    out = _json(capsys)
    Path(out["checkpoints"][0]).unlink()
    assert main(["explain", "--run", out["run_id"]]) == 1
    assert "is gone" in capsys.readouterr().err
