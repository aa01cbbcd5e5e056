"""Whole slides end to end in the real local Neo4j: a synthetic slide cohort ingested, its ROIs read by
window, a Table I model trained on them and recorded per slide."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sqlalchemy.orm import Session

from nucleograph.cli import main
from nucleograph.db import records as rec
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.errors import InputError
from nucleograph.gnn.checkpoints import load_checkpoint
from nucleograph.gnn.keys import CENTROID
from nucleograph.gnn.service import train_cohort
from nucleograph.gnn.slides import RoiParams, aggregate, load_rois
from nucleograph.gnn.train import predict_proba
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.detect import match_centroids
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_slide_cohort

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

SIZE = (4096, 3072)
ROI = RoiParams(width=1024, height=768, per_slide=4)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, neo4j_settings, graphdb):
    """Three 4096 x 3072 prostate slides per class, ingested (nuclei detected tile by tile)."""
    out = tmp_path_factory.mktemp("slides")
    synthesize_slide_cohort("prostate", n_per_class=3, out_dir=out, seed=5, size=SIZE)
    name = "slides-" + out.name[-8:]
    summary = ingest_records(discover([out]), cohort=name, params=IngestParams(), settings=neo4j_settings, db=graphdb)
    assert summary.ok == 6 and summary.failed == 0
    return name, out


def _truth(folder, path):
    manifest = pd.read_csv(folder / "manifest.csv")
    row = manifest[[str((folder / p).resolve()) == path for p in manifest.path]].iloc[0]
    return pd.read_csv(folder / row.nuclei), json.loads((folder / row.regions).read_text())


def test_slides_are_ingested_with_the_nuclei_they_show(slides, graphdb):
    cohort, folder = slides
    images = store.cohort_images(graphdb, cohort)
    assert len(images) == 6 and {(r["width"], r["height"]) for r in images} == {SIZE}
    for r in images:
        truth, regions = _truth(folder, r["path"])
        assert r["label"] == regions["label"]
        roi = store.window_nuclei(graphdb, cohort, r["id"], 0, 0, *SIZE)
        assert len(roi["nids"]) == r["n_nuclei"]
        # detected tile by tile across the slide (tile borders included), found where the truth says
        score = match_centroids(roi["centroids"], truth[["centroid_x", "centroid_y"]].to_numpy())
        assert score["f1"] > 0.8, score


def test_the_density_grid_counts_every_nucleus(slides, graphdb):
    cohort, _ = slides
    r = store.cohort_images(graphdb, cohort)[0]
    density = store.nucleus_density(graphdb, cohort, r["id"], cell=256)
    assert density["counts"].shape == (12, 16) and density["counts"].sum() == r["n_nuclei"]
    assert (density["width"], density["height"]) == SIZE and density["threshold_px"] == 100.0
    assert density["counts"][0].sum() == 0 and density["counts"][:, 0].sum() == 0  # glass at the border
    assert store.nucleus_density(graphdb, cohort, "no-such-image", cell=256) is None
    with pytest.raises(InputError, match="positive"):
        store.nucleus_density(graphdb, cohort, r["id"], cell=0)


def test_rois_are_windows_of_tissue_inside_the_slide(slides, graphdb, neo4j_settings):
    cohort, folder = slides
    data = load_rois(graphdb, neo4j_settings, cohort, ROI)
    assert not data.from_cache and data.skipped == []
    counts = pd.Series(data.image_ids).value_counts()
    assert len(counts) == 6 and (counts == ROI.per_slide).all()
    paths = {r["id"]: r["path"] for r in store.cohort_images(graphdb, cohort)}
    for g, (x0, y0, x1, y1), slide in zip(data.graphs, data.windows, data.image_ids, strict=True):
        assert 0 <= x0 and x1 <= SIZE[0] and 0 <= y0 and y1 <= SIZE[1]
        assert (x1 - x0, y1 - y0) == (ROI.width, ROI.height)
        c = g.ndata[CENTROID].numpy()
        assert (c[:, 0] >= x0).all() and (c[:, 0] <= x1).all() and (c[:, 1] >= y0).all() and (c[:, 1] <= y1).all()
        # tissue-weighted: each window holds at least min_share of the nuclei of the slide's densest window
        # (windows of 4 x 3 density cells, all cell-aligned on this slide size)
        counts = store.nucleus_density(graphdb, cohort, slide, cell=256)["counts"]
        windows = np.lib.stride_tricks.sliding_window_view(counts, (3, 4)).sum(axis=(2, 3))
        cells = counts[y0 // 256 : y1 // 256, x0 // 256 : x1 // 256].sum()
        # the window query is inclusive at x1 and y1: a centroid on those lines is in the window, not its cells
        assert 0 <= g.num_nodes() - cells <= 0.02 * cells + 3
        assert cells >= ROI.min_share * windows.max() > 0
        assert g.num_edges() > 2 * g.num_nodes()
        # and the truth agrees: true nuclei are there (an ROI of glass would hold none)
        truth, _ = _truth(folder, paths[slide])
        assert (truth.centroid_x.between(x0, x1) & truth.centroid_y.between(y0, y1)).sum() > 0.5 * g.num_nodes()
    again = load_rois(graphdb, neo4j_settings, cohort, ROI)
    assert again.from_cache and again.image_ids == data.image_ids
    np.testing.assert_array_equal(again.windows, data.windows)


def test_a_table1_model_trains_on_rois_and_records_slides(slides, graphdb, neo4j_settings):
    cohort, _ = slides
    out = train_cohort(graphdb, neo4j_settings, cohort, model="rsf-edge", epochs=2, seed=0, roi=ROI)
    assert out["n_images"] == 6 and out["n_rois"] == 6 * ROI.per_slide and out["roi"] == ROI.to_dict()
    m = out["metrics"]
    for key in ("accuracy", "roc_auc", "roi_accuracy", "chance_accuracy"):
        assert key in m, key
    preds = db_runs.predictions(graphdb, out["run_id"])
    assert len(preds) == 6 and all(p["pred"] in ("Gleason3", "Gleason4") for p in preds)
    tested = [p for p in preds if p["split"] == "test"]
    assert len(tested) == m["n"] >= 2 and m["roi_n"] == len(tested) * ROI.per_slide
    # a slide's prediction is its ROIs' mean log-odds: recomputed from the saved model
    model, _, _ = load_checkpoint(out["checkpoints"][0])
    data = load_rois(graphdb, neo4j_settings, cohort, ROI)
    ids = list(dict.fromkeys(data.image_ids))
    slide_p = aggregate(predict_proba(model, data.graphs), np.array([ids.index(i) for i in data.image_ids]), 6)
    for p in preds:
        np.testing.assert_allclose(p["probs"], slide_p[ids.index(p["image_id"])], atol=1e-6)
    run = db_runs.get_run(graphdb, out["run_id"])
    assert run["n_rois"] == 24 and json.loads(run["roi"]) == ROI.to_dict()
    engine = rec.open_engine(neo4j_settings)
    with Session(engine) as session:
        row = session.get(rec.ModelRunRecord, out["run_id"])
        assert row.status == rec.FINISHED and row.params["roi"] == ROI.to_dict()
        assert row.metrics["accuracy"] == m["accuracy"] and row.metrics["roi_accuracy"] == m["roi_accuracy"]
    engine.dispose()


def test_train_cli_takes_roi_options(slides, test_environ, capsys):
    cohort, _ = slides
    assert main(["train", "--cohort", cohort, "--model", "rsf", "--epochs", "1", "--roi", "1024x768",
                 "--roi-per-slide", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["from_cache"] and out["n_rois"] == 24 and out["roi"]["width"] == 1024
    # the cohort's images are below the slide size: auto trains on whole images
    assert main(["train", "--cohort", cohort, "--model", "rsf", "--epochs", "1", "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert "roi" not in whole and whole["n_images"] == 6
