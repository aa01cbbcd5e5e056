"""A small ingested, trained and explained cohort in the real test Neo4j, shared by the dashboard tests.

Four synthetic tiles per class (two patients each), a two-fold rsf-attention run of two epochs, and
its occlusion and attention scores: every page has something to draw. A second cohort links the same
images without any run, for the pages' "nothing yet" states.
"""

from __future__ import annotations

import pytest

from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort


@pytest.fixture(scope="session")
def dash_cohort(tmp_path_factory, neo4j_settings, driver) -> dict:
    """Names and ids of the dashboard's test cohort (ingested, trained, explained)."""
    from nucleograph.gnn.service import explain_run, train_cohort

    out = tmp_path_factory.mktemp("dash_synth")
    synthesize_cohort("breast", n_per_class=4, out_dir=out, seed=5, size=(512, 384))
    name, bare = "dash-test", "dash-test-bare"
    records = discover([out])
    for cohort in (name, bare):
        summary = ingest_records(records, cohort=cohort, params=IngestParams(), settings=neo4j_settings, driver=driver)
        assert summary.failed == 0
    run = train_cohort(driver, neo4j_settings, name, model="rsf-attention", epochs=2, folds=2, seed=0,
                       batch_size=4, patience=None)
    occ = explain_run(driver, neo4j_settings, run["run_id"], method="occlusion", hops=1)
    att = explain_run(driver, neo4j_settings, run["run_id"], method="attention")
    rows, _, _ = driver.execute_query(
        "MATCH (:Cohort {name: $c})<-[:IN_COHORT]-(i:Image) RETURN i.id AS id ORDER BY i.id",
        c=name, database_=neo4j_settings.neo4j_database)
    return {"name": name, "bare": bare, "run_id": run["run_id"], "occlusion": occ, "attention": att,
            "image_ids": [r["id"] for r in rows], "images": len(records)}
