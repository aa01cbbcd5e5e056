"""The statistics behind the dashboard's charts (pure functions: no server, no Streamlit)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nucleograph.dashboard import stats as ds


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


def test_explanation_label_names_run_model_method_and_hops():
    e = {"run_id": "r1", "model": "rsf", "method": "occlusion", "hops": 1, "images": 8}
    assert ds.explanation_label(e) == "r1 · rsf · occlusion k=1 (8 images)"
    assert ds.explanation_label({**e, "model": None, "hops": None}) == "r1 · ? · occlusion (8 images)"


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
