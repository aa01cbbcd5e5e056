"""The reference occlusion: the model run on each occluded graph (one home for "the probability of the
model without these nuclei", also used by :mod:`nucleograph.gnn.faithfulness`), and the argument
checks that every occlusion path shares."""

from __future__ import annotations

import dgl
import numpy as np
import torch

from nucleograph.errors import InputError
from nucleograph.gnn.keys import EFEAT
from nucleograph.gnn.models import GraphClassifier


class EvalMode:
    """Put a model in eval mode with gradients off, and restore both afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self.model

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        self.model.train(self.was_training)


def check_single_graph(graph) -> None:
    """Raise :class:`InputError` unless ``graph`` is one image's non-empty graph."""
    if graph.batch_size != 1:
        raise InputError(
            f"explanations take one image's graph, got a batch of {graph.batch_size}; use dgl.unbatch"
        )
    if graph.num_nodes() == 0:
        raise InputError("the graph has no nuclei; there is nothing to explain")


def check_hops(hops: int) -> int:
    """``hops`` as an int; raise :class:`InputError` unless it is a non-negative integer."""
    if int(hops) != hops or hops < 0:
        raise InputError(f"hops must be a non-negative integer, got {hops!r}")
    return int(hops)


def pick_target(p0: np.ndarray, target: int | None) -> int:
    """The class to score: ``target``, checked against the classes of ``p0``, or the predicted one."""
    if target is None:
        return int(np.argmax(p0))
    if not 0 <= int(target) < p0.size:
        raise InputError(f"target class {target} is out of range for {p0.size} classes")
    return int(target)


def proba(model: GraphClassifier, graph) -> np.ndarray:
    """``(C,)`` float64 class probabilities of one image's graph; the uniform prior ``1 / C`` for a graph
    without nuclei (it has no defined model output). Call with gradients off."""
    if graph.num_nodes() == 0:
        return np.full(model.n_classes, 1.0 / model.n_classes)
    return torch.softmax(model(graph).double(), 1)[0].cpu().numpy()


def hop_ball(graph, node: int, hops: int) -> torch.Tensor:
    """The nuclei that occluding ``node`` removes: it and its ``hops``-hop in-neighbourhood."""
    if hops == 0:
        return torch.tensor([node], dtype=graph.idtype)
    sub, _ = dgl.khop_in_subgraph(graph, node, k=hops)
    return sub.ndata[dgl.NID]


def without(graph, removed) -> dgl.DGLGraph:
    """``graph`` without the nuclei ``removed`` (indices) and their edges."""
    if not isinstance(removed, torch.Tensor):
        removed = torch.from_numpy(np.array(removed, dtype=np.int64))  # a copy: torch takes no negative strides
    keep = torch.ones(graph.num_nodes(), dtype=torch.bool)
    keep[removed.long()] = False
    # node_subgraph rather than dgl.remove_nodes: the latter fails on graphs whose batch info is half
    # cached (DGL 2.1), and a model run caches it
    return dgl.node_subgraph(graph, torch.nonzero(keep).flatten().to(graph.idtype), store_ids=False)


def proba_without(model: GraphClassifier, graph, removed) -> np.ndarray:
    """``(C,)`` float64 class probabilities of ``graph`` without the nuclei ``removed``.

    Parameters
    ----------
    model : GraphClassifier
        In eval mode; call with gradients off.
    graph : dgl.DGLGraph
        One image's graph.
    removed : array-like of int
        Node indices to remove with their edges.

    Returns
    -------
    np.ndarray, shape (C,)
        The uniform prior ``1 / C`` when no nucleus is left.
    """
    return proba(model, without(graph, removed))


def occlusion_naive(model: GraphClassifier, graph, *, hops: int = 1, target: int | None = None) -> np.ndarray:
    """Occlusion scores by one model run per nucleus (the reference for :func:`nucleograph.gnn.explain.occlusion`).

    Parameters
    ----------
    model : GraphClassifier
        Run in eval mode (restored afterwards).
    graph : dgl.DGLGraph
        One image's graph (raw features).
    hops : int
        Remove each nucleus with its ``hops``-hop in-neighbourhood (``dgl.khop_in_subgraph``).
    target : int, optional
        Class to score; default the class predicted for the whole graph.

    Returns
    -------
    np.ndarray, shape (N,), float64
        ``p_c(G) - p_c(G_i)``; positive where removing the nucleus lowers the class probability.
    """
    hops = check_hops(hops)
    check_single_graph(graph)
    with EvalMode(model):
        p0 = proba(model, graph)
        c = pick_target(p0, target)
        scores = np.empty(graph.num_nodes())
        for i in range(graph.num_nodes()):
            scores[i] = p0[c] - proba_without(model, graph, hop_ball(graph, i, hops))[c]
    return scores


def occlusion_batched(model: GraphClassifier, graph, *, hops: int, target: int | None, batch_size: int) -> np.ndarray:
    """Occlusion scores from occluded copies run through the model in batches: exact for any model and
    graph, only a constant factor faster than :func:`occlusion_naive`. Arguments checked by the caller."""
    with EvalMode(model):
        p0 = proba(model, graph)
        c = pick_target(p0, target)
        n = graph.num_nodes()
        scores = np.empty(n)
        for start in range(0, n, batch_size):
            parts, idx_nonempty = [], []
            for i in range(start, min(n, start + batch_size)):
                g_i = without(graph, hop_ball(graph, i, hops))
                if g_i.num_nodes() == 0:
                    scores[i] = p0[c] - 1.0 / model.n_classes
                    continue
                if g_i.num_edges() == 0 and EFEAT not in g_i.edata:
                    # DGL drops the edge scheme with the last edge, and dgl.batch needs it on every part
                    g_i.edata[EFEAT] = torch.zeros(0, model.edge_channels or 1, dtype=graph.edata[EFEAT].dtype)
                parts.append(g_i)
                idx_nonempty.append(i)
            if parts:
                p = torch.softmax(model(dgl.batch(parts)).double(), 1)[:, c].cpu().numpy()
                scores[idx_nonempty] = p0[c] - p
    return scores
