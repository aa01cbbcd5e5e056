"""The pages open at the newest run's default explanation: the dashboard's explanation list, read from the
real test Neo4j, puts the newest run first and, within a run, the default method first."""

from __future__ import annotations

import numpy as np

from nucleograph.dashboard import data
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.graph import build_edges
from nucleograph.ingest.pipeline import ImageGraph, IngestParams


def test_the_newest_runs_default_method_comes_first(tmp_path, graphdb, neo4j_settings):
    rng = np.random.default_rng(7)
    centroids = rng.uniform(0, 300, size=(12, 2))
    nuclei = {"nucleus_id": np.arange(12, dtype=np.int64), "centroid_x": centroids[:, 0],
              "centroid_y": centroids[:, 1], "area": rng.uniform(20, 60, 12)}
    image = ImageGraph("dashorder0000001", ImageRecord(tmp_path / "tile.png", "InSitu"), 300, 300, nuclei,
                       build_edges(centroids, threshold=100.0), 100.0)
    cohort = "dash-test-order"
    store.store_image_graph(graphdb, image, cohort=cohort, params=IngestParams(), feature_names=["area"])
    seg = store.window_nuclei(graphdb, cohort, image.image_id, 0, 0, 300, 300)["segmentation"]
    scores = rng.normal(size=12)
    # methods saved in an order that is neither alphabetical nor default-first
    for run_id in ("r0de0001", "r0de0002"):  # the second is the newer run
        db_runs.save_run(graphdb, run_id=run_id, cohort=cohort,
                         props={"model": "rsf-edge", "status": "finished", "class_names": ["InSitu", "Invasive"]})
        for method in ("local", "attention", db_runs.DEFAULT_METHOD, "occlusion"):
            db_runs.save_scores(graphdb, run_id=run_id, method=method, hops=1 if method == "occlusion" else None,
                                segmentation=seg, nids=nuclei["nucleus_id"], scores=scores)

    expls = data.explanations(data.Reader(neo4j_settings, graphdb), cohort=cohort)
    assert [(e["run_id"], e["method"]) for e in expls[:1]] == [("r0de0002", db_runs.DEFAULT_METHOD)]
    assert [e["run_id"] for e in expls] == ["r0de0002"] * 4 + ["r0de0001"] * 4  # runs stay together, newest first
    assert expls[4]["method"] == db_runs.DEFAULT_METHOD
    # the other methods keep the query's order within their run
    assert [e["method"] for e in expls[1:4]] == sorted(e["method"] for e in expls[1:4])
