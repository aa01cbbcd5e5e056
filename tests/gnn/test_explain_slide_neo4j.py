"""Explaining an image window by window through the service (issue 15 item 4): each window's scores go
to Neo4j in their own transaction, the image is marked explained only after the last, and the scores
are those of one window."""

from __future__ import annotations

import numpy as np
import pytest

from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.gnn.service import explain_run, train_cohort
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


@pytest.fixture(scope="module")
def run(tmp_path_factory, neo4j_settings, graphdb):
    out = tmp_path_factory.mktemp("slide-explain")
    synthesize_cohort("prostate", n_per_class=3, out_dir=out, seed=15, size=(512, 512))
    cohort = "slx-" + out.name[-8:]
    summary = ingest_records(discover([out]), cohort=cohort, params=IngestParams(), settings=neo4j_settings,
                             db=graphdb)
    assert summary.ok == 6
    return train_cohort(graphdb, neo4j_settings, cohort, model="rsf", epochs=2, seed=1, split_by="image")


def _scores(graphdb, cohort, images, prop) -> dict[str, np.ndarray]:
    return {i: np.array([r["score"] for r in db_runs.image_scores(graphdb, cohort, i, prop)], dtype=float)
            for i in images}


def test_windows_are_written_one_by_one_and_the_image_marked_at_the_end(run, graphdb, neo4j_settings, capsys,
                                                                        monkeypatch, one_thread):
    cohort = run["cohort"]
    images = [r["id"] for r in store.cohort_images(graphdb, cohort)]
    whole = explain_run(graphdb, neo4j_settings, run["run_id"], method="occlusion")  # every image one window
    prop, key = whole["property"], db_runs.explanation_key(run["run_id"], "occlusion", 1)
    expected = _scores(graphdb, cohort, images, prop)
    assert min(v.size for v in expected.values()) > 60  # windows of 25 below: several per image

    writes = []
    real_write = db_runs.ScoreWriter.write

    def counted(self, nids, scores):
        writes.append(len(nids))
        real_write(self, nids, scores)

    monkeypatch.setattr(db_runs.ScoreWriter, "write", counted)
    out = explain_run(graphdb, neo4j_settings, run["run_id"], method="occlusion", force=True, window=25,
                      progress=True)
    assert out["images"] == len(images) and sum(writes) == sum(v.size for v in expected.values())
    assert len(writes) > 3 * len(images)  # one transaction per window
    assert "nuclei" in capsys.readouterr().err  # the bar counts a slide's nuclei window by window
    got = _scores(graphdb, cohort, images, prop)
    for i in images:
        # the whole image's value from the model's pass (one window) or from the cached float64 pooling:
        # the same for every nucleus of the image, within float32 rounding of the log-odds' size
        np.testing.assert_allclose(got[i], expected[i], rtol=0, atol=1e-5 * max(1.0, np.abs(expected[i]).max()))
    assert sorted(db_runs.explained_images(graphdb, key, images)) == sorted(images)

    # a run stopped before its last window: the image it was writing is not explained (its older scores
    # and the new ones mixed), so the next run scores it again
    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(db_runs.ScoreWriter, "finish", stopped)
    with pytest.raises(KeyboardInterrupt):
        explain_run(graphdb, neo4j_settings, run["run_id"], method="occlusion", image_ids=images[:1], force=True,
                    window=25)
    assert images[0] not in db_runs.explained_images(graphdb, key, images)
    monkeypatch.undo()
    again = explain_run(graphdb, neo4j_settings, run["run_id"], method="occlusion", window=25)
    assert (again["images"], again["reused"]) == (1, len(images) - 1)
    assert sorted(db_runs.explained_images(graphdb, key, images)) == sorted(images)
