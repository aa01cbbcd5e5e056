"""Local evidence (gnn/local.py): each nucleus scored by the model on its neighbourhood alone."""

import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_graph, small_model

from nucleograph.errors import InputError
from nucleograph.gnn.attribution import log_odds
from nucleograph.gnn.keys import CENTROID, EFEAT, FEAT
from nucleograph.gnn.local import local_evidence, local_evidence_windows, neighbourhood_graphs
from nucleograph.gnn.models import MODEL_NAMES

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
