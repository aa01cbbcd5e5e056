"""Index building for fast occlusion (:mod:`gnn.explain`): every nucleus's k-hop ball and, for a batch
of occlusions, the balls' rows and in-edges as CSR arrays.

These are loops over nodes and edges with data-dependent lengths; written with numpy they took a
dozen passes over every edge (a quarter of the occlusion time on 100 px radius graphs), compiled with
numba they take one. Compiled functions are cached on disk (``cache=True``), so only the first run on a
machine pays the compilation (about a second).
"""

from __future__ import annotations

import numba
import numpy as np


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
def ball_lists(indptr, indices, reach):
    """The ``reach``-hop ball of every node of a graph given as CSR (``indptr``, ``indices``: out-edges).

    Returns ``start`` ``(N + 1,)``, ``node`` and ``dist``: the ball of node ``c`` is
    ``node[start[c]:start[c + 1]]``, in breadth-first order (so sorted by ``dist``, its hop distance).
    """
    n = indptr.size - 1
    stamp = np.full(n, -1, np.int64)
    queue = np.empty(n, np.int64)
    dist = np.empty(n, np.int64)
    start = np.zeros(n + 1, np.int64)
    for c in range(n):
        start[c + 1] = start[c] + _bfs(c, indptr, indices, reach, stamp, queue, dist)
    node = np.empty(start[n], np.int64)
    hop = np.empty(start[n], np.int64)
    stamp[:] = -1
    for c in range(n):
        m = _bfs(c, indptr, indices, reach, stamp, queue, dist)
        node[start[c]:start[c] + m] = queue[:m]
        hop[start[c]:start[c] + m] = dist[:m]
    return start, node, hop


@numba.njit(cache=True, nogil=True)
def batch_rows(centers, start, ball_node, ball_dist, reach, indptr, out_dst, order, row_of_node):
    """Rows and in-edges of a batch of occlusions.

    Rows are (occlusion, nucleus) pairs of the balls of ``centers`` sorted by hop distance, then
    occlusion, then breadth-first order. ``indptr``/``out_dst``/``order``: the graph's out-edges by
    source and their edge ids (on a symmetric graph also the in-edges). ``row_of_node`` ``(N,)`` is
    scratch space holding -1 on entry and on return.

    Returns ``occ``, ``node``, ``level_end`` (rows with distance <= k are ``:level_end[k]``) and the
    in-edges among the rows as CSR: ``ptr``, ``cols`` (int32, MKL's index type; row indices; edges to nuclei outside the ball
    are left out) and ``eid`` (edge ids).
    """
    b = centers.size
    levels = np.zeros(reach + 1, np.int64)
    for o in range(b):
        c = centers[o]
        for k in range(start[c], start[c + 1]):
            levels[ball_dist[k]] += 1
    pos = np.zeros(reach + 1, np.int64)
    for lv in range(1, reach + 1):
        pos[lv] = pos[lv - 1] + levels[lv - 1]
    level_end = pos + levels
    n_rows = level_end[reach]
    occ = np.empty(n_rows, np.int64)
    node = np.empty(n_rows, np.int64)
    row_of_entry = np.empty(n_rows, np.int64)  # ball entries of the occlusions in turn -> row
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
    # in-edges per row: counted, then filled (fill=True), one occlusion at a time with its node -> row map
    ptr = np.zeros(n_rows + 1, np.int32)
    cols = np.empty(0, np.int32)
    eid = np.empty(0, np.int64)
    for fill in (False, True):
        if fill:
            for r in range(n_rows):
                ptr[r + 1] += ptr[r]  # counts -> offsets
            cols = np.empty(ptr[n_rows], np.int32)
            eid = np.empty(ptr[n_rows], np.int64)
        for o in range(b):
            lo, hi = entry_start[o], entry_start[o + 1]
            for j in range(lo, hi):
                row_of_node[node[row_of_entry[j]]] = row_of_entry[j]
            for j in range(lo, hi):
                r = row_of_entry[j]
                v = node[r]
                at = ptr[r] if fill else 0
                for e in range(indptr[v], indptr[v + 1]):
                    col = row_of_node[out_dst[e]]
                    if col >= 0:
                        if fill:
                            cols[at] = col
                            eid[at] = order[e]
                        at += 1
                if not fill:
                    ptr[r + 1] = at  # the row's count
            for j in range(lo, hi):
                row_of_node[node[row_of_entry[j]]] = -1
    return occ, node, level_end, ptr, cols, eid


@numba.njit(cache=True, nogil=True)
def layer_csr(ptr, cols, vals, row_lo, row_hi, n_in):
    """One CSR matrix for all edge channels of a layer's sparse product: rows ``row_lo:row_hi`` of the
    batch's in-edges (``ptr``, ``cols``, ``vals`` ``(L, E)``), columns ``< n_in``, channel ``l``'s
    entries in column block ``l`` (column ``l * n_in + col``). Times the projections stacked by
    channel, ``(L n_in, O)``, it sums ``sum_l A_l P_l`` in one product. Returns ``(ptr, cols, vals)``
    with int32 indices (MKL's own: torch converts int64 ones on every product)."""
    n_ch = vals.shape[0]
    n_out = row_hi - row_lo
    new_ptr = np.empty(n_out + 1, np.int32)
    new_ptr[0] = 0
    cap = n_ch * (ptr[row_hi] - ptr[row_lo])  # at most every edge once per channel
    new_cols = np.empty(cap, np.int32)
    new_vals = np.empty(cap, vals.dtype)
    at = 0
    for r in range(n_out):
        lo, hi = ptr[row_lo + r], ptr[row_lo + r + 1]
        for ch in range(n_ch):
            for e in range(lo, hi):
                if cols[e] < n_in:
                    new_cols[at] = ch * n_in + cols[e]
                    new_vals[at] = vals[ch, e]
                    at += 1
        new_ptr[r + 1] = at
    return new_ptr, new_cols[:at], new_vals[:at]
