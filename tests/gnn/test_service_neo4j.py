"""Training and explaining on cohorts stored in the real local Neo4j, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
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
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # off a terminal, progress comes as lines on stderr (stdout stays clean JSON)
    assert "read " + cohort + ": 12/12 graph" in captured.err and "train rsf: 2/2 epoch" in captured.err
    m = out["metrics"]
    assert m["at_or_below_chance"] == (m["accuracy"] <= m["chance_accuracy"] + 1e-9)
    assert ("is at or below chance" in captured.err) == m["at_or_below_chance"]
    assert m["constant_output_share"] < 0.1 and "one and the same output" not in captured.err
    assert out["run_id"].startswith("r") and 200_000 < out["n_parameters"] < 400_000
    run = db_runs.get_run(graphdb, out["run_id"])
    assert run["cohort"] == cohort and run["model"] == "rsf" and run["status"] == "finished"
    preds = db_runs.predictions(graphdb, out["run_id"])
    assert len(preds) == 12 and {p["split"] for p in preds} == {"train", "val", "test"}
    assert all(0.5 <= p["prob"] <= 1.0 and p["pred"] in ("Gleason3", "Gleason4") for p in preds)
    assert "accuracy" in out["metrics"] and Path(out["checkpoints"][0]).exists()
    assert main(["runs", "--cohort", cohort, "--json"]) == 0
    assert out["run_id"] in {r["id"] for r in _json(capsys)}


def test_train_defaults_to_lr_0003_and_table2_to_the_papers(cohort, test_environ, graphdb, capsys):
    from nucleograph.gnn.train import PAPER_LR, TrainConfig

    # train's default keeps the FC head alive (bench/RESULTS.md, issue 18); Table II is the paper's setting
    assert (TrainConfig.lr, PAPER_LR) == (0.003, 0.01)
    assert main(["train", "--cohort", cohort, "--model", "rsf", "--epochs", "1", "--json"]) == 0
    assert db_runs.get_run(graphdb, _json(capsys)["run_id"])["lr"] == TrainConfig.lr
    assert main(["experiment", "table2", "--cohort", cohort, "--models", "rsf", "--folds", "2", "--epochs", "1",
                 "--json"]) == 0
    out = _json(capsys)
    assert out["lr"] == PAPER_LR and [r["model"] for r in out["rows"]] == ["rsf"]
    assert db_runs.get_run(graphdb, out["rows"][0]["run_id"])["lr"] == PAPER_LR
    assert main(["experiment", "table2", "--cohort", cohort, "--models", "rsf", "--folds", "2", "--epochs", "1",
                 "--lr", "0.005", "--json"]) == 0
    assert db_runs.get_run(graphdb, _json(capsys)["rows"][0]["run_id"])["lr"] == 0.005


def test_a_model_whose_units_died_is_flagged(cohort, test_environ, graphdb, capsys):
    # Adam at lr 1 kills the head's ReLUs within two epochs: the model answers images with its bias
    assert main(["train", "--cohort", cohort, "--model", "rsf", "--epochs", "2", "--lr", "1", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    share = out["metrics"]["constant_output_share"]
    assert share >= 0.1
    assert f"gives one and the same output, bit for bit, to {share:.0%} of the cohort's images" in captured.err
    preds = db_runs.predictions(graphdb, out["run_id"])
    assert max(sum(p["probs"] == q["probs"] for q in preds) for p in preds) == round(share * len(preds))
    assert db_runs.get_run(graphdb, out["run_id"])["constant_output_share"] == share


def test_an_ensemble_run_is_trained_recorded_and_explained_as_one_model(cohort, test_environ, graphdb, capsys):
    from nucleograph.gnn.models import SeedEnsemble
    from nucleograph.gnn.service import explain_graph, graph_from_arrays, load_run_models

    assert main(["train", "--cohort", cohort, "--model", "rsf-edge", "--epochs", "2", "--ensemble", "2",
                 "--seed", "3", "--json"]) == 0
    out = _json(capsys)
    run_id = out["run_id"]
    assert 400_000 < out["n_parameters"] < 800_000  # two members of ~330k
    run, models = load_run_models(graphdb, test_environ, run_id)
    assert run["ensemble"] == 2 and isinstance(models[0], SeedEnsemble)
    assert main(["runs", "--cohort", cohort]) == 0
    assert any(line.startswith(run_id) and "| rsf-edge | 2 " in line for line in capsys.readouterr().out.splitlines())
    first = store.cohort_images(graphdb, cohort)[0]
    assert main(["explain", "--run", run_id, "--method", "contribution", "--image", first["id"], "--json"]) == 0
    stored = db_runs.image_scores(graphdb, cohort, first["id"], _json(capsys)["property"])
    # what is stored is the mean of the members' scores, for the class the ensemble predicts
    g = next(store.read_graphs(graphdb, cohort, [first["id"]]))
    graph = graph_from_arrays(g)
    c = int(models[0](graph).argmax(1)[0])
    each = [explain_graph("contribution", m, graph, hops=1, target=c, output="logodds") for m in models[0].members]
    by_nid = {int(r["nid"]): r["score"] for r in stored}
    assert np.allclose([by_nid[int(n)] for n in g["nids"]], np.mean(each, axis=0), atol=1e-5)


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
    scores_att = db_runs.image_scores(graphdb, cohort, first, att["property"])
    scores_occ = db_runs.image_scores(graphdb, cohort, first, occ["property"])
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


def test_images_lists_ids_labels_and_a_runs_split(cohort, attention_run, test_environ, capsys):
    assert main(["images", "--cohort", cohort, "--json"]) == 0
    rows = _json(capsys)
    assert len(rows) == 12 and set(rows[0]) == {"image_id", "label", "nuclei", "edges", "path"}
    assert {r["label"] for r in rows} == {"Gleason3", "Gleason4"} and all(r["nuclei"] > 0 for r in rows)
    assert main(["images", "--cohort", cohort, "--run", attention_run["run_id"]]) == 0
    table = capsys.readouterr().out
    assert "split" in table and "test" in table and rows[0]["image_id"] in table and "(12 rows)" in table
    assert main(["images", "--cohort", "no-such-cohort"]) == 1
    assert cohort in capsys.readouterr().err  # names the cohorts there are


def test_non_finite_scores_are_never_stored(cohort, attention_run, test_environ, graphdb, capsys, monkeypatch):
    """A NaN from the explainer fails the run loudly, naming run, image and count, and writes nothing."""
    from nucleograph.gnn import explain

    run_id = attention_run["run_id"]
    first = store.cohort_images(graphdb, cohort)[0]["id"]
    real = explain.occlusion_windows

    def with_nan(model, graph, **kwargs):  # the service writes scores as occlusion's windows come
        for nodes, scores in real(model, graph, **kwargs):
            scores = np.array(scores, dtype=float)
            scores[:3] = np.nan
            yield nodes, scores

    monkeypatch.setattr(explain, "occlusion_windows", with_nan)
    assert main(["explain", "--run", run_id, "--method", "occlusion", "--hops", "3", "--image", first]) == 1
    err = capsys.readouterr().err
    assert f"run {run_id}" in err and f"image {first}" in err and "not finite for 3 of" in err
    prop = db_runs.score_property(run_id, "occlusion", 3)
    assert all(r["score"] is None for r in db_runs.image_scores(graphdb, cohort, first, prop))


def test_scores_never_export_nan(cohort, attention_run, test_environ, graphdb, capsys):
    """NaN an older version stored: `scores` refuses it, and `explain` recomputes that image."""
    run_id = attention_run["run_id"]
    first = store.cohort_images(graphdb, cohort)[0]["id"]
    assert main(["explain", "--run", run_id, "--method", "attention", "--image", first, "--force", "--json"]) == 0
    prop = _json(capsys)["property"]
    # what an older version could leave behind (raw Cypher: the package refuses to write it)
    graphdb.write("MATCH (:Image {id: $i})-[:HAS_SEGMENTATION]->(:Segmentation)-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n.nid < 2 "
                  "SET n += $nan", i=first, nan={prop: float("nan")})
    assert main(["scores", "--run", run_id, "--method", "attention", "--image", first]) == 1
    captured = capsys.readouterr()
    assert "nan" not in captured.out.lower() and "NaN or infinite" in captured.err and first in captured.err
    assert main(["explain", "--run", run_id, "--method", "attention", "--image", first, "--json"]) == 0
    out = _json(capsys)
    assert out["images"] == 1 and out["reused"] == 0  # the NaN image is not "already explained"
    assert main(["scores", "--run", run_id, "--method", "attention", "--image", first]) == 0
    text = capsys.readouterr().out
    assert "nan" not in text.lower() and len(text.splitlines()) == 1 + len(db_runs.image_scores(graphdb, cohort, first, prop))


def test_rerun_reuses_stored_scores_unless_forced(cohort, attention_run, test_environ, graphdb, capsys):
    run_id = attention_run["run_id"]
    a, b = [r["id"] for r in store.cohort_images(graphdb, cohort)[:2]]
    args = ["explain", "--run", run_id, "--method", "occlusion", "--hops", "2"]
    assert main([*args, "--image", a, "--json"]) == 0
    first = _json(capsys)
    assert (first["images"], first["reused"]) == (1, 0)
    before = db_runs.image_scores(graphdb, cohort, a, first["property"])
    assert main([*args, "--image", a, "--image", b]) == 0  # a reused, b (not yet explained) computed
    out = capsys.readouterr().out
    assert "already explained: 1 images, use --force to recompute" in out and "written to 1 images" in out
    assert db_runs.image_scores(graphdb, cohort, a, first["property"]) == before
    assert main([*args, "--image", a, "--image", b]) == 0
    out = capsys.readouterr().out
    assert "already explained: 2 images" in out and "written to" not in out
    assert main([*args, "--image", a, "--image", b, "--force", "--json"]) == 0
    forced = _json(capsys)
    assert (forced["images"], forced["reused"]) == (2, 0)
    expl = {e["key"]: e for e in db_runs.list_explanations(graphdb, run_id=run_id)}
    assert expl[db_runs.explanation_key(run_id, "occlusion", 2)]["images"] == 2


def test_both_occlusion_outputs_side_by_side_and_legacy_scores_read_as_probability(
        cohort, attention_run, test_environ, graphdb, capsys, tmp_path):
    """Log-odds (default) and probability drops of one run and hops are stored side by side, each
    Explanation recording its output; both equal a fresh computation, and they agree with each other
    through the whole graph's logits. An occlusion Explanation that an older version wrote (no
    ``output``, the ``..._k1`` name) keeps its meaning: every reader calls it a probability drop."""
    import torch

    from nucleograph.db import queries as q
    from nucleograph.gnn.explain import occlusion
    from nucleograph.gnn.service import graph_from_arrays, load_run_models

    run_id = attention_run["run_id"]
    first = store.cohort_images(graphdb, cohort)[0]["id"]
    args = ["explain", "--run", run_id, "--method", "occlusion", "--image", first, "--force", "--json"]
    assert main(args) == 0
    lo = _json(capsys)
    assert main([*args, "--output", "prob"]) == 0
    pr = _json(capsys)
    assert (lo["output"], pr["output"]) == ("logodds", "prob")
    assert (lo["property"], pr["property"]) == (f"imp_{run_id}_occlusion_k1_logodds", f"imp_{run_id}_occlusion_k1")
    assert main(["explain", "--run", run_id, "--method", "occlusion", "--image", first, "--output", "prob",
                 "--json"]) == 0
    assert _json(capsys)["reused"] == 1  # reuse is per output

    _, models = load_run_models(graphdb, test_environ, run_id)
    graph = graph_from_arrays(next(store.read_graphs(graphdb, cohort, [first])))
    stored = {o: np.array([r["score"] for r in db_runs.image_scores(graphdb, cohort, first, p)])
              for o, p in (("logodds", lo["property"]), ("prob", pr["property"]))}
    for output, s in stored.items():
        np.testing.assert_allclose(s, occlusion(models[0], graph, output=output), rtol=0, atol=1e-6)
    with torch.no_grad():
        z = models[0](graph)[0].double()
    margin = float(z.max() - z.min())  # two classes: the predicted class's log-odds

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    np.testing.assert_allclose(stored["prob"], sigmoid(margin) - sigmoid(margin - stored["logodds"]), atol=1e-6)

    by_key = {e["key"]: e for e in db_runs.list_explanations(graphdb, run_id=run_id)}
    assert by_key[db_runs.explanation_key(run_id, "occlusion", 1)]["output"] == "logodds"
    assert by_key[db_runs.explanation_key(run_id, "occlusion", 1, output="prob")]["output"] == "prob"
    assert by_key[db_runs.explanation_key(run_id, "attention")]["output"] is None

    # what a version before outputs left: the same property, an Explanation without `output`
    graphdb.write("MATCH (e:Explanation {key: $key}) REMOVE e.output",
                  key=db_runs.explanation_key(run_id, "occlusion", 1, output="prob"))
    dash = {e["key"]: e["output"] for e in graphdb.read(q.DASH_EXPLANATIONS, cohort=cohort) if e["run_id"] == run_id}
    assert (dash[f"{run_id}_occlusion_k1"], dash[f"{run_id}_occlusion_k1_logodds"]) == ("prob", "logodds")
    assert {e["key"]: e["output"] for e in db_runs.list_explanations(graphdb, run_id=run_id)} == dash
    assert main(["scores", "--run", run_id, "--method", "occlusion", "--output", "prob", "--image", first, "--format",
                 "json"]) == 0
    captured = capsys.readouterr()
    np.testing.assert_array_equal([r["score"] for r in json.loads(captured.out)], stored["prob"])
    assert "occlusion k=1, probability drop scores of run" in captured.err
    assert main(["scores", "--run", run_id, "--method", "occlusion", "--image", first, "--format", "json"]) == 0
    captured = capsys.readouterr()
    np.testing.assert_array_equal([r["score"] for r in json.loads(captured.out)], stored["logodds"])
    assert "occlusion k=1, log-odds drop scores of run" in captured.err
    assert main(["export", "--run", run_id, "--method", "occlusion", "--output", "prob", "--image", first, "--out",
                 str(tmp_path), "--json"]) == 0
    meta = json.loads(Path(_json(capsys)["files"][0]["file"]).read_text())["nucleograph"]
    assert (meta["output"], meta["explanation"]) == ("prob", "occlusion k=1, probability drop")
    assert main(["render", "--image", first, "--run", run_id, "--method", "occlusion", "--output", "prob", "--out",
                 str(tmp_path / "p.png")]) == 0
    capsys.readouterr()


def _readme_queries() -> dict[str, str]:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = text.split("```cypher\n", 1)[1].split("```", 1)[0]
    parts = [p.strip() for p in block.split("// ") if p.strip()]
    return {p.split(".", 1)[0]: p.split("\n", 1)[1] for p in parts}


def test_readme_cypher_runs_with_the_console_parameter_names(cohort, attention_run, test_environ, graphdb, capsys):
    """The README's queries run read-only as written, with the console library's $image_id, and the
    ones that return nuclei return what the console draws (image_id, nid, x, y)."""
    from nucleograph.db import console
    from nucleograph.db.queries import CONSOLE_LIBRARY

    run_id = attention_run["run_id"]
    first = store.cohort_images(graphdb, cohort)[0]["id"]
    assert main(["explain", "--run", run_id, "--image", first, "--json"]) == 0  # the default method
    capsys.readouterr()
    queries = _readme_queries()
    assert sorted(queries) == ["1", "2", "3", "4", "5", "6", "7"]
    library_params = {k for e in CONSOLE_LIBRARY.values() for k in e["params"]}
    params = {"run": run_id, "image_id": first, "run_a": run_id, "run_b": run_id, "high": -1e9, "low": 1e9,
              "x0": 0.0, "y0": 0.0, "x1": 1e6, "y1": 1e6}
    for number, query in queries.items():
        assert "$image " not in query and "$image)" not in query and "$image}" not in query
        columns, rows = console.run_cypher(graphdb, query, params)
        assert rows or number == "5", f"README query {number} returned nothing"  # 5: misclassified images only
        if number in ("1", "2", "4", "7"):
            assert {"image_id", "nid", "x", "y"} <= set(columns), number
            assert {r["image_id"] for r in rows} == {first}
    assert "image_id" in library_params
    top = console.run_cypher(graphdb, queries["1"], params)[1]
    assert all(np.isfinite(r["score"]) for r in top)
