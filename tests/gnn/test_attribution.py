"""Gradient x input, integrated gradients and GNNExplainer (gnn/attribution.py)."""

import dgl
import numpy as np
import pytest
import torch
from gnn_synth import BASELINES, SMALL, make_graph, small_model
from scipy.spatial import cKDTree

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.attribution import (
    RSFExplainerAdapter,
    gnnexplainer_scores,
    gradient_x_input,
    integrated_gradients,
    log_odds,
)
from nucleograph.gnn.data import edge_channels, to_dgl
from nucleograph.gnn.keys import FEAT
from nucleograph.gnn.models import MODEL_NAMES
from nucleograph.gnn.train import TrainConfig, train_model

RSF_NAMES = [n for n in MODEL_NAMES if n not in BASELINES]
FEATURE_READERS = [n for n in MODEL_NAMES if n != "graphstats"]  # the gradient methods' models
pytestmark = pytest.mark.usefixtures("one_thread")




def _model(name, rng):
    return small_model(name, rng)


def _log_odds_at(m, g, raw, c):
    """f_c of ``g`` with raw node features ``raw`` (the class fixed, not re-predicted)."""
    with torch.no_grad(), g.local_scope():
        g.ndata[FEAT] = raw
        return float(log_odds(m(g), c)[0])


@pytest.mark.parametrize("name", FEATURE_READERS)
def test_gradient_x_input_matches_central_differences(name, rng):
    m = _model(name, rng).double()  # float64: the differences resolve the derivative to ~1e-10
    g = make_graph(20, clustered=True, rng=rng)
    c = int(m(g).argmax())
    x, mu = g.ndata[FEAT].double(), m.feat_mean.double()
    s = gradient_x_input(m, g)
    assert s.shape == (20,) and s.dtype == np.float64
    eps = 1e-6
    fd = np.empty(20)
    for i in range(20):
        d = torch.zeros_like(x)
        d[i] = x[i] - mu  # the nucleus's deviation from the cohort mean
        fd[i] = (_log_odds_at(m, g, x + eps * d, c) - _log_odds_at(m, g, x - eps * d, c)) / (2 * eps)
    assert np.abs(fd).max() > 1e-3  # the check has something to check
    assert np.abs(s - fd).max() <= 1e-7


def _integrand(m, g, c, base, alphas):
    """The IG integrand (x - b) . grad f(b + a (x - b)) at each ``alpha``, by plain autograd on one
    batch of copies of ``g`` (batch norm in eval mode: the copies do not interact)."""
    x = g.ndata[FEAT].double()
    a = torch.as_tensor(alphas, dtype=x.dtype).view(-1, 1, 1)
    bg = dgl.batch([g] * len(alphas))
    xin = (base + a * (x - base)).reshape(-1, x.shape[1]).requires_grad_(True)
    bg.ndata[FEAT] = xin
    (grad,) = torch.autograd.grad(log_odds(m(bg), c).sum(), xin)
    return ((x - base) * grad.view(len(alphas), *x.shape)).sum((1, 2)).numpy()


@pytest.mark.parametrize("name", FEATURE_READERS)
def test_integrated_gradients_is_complete_within_the_trapezoid_bound(name, rng):
    m = _model(name, rng).double()
    g = make_graph(24, clustered=True, rng=rng)
    c = int(m(g).argmax())
    x = g.ndata[FEAT].double()
    for base_arg, base in [(None, m.feat_mean.double().expand_as(x)), (np.zeros(4), torch.zeros_like(x))]:
        delta = _log_odds_at(m, g, x, c) - _log_odds_at(m, g, base, c)
        # trapezoid rule on an integrand of bounded variation V: |error| <= V h / 2, h = 1 / (steps - 1);
        # V measured on a fine grid (the integrand is piecewise smooth: ReLU)
        variation = np.abs(np.diff(_integrand(m, g, c, base, np.linspace(0, 1, 513)))).sum()
        assert variation / (2 * 127) < 0.5 * abs(delta)  # the bound at 128 steps can tell a wrong sum
        for steps in (8, 32, 128):
            s = integrated_gradients(m, g, steps=steps, baseline=base_arg, batch_size=11)
            assert s.shape == (24,) and np.isfinite(s).all()
            gap = abs(s.sum() - delta)
            assert gap <= variation / (2 * (steps - 1)) + 1e-9, (steps, gap, variation, delta)


@pytest.mark.parametrize("name", FEATURE_READERS)
def test_gradient_scores_flip_sign_with_the_other_class(name, rng):
    # two classes: f_0 = z_0 - z_1 = -f_1, so every attribution flips sign
    m = _model(name, rng)
    g = make_graph(20, clustered=False, rng=rng)
    assert np.allclose(gradient_x_input(m, g, target=0), -gradient_x_input(m, g, target=1), atol=1e-6)
    assert np.allclose(integrated_gradients(m, g, target=0, steps=6), -integrated_gradients(m, g, target=1, steps=6),
                       atol=1e-5)


@pytest.mark.parametrize("name", RSF_NAMES)
def test_adapter_gives_the_models_logits_and_masked_edges_carry_nothing(name, rng):
    m = _model(name, rng)
    g = make_graph(30, clustered=True, rng=rng)
    adapter = RSFExplainerAdapter(m)
    feat = m.input_features(g)
    with torch.no_grad():
        z = m(g)
        assert torch.equal(adapter(g, feat), z)
        assert torch.equal(adapter(g, feat, torch.ones(g.num_edges())), z)
    # a weight that needs a gradient takes DGL's message passing instead of the CSR product
    w = torch.ones(g.num_edges(), requires_grad=True)
    assert torch.allclose(adapter(g, feat, w), z, atol=1e-6, rtol=0)
    # weight 0 on an edge is the edge removed, in every layer that reads the edges
    drop = torch.arange(0, g.num_edges(), 3)
    w = torch.ones(g.num_edges())
    w[drop] = 0.0
    with torch.no_grad():
        removed = m(dgl.remove_edges(g, drop))
        assert (removed - z).abs().max() > 1e-4  # the dropped edges did matter
        assert torch.allclose(adapter(g, feat, w), removed, atol=1e-6, rtol=0)


def test_adapter_needs_an_rsf_model(rng):
    with pytest.raises(ModelError, match="integrated gradients"):
        RSFExplainerAdapter(_model("mlp", rng))
    with pytest.raises(ModelError, match="RSF"):
        gnnexplainer_scores(_model("mlp", rng), make_graph(10, clustered=True, rng=rng))


@pytest.mark.parametrize("name", RSF_NAMES)
def test_gnnexplainer_is_deterministic_per_seed_and_leaves_the_model_alone(name, rng):
    m = _model(name, rng)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = make_graph(30, clustered=True, rng=rng)
    torch.manual_seed(123)
    s1, edge_mask, feat_mask = gnnexplainer_scores(m, g, epochs=20, seed=0, return_masks=True)
    after_rng = torch.rand(1)
    s2 = gnnexplainer_scores(m, g, epochs=20, seed=0)
    s3 = gnnexplainer_scores(m, g, epochs=20, seed=1)
    assert np.array_equal(s1, s2) and not np.array_equal(s1, s3)
    assert s1.shape == (30,) and ((s1 >= 0) & (s1 <= 1)).all()
    assert edge_mask.shape == (g.num_edges(),) and feat_mask.shape == (4,)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after_rng)  # the global random state is not consumed
    assert m.training and all(p.grad is None for p in m.parameters())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


@pytest.mark.parametrize("name", FEATURE_READERS)
def test_gradient_methods_leave_the_model_alone(name, rng):
    m = _model(name, rng)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    g = make_graph(25, clustered=True, rng=rng)
    with torch.no_grad():  # as explain_run's callers may be: the methods switch autograd on themselves
        s = gradient_x_input(m, g)
        t = integrated_gradients(m, g, steps=4)
    assert np.isfinite(s).all() and np.isfinite(t).all() and np.abs(s).max() > 0
    assert m.training and all(p.grad is None for p in m.parameters())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_graphs_without_edges(rng):
    m = _model("rsf", rng)
    g = to_dgl(rng.normal(size=(5, 4)), [], [], np.zeros((0, 2)))
    assert np.isfinite(gradient_x_input(m, g)).all() and np.isfinite(integrated_gradients(m, g, steps=4)).all()
    assert np.array_equal(gnnexplainer_scores(m, g), np.zeros(5))
    # an isolated nucleus beside edges scores 0: no edge of its to keep
    g = to_dgl(rng.normal(size=(4, 4)), [0, 1], [1, 2], np.array([[0.9, 0.8], [0.5, 0.3]]))
    s = gnnexplainer_scores(m, g, epochs=5)
    assert s[3] == 0.0 and (s[:3] > 0).all()


def test_errors_name_the_fix(rng):
    m = _model("rsf", rng)
    g = make_graph(12, clustered=False, rng=rng)
    for fn in (gradient_x_input, integrated_gradients, gnnexplainer_scores):
        with pytest.raises(InputError, match="out of range"):
            fn(m, g, target=2)
        with pytest.raises(InputError, match="dgl.unbatch"):
            fn(m, dgl.batch([g, g]))
    with pytest.raises(InputError, match="steps"):
        integrated_gradients(m, g, steps=1)
    with pytest.raises(InputError, match="batch_size"):
        integrated_gradients(m, g, batch_size=0)
    with pytest.raises(InputError, match=r"shape \(4,\)"):
        integrated_gradients(m, g, baseline=np.zeros(3))
    with pytest.raises(InputError, match="finite"):
        integrated_gradients(m, g, baseline=np.full(4, np.nan))
    with pytest.raises(InputError, match="epochs"):
        gnnexplainer_scores(m, g, epochs=0)
    with pytest.raises(InputError, match="lr"):
        gnnexplainer_scores(m, g, lr=0.0)
    with pytest.raises(ModelError, match="GraphClassifier"):
        gradient_x_input(torch.nn.Linear(4, 2), g)


PLANTED = 10  # nuclei of the planted clump


def _planted(n, *, clump, rng, radius=60.0):
    """``n`` nuclei spread uniformly, noise features; with ``clump`` the first ``PLANTED`` of them are
    packed into one tight clump instead. The clump alone decides the class."""
    side = 100.0 * np.sqrt(n)
    pts = rng.uniform(0, side, size=(n, 2))
    if clump:
        pts[:PLANTED] = rng.uniform(0.3 * side, 0.7 * side, size=2) + rng.normal(scale=12.0, size=(PLANTED, 2))
    pairs = cKDTree(pts).query_pairs(radius, output_type="ndarray").reshape(-1, 2)
    d = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
    return to_dgl(rng.normal(size=(n, 4)), pairs[:, 0], pairs[:, 1], edge_channels(d), centroids=pts)


def _auroc(pos, neg):
    """P(a positive scores above a negative), ties counting one half."""
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


@pytest.mark.slow
def test_gnnexplainer_finds_the_planted_clump_the_model_decides_on():
    rng = np.random.default_rng(3)
    graphs = [_planted(40, clump=bool(i % 2), rng=rng) for i in range(80)]
    labels = np.arange(80) % 2
    cfg = TrainConfig(model_name="rsf", model_kwargs=SMALL, epochs=30, seed=0, patience=None)
    res = train_model(graphs, labels, cfg)
    assert res.metrics["accuracy"] >= 0.9  # the model learnt the clump
    m = res.model.eval()
    for _ in range(3):
        g = _planted(40, clump=True, rng=rng)
        assert int(m(g).argmax()) == 1
        s = gnnexplainer_scores(m, g)
        assert _auroc(s[:PLANTED], s[PLANTED:]) >= 0.85


def test_every_method_is_described_where_users_pick_it(capsys):
    from nucleograph.cli import main
    from nucleograph.dashboard.stats import methods_help
    from nucleograph.db.runs import METHOD_NOTES, METHODS

    assert set(METHOD_NOTES) == set(METHODS) >= {"gradxinput", "ig", "gnnexplainer"}
    assert all(f"**{m}**" in methods_help() for m in METHODS)
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(f"{m}: " in text for m in METHODS)


def test_gradient_methods_refuse_a_model_that_reads_no_node_features(rng):
    m = _model("graphstats", rng)
    g = make_graph(20, clustered=True, rng=rng)
    for method in (gradient_x_input, integrated_gradients):
        with pytest.raises(ModelError, match="reads no node features"):
            method(m, g)
