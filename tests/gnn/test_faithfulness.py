"""Deletion curves and role enrichment (gnn/faithfulness.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nucleograph.gnn import faithfulness as fa
from nucleograph.gnn.data import edge_channels, to_dgl
from nucleograph.gnn.models import build_model
from nucleograph.ingest.graph import build_edges


@pytest.fixture
def model_and_graph():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 400, size=(60, 2))
    e = build_edges(pts, threshold=100.0)
    g = to_dgl(rng.normal(size=(60, 5)), e["src"], e["dst"], edge_channels(e["dist"]), centroids=pts)
    m = build_model("rsf", in_feats=5, edge_channels=2)
    m.eval()
    return m, g


def test_deletion_curve_starts_at_the_prediction_and_ends_at_the_prior(model_and_graph):
    m, g = model_and_graph
    probs, c = fa.deletion_curve(m, g, np.arange(60, dtype=float), fractions=(0.0, 0.5, 1.0))
    with torch.no_grad():
        p0 = torch.softmax(m(g).double(), 1)[0]
    assert c == int(p0.argmax()) and probs[0] == pytest.approx(float(p0[c]))
    assert probs[-1] == pytest.approx(0.5)  # nothing left: the uniform prior over 2 classes
    assert fa.curve_area((0.0, 0.5, 1.0), probs) == pytest.approx(0.25 * probs[0] + 0.5 * probs[1] + 0.25 * probs[2])


def test_order_overrides_scores(model_and_graph):
    m, g = model_and_graph
    order = np.arange(60)[::-1]
    a, _ = fa.deletion_curve(m, g, np.arange(60, dtype=float), fractions=(0.0, 0.3))
    b, _ = fa.deletion_curve(m, g, np.zeros(60), fractions=(0.0, 0.3), order=order)
    np.testing.assert_allclose(a, b)


def test_roles_match_within_radius_and_enrichment():
    det = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 100.0], [500.0, 500.0]])
    truth = np.array([[1.0, 0.0], [10.0, 2.0], [100.0, 104.0]])
    roles = fa.match_roles(det, truth, ["a", "b", "b"], radius=8.0)
    assert roles.tolist() == ["a", "b", "b", None]
    # the single top nucleus (top third of 3 matched) is "a": a is 3x enriched, b absent
    enr = fa.role_enrichment(roles, np.array([5.0, 1.0, 0.0, 9.0]), top=0.34)
    assert enr == {"a": pytest.approx(3.0), "b": 0.0}
