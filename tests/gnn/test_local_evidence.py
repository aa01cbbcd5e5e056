"""Local evidence (gnn/local.py): each nucleus scored by the model on its neighbourhood alone."""

import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_graph, small_model
from scipy.spatial import cKDTree

from nucleograph.errors import InputError
from nucleograph.gnn.attribution import log_odds
from nucleograph.gnn.data import edge_channels, to_dgl
from nucleograph.gnn.faithfulness import tie_share
from nucleograph.gnn.keys import CENTROID, EFEAT, FEAT
from nucleograph.gnn.local import (
    local_evidence,
    local_evidence_windows,
    neighbourhood_graphs,
    own_contribution,
)
from nucleograph.gnn.models import MODEL_NAMES
from nucleograph.gnn.occlusion.reference import EvalMode

pytestmark = pytest.mark.usefixtures("one_thread")
_model = small_model


def _naive(model, graph, node, target):
    """The definition: the model on the subgraph of ``node`` and its in-neighbours, nothing shared."""
    members = torch.cat([torch.tensor([node]), graph.in_edges(node)[0]]).unique()
    with torch.no_grad():
        return float(log_odds(model(dgl.node_subgraph(graph, members)), target)[0]) + np.log(model.n_classes - 1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_local_evidence_is_the_model_on_each_neighbourhood_alone(name, rng):
    model, graph = _model(name, rng), make_graph(60, clustered=True, rng=rng)
    scores = local_evidence(model, graph)
    with torch.no_grad():
        c = int(model(graph).argmax())
    naive = np.array([_naive(model, graph, i, c) for i in range(graph.num_nodes())])
    assert scores.shape == (60,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, naive, rtol=0, atol=1e-5 * max(1.0, np.abs(naive).max()))
    assert np.ptp(scores) > 0  # neighbourhoods differ, so do their scores
    assert not model.training  # its mode kept


def test_batches_and_windows_give_the_same_scores(rng):
    model, graph = _model("rsf-edge", rng), make_graph(80, clustered=False, rng=rng)
    whole = local_evidence(model, graph)
    np.testing.assert_array_equal(local_evidence(model, graph.int()), whole)  # 32-bit node ids alike
    small = local_evidence(model, graph, batch_nuclei=7)  # a neighbourhood larger than a batch stays whole
    np.testing.assert_allclose(small, whole, rtol=0, atol=1e-5 * max(1.0, np.abs(whole).max()))
    parts = list(local_evidence_windows(model, graph, window=25))
    assert [p[0].size for p in parts] == [25, 25, 25, 5]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), np.arange(80))
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), whole, rtol=0,
                               atol=1e-5 * max(1.0, np.abs(whole).max()))


def test_another_class_and_three_classes_score_above_the_uniform_prior(rng):
    model, graph = _model("rsf", rng, n_classes=3), make_graph(40, clustered=True, rng=rng)
    with torch.no_grad():
        predicted = int(model(graph).argmax())
    other = (predicted + 1) % 3
    scores = local_evidence(model, graph, target=other)
    naive = np.array([_naive(model, graph, i, other) for i in range(40)])  # log-odds + log(C - 1)
    np.testing.assert_allclose(scores, naive, rtol=0, atol=1e-5 * max(1.0, np.abs(naive).max()))
    with pytest.raises(InputError, match="out of range"):
        local_evidence(model, graph, target=3)
    with pytest.raises(InputError, match="dgl.unbatch"):
        local_evidence(model, dgl.batch([graph, graph]))


def test_neighbourhoods_keep_each_nucleus_once_and_carry_features():
    # node 0 <- 1 (twice: a multi-edge), 0 <- 0 (a self-loop), 1 <- 2, 2 <- 0; node 3 isolated
    src, dst = np.array([1, 1, 0, 2, 0]), np.array([0, 0, 0, 1, 2])
    feats = np.arange(8, dtype=np.float32).reshape(4, 2)
    graph = dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=4)
    graph.ndata[FEAT] = torch.from_numpy(feats)
    graph.ndata[CENTROID] = torch.arange(8.0).reshape(4, 2)
    graph.edata[EFEAT] = torch.arange(10.0).reshape(5, 2)
    batch = neighbourhood_graphs(graph, np.array([0, 3, 1]))
    assert batch.batch_num_nodes().tolist() == [2, 1, 2]  # {0, 1}, {3}, {1, 2}
    sub = dgl.unbatch(batch)
    assert sub[0].ndata[FEAT].tolist() == feats[[0, 1]].tolist()
    assert sub[1].ndata[FEAT].tolist() == feats[[3]].tolist() and sub[1].num_edges() == 0
    assert sub[2].ndata[CENTROID].tolist() == graph.ndata[CENTROID][[1, 2]].tolist()
    # every edge among the members, each as often as in the graph: 1 -> 0 twice and 0 -> 0 for {0, 1}
    got = sorted(zip(*(t.tolist() for t in sub[0].edges()), sub[0].edata[EFEAT][:, 0].tolist(), strict=True))
    assert got == [(0, 0, 4.0), (1, 0, 0.0), (1, 0, 2.0)]
    assert sorted(zip(*(t.tolist() for t in sub[2].edges()), strict=True)) == [(1, 0)]  # 2 -> 1, as positions in {1, 2}

    # without the centres: {1}, {} (node 3 has no links), {2}; no edge among any of them
    bare = neighbourhood_graphs(graph, np.array([0, 3, 1]), keep_centre=False)
    assert bare.batch_num_nodes().tolist() == [1, 0, 1] and bare.num_edges() == 0
    assert bare.ndata[FEAT].tolist() == feats[[1, 2]].tolist()


def _with_a_lone_group(rng, n=50, group=4):
    """Scattered nuclei plus ``group`` nuclei within a few px of each other, far from the rest: the
    group's nuclei all have the same neighbourhood (the group)."""
    pts = np.vstack([rng.uniform(0, 700, size=(n, 2)), 2000.0 + rng.uniform(0, 10, size=(group, 2))])
    pairs = cKDTree(pts).query_pairs(60.0, output_type="ndarray").reshape(-1, 2)
    d = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
    return to_dgl(rng.normal(size=(n + group, 4)), pairs[:, 0], pairs[:, 1], edge_channels(d), centroids=pts,
                  nucleus_ids=np.arange(n + group) + 1000)


def _naive_own(model, graph, node, target):
    """The definition: the model on ``node``'s neighbourhood minus the model on it without ``node``."""
    others = graph.in_edges(node)[0].unique()
    others = others[others != node]
    with torch.no_grad():
        rest = float(log_odds(model(dgl.node_subgraph(graph, others)), target)[0])
    return _naive(model, graph, node, target) - rest - np.log(model.n_classes - 1)


@pytest.mark.parametrize("name", ["rsf-edge", "rsf-attention"])
def test_nuclei_with_one_neighbourhood_are_ordered_by_what_each_adds(name, rng):
    model, graph = _model(name, rng), _with_a_lone_group(rng)
    group = np.arange(50, 54)
    raw = local_evidence(model, graph, tie_break=False)
    assert np.unique(raw[group]).size == 1  # one neighbourhood, one score: a tie
    scores = local_evidence(model, graph)
    with torch.no_grad():
        c = int(model(graph).argmax())
    own = np.array([_naive_own(model, graph, i, c) for i in group])
    np.testing.assert_array_equal(np.argsort(scores[group]), np.argsort(own))  # ordered by what each adds
    assert tie_share(scores) < tie_share(raw) and np.unique(scores[group]).size == 4
    values, counts = np.unique(raw, return_counts=True)
    untied = ~np.isin(raw, values[counts > 1])
    np.testing.assert_array_equal(scores[untied], raw[untied])  # the rest untouched
    differ = raw[:, None] != raw[None, :]
    assert np.array_equal(np.sign(scores[:, None] - scores[None, :])[differ],
                          np.sign(raw[:, None] - raw[None, :])[differ])  # no distinct scores swap
    gap = np.diff(np.unique(raw)).min()
    assert np.abs(scores - raw).max() <= 0.25 * gap


def test_own_contribution_is_the_definition_and_a_lone_nucleus_adds_its_whole_score(rng):
    model, graph = _model("rsf", rng), _with_a_lone_group(rng, n=30)
    graph = dgl.add_nodes(graph, 1, {k: v[:1] for k, v in graph.ndata.items()})  # node 34: no links
    scores = local_evidence(model, graph, tie_break=False)
    with torch.no_grad():
        c = int(model(graph).argmax())
    linked = np.flatnonzero(graph.in_degrees().numpy()[:30] > 0)
    centres = np.array([linked[0], linked[-1], 31, 34])
    with EvalMode(model), torch.no_grad():
        own = own_contribution(model, graph, centres, scores[centres], c, batch_nuclei=3)
    naive = [_naive_own(model, graph, i, c) for i in centres[:3]]
    np.testing.assert_allclose(own[:3], naive, rtol=0, atol=1e-5 * max(1.0, np.abs(naive).max()))
    assert own[3] == scores[34]
