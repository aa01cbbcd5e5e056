"""The explanation metrics on hand-made cases whose answers are known (gnn/faithfulness.py, gnn/evaluate.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from nucleograph.errors import InputError
from nucleograph.gnn import evaluate as ev
from nucleograph.gnn import faithfulness as fa
from nucleograph.gnn.data import edge_channels, to_dgl
from nucleograph.gnn.models import build_model
from nucleograph.gnn.occlusion.reference import proba_without
from nucleograph.ingest.graph import build_edges

N, PLANTED = 50, 10


@pytest.fixture
def planted():
    """A model whose class-1 log-odds are ``20 * (share of planted nuclei) - 2``: the 10 planted nuclei of
    50 (feature 0 = 1) decide the class (p = 0.88 on the whole graph, 0.12 without them)."""
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 400, size=(N, 2))
    e = build_edges(pts, threshold=100.0)
    feats = np.zeros((N, 3))
    planted_idx = rng.choice(N, PLANTED, replace=False)
    feats[planted_idx, 0] = 1.0
    g = to_dgl(feats, e["src"], e["dst"], edge_channels(e["dist"]), centroids=pts)
    m = build_model("mlp", in_feats=3, edge_channels=2, hidden=())
    with torch.no_grad():
        lin = m.mlp[0]
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[1, 0] = 20.0
        lin.bias[1] = -2.0
    m.eval()
    truth = np.zeros(N)
    truth[planted_idx] = 1.0
    return m, g, truth


def test_planted_nuclei_ranked_first_beat_random_orders(planted):
    m, g, truth = planted
    row = ev.evaluate_image(m, g, truth + 0.01 * np.arange(N), n_random=5, rng=np.random.default_rng(1))
    assert row["target"] == 1 and row["n_nuclei"] == N
    # random orders keep about the planted share (p ~ 0.88) until the end; planted first: p ~ 1 at once
    assert row["deletion_ratio"] < 0.5 and row["insertion_ratio"] > 1.1
    assert row["deletion_auc"] < row["deletion_random_auc"] and row["insertion_auc"] > row["insertion_random_auc"]
    # the reverse ranking (planted last) is worse than random on both
    rev = ev.evaluate_image(m, g, -truth, n_random=5, rng=np.random.default_rng(1))
    assert rev["deletion_ratio"] > 1.0 > rev["insertion_ratio"]
    assert np.isnan(row["stability"]) and np.isnan(row["structure_auroc"]) and row["role_auroc"] == {}


def test_insertion_curve_runs_from_the_prior_to_the_prediction(planted):
    m, g, truth = planted
    probs, c = fa.insertion_curve(m, g, truth, fractions=(0.0, 0.2, 1.0))
    with torch.no_grad():
        p0 = torch.softmax(m(g).double(), 1)[0]
    assert c == 1 and probs[0] == pytest.approx(0.5) and probs[-1] == pytest.approx(float(p0[1]))
    # top 20% = the 10 planted nuclei alone: log-odds 20 - 2
    assert probs[1] == pytest.approx(1 / (1 + np.exp(-18.0)))


def test_batched_probabilities_equal_one_model_run_each():
    torch.manual_seed(0)
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 300, size=(40, 2))
    e = build_edges(pts, threshold=80.0)
    g = to_dgl(rng.normal(size=(40, 4)), e["src"], e["dst"], edge_channels(e["dist"]), centroids=pts)
    m = build_model("rsf", in_feats=4, edge_channels=2)
    m.eval()
    removed = [np.array([], dtype=int), rng.choice(40, 10, replace=False), np.arange(39), np.arange(40)]
    got = fa.probas_without(m, g, removed, 1, batch_size=3)
    with torch.no_grad():
        want = [proba_without(m, g, r)[1] for r in removed]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got[-1] == 0.5


def test_sparsity_of_one_hot_uniform_and_negative_scores():
    one_hot = np.zeros(100)
    one_hot[7] = 3.0
    assert fa.sparsity(one_hot) == 1.0
    assert fa.sparsity(np.ones(100)) == pytest.approx(0.1)
    assert fa.sparsity(np.ones(95)) == pytest.approx(10 / 95)  # k = ceil(9.5)
    # negative scores count as 0: half the positive mass in the top 10 of 100
    s = np.r_[np.full(10, 1.0), np.full(10, 1.0), np.full(80, -5.0)]
    assert fa.sparsity(s) == pytest.approx(0.5)
    assert np.isnan(fa.sparsity(-np.ones(10)))


def test_tie_share():
    assert fa.tie_share(np.full(20, 0.3)) == 1.0
    assert fa.tie_share(np.arange(20.0)) == 0.0
    assert fa.tie_share(np.array([1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0, 6.0, 7.0])) == pytest.approx(0.5)


def test_rank_stability():
    a = np.array([0.1, 0.5, 0.2, 0.9, 0.3])
    assert fa.rank_stability(a, a ** 3) == pytest.approx(1.0)  # same ranking, other values
    assert fa.rank_stability(a, -a) == pytest.approx(-1.0)
    assert np.isnan(fa.rank_stability(a, np.ones(5)))
    with pytest.raises(ValueError, match="same nuclei"):
        fa.rank_stability(a, a[:3])


def test_role_auroc_perfect_reversed_and_tied():
    roles = np.array(["duct_outer", "duct_outer", "stroma", "stroma", "stroma", None, "lumen"], dtype=object)
    s = np.array([5.0, 4.0, 1.0, 2.0, 3.0, 100.0, 2.0])
    auc = fa.role_auroc(roles, s)
    assert auc["duct_outer"] == 1.0  # perfect separation; the unmatched nucleus is left out
    assert auc["lumen"] == pytest.approx((1 + 0.5) / 3)  # above 1, tied with 2 (half), below 3
    assert fa.role_auroc(roles, -s)["duct_outer"] == 0.0
    assert fa.role_auroc(np.array(["a", "b"], dtype=object), np.array([1.0, 2.0])) == {}  # no stroma


def test_structure_auroc_and_enrichment_from_roles(planted):
    m, g, truth = planted
    roles = np.where(truth > 0, "gland_boundary", "stroma").astype(object)
    roles[0] = None
    row = ev.evaluate_image(m, g, truth + 0.01 * np.arange(N), n_random=1, roles=roles, other_scores=truth)
    assert row["structure_auroc"] == 1.0 and row["role_auroc"] == {"gland_boundary": 1.0}
    assert row["role_enrichment"]["gland_boundary"] > 4.0  # top 10% all planted: 1 / (10/49)
    assert 0.5 < row["stability"] < 1.0  # the ties of `truth` rank part of the nuclei alike
    # the planted nuclei decide the class: without them (nucleus 0, unmatched, stays) p(class 1) falls
    # to 1 / (1 + e^2) or near it, without the stroma it rises to nearly 1
    comp = row["compartments"]
    structure = [i for i in range(1, N) if truth[i] > 0]
    with torch.no_grad():
        assert comp["intact"] == pytest.approx(float(proba_without(m, g, [])[1]))
        assert comp["without_structure"] == pytest.approx(float(proba_without(m, g, structure)[1]))
    assert comp["without_stroma"] > comp["intact"] > 0.5 > comp["without_structure"]
    rows = ev.compartment_rows(ev.summarize([{**row, "predicted": "B"}]))
    assert [r["class"] for r in rows] == ["B", "all"] and rows[0]["without_structure"] < 0.5 < rows[0]["intact"]


def test_evaluate_image_refuses_misaligned_scores(planted):
    m, g, truth = planted
    with pytest.raises(InputError, match="one value per nucleus"):
        ev.evaluate_image(m, g, truth[:-1])
    with pytest.raises(InputError, match="n_random"):
        ev.evaluate_image(m, g, truth, n_random=0)


def test_summary_means_per_predicted_class_skip_undefined_values():
    rows = [
        {"predicted": "A", "deletion_ratio": 0.2, "stability": float("nan"), "role_auroc": {"x": 1.0}},
        {"predicted": "A", "deletion_ratio": 0.4, "stability": 0.5, "role_auroc": {}},
        {"predicted": "B", "deletion_ratio": 1.0, "stability": None, "role_auroc": {"x": 0.0}},
    ]
    out = ev.summarize(rows)
    assert out["overall"]["images"] == 3
    assert out["overall"]["deletion_ratio"] == {"mean": pytest.approx(1.6 / 3), "n": 3}
    assert out["overall"]["stability"] == {"mean": 0.5, "n": 1}
    assert out["by_class"]["A"]["deletion_ratio"]["mean"] == pytest.approx(0.3)
    assert out["by_class"]["B"]["stability"] == {"mean": None, "n": 0}
    assert out["overall"]["role_auroc"]["x"] == {"mean": 0.5, "n": 2}


def test_select_images_per_class_and_balanced_limit():
    images = [{"id": f"{lab}{k}", "label": lab} for lab in ("B", "A") for k in range(4)]
    assert ev.select_images(images, per_class=2) == ["A0", "B0", "A1", "B1"]
    assert ev.select_images(images, limit=3) == ["A0", "B0", "A1"]
    assert len(ev.select_images(images)) == 8


def test_read_truth_matches_images_by_path(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "nuclei").mkdir()
    pd.DataFrame({"nucleus_id": [1, 2], "centroid_x": [10.0, 50.0], "centroid_y": [10.0, 50.0],
                  "area": [30, 30], "role": ["cord", "stroma"]}).to_csv(tmp_path / "nuclei" / "a.csv", index=False)
    pd.DataFrame({"path": ["images/a.png"], "nuclei": ["nuclei/a.csv"]}).to_csv(tmp_path / "manifest.csv", index=False)
    truth = ev.read_truth(tmp_path)
    roles = truth.roles(str(tmp_path / "images" / "a.png"), np.array([[12.0, 9.0], [50.0, 59.0]]))
    assert roles.tolist() == ["cord", None]  # the second is 9 px away: beyond 8 px
    assert truth.roles(str(tmp_path / "other.png"), np.zeros((1, 2))) is None
    with pytest.raises(InputError, match="nucleograph synth"):
        ev.read_truth(tmp_path / "images")
