"""Explaining slides (issue 15 item 4): occlusion and attention window by window give the whole graph's
scores, and a cluster summed afresh from block sums equals a float64 sum over every nucleus."""

import copy

import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_graph

from nucleograph.errors import InputError
from nucleograph.gnn.explain import Precision, attention_scores, occlusion, occlusion_naive, occlusion_windows
from nucleograph.gnn.keys import EFEAT
from nucleograph.gnn.models import build_model
from nucleograph.gnn.occlusion import pooling
from nucleograph.gnn.occlusion.balls import ball_lists, out_edges
from nucleograph.gnn.occlusion.cache import PoolingSums
from nucleograph.gnn.occlusion.windows import spatial_windows

TABLE_I = ["rsf", "rsf-edge", "rsf-attention"]
WINDOW = 400  # nuclei per window: the slide-like graph below is about six windows (and blocks)


def _model(name, rng, *, sharpen=1.0):
    torch.manual_seed(0)
    m = build_model(name, in_feats=4, edge_channels=2, conv_feats=(16, 16, 16), pool_sizes=(8, 4), fc_feats=(32, 16))
    m.train()  # non-trivial batch-norm running statistics
    with torch.no_grad():
        for _ in range(3):
            m(dgl.batch([make_graph(30, clustered=True, rng=rng), make_graph(30, clustered=False, rng=rng)]))
        m.pool1.embed.weight.mul_(sharpen)
    return m.eval()


def _slide(n, rng):
    """``n`` nuclei at a slide's density: about 14 neighbours each within the edge radius, as ingest's
    100 px graphs of real tissue have."""
    return make_graph(n, clustered=False, rng=rng, side=28.4 * np.sqrt(n))


def _tolerance(m, g) -> float:
    """Log-odds drops: 1e-5 per unit of the largest |logit| (as tests/gnn/test_explain.py)."""
    with torch.no_grad():
        return 1e-5 * max(1.0, float(m(g).abs().max()))


def _assert_naive(m, g, hops, nodes, fast):
    """``fast`` equals the naive loop on ``nodes``: within :func:`_tolerance` plus a few times the model's
    own float32 rounding of the loop run in float64.

    That rounding is the float32 loop's distance to the float64 one: on 2,400 nuclei it reaches 2e-4
    where assignments are peaked (the largest value on these nuclei bounds every nucleus; the fast path
    carries float32 rounding in the rows an occlusion changes, as the model does, once seen at 2.7 times
    the loop's own), and RSF+Edge's edge convolutions, which keep only the pooled entries that are not
    exactly zero, jump by O(1) on the few nuclei where such an entry underflows float32 in one pass and
    not in another (such a jump, over 1e-2, bounds its own nucleus only)."""
    n32 = occlusion_naive(m, g, hops=hops, nodes=nodes)
    n64 = occlusion_naive(copy.deepcopy(m).double(), g, hops=hops, nodes=nodes)
    own = np.abs(n32 - n64)
    rounding = own[own < 1e-2].max(initial=0.0)
    excess = np.abs(fast[nodes] - n64) - 4 * np.maximum(own, rounding)
    assert excess.max() <= _tolerance(m, g), (fast[nodes], n32, n64)


def _sample(g, hops, rng, k=24):
    """Nuclei whose balls cross the most windows (where a halo matters), and random others."""
    src, dst = (t.numpy() for t in g.edges())
    edges = out_edges(src, dst, g.num_nodes())
    windows = spatial_windows(g.ndata["centroid"].numpy(), g.num_nodes(), size=WINDOW)
    balls = ball_lists(edges.indptr, edges.dst, hops + 3)
    crossed = [np.unique(windows.of_node[balls.node[balls.start[i]:balls.start[i + 1]]]).size for i in range(g.num_nodes())]
    border = np.argsort(crossed, kind="stable")[-k // 2:]
    return np.unique(np.concatenate([border, rng.choice(g.num_nodes(), k // 2, replace=False)]))


def test_windows_split_the_nuclei_into_compact_groups(rng):
    pts = rng.uniform(0, 10_000, size=(5000, 2))
    pts[:2000] *= 0.3  # a dense corner and sparse background
    w = spatial_windows(pts, 5000, size=500)
    assert np.array_equal(np.sort(w.node), np.arange(5000))
    assert all(np.array_equal(w.of_node[w[i]], np.full(w.sizes()[i], i)) for i in range(len(w)))
    assert 5 <= len(w) <= 25 and w.sizes().min() > 0
    extent = [np.ptp(pts[w[i]], axis=0).max() for i in range(len(w))]
    assert max(extent) < 10_000 / 2  # compact: no window spans the slide
    # at most `size` nuclei: one window; without centroids: runs of ids
    assert len(spatial_windows(pts, 5000, size=5000)) == 1
    runs = spatial_windows(None, 5000, size=2000)
    assert runs.sizes().tolist() == [2000, 2000, 1000] and np.array_equal(runs.node, np.arange(5000))
    with pytest.raises(InputError, match="at least one nucleus"):
        spatial_windows(pts, 5000, size=0)
    with pytest.raises(InputError, match="finite"):
        spatial_windows(np.full((5000, 2), np.nan), 5000, size=100)


def test_balls_of_some_centers_are_theirs_among_every_nodes_balls(rng):
    g = _slide(300, rng)
    src, dst = (t.numpy() for t in g.edges())
    edges = out_edges(src, dst, 300)
    every = ball_lists(edges.indptr, edges.dst, 3)
    centers = rng.choice(300, 40, replace=False)
    some = ball_lists(edges.indptr, edges.dst, 3, centers)
    for i, c in enumerate(centers):
        part = slice(some.start[i], some.start[i + 1])
        whole = slice(every.start[c], every.start[c + 1])
        assert np.array_equal(some.node[part], every.node[whole]) and np.array_equal(some.dist[part], every.dist[whole])


@pytest.mark.slow
@pytest.mark.parametrize("name", TABLE_I)
@pytest.mark.parametrize("hops", [1, 2, 3])
def test_windowed_occlusion_equals_the_naive_loop(name, hops, rng, one_thread):
    """A slide-like graph of 2,400 nuclei in six windows: the windowed scores equal the naive loop's
    (reference.occlusion_naive, the model run on each occluded graph) on nuclei whose balls cross the
    most windows and on random ones; and they equal one window's up to the whole image's value (model
    pass vs cached float64 pooling: the same for every nucleus) and float32 rounding."""
    m = _model(name, rng)
    g = _slide(2400, rng)
    windowed = occlusion(m, g, hops=hops, window=WINDOW)
    assert np.isfinite(windowed).all()
    _assert_naive(m, g, hops, _sample(g, hops, rng), windowed)
    whole = occlusion(m, g, hops=hops, window=g.num_nodes())
    offset = whole - windowed
    assert np.abs(np.median(offset)) <= _tolerance(m, g)
    assert np.quantile(np.abs(offset - np.median(offset)), 0.99) <= _tolerance(m, g) / 4  # all but RSF+Edge's jumps


def _float64_afresh(state, o, clusters):
    """The afresh sums of occlusion ``o`` over every nucleus of the image, in float64 from the logits:
    ``den_k``, row ``k`` of ``num`` and of ``adj`` with each afresh cluster at its own shift."""
    change = state.change
    batch, image = change.batch, change.image
    g = image.graph
    rows = np.flatnonzero(batch.occ == o)
    removed, kept = rows[rows < batch.n_removed], rows[rows >= batch.n_removed]
    z, h = image.z64.clone(), image.h2_64.clone()
    z[batch.node[removed]] = -torch.inf
    z[batch.node[kept]] = change.z_new[kept - batch.n_removed].double()
    changed = kept[kept < batch.n_vconv2]
    h[batch.node[changed]] = change.h_new[changed - batch.n_removed].double()
    shift = image.shift.clone()
    shift[clusters] = z[:, clusters].max(0).values
    e = torch.exp(z - shift)
    src, dst = (t.long() for t in g.edges())
    efeat = g.edata[EFEAT].double()
    ae = torch.zeros(g.num_nodes(), efeat.shape[1], e.shape[1], dtype=torch.float64)
    ae.index_add_(0, dst, efeat.unsqueeze(2) * e[src].unsqueeze(1))
    ek = e[:, clusters]
    return ek.sum(0), ek.T @ h, torch.einsum("ik,ilj->klj", ek, ae)


@pytest.mark.slow
def test_clusters_summed_afresh_from_blocks_equal_a_float64_sum_over_every_nucleus(rng, one_thread):
    """Peaked assignments (as trained models have): occlusions that remove virtually all of a cluster's
    mass sum it afresh from the blocks' sums, the touched blocks' nuclei and the ball's rows. That equals
    a float64 sum over every nucleus with the cluster's own shift to float64 rounding, and the windowed
    scores equal the naive loop's there."""
    m = _model("rsf", rng, sharpen=40.0)
    g = _slide(2400, rng)
    checked, afresh_nodes = [], []

    class Checked(Precision):
        def tiers(self, state):
            heavy, afresh = super().tiers(state)
            if afresh.any():
                afresh_nodes.extend(state.change.batch.centers[afresh.any(1)].tolist())
                ours = PoolingSums(state.sums.num.clone(), state.sums.den.clone(), state.sums.adj.clone())
                pooling.sum_afresh(_with_sums(state, ours), afresh)
                for o in np.flatnonzero(afresh.any(1))[:4]:
                    cl = np.flatnonzero(afresh[o])
                    den, num, adj = _float64_afresh(state, o, cl)
                    torch.testing.assert_close(ours.den[o, cl], den, rtol=1e-12, atol=0)
                    torch.testing.assert_close(ours.num[o, cl], num, rtol=1e-12, atol=1e-300 + 1e-12 * float(num.abs().max()))
                    torch.testing.assert_close(ours.adj[o, cl], adj, rtol=1e-12, atol=1e-12 * float(adj.abs().max()))
                    checked.append(o)
            return heavy, afresh

    windowed = occlusion(m, g, hops=1, window=WINDOW, precision=Checked())
    assert len(checked) > 10
    blocks = spatial_windows(g.ndata["centroid"].numpy(), g.num_nodes(), size=WINDOW)
    assert len(blocks) >= 5  # most blocks untouched by any one occlusion: their sums were used
    _assert_naive(m, g, 1, np.unique(afresh_nodes)[:20], windowed)


def _with_sums(state, sums):
    out = copy.copy(state)
    out.sums = sums
    return out


def test_occlusion_windows_yield_every_nucleus_once(rng):
    m = _model("rsf", rng)
    g = _slide(900, rng)
    parts = list(occlusion_windows(m, g, window=200))
    assert len(parts) >= 3
    nodes = np.concatenate([p[0] for p in parts])
    assert np.array_equal(np.sort(nodes), np.arange(900))
    scores = np.empty(900)
    for p in parts:
        scores[p[0]] = p[1]
    np.testing.assert_array_equal(scores, occlusion(m, g, window=200))
    with pytest.raises(InputError, match="window"):
        occlusion_windows(m, g, window=0)
    # other models: one window, the batched fallback
    mlp = build_model("mlp", in_feats=4, edge_channels=2)
    assert [p[0].size for p in occlusion_windows(mlp.eval(), g, window=200)] == [900]


def test_attention_by_window_equals_the_whole_graph(rng):
    m = _model("rsf-attention", rng)
    g = _slide(1500, rng)
    whole = attention_scores(m, g)
    windowed = attention_scores(m, g, window=300)
    np.testing.assert_allclose(windowed, whole, rtol=0, atol=1e-6)
