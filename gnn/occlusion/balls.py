"""Index building for fast occlusion: every nucleus's k-hop ball and, for a batch of occlusions, the
balls' rows and in-edges as CSR arrays (see ``docs/occlusion.md``); a slide window's halo; and the
loops of the afresh pooling tier (what lies around one occlusion's ball, and its sums there).

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
    """The ``reach``-hop balls of some nodes (:func:`ball_lists`): ball ``i`` is ``node[start[i]:start[i + 1]]``,
    in breadth-first order, with hop distances ``dist[start[i]:start[i + 1]]`` (non-decreasing)."""

    start: np.ndarray  #: (n + 1,) int64
    node: np.ndarray  #: (sum of ball sizes,) int64
    dist: np.ndarray  #: (sum of ball sizes,) int64


class OutEdges(NamedTuple):
    """A graph's out-edges by source as CSR: the edges of node ``u`` are ``indptr[u]:indptr[u + 1]``.
    On a symmetric graph these are also its in-edges, with the same channels."""

    indptr: np.ndarray  #: (N + 1,) int64
    dst: np.ndarray  #: (E,) the other end of each edge
    eid: np.ndarray  #: (E,) the edge's id in the DGL graph (the row of its channels)


def out_edges(src: np.ndarray, dst: np.ndarray, n_nodes: int) -> OutEdges:
    """The edges ``src -> dst`` of a graph of ``n_nodes`` nodes by source, as CSR (:class:`OutEdges`)."""
    order = np.argsort(src, kind="stable")
    return OutEdges(np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n_nodes))]).astype(np.int64),
                    np.asarray(dst)[order].astype(np.int64, copy=False), order.astype(np.int64, copy=False))


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
def _ball_lists(indptr, indices, reach, centers):
    n = indptr.size - 1
    stamp = np.full(n, -1, np.int64)
    queue = np.empty(n, np.int64)
    dist = np.empty(n, np.int64)
    start = np.zeros(centers.size + 1, np.int64)
    for i in range(centers.size):  # sizes first, so the output is allocated once
        start[i + 1] = start[i] + _bfs(centers[i], indptr, indices, reach, stamp, queue, dist)
    node = np.empty(start[centers.size], np.int64)
    hop = np.empty(start[centers.size], np.int64)
    stamp[:] = -1
    for i in range(centers.size):
        m = _bfs(centers[i], indptr, indices, reach, stamp, queue, dist)
        node[start[i]:start[i] + m] = queue[:m]
        hop[start[i]:start[i] + m] = dist[:m]
    return start, node, hop


def ball_lists(indptr: np.ndarray, indices: np.ndarray, reach: int, centers: np.ndarray | None = None) -> Balls:
    """The ``reach``-hop ball of every node of a graph (or of ``centers`` only).

    Parameters
    ----------
    indptr, indices : np.ndarray
        The graph's out-edges as CSR, shapes ``(N + 1,)`` and ``(E,)``.
    reach : int
        Largest hop distance.
    centers : np.ndarray, optional
        The nodes whose balls are built, in this order (default: all, ``0..N-1``). Ball ``i`` is that of
        ``centers[i]``: a window of a slide builds the balls of its own nuclei only.

    Returns
    -------
    Balls
        ``start`` ``(len(centers) + 1,)``, ``node`` and ``dist``, each ball in breadth-first order.
    """
    if centers is None:
        centers = np.arange(indptr.size - 1, dtype=np.int64)
    return Balls(*_ball_lists(indptr, indices, reach, np.asarray(centers, dtype=np.int64)))


@numba.njit(cache=True, nogil=True)
def _halo(nodes, indptr, indices, hops, stamp):
    """``nodes`` followed by every other node within ``hops`` hops of them (multi-source breadth-first
    search); ``stamp`` ``(N,)`` holds -1 on entry and on return."""
    queue = np.empty(indptr.size - 1, np.int64)
    dist = np.empty(indptr.size - 1, np.int64)
    tail = 0
    for v in nodes:
        if stamp[v] < 0:
            stamp[v] = 1
            queue[tail] = v
            dist[tail] = 0
            tail += 1
    head = 0
    while head < tail:
        u, du = queue[head], dist[head]
        head += 1
        if du == hops:
            continue
        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            if stamp[v] < 0:
                stamp[v] = 1
                queue[tail] = v
                dist[tail] = du + 1
                tail += 1
    out = queue[:tail].copy()
    for v in out:
        stamp[v] = -1
    return out


def halo(nodes: np.ndarray, edges: OutEdges, hops: int, scratch: np.ndarray) -> np.ndarray:
    """``nodes`` (distinct) first, then the other nodes within ``hops`` hops of them in breadth-first order.

    ``scratch`` ``(N,)`` int64 holds -1 on entry and on return. A window plus this halo holds every
    input a model layer ``hops`` hops deep reads for the window's own nodes.
    """
    return _halo(np.asarray(nodes, dtype=np.int64), edges.indptr, edges.dst, hops, scratch)


@numba.njit(cache=True, nogil=True)
def neighbour_sums(indptr, dst, eid, efeat, x, out):
    """``out[i, l K + k] = sum_e efeat[l, e] x[dst[e], k]`` over the out-edges ``e`` of every node ``i``
    (on a symmetric graph ``(A_l X)_i``), written into ``out`` ``(N, L K)`` (may be a strided view); one
    pass over the edges, no ``(E, L, K)`` temporary."""
    n_ch, k = efeat.shape[0], x.shape[1]
    for i in range(indptr.size - 1):
        for c in range(n_ch * k):
            out[i, c] = 0.0
        for e in range(indptr[i], indptr[i + 1]):
            v, ed = dst[e], eid[e]
            for ch in range(n_ch):
                w = efeat[ch, ed]
                if w != 0.0:
                    for c in range(k):
                        out[i, ch * k + c] += w * x[v, c]
    return out


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
        The occluded nuclei, as positions in ``balls`` (their node ids when ``balls`` holds every node's).
    balls : Balls
        The ``hops + 3``-hop balls (:func:`ball_lists`).
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
    row ``r``), channel ``l``'s entry of column ``col`` at column ``col L + l``, negated where ``col <
    row_lo`` (a removed row: its change of ``V W_l`` is ``-V W_l``). Times every input row's projections
    ``V W_l`` side by side, ``(n_in, L O)`` viewed as ``(n_in L, O)`` (one product with the weights of all
    channels), it sums ``sum_l A_l P_l`` in one product."""
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
                col = cols[lo + q]
                new_cols[at + q] = col * n_ch + ch
                new_vals[at + q] = -vals[ch, lo + q] if col < row_lo else vals[ch, lo + q]
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
def _boundary_edges(ball, last_lo, indptr, dst, eid, stamp):
    """The edges from the ball's last level to nodes outside it (``stamp``: 0 on ball nodes); marks
    their far ends 1."""
    nb = 0
    for p in range(last_lo, ball.size):
        for q in range(indptr[ball[p]], indptr[ball[p] + 1]):
            if stamp[dst[q]] != 0:
                nb += 1
    bnd_row = np.empty(nb, np.int64)
    bnd_node = np.empty(nb, np.int64)
    bnd_eid = np.empty(nb, np.int64)
    j = 0
    for p in range(last_lo, ball.size):
        for q in range(indptr[ball[p]], indptr[ball[p] + 1]):
            u = dst[q]
            if stamp[u] != 0:
                bnd_row[j], bnd_node[j], bnd_eid[j] = p, u, eid[q]
                stamp[u] = 1
                j += 1
    return bnd_row, bnd_node, bnd_eid


@numba.njit(cache=True, nogil=True)
def _afresh_region(ball, last_lo, indptr, dst, eid, block_of, block_start, block_node, stamp):
    """Around one occlusion's ``ball`` (in level order, ``ball[last_lo:]`` its last level), what summing a
    cluster afresh reads besides the ball's rows: the edges leaving the last level (``bnd_row``: the row,
    a position in ``ball``; ``bnd_node``: the node outside it reached; ``bnd_eid``: the edge), the blocks
    holding a ball node or a node next to the ball (``touched``), and those blocks' nodes outside the
    ball (``x_node``; ``x_next``: next to the ball). ``stamp`` ``(N,)`` holds -1 on entry and on return."""
    # stamp: 0 for ball nodes, 1 for nodes next to the ball, -1 elsewhere
    for v in ball:
        stamp[v] = 0
    bnd_row, bnd_node, bnd_eid = _boundary_edges(ball, last_lo, indptr, dst, eid, stamp)
    is_touched = np.zeros(block_start.size - 1, np.bool_)
    for v in ball:
        is_touched[block_of[v]] = True
    for u in bnd_node:
        is_touched[block_of[u]] = True
    touched = np.flatnonzero(is_touched)
    nx = 0
    for b in touched:
        nx += block_start[b + 1] - block_start[b]
    x_node = np.empty(nx, np.int64)
    x_next = np.empty(nx, np.bool_)
    nx = 0
    for b in touched:
        for q in range(block_start[b], block_start[b + 1]):
            if stamp[block_node[q]] != 0:
                x_node[nx] = block_node[q]
                x_next[nx] = stamp[block_node[q]] == 1
                nx += 1
    for v in ball:
        stamp[v] = -1
    for u in bnd_node:
        stamp[u] = -1
    return bnd_row, bnd_node, bnd_eid, touched, x_node[:nx].copy(), x_next[:nx].copy()


@numba.njit(cache=True, nogil=True)
def _shifted_neighbour_sums(nodes, indptr, dst, eid, efeat, z, shift, cols, stamp):
    """``A_l exp(Z_c - shift_c)`` for the clusters ``c`` in ``cols``, of ``nodes`` over their edges to
    nodes ``u`` with ``stamp[u] != 0``: ``(len(nodes), L, len(cols))``."""
    n_ch = efeat.shape[0]
    out = np.zeros((nodes.size, n_ch, cols.size), np.float64)
    for i in range(nodes.size):
        for q in range(indptr[nodes[i]], indptr[nodes[i] + 1]):
            u = dst[q]
            if stamp[u] == 0:
                continue
            for j in range(cols.size):
                x = np.exp(z[u, cols[j]] - shift[cols[j]])
                for ch in range(n_ch):
                    out[i, ch, j] += np.float64(efeat[ch, eid[q]]) * x
    return out


@numba.njit(cache=True, nogil=True)
def _ae_row(v, next_to_ball, any_far, indptr, dst, eid, efeat, z, e, ae, own, scale, far, stamp, row):
    """``row`` ``(L K)``: ``A_l E''`` of node ``v``, each column at the shift ``own``. Next to the ball, over
    its edges to nodes outside it; elsewhere its cached ``ae``; both at the image's shift times ``scale``,
    but in the columns ``far`` (summed from the logits ``z``)."""
    n_ch, k = efeat.shape[0], z.shape[1]
    row[:] = 0.0
    for q in range(indptr[v], indptr[v + 1] if next_to_ball or any_far else indptr[v]):
        u = dst[q]
        if stamp[u] == 0:  # an edge into the ball
            continue
        for c in range(k):
            if next_to_ball or far[c]:
                x = np.exp(z[u, c] - own[c]) if far[c] else e[u, c] * scale[c]
                for ch in range(n_ch):
                    row[ch * k + c] += np.float64(efeat[ch, eid[q]]) * x
    if not next_to_ball:
        for ch in range(n_ch):
            for c in range(k):
                if not far[c]:
                    row[ch * k + c] = ae[v, ch * k + c] * scale[c]


@numba.njit(cache=True, nogil=True)
def _outside_pool(x_node, x_next, ball, indptr, dst, eid, efeat, z, e, h, ae, own, scale, cl, top, far, stamp):
    """The afresh clusters' pooling sums over the touched blocks' nuclei outside the ball (``x_node``,
    ``x_next``: :func:`_afresh_region`), in one pass over them: ``den`` ``(s,)``, ``num`` ``(s, F2)`` and rows
    of ``adj`` ``(s, L K)``, each cluster ``cl[j]`` at its own shift ``top[j]``.

    A nucleus's ``A_l E''`` (columns at the shifts ``own``) is its cached ``ae`` ``(N, L K)`` (at the image's
    shift, from the numerators ``e`` ``(N, K)``) times ``scale`` ``(K,)``; next to the ball it is summed over
    its edges to nuclei outside the ball; in the clusters ``far`` ``(K,)`` bool, too far below the image's
    shift to be rescaled, it is summed from the logits ``z``. ``h`` ``(N, F2)`` float64 node states;
    ``stamp`` ``(N,)`` int64 holds -1."""
    s, f2, width = cl.size, h.shape[1], ae.shape[1]
    den = np.zeros(s)
    num = np.zeros((s, f2))
    adj = np.zeros((s, width))
    w = np.empty((x_node.size, s))
    for i in range(x_node.size):
        for j in range(s):
            w[i, j] = np.exp(z[x_node[i], cl[j]] - top[j])  # <= 1: top is at least the remaining maximum
    row = np.empty(width)
    any_far = far.any()
    for v in ball:
        stamp[v] = 0
    for i in range(x_node.size):
        keep = False
        for j in range(s):
            keep |= w[i, j] != 0.0
        if not keep:  # underflows in every afresh cluster: adds exactly nothing
            continue
        v = x_node[i]
        _ae_row(v, x_next[i], any_far, indptr, dst, eid, efeat, z, e, ae, own, scale, far, stamp, row)
        for j in range(s):
            den[j] += w[i, j]
            for f in range(f2):
                num[j, f] += w[i, j] * h[v, f]
            for c in range(width):
                adj[j, c] += w[i, j] * row[c]
    for v in ball:
        stamp[v] = -1
    return den, num, adj


@numba.njit(cache=True, nogil=True)
def _block_neighbour_sums(nodes, indptr, dst, eid, efeat, z, scratch):
    k = z.shape[1]
    top = np.full(k, -np.inf)
    for v in nodes:
        for q in range(indptr[v], indptr[v + 1]):
            for c in range(k):
                top[c] = max(top[c], z[dst[q], c])
    for c in range(k):
        if top[c] == -np.inf:  # no edges: nothing to sum, any finite shift
            top[c] = 0.0
    out = _shifted_neighbour_sums(nodes, indptr, dst, eid, efeat, z, top, np.arange(k), scratch)
    return top, out.reshape(nodes.size, -1)


def block_neighbour_sums(nodes: np.ndarray, edges: OutEdges, efeat: np.ndarray, z: np.ndarray,
                         scratch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a block of ``nodes``: the largest logit ``q`` ``(K,)`` among their neighbours, and each node's
    ``A_l exp(Z - q)`` ``(len(nodes), L K)`` float64 (no term underflows however far the block lies
    below the image's shift). ``scratch`` ``(N,)`` int64 holds -1 (untouched)."""
    return _block_neighbour_sums(nodes, edges.indptr, edges.dst, edges.eid, efeat, z, scratch)


@numba.njit(cache=True, nogil=True)
def boundary_sums(bnd_row, bnd_node, bnd_eid, n_rows, efeat, z, e, own, scale, far):
    """``(n_rows, L, K)``: per row of the ball's last level (``bnd_row``: its edges' rows, from 0), the sum
    over its edges to nodes outside the ball of ``a_l E''_u``, each column at the shift ``own`` (the
    numerators ``e`` times ``scale``, or from the logits ``z`` in the columns ``far``)."""
    n_ch, k = efeat.shape[0], e.shape[1]
    out = np.zeros((n_rows, n_ch, k))
    for q in range(bnd_row.size):
        r, u, ed = bnd_row[q], bnd_node[q], bnd_eid[q]
        for c in range(k):
            x = np.exp(z[u, c] - own[c]) if far[c] else e[u, c] * scale[c]
            for ch in range(n_ch):
                out[r, ch, c] += np.float64(efeat[ch, ed]) * x
    return out


@numba.njit(cache=True, nogil=True)
def _rows_of_occlusions(occ, b):
    """Each occlusion's rows, ascending: ``order[start[o]:start[o + 1]]`` for occlusion ``o``."""
    start = np.zeros(b + 1, np.int64)
    for r in range(occ.size):
        start[occ[r] + 1] += 1
    for o in range(b):
        start[o + 1] += start[o]
    at = start[:b].copy()
    order = np.empty(occ.size, np.int64)
    for r in range(occ.size):
        order[at[occ[r]]] = r
        at[occ[r]] += 1
    return start, order


@numba.njit(cache=True, nogil=True)
def _afresh_shifts(z_c, cl, x_node, z, untouched, zmax, shift):
    """``top`` ``(s,)``: each afresh cluster's largest remaining logit ``m_k`` (over the kept rows' new
    logits ``z_c``, the touched blocks' other nuclei and the untouched blocks' maxima), and ``own``
    ``(K,)``: the image's shifts with the afresh clusters' replaced by theirs."""
    top = np.full(cl.size, -np.inf)
    for j in range(cl.size):
        c = cl[j]
        for q in range(z_c.shape[0]):
            top[j] = max(top[j], z_c[q, c])
        for v in x_node:
            top[j] = max(top[j], z[v, c])
        for bb in range(zmax.shape[0]):
            if untouched[bb]:
                top[j] = max(top[j], zmax[bb, c])
    own = shift.copy()
    for j in range(cl.size):
        own[cl[j]] = top[j]
    return top, own


@numba.njit(cache=True, nogil=True)
def _kept_sums(rows, nodes, n_rem_o, n_rem, n_v2, e_c, cl, h_new, tab, den, num):
    """Adds the kept rows' ``E''_k`` and ``E''_k^T H'`` (``H'`` new where it changed) to ``den``, ``num``."""
    for q in range(e_c.shape[0]):
        r = rows[n_rem_o + q]
        for j in range(cl.size):
            w = e_c[q, cl[j]]
            den[j] += w
            if r < n_v2:
                for f in range(num.shape[1]):
                    num[j, f] += w * np.float64(h_new[r - n_rem, f])
            else:
                for f in range(num.shape[1]):
                    num[j, f] += w * tab[nodes[n_rem_o + q], f]


@numba.njit(cache=True, nogil=True)
def _untouched_block_sums(untouched, cl, top, own, zmax, qmax, block_sums, den, num, adj):
    """Adds the untouched blocks' sums, rescaled from their shifts ``r_b``/``q_b`` (at or below the ones
    used here: every weight is at most 1), to ``den``, ``num``, ``adj``."""
    n_ch, k, f2 = adj.shape[1], adj.shape[2], num.shape[1]
    w_col = np.empty(k)
    for bb in range(zmax.shape[0]):
        if not untouched[bb]:
            continue
        for c in range(k):
            w_col[c] = np.exp(min(qmax[bb, c] - own[c], 0.0))
        for j in range(cl.size):
            c = cl[j]
            w_row = np.exp(min(zmax[bb, c] - top[j], 0.0))
            part = block_sums[c, bb]
            den[j] += w_row * part[0]
            for f in range(f2):
                num[j, f] += w_row * part[1 + f]
            for ch in range(n_ch):
                for c2 in range(k):
                    adj[j, ch, c2] += w_row * w_col[c2] * part[1 + f2 + ch * k + c2]


@numba.njit(cache=True, nogil=True)
def _ball_edge_sums(rows, n_rem_o, last_lo, o, e_c, cl, p, pptr, pcols, pvals, width, adj):
    """Adds to ``adj`` the afresh rows' ``E''_k^T A_l E''`` over the edges leaving the ball's last level
    (U-C and C-U: ``p`` ``(n_last, L, K)`` from :func:`boundary_sums`) and over the ball's own edges between
    kept rows (the occlusion's padded block of ``pptr``/``pcols``/``pvals``: padded row = position in ``rows``)."""
    n_ch, k = adj.shape[1], adj.shape[2]
    for q in range(p.shape[0]):
        qc = last_lo - n_rem_o + q
        for j in range(cl.size):
            w = e_c[qc, cl[j]]
            for ch in range(n_ch):
                pj = p[q, ch, cl[j]]
                for c in range(k):
                    adj[j, ch, c] += e_c[qc, c] * pj + w * p[q, ch, c]
    ae_row = np.empty((n_ch, k))
    for q in range(n_rem_o, rows.size):
        ae_row[:] = 0.0
        pr = o * width + q
        for ed in range(pptr[pr], pptr[pr + 1]):
            pos = np.searchsorted(rows, pcols[ed])
            if pos < n_rem_o:  # removed rows have E'' = 0
                continue
            for ch in range(n_ch):
                v = np.float64(pvals[ch, ed])
                for c in range(k):
                    ae_row[ch, c] += v * e_c[pos - n_rem_o, c]
        for j in range(cl.size):
            w = e_c[q - n_rem_o, cl[j]]
            for ch in range(n_ch):
                for c in range(k):
                    adj[j, ch, c] += w * ae_row[ch, c]


@numba.njit(cache=True, nogil=True)
def _afresh_one(rows, cl, o, node, n_rem, n_v2, z_new, h_new, pptr, pcols, pvals, width, indptr, dst, eid, efeat,
                z, e, tab, shift, block_of, block_start, block_node, zmax, qmax, block_sums, rescale_gap, stamp):
    """:func:`afresh_sums` for occlusion ``o`` (its batch ``rows``, ascending) and its clusters ``cl``."""
    k, f2, n_ch, s, m = z.shape[1], h_new.shape[1], efeat.shape[0], cl.size, rows.size
    nodes = node[rows]
    n_rem_o, last_lo = 0, 0
    for q in range(m):
        n_rem_o += rows[q] < n_rem
        last_lo += rows[q] < n_v2
    bnd_row, bnd_node, bnd_eid, touched, x_node, x_next = _afresh_region(
        nodes, last_lo, indptr, dst, eid, block_of, block_start, block_node, stamp)
    z_c = np.empty((m - n_rem_o, k))  # the kept rows C
    for q in range(m - n_rem_o):
        for c in range(k):
            z_c[q, c] = z_new[rows[n_rem_o + q] - n_rem, c]
    untouched = np.ones(zmax.shape[0], np.bool_)
    for t in touched:
        untouched[t] = False
    top, own = _afresh_shifts(z_c, cl, x_node, z, untouched, zmax, shift)
    e_c = np.exp(z_c - own)  # (n_C, K) E'' on the kept rows
    den, num, adj = np.zeros(s), np.zeros((s, f2)), np.zeros((s, n_ch, k))
    _kept_sums(rows, nodes, n_rem_o, n_rem, n_v2, e_c, cl, h_new, tab, den, num)
    _untouched_block_sums(untouched, cl, top, own, zmax, qmax, block_sums, den, num, adj)
    # the touched blocks' nuclei outside the ball, over their edges to nuclei outside it; the cached
    # numerators rescaled to the afresh clusters' shifts, but where that would leave float64
    gap = shift - own  # 0 but for the afresh clusters
    far = gap > rescale_gap
    scale = np.where(far, 0.0, np.exp(np.minimum(gap, rescale_gap)))
    if x_node.size:
        x_den, x_num, x_adj = _outside_pool(x_node, x_next, nodes, indptr, dst, eid, efeat, z, e, tab[:, :f2],
                                            tab[:, f2:], own, scale, cl, top, far, stamp)
        den += x_den
        num += x_num
        adj += x_adj.reshape(s, n_ch, k)
    p = boundary_sums(bnd_row - last_lo, bnd_node, bnd_eid, m - last_lo, efeat, z, e, own, scale, far)
    _ball_edge_sums(rows, n_rem_o, last_lo, o, e_c, cl, p, pptr, pcols, pvals, width, adj)
    return den, num, adj


@numba.njit(cache=True, nogil=True)
def afresh_sums(sel, clusters, n_marked, b, occ, node, n_rem, n_v2, z_new, h_new, pptr, pcols, pvals, width,
                indptr, dst, eid, efeat, z, e, tab, shift, block_of, block_start, block_node, zmax, qmax, block_sums,
                rescale_gap, stamp):
    """The afresh tier's sums of a batch's marked clusters (``docs/occlusion.md``, "Precision tiers"), in
    float64, each cluster at its own softmax shift: for occlusion ``sel[i]`` and cluster
    ``clusters[i, j]`` (``j < n_marked[i]``; the rest repeat column 0, whose values they get), ``den``
    ``(n, s)``, the row of ``num`` ``(n, s, F2)`` and the row of ``adj`` ``(n, s, L, K)``.

    Per occlusion, over the nuclei it leaves unchanged by blocks: the untouched blocks from their sums
    ``block_sums`` ``(K, n_blocks, 1 + F2 + L K)`` rescaled from their shifts ``zmax``/``qmax``
    (:class:`nucleograph.gnn.occlusion.cache.BlockSums`), the touched blocks' other nuclei one by one
    (:func:`_outside_pool`), the edges leaving the ball's last level (:func:`boundary_sums`); and the
    ball's kept rows with their new logits ``z_new`` and states ``h_new`` (float32, rows ``n_rem:``) over
    the ball's edges (``pptr``/``pcols``/``pvals``: the batch's padded in-edges, ``width`` rows per
    occlusion). ``occ``/``node``: the batch's rows (``b`` occlusions), ``z``/``e``/``tab`` the image's
    float64 logits, numerators and ``[H | A E]`` table, ``shift`` its fixed shifts; ``stamp`` ``(N,)``
    int64 holds -1 on entry and on return.
    """
    n, s_max = clusters.shape
    k, f2, n_ch = z.shape[1], h_new.shape[1], efeat.shape[0]
    den, num, adj = np.zeros((n, s_max)), np.zeros((n, s_max, f2)), np.zeros((n, s_max, n_ch, k))
    start, order = _rows_of_occlusions(occ, b)
    for i in range(n):
        o, s = sel[i], n_marked[i]
        d, u, a = _afresh_one(order[start[o]:start[o + 1]], clusters[i, :s].copy(), o, node, n_rem, n_v2, z_new,
                              h_new, pptr, pcols, pvals, width, indptr, dst, eid, efeat, z, e, tab, shift, block_of,
                              block_start, block_node, zmax, qmax, block_sums, rescale_gap, stamp)
        for j in range(s_max):
            jj = j if j < s else 0
            den[i, j] = d[jj]
            num[i, j] = u[jj]
            adj[i, j] = a[jj]
    return den, num, adj


@numba.njit(cache=True, nogil=True)
def float64_rows(sel, clusters, n_marked, b, occ, node, de, pptr, pcols, pvals, width, tab, num0, adj0, extra):
    """The float64 tier's sums of a batch's marked clusters (``docs/occlusion.md``, "Precision tiers"):
    for occlusion ``sel[i]`` and cluster ``k = clusters[i, j]`` (``j < n_marked[i]``; the rest repeat column
    0, whose values they get), row ``k`` of ``E'^T H`` less ``E'^T dH`` (``num`` ``(n, s, F2)``: ``num0[k] +
    dE_k^T H + extra[o, k]``) and row ``k`` of ``E'^T A_l E'`` (``adj`` ``(n, s, L, K)``: ``adj0[k] +
    dE_k^T (A_l E) + (A_l E_k + A_l dE_k)^T dE``), summed in float64 over the occlusion's ball rows.

    ``occ``/``node``/``de`` ``(rows, K)``: the batch's rows (``b`` occlusions) and their ``dE``; ``pptr``/
    ``pcols``/``pvals``: the rows' in-edges in the padded layout (``width`` rows per occlusion, padded row
    = position among the occlusion's rows; columns are batch rows); ``tab`` ``(N + 1, F2 + L K)`` the
    image's float64 ``[H | A E]``; ``num0``/``adj0`` the image's totals; ``extra`` ``(b, K, F2)`` float32
    ``E'^T dH``, kept as the float32 tier computed it (it sums remaining mass only).
    """
    n, s_max = clusters.shape
    k_all, f2, n_ch = de.shape[1], num0.shape[1], pvals.shape[0]
    num = np.zeros((n, s_max, f2))
    adj = np.zeros((n, s_max, n_ch, k_all))
    start, order = _rows_of_occlusions(occ, b)
    row, col = np.empty(tab.shape[1]), np.empty((n_ch, k_all))
    for i in range(n):
        o = sel[i]
        rows = order[start[o]:start[o + 1]]
        ade = np.empty((rows.size, n_ch))
        for j in range(n_marked[i]):
            k = clusters[i, j]
            row[:] = 0.0  # dE_k^T [H | A E]
            for r in rows:
                d = de[r, k]
                for c in range(tab.shape[1]):
                    row[c] += d * tab[node[r], c]
            for q in range(rows.size):  # A_l dE_k over the ball's edges
                ade[q, :] = 0.0
                for ed in range(pptr[o * width + q], pptr[o * width + q + 1]):
                    for ch in range(n_ch):
                        ade[q, ch] += np.float64(pvals[ch, ed]) * de[pcols[ed], k]
            for f in range(f2):
                num[i, j, f] = num0[k, f] + row[f] + np.float64(extra[o, k, f])
            col[:] = 0.0  # ((A_l E_k + A_l dE_k)^T dE)_c, a pass over the rows for all l and c at once
            for q in range(rows.size):
                r = rows[q]
                for ch in range(n_ch):
                    w = tab[node[r], f2 + ch * k_all + k] + ade[q, ch]
                    for c in range(k_all):
                        col[ch, c] += de[r, c] * w
            for ch in range(n_ch):
                for c in range(k_all):
                    adj[i, j, ch, c] = adj0[k, ch, c] + row[f2 + ch * k_all + c] + col[ch, c]
        for j in range(n_marked[i], s_max):
            num[i, j] = num[i, 0]
            adj[i, j] = adj[i, 0]
    return num, adj


@numba.njit(cache=True, nogil=True)
def softmax_changes(e, node, occ, n_removed, n_vconv2, e_kept, b):  # pragma: no cover - compiled
    """One batch's change of the softmax numerators and its per-occlusion sums, in one pass over its rows.

    ``e`` ``(N, K)`` float64 the cached numerators, ``node``/``occ`` each row's nucleus and occlusion,
    ``e_kept`` ``(rows - n_removed, K)`` the kept rows' new numerators ``exp(z' - shift)`` (float32, as the
    model computes them, by torch's vectorised ``exp``: numba's scalar one made this pass several times slower). Returns ``de`` ``(rows, K)``
    (``-E`` on the removed rows, ``E' - E`` on the others), ``e_new`` ``(n_vconv2 - n_removed, K)`` (``E'``
    on the kept rows whose ``H`` changes) and, per occlusion and cluster, ``sum dE`` and ``sum |dE|``
    ``(b, K)`` (rows in order: the sums ``index_add_`` made)."""
    n_rows, k = node.size, e.shape[1]
    de = np.empty((n_rows, k))
    e_new = np.empty((n_vconv2 - n_removed, k))
    dsum, moved = np.zeros((b, k)), np.zeros((b, k))
    for r in range(n_removed):
        o, v = occ[r], node[r]
        for c in range(k):
            d = -e[v, c]
            de[r, c] = d
            dsum[o, c] += d
            moved[o, c] -= d
    for r in range(n_removed, n_rows):
        o, v, i = occ[r], node[r], r - n_removed
        for c in range(k):
            d = np.float64(e_kept[i, c]) - e[v, c]
            de[r, c] = d
            dsum[o, c] += d
            moved[o, c] += abs(d)
        if r < n_vconv2:
            for c in range(k):
                e_new[i, c] = np.float64(e_kept[i, c])
    return de, e_new, dsum, moved


@numba.njit(cache=True, nogil=True)
def corrected_sums(num0, adj0, prod, extra, f2):  # pragma: no cover - compiled
    """The float32 tier's corrected pooling sums of a batch in one pass: ``num = num0 + dE^T H + E'^T dH``
    ``(b, K, F2)`` and ``adj = adj0 + Q + Q^T`` ``(b, K, L, K)`` in float64 from the float32 products
    ``prod`` ``(b, K, F2 + L K)`` (``[dE^T H | Q]``) and ``extra`` ``(b, K, F2)``, and whether each
    (occlusion, cluster)'s row of both is finite ``(b, K)``."""
    b, k, width = prod.shape
    n_ch = (width - f2) // k
    num = np.empty((b, k, f2))
    adj = np.empty((b, k, n_ch, k))
    finite = np.ones((b, k), dtype=np.bool_)
    for o in range(b):
        for i in range(k):
            total = 0.0
            for f in range(f2):
                x = num0[i, f] + np.float64(prod[o, i, f]) + np.float64(extra[o, i, f])
                num[o, i, f] = x
                total += x
            for ch in range(n_ch):
                for j in range(k):
                    x = adj0[i, ch, j] + np.float64(prod[o, i, f2 + ch * k + j]) + np.float64(prod[o, j, f2 + ch * k + i])
                    adj[o, i, ch, j] = x
                    total += x
            finite[o, i] = np.isfinite(total)
    return num, adj, finite
