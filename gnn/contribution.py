r"""Local contribution: what each nucleus adds to the neighbourhoods it belongs to (issue 18).

.. math:: s_i = \frac{1}{|J_i|} \sum_{j \in J_i} \Big( f_c\big(G[N(j)]\big) - f_c\big(G[N(j) \setminus \{i\}]\big) \Big),
          \qquad J_i = \{ j : i \in N(j) \}

with :math:`f_c` the log-odds of class ``c`` (the image's predicted class, or ``target``), :math:`N(j)` nucleus
``j`` and the nuclei linked to it, and :math:`G[\cdot]` the graph those nuclei and their links make
(:mod:`nucleograph.gnn.local`). :math:`J_i` is the nucleus itself and every nucleus it is linked to. A nucleus
without links scores its own evidence, :math:`f_c(G[\{i\}]) - f_c(\varnothing)`. Positive: the fields this nucleus
lies in speak more for class ``c`` with it than without it.

Local evidence (:func:`nucleograph.gnn.local.local_evidence`) scores the field around a nucleus, so a stromal
nucleus next to a cribriform nest scores like the nest, and the nest's rim, whose field holds stroma, scores
lower than its centre. Occlusion removes a nucleus from the whole image, where the rest of the evidence
makes up for it. This is the leave-one-out of the fields instead: each field is small enough that a
nucleus's part in it shows, and a nucleus is scored by what it adds, not by where it sits. It is a
local estimate of a Shapley value in the sense of L-Shapley (Chen, Song, Wainwright and Jordan, "L-Shapley
and C-Shapley: efficient model interpretation for structured data", ICLR 2019), which restricts the
coalitions of a feature to its graph neighbourhood: here one coalition per field the nucleus is in.

Cost: per nucleus, about its degree forward passes of a graph of its degree nuclei (the leave-one-out
graphs are built by one compiled pass, :func:`_leave_one_out`, and batched): 12-19x local evidence on the
synthetic cohorts (bench/RESULTS.md, issue 18 stop 31).
"""

from __future__ import annotations

from collections.abc import Iterator

import numba
import numpy as np
import torch

from nucleograph.gnn.local import BATCH_NUCLEI, _batched, _neighbourhood_values, _neighbourhoods
from nucleograph.gnn.models import GraphClassifier
from nucleograph.gnn.occlusion.reference import (
    EvalMode,
    check_single_graph,
    empty_value,
    pick_target,
    target_values,
)
from nucleograph.gnn.occlusion.windows import WINDOW_NUCLEI

__all__ = ["local_contribution", "local_contribution_windows"]


@numba.njit(cache=True, nogil=True)
def _leave_one_out(node_ptr, nodes, edge_ptr, esrc, edst, eids, lo, hi, want):  # pragma: no cover - compiled
    """For the neighbourhoods ``lo:hi`` of :func:`nucleograph.gnn.local._neighbourhoods`' output, every graph
    ``N(j)`` without one member ``i`` with ``want[i]`` (neighbourhoods of one nucleus are left out).

    Returns the members (graph ids, graph by graph, ascending in each), nodes per graph, the edges (positions
    in the members), their edge ids, edges per graph, and per graph the index of its neighbourhood in
    ``node_ptr`` and the graph id of the nucleus left out."""
    n_graphs = 0
    n_nodes = 0
    n_edges = 0
    for b in range(lo, hi):
        p0, p1 = node_ptr[b], node_ptr[b + 1]
        m = p1 - p0
        if m < 2:
            continue
        for p in range(p0, p1):
            if want[nodes[p]]:
                n_graphs += 1
                n_nodes += m - 1
                n_edges += edge_ptr[b + 1] - edge_ptr[b]
    out_nodes = np.empty(n_nodes, np.int64)
    out_src = np.empty(n_edges, np.int64)
    out_dst = np.empty(n_edges, np.int64)
    out_eid = np.empty(n_edges, np.int64)
    node_counts = np.empty(n_graphs, np.int64)
    edge_counts = np.empty(n_graphs, np.int64)
    centre = np.empty(n_graphs, np.int64)
    removed = np.empty(n_graphs, np.int64)
    g, k, e = 0, 0, 0
    for b in range(lo, hi):
        p0, p1 = node_ptr[b], node_ptr[b + 1]
        if p1 - p0 < 2:
            continue
        for p in range(p0, p1):
            if not want[nodes[p]]:
                continue
            base = k
            for q in range(p0, p1):
                if q != p:
                    out_nodes[k] = nodes[q]
                    k += 1
            e0 = e
            for t in range(edge_ptr[b], edge_ptr[b + 1]):
                s, d = esrc[t], edst[t]
                if s == p or d == p:
                    continue
                out_src[e] = base + s - p0 - (1 if s > p else 0)
                out_dst[e] = base + d - p0 - (1 if d > p else 0)
                out_eid[e] = eids[t]
                e += 1
            node_counts[g] = p1 - p0 - 1
            edge_counts[g] = e - e0
            centre[g] = b
            removed[g] = nodes[p]
            g += 1
    return out_nodes, node_counts, out_src[:e], out_dst[:e], out_eid[:e], edge_counts, centre, removed


def local_contribution(model: GraphClassifier, graph, *, target: int | None = None,
                       batch_nuclei: int = BATCH_NUCLEI) -> np.ndarray:
    """Every nucleus's local contribution to class ``target`` (default: the class predicted for the image).

    Parameters
    ----------
    model : GraphClassifier
        Any model of the registry; run in eval mode without gradients (its mode restored afterwards).
    graph : dgl.DGLGraph
        One image's graph (links in both directions, as ingest makes them).
    target : int, optional
    batch_nuclei : int
        Nuclei per batched forward pass (memory grows with it).

    Returns
    -------
    np.ndarray, shape (N,), float64
        The module's :math:`s_i`.
    """
    scores = np.empty(graph.num_nodes())
    for nodes, values in local_contribution_windows(model, graph, target=target, batch_nuclei=batch_nuclei):
        scores[nodes] = values
    return scores


def local_contribution_windows(model: GraphClassifier, graph, *, target: int | None = None,
                               window: int = WINDOW_NUCLEI,
                               batch_nuclei: int = BATCH_NUCLEI) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`local_contribution` ``window`` nuclei at a time: yields ``(nodes, scores)`` per window (a slide's
    scores are written back while the rest are computed). A window's scores take the neighbourhoods of its
    nuclei and of every nucleus linked to them, so they equal the whole graph's."""
    check_single_graph(graph)
    n = graph.num_nodes()
    arrays = tuple(t.numpy().astype(np.int64, copy=False) for t in graph.adj_tensors("csc"))
    indptr, src = arrays[0], arrays[1]
    dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    scratch = np.full(n, -1, dtype=np.int64)
    want = np.zeros(n, dtype=bool)
    with EvalMode(model):
        c = pick_target(torch.softmax(model(graph).double(), 1)[0].numpy(), target)
        prior = empty_value(model.n_classes, "logodds")
        for lo in range(0, n, window):
            nodes = np.arange(lo, min(lo + window, n))
            want[nodes] = True
            # the neighbourhoods that hold a window nucleus: its own and those of the nuclei it links to
            centres = np.union1d(nodes, dst[want[src]])
            sums, counts = _contributions(model, graph, centres, want, c, prior, arrays, scratch, batch_nuclei)
            want[nodes] = False
            yield nodes, sums[nodes] / counts[nodes]


def _contributions(model, graph, centres, want, c, prior, arrays, scratch, batch_nuclei):
    """Per nucleus of ``want``: the sum of its contributions to the neighbourhoods of ``centres`` that hold it,
    and how many there are. Run inside :class:`EvalMode`."""
    n = graph.num_nodes()
    sums = np.zeros(n)
    counts = np.zeros(n)
    whole = _neighbourhood_values(model, graph, centres, c, arrays=arrays, scratch=scratch, batch_nuclei=batch_nuclei)
    node_ptr, nodes, edge_ptr, esrc, edst, eids = _neighbourhoods(*arrays, centres, scratch, True)
    size = np.diff(node_ptr)
    alone = (size == 1) & want[centres]  # a nucleus without links: its own evidence
    sums[centres[alone]] += whole[alone] - prior
    counts[centres[alone]] += 1
    wanted = np.add.reduceat(want[nodes].astype(np.int64), node_ptr[:-1]) if centres.size else np.zeros(0, np.int64)
    bounds = np.cumsum(np.where(size > 1, wanted * (size - 1), 0))
    start = 0
    while start < centres.size:
        base = bounds[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(bounds, base + batch_nuclei, side="right")))
        sub_nodes, node_counts, s, d, e, edge_counts, centre, removed = _leave_one_out(
            node_ptr, nodes, edge_ptr, esrc, edst, eids, start, end, want)
        if centre.size:
            values = target_values(model(_batched(graph, sub_nodes, node_counts, s, d, e, edge_counts)), c, "logodds")
            np.add.at(sums, removed, whole[centre] - values)
            np.add.at(counts, removed, 1)
        start = end
    return sums, counts
