"""A small ingested, trained and explained cohort in the real test Neo4j, shared by the dashboard tests.

Four synthetic tiles per class (two patients each), a two-fold rsf-attention run of two epochs, and
its occlusion and attention scores: every page has something to draw. A second cohort links the same
images without any run, for the pages' "nothing yet" states.
"""

from __future__ import annotations

import json
import sys

import pytest

from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it in ``sys.modules``; a later test that
    starts a spawned process pool in this process (``synth --workers``, ``ingest --workers``) would then
    re-run that page in every worker, which crashes them. Put the real ``__main__`` back after each test."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def dash_cohort(tmp_path_factory, neo4j_settings, driver, graphdb) -> dict:
    """Names and ids of the dashboard's test cohort (ingested, trained, explained)."""
    from nucleograph.gnn.service import explain_run, train_cohort

    out = tmp_path_factory.mktemp("dash_synth")
    synthesize_cohort("breast", n_per_class=4, out_dir=out, seed=5, size=(512, 384))
    name, bare = "dash-test", "dash-test-bare"
    records = discover([out])
    for cohort in (name, bare):
        summary = ingest_records(records, cohort=cohort, params=IngestParams(), settings=neo4j_settings, db=graphdb)
        assert summary.failed == 0
    run = train_cohort(graphdb, neo4j_settings, name, model="rsf-attention", epochs=2, folds=2, seed=0,
                       batch_size=4, patience=None)
    occ = explain_run(graphdb, neo4j_settings, run["run_id"], method="occlusion", hops=1)
    att = explain_run(graphdb, neo4j_settings, run["run_id"], method="attention")
    rows, _, _ = driver.execute_query(
        "MATCH (:Cohort {name: $c})<-[:IN_COHORT]-(i:Image) RETURN i.id AS id ORDER BY i.id",
        c=name, database_=neo4j_settings.neo4j_database)
    return {"name": name, "bare": bare, "run_id": run["run_id"], "occlusion": occ, "attention": att,
            "image_ids": [r["id"] for r in rows], "images": len(records), "synth": out}


@pytest.fixture(scope="session")
def split_cohort(tmp_path_factory, neo4j_settings, driver, graphdb) -> dict:
    """A cohort with a single-split run (train, val and test images) and its attention scores: the
    explorer's split and "test images only". Six small tiles per class make three patients per class,
    the fewest for which a patient-grouped split holds patients out for testing."""
    from nucleograph.gnn.service import explain_run, train_cohort

    name = "dash-test-split"
    out = tmp_path_factory.mktemp("dash_split_synth")
    synthesize_cohort("breast", n_per_class=6, out_dir=out, seed=7, size=(384, 288))
    records = discover([out])
    summary = ingest_records(records, cohort=name, params=IngestParams(), settings=neo4j_settings, db=graphdb)
    assert summary.failed == 0
    run = train_cohort(graphdb, neo4j_settings, name, model="rsf-attention", epochs=2, folds=1, seed=0,
                       batch_size=4, patience=None)
    explain_run(graphdb, neo4j_settings, run["run_id"], method="attention")
    preds, _, _ = driver.execute_query(
        "MATCH (:ModelRun {id: $r})-[p:PREDICTED]->(i:Image) RETURN i.id AS id, p.split AS split",
        r=run["run_id"], database_=neo4j_settings.neo4j_database)
    return {"name": name, "run_id": run["run_id"], "split": {p["id"]: p["split"] for p in preds}}


@pytest.fixture(scope="session")
def chance_cohort(neo4j_settings, driver) -> dict:
    """A cohort whose one run is at chance: 4 of its 6 test images are class A and it predicts A for all
    (accuracy 0.667 = the majority share), after 3 epochs of the 50 allowed (early stopping)."""
    name, run_id = "dash-test-chance", "rdashchance"
    metrics = {"accuracy": 4 / 6, "folds": [{"n": 6, "accuracy": 4 / 6, "confusion_matrix": [[4, 0], [2, 0]]}]}
    history = [{"epoch": e, "train_loss": 0.69, "lr": 0.01, "val_loss": 0.69, "val_accuracy": 0.5} for e in range(3)]
    driver.execute_query(
        "MERGE (c:Cohort {name: $c}) "
        "CREATE (r:ModelRun {id: $r, cohort: $c, model: 'rsf', epochs: 50, folds: 1, class_names: ['A', 'B'], "
        "accuracy: $acc, metrics: $metrics, history: $history, status: 'finished', created_at: datetime()}) "
        "CREATE (r)-[:TRAINED_ON]->(c)",
        c=name, r=run_id, acc=4 / 6, metrics=json.dumps(metrics), history=json.dumps(history),
        database_=neo4j_settings.neo4j_database)
    return {"name": name, "run_id": run_id}


@pytest.fixture(scope="session")
def slide_cohort(tmp_path_factory, graphdb) -> dict:
    """A 4096 x 3072 synthetic pyramidal slide (three levels) in its own cohort, its true nuclei stored
    directly (no detection: the viewer reads what is stored), and a run's scores for every nucleus, a
    smooth field over the slide (positive on the right half), so the heat map has something to show."""
    import numpy as np
    import pandas as pd

    from nucleograph.db import runs as db_runs
    from nucleograph.db import store
    from nucleograph.ingest.cohort import ImageRecord
    from nucleograph.ingest.graph import build_edges
    from nucleograph.ingest.pipeline import ImageGraph
    from nucleograph.ingest.synth import synthesize_slide

    out = tmp_path_factory.mktemp("dash_slide")
    path = out / "slide.tif"
    truth = synthesize_slide("breast", "Invasive", path, nuclei_path=out / "slide.csv", truth_path=out / "truth.json",
                             rng=np.random.default_rng(3), size=(4096, 3072))
    table = pd.read_csv(out / "slide.csv")
    nuclei = {"nucleus_id": table["nucleus_id"].to_numpy(np.int64),
              "centroid_x": table["centroid_x"].to_numpy(float), "centroid_y": table["centroid_y"].to_numpy(float),
              "area": table["area"].to_numpy(float)}
    centroids = np.stack([nuclei["centroid_x"], nuclei["centroid_y"]], 1)
    graph = ImageGraph("dashslide0000001", ImageRecord(path, "Invasive"), 4096, 3072, nuclei,
                       build_edges(centroids, threshold=60.0), 60.0)
    name, run_id = "dash-test-slide", "r5115de"
    store.store_image_graph(graphdb, graph, cohort=name, params=IngestParams(threshold=60.0), feature_names=["area"])
    seg = store.window_nuclei(graphdb, name, graph.image_id, 0, 0, 4096, 3072)["segmentation"]
    db_runs.save_run(graphdb, run_id=run_id, cohort=name, props={"model": "rsf", "status": "finished",
                                                                  "class_names": ["InSitu", "Invasive"]})
    scores = np.tanh((nuclei["centroid_x"] - 2048.0) / 600.0)
    prop = db_runs.save_scores(graphdb, run_id=run_id, method="attention", hops=None, segmentation=seg,
                               nids=nuclei["nucleus_id"], scores=scores)
    return {"name": name, "image_id": graph.image_id, "path": path, "n_nuclei": truth.n_nuclei, "run_id": run_id,
            "property": prop, "nuclei": nuclei, "scores": scores, "levels": truth.levels}
