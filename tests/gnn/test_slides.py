"""Learning on slides without a database: ROI sampling, aggregation per slide, the slide view of a run."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.cli import _roi_option, register
from nucleograph.gnn.slides import (
    AUTO,
    ROI_SIZE,
    ROIS_PER_SLIDE,
    SLIDE_PIXELS,
    RoiCohort,
    RoiParams,
    aggregate,
    resolve_roi,
    sample_windows,
    to_slides,
)
from nucleograph.gnn.train import TrainResult

CELL = 256


def _counts(width, height, boxes):
    """A density grid with 4 nuclei per cell inside each (x0, y0, x1, y1) pixel box, none elsewhere."""
    counts = np.zeros((-(-height // CELL), -(-width // CELL)), np.int64)
    for x0, y0, x1, y1 in boxes:
        counts[y0 // CELL : y1 // CELL, x0 // CELL : x1 // CELL] = 4
    return counts


def _nuclei_in(counts, window):
    x0, y0, x1, y1 = window
    return counts[y0 // CELL : -(-y1 // CELL), x0 // CELL : -(-x1 // CELL)].sum()


def test_windows_lie_inside_the_slide_and_where_the_nuclei_are():
    width, height = 12_000, 9_000
    tissue = (4096, 2048, 9984, 7168)  # glass all around
    counts = _counts(width, height, [tissue])
    roi = RoiParams(per_slide=12)
    w = sample_windows(counts, width=width, height=height, roi=roi, rng=np.random.default_rng(0))
    assert w.shape == (12, 4) and w.dtype == np.int64
    assert (w[:, 0] >= 0).all() and (w[:, 1] >= 0).all() and (w[:, 2] <= width).all() and (w[:, 3] <= height).all()
    assert ((w[:, 2] - w[:, 0]) == ROI_SIZE[0]).all() and ((w[:, 3] - w[:, 1]) == ROI_SIZE[1]).all()
    densest = 4 * (ROI_SIZE[0] // CELL) * (ROI_SIZE[1] // CELL)
    for window in w:
        # every window holds at least min_share of the densest window's nuclei: tissue, not glass
        assert _nuclei_in(counts, window) >= roi.min_share * densest
        cx, cy = (window[0] + window[2]) / 2, (window[1] + window[3]) / 2
        assert tissue[0] - ROI_SIZE[0] / 2 < cx < tissue[2] + ROI_SIZE[0] / 2
        assert tissue[1] - ROI_SIZE[1] / 2 < cy < tissue[3] + ROI_SIZE[1] / 2
    assert len({tuple(x) for x in w.tolist()}) == 12  # never the same window twice
    again = sample_windows(counts, width=width, height=height, roi=roi, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(w, again)


def test_windows_spread_over_the_tissue_before_they_overlap():
    width, height = 16_384, 6_144
    counts = _counts(width, height, [(0, 0, width, height)])  # tissue everywhere: 8 x 4 disjoint windows fit
    roi = RoiParams(per_slide=6, max_overlap=0.0)
    w = sample_windows(counts, width=width, height=height, roi=roi, rng=np.random.default_rng(3))
    for i in range(len(w)):
        for j in range(i):
            dx = min(w[i, 2], w[j, 2]) - max(w[i, 0], w[j, 0])
            dy = min(w[i, 3], w[j, 3]) - max(w[i, 1], w[j, 1])
            assert dx <= 0 or dy <= 0, (w[i], w[j])


def test_tissue_weighted_dense_tissue_is_drawn_more_often():
    width, height = 16_384, 4_096
    counts = np.zeros((height // CELL, width // CELL), np.int64)
    counts[:, : width // CELL // 2] = 2  # left half sparse
    counts[:, width // CELL // 2 :] = 6  # right half three times as dense
    roi = RoiParams(per_slide=1, min_share=0.1)
    centres = [sample_windows(counts, width=width, height=height, roi=roi, rng=np.random.default_rng(s))[0]
               for s in range(200)]
    right = np.mean([(x0 + x1) / 2 > width / 2 for x0, _, x1, _ in centres])
    assert 0.6 < right < 0.9  # about 3 / 4


def test_small_slides_empty_slides_and_bad_grids():
    counts = np.ones((4, 6), np.int64)  # a 1500 x 1000 image: smaller than the ROI
    w = sample_windows(counts, width=1500, height=1000, roi=RoiParams(), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(w, [[0, 0, 1500, 1000]])  # one window: the whole image
    empty = sample_windows(np.zeros((24, 32), np.int64), width=8192, height=6144, roi=RoiParams(),
                           rng=np.random.default_rng(0))
    assert empty.shape == (0, 4)
    with pytest.raises(InputError, match="shape"):
        sample_windows(np.ones((3, 3)), width=8192, height=6144, roi=RoiParams(), rng=np.random.default_rng(0))


def test_roi_params_are_checked_and_keyed():
    for bad, match in (({"width": 0}, "positive integer"), ({"width": 32}, "too small"),
                       ({"per_slide": 0}, "positive integer"), ({"min_share": 0}, "min_share"),
                       ({"max_overlap": 1.0}, "max_overlap")):
        with pytest.raises(InputError, match=match):
            RoiParams(**bad)
    roi = RoiParams(width=1024, height=768, per_slide=4)
    assert RoiParams.from_dict(roi.to_dict()) == roi and roi.key() == RoiParams.from_dict(roi.to_dict()).key()
    assert roi.key() != RoiParams().key()


def test_auto_trains_on_rois_only_when_an_image_is_a_slide():
    side = int(SLIDE_PIXELS**0.5) + 1
    slide = {"label": "a", "width": side, "height": side}
    tile = {"label": "a", "width": 2048, "height": 1536}
    assert resolve_roi([tile, slide], AUTO) == RoiParams()
    assert resolve_roi([tile], AUTO) is None
    assert resolve_roi([{**slide, "label": None}, tile], AUTO) is None  # unlabelled slides are not trained on
    assert resolve_roi([slide], None) is None
    given = RoiParams(per_slide=3)
    assert resolve_roi([tile], given) is given
    with pytest.raises(InputError, match="auto"):
        resolve_roi([tile], "sometimes")


def test_mean_log_odds_per_slide():
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.5, 0.5]])
    slide = np.array([0, 0, 1, 1])
    p = aggregate(proba, slide, 3)
    logodds = np.log(proba[:, 1] / proba[:, 0])
    np.testing.assert_allclose(np.log(p[:2, 1] / p[:2, 0]), [logodds[:2].mean(), logodds[2:].mean()])
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p[2], [0.5, 0.5])  # no ROIs: no evidence either way
    # one confident ROI against two mild ones: the mean of log-odds, not a vote
    assert aggregate(np.array([[0.01, 0.99], [0.6, 0.4], [0.6, 0.4]]), np.zeros(3, int), 1)[0, 1] > 0.5


def test_a_run_on_rois_is_recorded_per_slide():
    # 3 slides of 2 ROIs: slide s0 (class 0) trains, s1 (class 1) validates, s2 (class 1) is tested
    ids = ["s0", "s0", "s1", "s1", "s2", "s2"]
    data = RoiCohort("c", [None] * 6, np.array([0, 0, 1, 1, 1, 1]), ["A", "B"], ids, ["p0", "p0", "p1", "p1", "p2", "p2"],
                     "v", [], np.zeros((6, 4), np.int64), RoiParams())
    proba = np.array([[0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.3, 0.7], [0.45, 0.55], [0.9, 0.1]])
    split = {"train": np.array([0, 1]), "val": np.array([2, 3]), "test": np.array([4, 5])}
    result = TrainResult(model=None, scaler=None, metrics={"n": 2, "accuracy": 0.5, "confusion_matrix": []},
                         history=[], split=split, proba=proba, predictions=proba.argmax(1), checkpoint_path=None,
                         n_parameters=0, best_epoch=0)
    view, (slides,) = to_slides(data, [result])
    assert view.image_ids == ["s0", "s1", "s2"] and view.labels.tolist() == [0, 1, 1] and view.n_rois == 6
    assert view.groups == ["p0", "p1", "p2"]
    assert {k: v.tolist() for k, v in slides.split.items()} == {"train": [0], "val": [1], "test": [2]}
    assert slides.proba.shape == (3, 2) and slides.predictions.tolist() == [0, 1, 0]
    # the test slide: mean log-odds of 0.55 and 0.1 is negative, so class A: wrong
    assert slides.metrics["n"] == 1 and slides.metrics["accuracy"] == 0.0
    assert slides.metrics["roi_accuracy"] == 0.5 and slides.metrics["roi_n"] == 2


def test_a_split_that_separates_a_slides_rois_is_refused():
    ids = ["s0", "s0", "s1", "s1"]
    data = RoiCohort("c", [None] * 4, np.array([0, 0, 1, 1]), ["A", "B"], ids, [None] * 4, "v", [],
                     np.zeros((4, 4), np.int64), RoiParams())
    proba = np.full((4, 2), 0.5)
    split = {"train": np.array([0, 2]), "val": np.array([], int), "test": np.array([1, 3])}
    result = TrainResult(model=None, scaler=None, metrics={}, history=[], split=split, proba=proba,
                         predictions=proba.argmax(1), checkpoint_path=None, n_parameters=0, best_epoch=0)
    with pytest.raises(ModelError, match="s0, s1 are in both the train and the test split"):
        to_slides(data, [result])


def _train_parser():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser


def test_cli_roi_options(capsys):
    assert _roi_option("auto", None) == AUTO
    assert _roi_option("AUTO", 4) == RoiParams(per_slide=4)
    assert _roi_option("off", None) is None
    assert _roi_option("1024x768", None) == RoiParams(width=1024, height=768)
    with pytest.raises(InputError, match="WIDTHxHEIGHT"):
        _roi_option("big", None)
    with pytest.raises(InputError, match="drop --roi-per-slide"):
        _roi_option("off", 8)
    with pytest.raises(SystemExit):
        _train_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    # the numbers the help names (the parser does not import torch) are gnn.slides'
    assert f"auto: {ROI_SIZE[0]}x{ROI_SIZE[1]}" in text and f"default: {ROIS_PER_SLIDE})" in text
    assert f"more than 2^{int(np.log2(SLIDE_PIXELS))} pixels" in text and 2 ** int(np.log2(SLIDE_PIXELS)) == SLIDE_PIXELS
