"""``nucleograph explain --cluster`` (issue 19): an image per Dask task on a real loopback scheduler and
workers, giving the scores the same explanation computes in one process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dask_fixtures import loopback_cluster

from nucleograph.cli import main
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.gnn.service import train_cohort
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


def _scores(graphdb, cohort: str, images: list[str], prop: str) -> dict[str, list[float]]:
    return {i: [r["score"] for r in db_runs.image_scores(graphdb, cohort, i, prop)] for i in images}


def test_explain_on_a_cluster_writes_the_scores_of_one_process(tmp_path, test_environ, graphdb, unique_name, capsys,
                                                                one_thread):
    synthesize_cohort("prostate", n_per_class=3, out_dir=tmp_path / "images", seed=1922, size=(384, 384))
    summary = ingest_records(discover([tmp_path / "images"]), cohort=unique_name, params=IngestParams(),
                             settings=test_environ, db=graphdb)
    assert summary.ok == 6
    run_id = train_cohort(graphdb, test_environ, unique_name, model="rsf", epochs=2, seed=1, split_by="image")["run_id"]
    images = [r["id"] for r in store.cohort_images(graphdb, unique_name)]

    assert main(["explain", "--run", run_id, "--method", "occlusion", "--json"]) == 0
    here = json.loads(capsys.readouterr().out)
    expected = _scores(graphdb, unique_name, images, here["property"])
    # gone, so that only the cluster's tasks can have written what is read below
    graphdb.write("MATCH (n:Nucleus) WHERE n[$p] IS NOT NULL SET n[$p] = null", p=here["property"])
    assert all(s is None for v in _scores(graphdb, unique_name, images, here["property"]).values() for s in v)

    with loopback_cluster(tmp_path / "dask", workers=2) as dask:
        assert main(["explain", "--run", run_id, "--method", "occlusion", "--force", "--cluster", dask.address,
                     "--json"]) == 0
        captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert f"Dask cluster {dask.address}: dashboard http://127.0.0.1:" in captured.err
    assert (out["images"], out["property"], out["skipped"]) == (6, here["property"], [])
    got = _scores(graphdb, unique_name, images, here["property"])
    assert all(len(got[i]) == len(expected[i]) > 0 and None not in got[i] for i in images)
    for i in images:
        np.testing.assert_allclose(got[i], expected[i], rtol=1e-5, atol=1e-6)
