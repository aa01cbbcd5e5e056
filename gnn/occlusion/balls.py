"""Index building for fast occlusion: every nucleus's k-hop ball and, for a batch of occlusions, the
balls' rows and in-edges as CSR arrays (see ``docs/occlusion.md``).

These are loops over nodes and edges with data-dependent lengths; written with numpy they took a
dozen passes over every edge, compiled with numba they take one (bench/RESULTS.md, "Explanations").
Compiled functions are cached on disk (``cache=True``), so only the first run on a machine pays the
compilation; ``nogil=True`` lets the batches of :func:`nucleograph.gnn.occlusion.fast.occlusion_rsf`
build their rows on several threads at once.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np


class Balls(NamedTuple):
    """The ``reach``-hop ball of every node: the ball of node ``c`` is ``node[start[c]:start[c + 1]]``,
    in breadth-first order, with hop distances ``dist[start[c]:start[c + 1]]`` (non-decreasing)."""

    start: np.ndarray  #: (N + 1,) int64
    node: np.ndarray  #: (sum of ball sizes,) int64
    dist: np.ndarray  #: (sum of ball sizes,) int64


class OutEdges(NamedTuple):
    """A graph's out-edges by source as CSR: the edges of node ``u`` are ``indptr[u]:indptr[u + 1]``.
    On a symmetric graph these are also its in-edges, with the same channels."""

    indptr: np.ndarray  #: (N + 1,) int64
    dst: np.ndarray  #: (E,) the other end of each edge
    eid: np.ndarray  #: (E,) the edge's id in the DGL graph (the row of its channels)


class BatchArrays(NamedTuple):
    """Rows and in-edges of a batch of occlusions (:func:`batch_rows`).

    Rows are (occlusion, nucleus) pairs of the ``hops + 3``-hop balls, sorted by hop distance, then
    occlusion, then breadth-first order; rows with distance ``<= k`` are ``:level_end[k]``. The in-edges
    among the rows (edges to nuclei outside the ball left out) are CSR arrays, each row's edges ordered
    by the level of their column.
    """

    occ: np.ndarray  #: (rows,) int64, the row's occlusion (index into ``centers``)
    node: np.ndarray  #: (rows,) int64, the row's nucleus
    level_end: np.ndarray  #: (hops + 4,) int64
    ptr: np.ndarray  #: (rows + 1,) int32 CSR row pointers (MKL's own index type: torch converts int64)
    cols: np.ndarray  #: (E',) int32 column = row index of the edge's other end
    vals: np.ndarray  #: (L, E') the edges' channels
    eid: np.ndarray  #: (E',) int64 the edges' ids
    #: (3, rows) int32: how many of a row's edges come from rows ``< level_end[hops + j]`` (for :func:`layer_csr`)
    below: np.ndarray


@numba.njit(cache=True, nogil=True)
def _bfs(center, indptr, indices, reach, stamp, queue, dist):
    """Breadth-first search from ``center`` up to ``reach`` hops; fills ``queue``/``dist`` (in order of
    hop distance) and returns how many nodes it reached. ``stamp[v] == center`` marks visited nodes,
    so the array is never reset between centers."""
    stamp[center] = center
    queue[0] = center
    dist[0] = 0
    head, tail = 0, 1
    while head < tail:
        u = queue[head]
        du = dist[head]
        head += 1
        if du == reach:
            continue
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            if stamp[v] != center:
                stamp[v] = center
                queue[tail] = v
                dist[tail] = du + 1
                tail += 1
    return tail


@numba.njit(cache=True, nogil=True)
def _ball_lists(indptr, indices, reach):
    n = indptr.size - 1
    stamp = np.full(n, -1, np.int64)
    queue = np.empty(n, np.int64)
    dist = np.empty(n, np.int64)
    start = np.zeros(n + 1, np.int64)
    for c in range(n):  # sizes first, so the output is allocated once
        start[c + 1] = start[c] + _bfs(c, indptr, indices, reach, stamp, queue, dist)
    node = np.empty(start[n], np.int64)
    hop = np.empty(start[n], np.int64)
    stamp[:] = -1
    for c in range(n):
        m = _bfs(c, indptr, indices, reach, stamp, queue, dist)
        node[start[c]:start[c] + m] = queue[:m]
        hop[start[c]:start[c] + m] = dist[:m]
    return start, node, hop


def ball_lists(indptr: np.ndarray, indices: np.ndarray, reach: int) -> Balls:
    """The ``reach``-hop ball of every node of a graph.

    Parameters
    ----------
    indptr, indices : np.ndarray
        The graph's out-edges as CSR, shapes ``(N + 1,)`` and ``(E,)``.
    reach : int
        Largest hop distance.

    Returns
    -------
    Balls
        ``start`` ``(N + 1,)``, ``node`` and ``dist``, each ball in breadth-first order.
    """
    return Balls(*_ball_lists(indptr, indices, reach))


@numba.njit(cache=True, nogil=True)
def _rows_by_level(centers, start, ball_node, ball_dist, reach):
    """The rows of a batch sorted by hop distance: ``occ``, ``node``, ``level_end`` and, for the ball
    entries of the occlusions in turn (``entry_start[o]:entry_start[o + 1]`` for occlusion ``o``), the
    row each went to (``row_of_entry``)."""
    b = centers.size
    levels = np.zeros(reach + 1, np.int64)
    for o in range(b):
        c = centers[o]
        for k in range(start[c], start[c + 1]):
            levels[ball_dist[k]] += 1
    pos = np.zeros(reach + 1, np.int64)  # next free row of each level
    for lv in range(1, reach + 1):
        pos[lv] = pos[lv - 1] + levels[lv - 1]
    level_end = pos + levels
    n_rows = level_end[reach]
    occ = np.empty(n_rows, np.int64)
    node = np.empty(n_rows, np.int64)
    row_of_entry = np.empty(n_rows, np.int64)
    entry_start = np.empty(b + 1, np.int64)
    entry_start[0] = 0
    for o in range(b):
        c = centers[o]
        entry_start[o + 1] = entry_start[o] + start[c + 1] - start[c]
        for k in range(start[c], start[c + 1]):
            lv = ball_dist[k]
            r = pos[lv]
            pos[lv] += 1
            occ[r] = o
            node[r] = ball_node[k]
            row_of_entry[entry_start[o] + k - start[c]] = r
    return occ, node, level_end, row_of_entry, entry_start


@numba.njit(cache=True, nogil=True)
def _in_ball_edges(node, row_of_entry, entry_start, bound, indptr, out_dst, order, row_of_node):
    """Every row's in-ball edges in one pass over the edges, one occlusion at a time with its node ->
    row map (``row_of_node``: -1 on entry and on return): each row's edges go to a scratch slot as long
    as its node's degree (``slot``: the slots' starts; ``s_col``, ``s_eid``: column and edge id), and
    ``cnt[j, r]`` counts row ``r``'s edges whose column has level ``j`` (``bound``: the levels' ends)."""
    n_rows = node.size
    slot = np.empty(n_rows + 1, np.int64)
    slot[0] = 0
    for r in range(n_rows):
        slot[r + 1] = slot[r] + indptr[node[r] + 1] - indptr[node[r]]
    s_col = np.empty(slot[n_rows], np.int32)
    s_eid = np.empty(slot[n_rows], np.int64)
    cnt = np.zeros((4, n_rows), np.int32)
    b0, b1, b2 = bound[0], bound[1], bound[2]
    for o in range(entry_start.size - 1):
        lo, hi = entry_start[o], entry_start[o + 1]
        for j in range(lo, hi):
            row_of_node[node[row_of_entry[j]]] = row_of_entry[j]
        for j in range(lo, hi):
            r = row_of_entry[j]
            v = node[r]
            at = slot[r]
            for e in range(indptr[v], indptr[v + 1]):
                col = row_of_node[out_dst[e]]
                if col >= 0:
                    s_col[at] = col
                    s_eid[at] = order[e]
                    at += 1
                    cnt[(col >= b0) + (col >= b1) + (col >= b2), r] += 1
        for j in range(lo, hi):
            row_of_node[node[row_of_entry[j]]] = -1
    return slot, s_col, s_eid, cnt


@numba.njit(cache=True, nogil=True)
def _edges_by_level(slot, s_col, s_eid, cnt, bound, efeat):
    """The scratch slots copied out as CSR, each row's edges ordered by the level of their column (so
    a layer's edges from rows ``< n_j`` are a prefix of each row: :func:`layer_csr` copies prefixes)."""
    n_rows = cnt.shape[1]
    n_ch = efeat.shape[0]
    ptr = np.empty(n_rows + 1, np.int32)
    ptr[0] = 0
    below = np.empty((3, n_rows), np.int32)
    for r in range(n_rows):
        below[0, r] = cnt[0, r]
        below[1, r] = below[0, r] + cnt[1, r]
        below[2, r] = below[1, r] + cnt[2, r]
        ptr[r + 1] = ptr[r] + below[2, r] + cnt[3, r]
    cols = np.empty(ptr[n_rows], np.int32)
    vals = np.empty((n_ch, ptr[n_rows]), efeat.dtype)
    eid = np.empty(ptr[n_rows], np.int64)
    at = np.empty(4, np.int64)  # next free position of each level within the row
    b0, b1, b2 = bound[0], bound[1], bound[2]
    for r in range(n_rows):
        at[0] = ptr[r]
        at[1] = ptr[r] + below[0, r]
        at[2] = ptr[r] + below[1, r]
        at[3] = ptr[r] + below[2, r]
        for k in range(slot[r], slot[r] + ptr[r + 1] - ptr[r]):
            col = s_col[k]
            lv = (col >= b0) + (col >= b1) + (col >= b2)
            q = at[lv]
            at[lv] += 1
            cols[q] = col
            ed = s_eid[k]
            eid[q] = ed
            for ch in range(n_ch):
                vals[ch, q] = efeat[ch, ed]
    return ptr, cols, vals, eid, below


def batch_rows(centers: np.ndarray, balls: Balls, edges: OutEdges, efeat: np.ndarray, *, hops: int,
               scratch: np.ndarray) -> BatchArrays:
    """Rows and in-edges of a batch of occlusions of ``hops``-hop balls.

    Parameters
    ----------
    centers : np.ndarray, shape (b,)
        The occluded nuclei.
    balls : Balls
        The ``hops + 3``-hop balls of every nucleus (:func:`ball_lists`).
    edges : OutEdges
        The graph's out-edges by source; on a symmetric graph also its in-edges.
    efeat : np.ndarray, shape (L, E)
        The edge channels, by edge id.
    hops : int
        Each occlusion removes the ``hops``-hop ball of its center.
    scratch : np.ndarray, shape (N,), int64
        Holds -1 on entry and on return (one per thread).

    Returns
    -------
    BatchArrays
    """
    occ, node, level_end, row_of_entry, entry_start = _rows_by_level(centers, *balls, hops + 3)
    bound = level_end[hops:]  # n_0 .. n_3: rows removed, changed by VConv1, VConv2, the assignment conv
    slot, s_col, s_eid, cnt = _in_ball_edges(node, row_of_entry, entry_start, bound, *edges, scratch)
    ptr, cols, vals, eid, below = _edges_by_level(slot, s_col, s_eid, cnt, bound, efeat)
    return BatchArrays(occ, node, level_end, ptr, cols, vals, eid, below)


@numba.njit(cache=True, nogil=True)
def layer_csr(ptr, cols, vals, below, row_lo, row_hi, n_in):
    """One CSR matrix for all edge channels of a node convolution's sparse product: rows
    ``row_lo:row_hi`` of :func:`batch_rows`' in-edges, columns ``< n_in`` (the first ``below[r]`` edges of
    row ``r``), channel ``l``'s entries in column block ``l`` (column ``l * n_in + col``). Times the
    projections stacked by channel, ``(L n_in, O)``, it sums ``sum_l A_l P_l`` in one product."""
    n_ch = vals.shape[0]
    n_out = row_hi - row_lo
    new_ptr = np.empty(n_out + 1, np.int32)
    new_ptr[0] = 0
    for r in range(n_out):
        new_ptr[r + 1] = new_ptr[r] + n_ch * below[row_lo + r]
    new_cols = np.empty(new_ptr[n_out], np.int32)
    new_vals = np.empty(new_ptr[n_out], vals.dtype)
    for r in range(n_out):
        lo, m = ptr[row_lo + r], below[row_lo + r]
        at = new_ptr[r]
        for ch in range(n_ch):
            for q in range(m):
                new_cols[at + q] = ch * n_in + cols[lo + q]
                new_vals[at + q] = vals[ch, lo + q]
            at += m
    return new_ptr, new_cols, new_vals


@numba.njit(cache=True, nogil=True)
def padded_csr(ptr, cols, vals, flat, n_pad):
    """The CSR rows ``ptr``/``cols``/``vals`` ``(L, E)`` moved to rows ``flat[r]`` of ``n_pad`` rows (a
    padded layout; the other rows empty). Products with it land directly in the padded layout."""
    n_rows = ptr.size - 1
    new_ptr = np.zeros(n_pad + 1, np.int32)
    for r in range(n_rows):
        new_ptr[flat[r] + 1] = ptr[r + 1] - ptr[r]
    for p in range(n_pad):
        new_ptr[p + 1] += new_ptr[p]
    new_cols = np.empty(ptr[n_rows], np.int32)
    new_vals = np.empty((vals.shape[0], ptr[n_rows]), vals.dtype)
    for r in range(n_rows):
        at = new_ptr[flat[r]]
        for e in range(ptr[r], ptr[r + 1]):
            new_cols[at] = cols[e]
            for ch in range(vals.shape[0]):
                new_vals[ch, at] = vals[ch, e]
            at += 1
    return new_ptr, new_cols, new_vals


@numba.njit(cache=True, nogil=True)
def row_blocks(ptr, cols, vals, blocks, block_rows):
    """The CSR rows of the row blocks ``blocks`` (block ``i`` is rows ``i * block_rows`` up to the next
    block), stacked in that order, their values as float64: ``(ptr, cols, vals (L, E'))``."""
    n_out = blocks.size * block_rows
    new_ptr = np.zeros(n_out + 1, np.int32)
    for i in range(blocks.size):
        lo = blocks[i] * block_rows
        for r in range(block_rows):
            new_ptr[i * block_rows + r + 1] = new_ptr[i * block_rows + r] + ptr[lo + r + 1] - ptr[lo + r]
    new_cols = np.empty(new_ptr[n_out], np.int32)
    new_vals = np.empty((vals.shape[0], new_ptr[n_out]), np.float64)
    for i in range(blocks.size):
        lo, at = ptr[blocks[i] * block_rows], new_ptr[i * block_rows]
        for e in range(ptr[(blocks[i] + 1) * block_rows] - lo):
            new_cols[at + e] = cols[lo + e]
            for ch in range(vals.shape[0]):
                new_vals[ch, at + e] = vals[ch, lo + e]
    return new_ptr, new_cols, new_vals
