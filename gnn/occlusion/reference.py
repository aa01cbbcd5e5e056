"""The reference occlusion: the model run on each occluded graph (one home for "the probability of the
model without these nuclei", also used by :mod:`nucleograph.gnn.faithfulness`), what an occlusion
score measures (:func:`target_values`: log-odds or probability of the explained class, from the
logits), and the argument checks that every occlusion path shares."""

from __future__ import annotations

import dgl
import numpy as np
import torch

from nucleograph.db.runs import OUTPUTS
from nucleograph.errors import InputError
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


def check_output(output: str) -> str:
    """``output``; raise :class:`InputError` unless it is one of :data:`nucleograph.db.runs.OUTPUTS`."""
    if output not in OUTPUTS:
        raise InputError(f"unknown occlusion output {output!r}: choose one of {', '.join(OUTPUTS)}")
    return output


def target_values(logits: torch.Tensor, target: int, output: str) -> np.ndarray:
    """``(b,)`` float64: the class-``target`` log-odds or probability of each row of ``logits`` ``(b, C)``.

    .. math:: \\operatorname{logodds}_c = \\log \\frac{p_c}{1 - p_c} = z_c - \\log \\sum_{j \\ne c} e^{z_j}

    computed from the logits in float64, never from a probability: a probability near 1 rounds to 1
    (``1 - p`` below float64's resolution), its log-odds stays resolved as finely as the logits.
    """
    z = logits.double()
    if output == "prob":
        return torch.softmax(z, 1)[:, target].cpu().numpy()
    others = torch.cat([z[:, :target], z[:, target + 1:]], 1)
    return (z[:, target] - torch.logsumexp(others, 1)).cpu().numpy()


def empty_value(n_classes: int, output: str) -> float:
    """The value of a graph without nuclei (no defined model output): the uniform prior ``1 / C``, whose
    log-odds is ``log(1 / (C - 1))``."""
    return 1.0 / n_classes if output == "prob" else -float(np.log(n_classes - 1))


def graph_value(model: GraphClassifier, graph, target: int, output: str) -> float:
    """One graph's class-``target`` value (:func:`target_values`; :func:`empty_value` without nuclei).
    Call with gradients off."""
    if graph.num_nodes() == 0:
        return empty_value(model.n_classes, output)
    return float(target_values(model(graph), target, output)[0])


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
    """``graph`` without the nuclei ``removed`` (indices) and their edges.

    The result keeps every edge feature's scheme even when no edge is left (DGL drops it with the last
    edge), so it can always be batched with other parts of ``graph``."""
    if not isinstance(removed, torch.Tensor):
        removed = torch.from_numpy(np.array(removed, dtype=np.int64))  # a copy: torch takes no negative strides
    keep = torch.ones(graph.num_nodes(), dtype=torch.bool)
    keep[removed.long()] = False
    # node_subgraph rather than dgl.remove_nodes: the latter fails on graphs whose batch info is half
    # cached (DGL 2.1), and a model run caches it
    sub = dgl.node_subgraph(graph, torch.nonzero(keep).flatten().to(graph.idtype), store_ids=False)
    for key, value in graph.edata.items():
        if key not in sub.edata:
            sub.edata[key] = value.new_zeros((0, *value.shape[1:]))
    return sub


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


def occlusion_naive(model: GraphClassifier, graph, *, hops: int = 1, target: int | None = None,
                    output: str = "logodds", nodes=None) -> np.ndarray:
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
    output : {"logodds", "prob"}
        What the score measures (:func:`target_values`): the drop of the class's log-odds
        ``log(p_c / (1 - p_c))``, from the logits (the default: it does not saturate), or of its
        probability ``p_c``.
    nodes : array-like of int, optional
        Score these nuclei only, in this order (default: all): a slide's fast scores are checked on a sample.

    Returns
    -------
    np.ndarray, shape (N,) or (len(nodes),), float64
        ``v_c(G) - v_c(G_i)``; positive where removing the nucleus lowers the class's log-odds (or
        probability). A graph emptied by the removal has the uniform prior (:func:`empty_value`).

    Raises
    ------
    InputError
        ``graph`` is a batch or has no nuclei, ``hops`` is not a non-negative integer, ``target`` is
        out of range, or ``output`` is unknown.
    """
    hops = check_hops(hops)
    check_output(output)
    check_single_graph(graph)
    with EvalMode(model):
        logits = model(graph)
        c = pick_target(torch.softmax(logits.double(), 1)[0].cpu().numpy(), target)
        v0 = target_values(logits, c, output)[0]
        nodes = range(graph.num_nodes()) if nodes is None else [int(i) for i in nodes]
        scores = np.empty(len(nodes))
        for j, i in enumerate(nodes):
            scores[j] = v0 - graph_value(model, without(graph, hop_ball(graph, i, hops)), c, output)
    return scores


def occlusion_batched(model: GraphClassifier, graph, *, hops: int, target: int | None, batch_size: int,
                      output: str = "logodds") -> np.ndarray:
    """Occlusion scores from occluded copies run through the model in batches: exact for any model and
    graph, only a constant factor faster than :func:`occlusion_naive`. Arguments checked by the caller."""
    with EvalMode(model):
        logits = model(graph)
        c = pick_target(torch.softmax(logits.double(), 1)[0].cpu().numpy(), target)
        v0 = target_values(logits, c, output)[0]
        n = graph.num_nodes()
        scores = np.empty(n)
        for start in range(0, n, batch_size):
            parts, idx_nonempty = [], []
            for i in range(start, min(n, start + batch_size)):
                g_i = without(graph, hop_ball(graph, i, hops))
                if g_i.num_nodes() == 0:
                    scores[i] = v0 - empty_value(model.n_classes, output)
                    continue
                parts.append(g_i)
                idx_nonempty.append(i)
            if parts:
                scores[idx_nonempty] = v0 - target_values(model(dgl.batch(parts)), c, output)
    return scores
