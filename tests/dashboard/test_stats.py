"""The statistics behind the dashboard's charts (pure functions: no server, no Streamlit)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nucleograph.dashboard import stats as ds
from nucleograph.gnn.render import rank_importance, rank_on_scale, relative_importance


def test_nucleus_points_from_columns_and_from_nodes():
    cols = ["image_id", "nid", "x", "y"]
    rows = [{"image_id": "a", "nid": 1, "x": 1.0, "y": 2.0}, {"image_id": "a", "nid": 2, "x": None, "y": 3.0}]
    assert ds.nucleus_points(cols, rows).to_dict("records") == [{"image_id": "a", "nid": 1, "x": 1.0, "y": 2.0}]
    node = {"_labels": ["Nucleus"], "image_id": "b", "nid": 7, "centroid_x": 5.0, "centroid_y": 6.0}
    other = {"_labels": ["Image"], "id": "b"}
    pts = ds.nucleus_points(["n", "ms"], [{"n": node, "ms": [node, other]}])
    assert len(pts) == 2 and set(pts["nid"]) == {7}
    assert ds.nucleus_points(["count"], [{"count": 3}]).empty


def _ranked(labels=("A", "B"), n=200, k_shift=2.0, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for label in labels:
        rank = np.arange(n)
        area = rng.normal(100, 10, n)
        area[:10] += k_shift * 10  # the top ten are bigger by k_shift SD
        frames.append(pd.DataFrame({"image_id": label + "1", "label": label, "total": n, "rank": rank,
                                    "nid": rank, "area": area, "sample": rank % 2 == 0}))
    return pd.concat(frames, ignore_index=True)


def test_effect_sizes_find_bigger_top_nuclei():
    eff = ds.effect_sizes(_ranked(), 10, ["area"])
    assert set(eff["label"]) == {"A", "B"}
    assert (eff["d"] > 1.2).all() and (eff["n_top"] == 10).all() and (eff["n_all"] == 100).all()


def test_box_stats_are_quartiles_and_whiskers_inside_the_data():
    df = _ranked()
    stats = ds.box_stats(ds.top_vs_all(df, 10), "area", ["label", "group"])
    assert len(stats) == 4
    assert (stats["q1"] <= stats["median"]).all() and (stats["median"] <= stats["q3"]).all()
    assert (stats["lowerfence"] <= stats["q1"]).all() and (stats["upperfence"] >= stats["q3"]).all()


def test_topk_overlap_is_jaccard():
    a = pd.DataFrame({"image_id": "i", "label": "A", "rank": [0, 1, 2], "nid": [1, 2, 3]})
    b = pd.DataFrame({"image_id": "i", "label": "A", "rank": [0, 1, 2], "nid": [2, 3, 4]})
    assert ds.topk_overlap(a, b, 2)["jaccard"].tolist() == [1 / 3]  # {1,2} vs {2,3}


def test_confusion_sums_fold_matrices_or_counts_predictions():
    run = {"class_names": ["X", "Y"], "metrics": {"folds": [{"confusion_matrix": [[1, 0], [1, 1]]},
                                                            {"confusion_matrix": [[2, 0], [0, 1]]}]}}
    preds = pd.DataFrame({"label": ["X", "Y", "Y"], "pred": ["X", "X", "Y"], "split": ["train", "train", "val"]})
    cm, names = ds.confusion(run, preds, split="test")
    assert names == ["X", "Y"] and cm.tolist() == [[3, 0], [1, 2]]
    cm, _ = ds.confusion(run, preds, split="train")
    assert cm.tolist() == [[1, 0], [1, 0]]
    assert ds.confusion(run, preds, split="all")[0].sum() == 3
    assert ds.confusion({"class_names": ["X", "Y"], "metrics": {}}, preds.iloc[:0], split="test") is None


def test_explanation_label_names_run_model_method_hops_and_output():
    e = {"run_id": "r1", "model": "rsf", "method": "occlusion", "hops": 1, "output": "logodds", "images": 8}
    assert ds.explanation_label(e) == "r1 · rsf · occlusion k=1, log-odds drop (8 images)"
    assert ds.explanation_label({**e, "output": "prob"}) == "r1 · rsf · occlusion k=1, probability drop (8 images)"
    # an occlusion stored before outputs existed is a probability drop
    assert ds.method_title({**e, "output": None}) == "occlusion k=1, probability drop"
    att = {"run_id": "r1", "model": None, "method": "attention", "hops": None, "output": None, "images": 8}
    assert ds.explanation_label(att) == "r1 · ? · attention (8 images)"
    # a seed ensemble's model carries its size; one model (or a run from before ensembles) does not
    assert ds.explanation_label({**e, "ensemble": 3}) == "r1 · rsf ×3 · occlusion k=1, log-odds drop (8 images)"
    assert ds.model_title({"model": "rsf-edge", "ensemble": 1}) == ds.model_title({"model": "rsf-edge"}) == "rsf-edge"


def test_importance_by_position_bins():
    sample = pd.DataFrame({"label": ["A", "A", "A", "B"], "degree": [1.0, 1.2, 6.0, 2.0],
                           "density": [0.2, 0.3, 1.0, 0.6], "fx": [0.1, 0.5, 0.9, 0.5],
                           "fy": [0.5, 0.5, 0.5, 0.95], "percentile": [0.0, 1.0, 0.5, 0.25]})
    binned = ds.position_bins(sample)
    assert binned["density_bin"].tolist() == [0.0, 0.5, 1.0, 0.5]
    assert np.allclose(binned["border"], [0.1, 0.5, 0.1, 0.05])
    by_degree = ds.importance_by(binned, "degree_bin")
    a1 = by_degree[(by_degree["label"] == "A") & (by_degree["degree_bin"] == 1)].iloc[0]
    assert (a1["importance"], a1["nuclei"]) == (0.5, 2)


def test_relative_colour_scale_is_renders():
    scores = np.r_[np.linspace(0.0, 0.01, 198), -0.9, np.nan]
    shown, limits = ds.colour_values(scores, "relative")
    assert limits == {"cmin": -1.0, "cmax": 1.0, "cmid": 0.0}
    assert np.isnan(shown[-1])
    assert np.allclose(shown[:-1], relative_importance(scores[:-1]))
    # linear, the 198 small scores would share 1 % of the colour range (the "binary" look); relative,
    # they span most of it and the one extreme nucleus is clipped
    assert np.ptp(shown[:198]) > 0.9 and shown[198] == -1.0


def test_log_and_linear_colour_scales():
    scores = np.array([0.0, 1e-4, 1e-2, 1.0, -1.0])
    shown, limits = ds.colour_values(scores, "log")
    assert shown[0] == 0 and shown[3] == -shown[4] == limits["cmax"] and limits["cmid"] == 0
    assert 0 < shown[1] < shown[2] < shown[3]
    assert ds.colour_values(scores, "linear")[1] == {}
    with pytest.raises(ValueError, match="relative, log, linear, rank"):
        ds.colour_values(scores, "sqrt")


def test_rank_colour_scale_spreads_one_signed_map_over_the_whole_scale():
    # local evidence on these cohorts: nearly every score below 0, the structure only less negative
    scores = np.array([-5.0, -4.0, -1.0, -1.0, 0.5, np.nan])
    shown, limits = ds.colour_values(scores, "rank")
    assert limits == {"cmin": -1.0, "cmax": 1.0, "cmid": 0.0}
    assert shown[0] == -1.0 and shown[4] == 1.0 and np.isnan(shown[5])
    assert shown[2] == shown[3] == 0.25 and shown[1] == -0.5  # ties share their mean rank; order kept
    assert ds.colour_values(np.array([3.0]), "rank")[0].tolist() == [-1.0]  # one nucleus: no division by 0


def test_a_slide_ranks_each_viewport_against_its_quantiles():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=501), 1)  # many ties
    scores[7] = np.nan
    every = np.sort(scores[np.isfinite(scores)])
    got = rank_on_scale(scores, every)  # every score as a quantile: the image's own ranks
    np.testing.assert_allclose(got, rank_importance(scores), atol=1e-12)
    few = every[np.linspace(0, every.size - 1, 11).astype(int)]  # a slide's 11 quantiles
    view = rank_on_scale(scores[:50], few)
    assert np.isnan(view[7]) and np.nanmax(np.abs(view - rank_importance(scores)[:50])) < 0.15
    assert rank_on_scale(np.array([-99.0, 99.0]), few).tolist() == [-1.0, 1.0]  # outside the slide's range


def test_chance_is_the_majority_share_of_the_test_images():
    run = {"accuracy": 4 / 6, "class_names": ["A", "B"],
           "metrics": {"folds": [{"confusion_matrix": [[2, 0], [1, 0]]}, {"confusion_matrix": [[2, 0], [1, 0]]}]}}
    assert ds.chance_rate(run) == (4 / 6, 6, "A")
    warning = ds.at_or_below_chance(run)
    assert "0.667 is at or below chance: 0.667" in warning and "(A)" in warning and "6 test images" in warning
    assert ds.at_or_below_chance({**run, "accuracy": 5 / 6}) is None
    assert ds.at_or_below_chance({**run, "accuracy": 0.5}) is not None
    preds = pd.DataFrame({"label": ["A", "B", "B", "A"], "split": ["test", "test", "test", "train"]})
    assert ds.chance_rate({"metrics": {}}, preds) == (2 / 3, 3, "B")
    assert ds.chance_rate({"metrics": {}}) is None and ds.at_or_below_chance({"accuracy": 0.1}) is None


def test_a_run_answering_many_images_with_one_output_is_flagged():
    assert "to 62% of the cohort's images" in ds.constant_output({"constant_output_share": 0.625})
    assert ds.constant_output({"constant_output_share": 0.1}) is not None
    assert ds.constant_output({"constant_output_share": 0.05}) is None
    assert ds.constant_output({"constant_output_share": 0.0}) is None
    assert ds.constant_output({}) is None  # runs trained before the metric


def test_epochs_run_counts_the_history_not_the_setting():
    assert ds.epochs_run({"epochs": 50, "history": [{"epoch": e} for e in range(7)]}) == 7
    assert ds.epochs_run({"epochs": 50, "history": None}) == 50


def test_feature_table_rounds_numbers_and_keeps_words():
    table = ds.feature_table({"area": 307.0, "circularity": 0.912345678, "nid": 5, "detector": "watershed",
                              "uid": "i:5", "hematoxylin_od_mean": 1.23456789e-05, "segmentation": "i:k",
                              "outline": [1.0, 2.0, 3.0, 4.0, 5.0, 1.0], "type": "Tumor"})
    assert dict(zip(table["feature"], table["value"], strict=True)) == {
        "area": "307", "circularity": "0.9123", "detector": "watershed", "hematoxylin_od_mean": "1.235e-05",
        "nid": "5", "type": "Tumor"}


def _evaluation(deletion, auroc=None, images=10, cls="Gleason4") -> dict:
    group = {"images": images, "deletion_ratio": {"mean": deletion, "n": images}}
    if auroc is not None:
        group["structure_auroc"] = {"mean": auroc, "n": images}
    return {"by_class": {cls: group, "Gleason3": {"images": 3, "deletion_ratio": {"mean": 0.97, "n": 3},
                                                  "structure_auroc": {"mean": 0.2, "n": 3}}}}


def test_map_trust_reads_the_evaluation_of_the_predicted_class():
    import json

    level, text = ds.map_trust(json.dumps(_evaluation(0.31, 0.91)), "Gleason4")  # as stored on the node: JSON
    assert level == "meets"
    assert text.startswith("`evaluate` on 10 images this run predicts Gleason4: deletion ratio 0.31")
    assert "structure AUROC 0.91" in text and text.endswith("(deletion ratio <= 0.5, structure AUROC >= 0.85).")
    assert ds.map_trust(_evaluation(0.31), "Gleason4")[0] == "meets"  # no --truth: deletion alone
    assert ds.map_trust(_evaluation(0.31), "Gleason4")[1].endswith("faithful map (deletion ratio <= 0.5).")
    assert "AUROC" not in ds.map_trust(_evaluation(0.31), "Gleason4")[1]
    assert "targets" not in ds.map_trust(_evaluation(0.45, 0.80), "Gleason4")[1]
    assert ds.map_trust(_evaluation(0.45, 0.80), "Gleason4")[0] == "partial"
    assert ds.map_trust(_evaluation(0.55, 0.90), "Gleason4")[0] == "partial"
    # the "absence" class of these models: the structure below the stroma, the order no better than random
    level, text = ds.map_trust(_evaluation(0.31, 0.91), "Gleason3")
    assert level == "poor" and text.startswith("For images predicted Gleason3, this map does not show where")
    assert "structure AUROC 0.20" in text and "`evaluate` on 3 images" in text
    assert ds.map_trust(_evaluation(0.92, 0.9), "Gleason4")[0] == "poor"
    # nothing measured for this class, or no evaluation at all
    assert ds.map_trust(_evaluation(0.31, 0.91), "Gleason5") is None
    assert ds.map_trust(None, "Gleason4") is None and ds.map_trust("", "Gleason4") is None
