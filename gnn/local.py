r"""Local evidence: what each nucleus's neighbourhood alone tells the model (issue 18).

.. math:: s_i = f_c\big(G[N(i)]\big) - f_c(\varnothing)

with :math:`f_c` the log-odds of class ``c`` (the image's predicted class, or ``target``;
:func:`nucleograph.gnn.attribution.log_odds`), :math:`G[N(i)]` the graph of nucleus ``i`` and the nuclei
linked to it (closer than the graph's link distance, 100 px by default) with the links among them, and
:math:`f_c(\varnothing) = \log(1 / (C - 1))` the uniform prior's log-odds (0 for two classes). A positive
score: this neighbourhood, seen alone, speaks for class ``c``; negative: against it.

It is occlusion's dual. Occlusion removes a neighbourhood from the image and measures what is lost;
where the evidence is redundant (several glands, each enough for the class) removing one loses
little, and the scores of a confident model barely rank the glands above the stroma (bench/RESULTS.md,
issue 18). Local evidence keeps only the neighbourhood and measures what it carries, like a pathologist
reading one field at high power. Graph-embed pooling averages (its softmax weights sum to 1 over the
nodes), so the model pools a neighbourhood as it pools a small image, not as a thinned one. What it
cannot show: evidence that only exists at a larger scale than one neighbourhood (e.g. how many
glands an image holds).

**Ties.** Nuclei with the same neighbourhood (a tight group linked to each other and to nothing else
in common) see the same graph and would get the same score, leaving their order in a ranking, a top-k
or a deletion curve to storage order. Tied nuclei are ordered among themselves by what each adds to
its neighbourhood, :math:`f_c(G[N(i)]) - f_c(G[N(i) \setminus \{i\}])` (:func:`own_contribution`,
computed for the tied nuclei only), added at a scale below a quarter of the smallest gap between
distinct scores and below 1e-7 of the largest score: every other score, and the order of all distinct
scores, stay as the formula gives, and a tied score moves by less than the float32 model resolves.

All neighbourhoods of a window of nuclei go through the model as one batched graph, built by a compiled
pass over the graph's in-edges (:func:`_neighbourhoods`): per nucleus, the cost of a forward pass of a
graph of its degree + 1 nuclei.
"""

from __future__ import annotations

from collections.abc import Iterator

import dgl
import numba
import numpy as np
import torch

from nucleograph.gnn.models import GraphClassifier
from nucleograph.gnn.occlusion.reference import (
    EvalMode,
    check_single_graph,
    empty_value,
    pick_target,
    target_values,
)
from nucleograph.gnn.occlusion.windows import WINDOW_NUCLEI

__all__ = ["local_evidence", "local_evidence_windows", "neighbourhood_graphs", "own_contribution"]

#: Nuclei per batched graph of neighbourhoods (their sum; a neighbourhood is never split).
BATCH_NUCLEI = 16384


@numba.njit(cache=True, nogil=True)
def _neighbourhoods(indptr, src, eid, centers, scratch, keep_centre):  # pragma: no cover - compiled
    """Each centre's neighbourhood (the centre, unless not ``keep_centre``, and its in-neighbours, each once,
    in ascending order) and the in-edges among its members. ``scratch`` ``(N,)`` holds -1 on entry and on
    return.

    Returns ``node_ptr`` ``(m + 1,)``, ``nodes`` (graph ids, neighbourhood by neighbourhood), ``edge_ptr``
    ``(m + 1,)``, ``esrc`` and ``edst`` (positions in ``nodes``) and ``eids`` (the graph's edge ids)."""
    m = centers.size
    bound = 0
    for b in range(m):
        c = centers[b]
        bound += 1 + indptr[c + 1] - indptr[c]
    nodes = np.empty(bound, np.int64)
    node_ptr = np.empty(m + 1, np.int64)
    node_ptr[0] = 0
    k, e_bound = 0, 0
    for b in range(m):
        # the centre, then its in-neighbours; a duplicate (a multi-edge, a self-loop) kept once
        c = centers[b]
        start = k
        scratch[c] = k  # marks the centre as seen (a member only if kept)
        if keep_centre:
            nodes[k] = c
            k += 1
        for j in range(indptr[c], indptr[c + 1]):
            v = src[j]
            if scratch[v] < 0:
                scratch[v] = k
                nodes[k] = v
                k += 1
        scratch[c] = -1
        nodes[start:k] = np.sort(nodes[start:k])  # one order per member set: the same graph, bit for bit
        for p in range(start, k):
            e_bound += indptr[nodes[p] + 1] - indptr[nodes[p]]
            scratch[nodes[p]] = -1
        node_ptr[b + 1] = k
    nodes = nodes[:k]
    edge_ptr = np.empty(m + 1, np.int64)
    edge_ptr[0] = 0
    esrc, edst, eids = np.empty(e_bound, np.int64), np.empty(e_bound, np.int64), np.empty(e_bound, np.int64)
    e = 0
    for b in range(m):
        lo, hi = node_ptr[b], node_ptr[b + 1]
        for p in range(lo, hi):
            scratch[nodes[p]] = p
        for p in range(lo, hi):
            v = nodes[p]
            for j in range(indptr[v], indptr[v + 1]):
                u = scratch[src[j]]
                if u >= 0:
                    esrc[e], edst[e], eids[e] = u, p, eid[j]
                    e += 1
        for p in range(lo, hi):
            scratch[nodes[p]] = -1
        edge_ptr[b + 1] = e
    return node_ptr, nodes, edge_ptr, esrc[:e], edst[:e], eids[:e]


def neighbourhood_graphs(graph, centers: np.ndarray, *, arrays=None, scratch: np.ndarray | None = None,
                         keep_centre: bool = True):
    """The neighbourhood graphs :math:`G[N(i)]` of ``centers``, as one batched DGL graph (in ``centers``'
    order), with every node and edge feature of ``graph`` carried over; without ``keep_centre``, the
    graphs :math:`G[N(i) \\setminus \\{i\\}]` (empty for a nucleus without links).

    Parameters
    ----------
    graph : dgl.DGLGraph
        One image's graph.
    centers : np.ndarray of int
    arrays : tuple, optional
        ``graph.adj_tensors("csc")`` as int64 numpy arrays (computed when None).
    scratch : np.ndarray, optional
        ``(N,)`` int64 of -1 (made when None).
    keep_centre : bool
        Include each centre itself.

    Returns
    -------
    dgl.DGLGraph
        ``len(centers)`` graphs, their nodes in ascending order of ``graph``'s ids (nuclei with the same
        neighbourhood get the same graph, so the same score to the last bit).
    """
    if arrays is None:
        arrays = tuple(t.numpy().astype(np.int64, copy=False) for t in graph.adj_tensors("csc"))
    if scratch is None:
        scratch = np.full(graph.num_nodes(), -1, dtype=np.int64)
    node_ptr, nodes, edge_ptr, esrc, edst, eids = _neighbourhoods(*arrays, np.asarray(centers, dtype=np.int64),
                                                                  scratch, keep_centre)
    return _batched(graph, nodes, np.diff(node_ptr), esrc, edst, eids, np.diff(edge_ptr))


def _batched(graph, nodes, node_counts, esrc, edst, eids, edge_counts):
    """One batched DGL graph of subgraphs of ``graph``: their members ``nodes`` (graph ids, graph by graph),
    their edges ``esrc -> edst`` (positions in ``nodes``) with the graph's edge ids ``eids``, and the
    nodes and edges per subgraph; every node and edge feature of ``graph`` carried over."""
    idtype = graph.idtype
    out = dgl.graph((torch.from_numpy(esrc).to(idtype), torch.from_numpy(edst).to(idtype)), num_nodes=nodes.size,
                    idtype=idtype)
    out.set_batch_num_nodes(torch.from_numpy(node_counts).to(idtype))
    out.set_batch_num_edges(torch.from_numpy(edge_counts).to(idtype))
    nodes_t, eids_t = torch.from_numpy(nodes), torch.from_numpy(eids)
    for key, value in graph.ndata.items():
        out.ndata[key] = value[nodes_t]
    for key, value in graph.edata.items():
        out.edata[key] = value[eids_t]
    return out


def local_evidence(model: GraphClassifier, graph, *, target: int | None = None,
                   batch_nuclei: int = BATCH_NUCLEI, tie_break: bool = True) -> np.ndarray:
    """Every nucleus's local evidence for class ``target`` (default: the class predicted for the image).

    Parameters
    ----------
    model : GraphClassifier
        Any model of the registry; run in eval mode without gradients (its mode restored afterwards).
    graph : dgl.DGLGraph
        One image's graph.
    target : int, optional
    batch_nuclei : int
        Nuclei per batched forward pass (memory grows with it).
    tie_break : bool
        Order nuclei with equal scores by what each adds to its own neighbourhood (the module's
        "Ties"); off: the bare formula.

    Returns
    -------
    np.ndarray, shape (N,), float64
        :math:`f_c(G[N(i)]) - f_c(\\varnothing)`, the module's formula.
    """
    scores = np.empty(graph.num_nodes())
    for nodes, values in local_evidence_windows(model, graph, target=target, batch_nuclei=batch_nuclei,
                                                tie_break=tie_break):
        scores[nodes] = values
    return scores


def local_evidence_windows(model: GraphClassifier, graph, *, target: int | None = None,
                           window: int = WINDOW_NUCLEI, batch_nuclei: int = BATCH_NUCLEI,
                           tie_break: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`local_evidence` ``window`` nuclei at a time: yields ``(nodes, scores)`` per window (a slide's
    scores are written back while the rest are computed; ties are broken within a window)."""
    check_single_graph(graph)
    n = graph.num_nodes()
    arrays = tuple(t.numpy().astype(np.int64, copy=False) for t in graph.adj_tensors("csc"))
    scratch = np.full(n, -1, dtype=np.int64)
    with EvalMode(model):
        c = pick_target(torch.softmax(model(graph).double(), 1)[0].numpy(), target)
        prior = empty_value(model.n_classes, "logodds")
        for lo in range(0, n, window):
            nodes = np.arange(lo, min(lo + window, n))
            scores = _neighbourhood_values(model, graph, nodes, c, arrays=arrays, scratch=scratch,
                                           batch_nuclei=batch_nuclei) - prior
            if tie_break:
                scores = _break_ties(model, graph, nodes, scores, c, arrays, scratch, batch_nuclei)
            yield nodes, scores


def own_contribution(model: GraphClassifier, graph, centers: np.ndarray, scores: np.ndarray, target: int, *,
                     arrays=None, scratch: np.ndarray | None = None, batch_nuclei: int = BATCH_NUCLEI) -> np.ndarray:
    r"""What each centre adds to its own neighbourhood: :math:`f_c(G[N(i)]) - f_c(G[N(i) \setminus \{i\}])`.

    ``scores`` are the centres' local evidence (:math:`f_c(G[N(i)]) - f_c(\varnothing)`); a nucleus without
    links adds its whole score. Run inside :class:`EvalMode` (no gradients)."""
    if arrays is None:
        arrays = tuple(t.numpy().astype(np.int64, copy=False) for t in graph.adj_tensors("csc"))
    if scratch is None:
        scratch = np.full(graph.num_nodes(), -1, dtype=np.int64)
    indptr, src = arrays[0], arrays[1]
    centers = np.asarray(centers, dtype=np.int64)
    out = np.array(scores, dtype=np.float64)
    linked = np.array([bool(np.any(src[indptr[i]:indptr[i + 1]] != i)) for i in centers], dtype=bool)
    out[linked] -= _neighbourhood_values(model, graph, centers[linked], target, arrays=arrays, scratch=scratch,
                                         batch_nuclei=batch_nuclei, keep_centre=False)
    out[linked] += empty_value(model.n_classes, "logodds")
    return out


def _neighbourhood_values(model: GraphClassifier, graph, centers: np.ndarray, target: int, *, arrays, scratch,
                          batch_nuclei: int, keep_centre: bool = True) -> np.ndarray:
    """Class-``target`` log-odds of the neighbourhood graphs of ``centers`` (:func:`neighbourhood_graphs`),
    whole neighbourhoods of about ``batch_nuclei`` nuclei per forward pass."""
    # nuclei up to each neighbourhood's end (an upper bound: a multi-edge or self-loop counts twice)
    bounds = np.cumsum(np.diff(arrays[0])[centers] + int(keep_centre))
    values = np.empty(centers.size)
    start = 0
    while start < centers.size:
        base = bounds[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(bounds, base + batch_nuclei, side="right")))
        batch = neighbourhood_graphs(graph, centers[start:end], arrays=arrays, scratch=scratch,
                                     keep_centre=keep_centre)
        values[start:end] = target_values(model(batch), target, "logodds")
        start = end
    return values


def _break_ties(model, graph, nodes, scores, c, arrays, scratch, batch_nuclei) -> np.ndarray:
    """``scores`` with the nuclei that tie (most often: nuclei with the same neighbourhood) ordered among
    themselves by their :func:`own_contribution`, every other score and the order of distinct scores kept.

    A tied nucleus moves by ``delta * contribution``, at most a quarter of the smallest gap between distinct
    scores, so it never passes another score, and at most 1e-7 of the largest score (below the float32
    resolution of the model's own output, so a score reads as the formula gives it)."""
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    tied = counts[inverse] > 1
    if not tied.any():
        return scores
    own = own_contribution(model, graph, nodes[tied], scores[tied], c, arrays=arrays, scratch=scratch,
                           batch_nuclei=batch_nuclei)
    spread = float(np.abs(own).max())
    if not np.isfinite(spread) or spread == 0.0:
        return scores
    scale = max(1.0, float(np.abs(values).max()))
    step = min(0.25 * float(np.diff(values).min()), 1e-7 * scale) if values.size > 1 else 1e-7 * scale
    out = scores.copy()
    out[tied] += (step / spread) * own
    return out
