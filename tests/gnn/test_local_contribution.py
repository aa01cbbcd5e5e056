"""Local contribution (gnn/contribution.py): what each nucleus adds to the neighbourhoods it lies in."""

import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_graph, small_model

from nucleograph.errors import InputError
from nucleograph.gnn.attribution import log_odds
from nucleograph.gnn.contribution import local_contribution, local_contribution_windows
from nucleograph.gnn.models import MODEL_NAMES

pytestmark = pytest.mark.usefixtures("one_thread")


def _value(model, graph, members, target):
    """Class-``target`` log-odds of the subgraph of ``members``, nothing shared with other graphs."""
    with torch.no_grad():
        return float(log_odds(model(dgl.node_subgraph(graph, torch.as_tensor(members))), target)[0])


def _naive(model, graph, target):
    """The definition, one subgraph at a time: the mean over the neighbourhoods N(j) that hold nucleus i of
    f(G[N(j)]) - f(G[N(j) minus i]); a nucleus without links scores f(G[{i}]) above the uniform prior."""
    n = graph.num_nodes()
    hood = [np.union1d([j], graph.in_edges(j)[0].numpy()) for j in range(n)]
    out = np.empty(n)
    for i in range(n):
        holders = [j for j in range(n) if i in hood[j]]
        if len(hood[i]) == 1:
            out[i] = _value(model, graph, hood[i], target) + np.log(model.n_classes - 1)
            continue
        out[i] = np.mean([_value(model, graph, hood[j], target) - _value(model, graph, hood[j][hood[j] != i], target)
                          for j in holders])
    return out


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_local_contribution_is_the_definition(name, rng):
    model, graph = small_model(name, rng), make_graph(40, clustered=True, rng=rng)
    graph = dgl.add_nodes(graph, 1, {k: v[:1] for k, v in graph.ndata.items()})  # node 40: no links
    with torch.no_grad():
        c = int(model(graph).argmax())
    scores = local_contribution(model, graph)
    naive = _naive(model, graph, c)
    assert scores.shape == (41,) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, naive, rtol=0, atol=1e-5 * max(1.0, np.abs(naive).max()))
    assert np.ptp(scores) > 0
    assert not model.training  # its mode kept


def test_batches_windows_and_id_types_give_the_same_scores(rng):
    model, graph = small_model("rsf-edge", rng), make_graph(70, clustered=False, rng=rng)
    whole = local_contribution(model, graph)
    tol = 1e-5 * max(1.0, np.abs(whole).max())
    np.testing.assert_allclose(local_contribution(model, graph.int()), whole, rtol=0, atol=tol)
    # a batch smaller than one neighbourhood's leave-one-out graphs still takes them whole
    np.testing.assert_allclose(local_contribution(model, graph, batch_nuclei=5), whole, rtol=0, atol=tol)
    parts = list(local_contribution_windows(model, graph, window=30))
    assert [p[0].size for p in parts] == [30, 30, 10]
    assert np.array_equal(np.concatenate([p[0] for p in parts]), np.arange(70))
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), whole, rtol=0, atol=tol)


def test_another_class_and_bad_input(rng):
    model, graph = small_model("rsf", rng, n_classes=3), make_graph(30, clustered=True, rng=rng)
    with torch.no_grad():
        other = (int(model(graph).argmax()) + 1) % 3
    scores = local_contribution(model, graph, target=other)
    naive = _naive(model, graph, other)
    np.testing.assert_allclose(scores, naive, rtol=0, atol=1e-5 * max(1.0, np.abs(naive).max()))
    with pytest.raises(InputError, match="out of range"):
        local_contribution(model, graph, target=3)
    with pytest.raises(InputError, match="dgl.unbatch"):
        local_contribution(model, dgl.batch([graph, graph]))
