import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from nucleograph.gnn.occlusion.balls import (
    OutEdges,
    ball_lists,
    batch_rows,
    layer_csr,
    padded_csr,
)


def _graph(rng, n=60, p=0.06):
    upper = np.triu(rng.random((n, n)) < p, 1)
    src, dst = np.nonzero(upper | upper.T)
    order = np.argsort(src, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    return indptr, dst[order], order, (src, dst)


@pytest.mark.parametrize("reach", [0, 1, 3])
def test_balls_are_the_bounded_hop_distances(reach, rng):
    indptr, indices, _, (src, dst) = _graph(rng)
    n = indptr.size - 1
    start, node, dist = ball_lists(indptr, indices, reach)
    ref = dijkstra(csr_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)), unweighted=True)
    for c in range(n):
        got = dict(zip(node[start[c]:start[c + 1]], dist[start[c]:start[c + 1]], strict=True))
        want = {v: int(d) for v, d in enumerate(ref[c]) if d <= reach}
        assert got == want
        assert np.all(np.diff(dist[start[c]:start[c + 1]]) >= 0)  # breadth-first: sorted by distance


def test_batch_rows_are_the_balls_in_edges_sorted_by_distance(rng):
    indptr, indices, order, _ = _graph(rng)
    n, hops = indptr.size - 1, 1
    reach = hops + 3
    balls = ball_lists(indptr, indices, reach)
    centers = np.array([5, 0, 17])
    scratch = np.full(n, -1, dtype=np.int64)
    efeat = rng.random((2, order.size)).astype(np.float32)
    rows = batch_rows(centers, balls, OutEdges(indptr, indices, order), efeat, hops=hops, scratch=scratch)
    occ, node, level_end, ptr, cols = rows.occ, rows.node, rows.level_end, rows.ptr, rows.cols
    vals, eid, below = rows.vals, rows.eid, rows.below
    assert (scratch == -1).all()
    start, ball_node, ball_dist = balls
    dist_of = {(o, v): d for o, c in enumerate(centers)
               for v, d in zip(ball_node[start[c]:start[c + 1]], ball_dist[start[c]:start[c + 1]], strict=True)}
    assert sorted(zip(occ, node, strict=True)) == sorted(dist_of)
    d = np.array([dist_of[(o, v)] for o, v in zip(occ, node, strict=True)])
    assert np.all(np.diff(d) >= 0) and list(level_end) == [int((d <= k).sum()) for k in range(reach + 1)]
    for r in range(occ.size):  # in-edges of row r: its neighbours inside the same ball, with their edge ids
        want = sorted((int(v), int(order[e])) for e in range(indptr[node[r]], indptr[node[r] + 1])
                      if (occ[r], (v := indices[e])) in dist_of)
        got = sorted((int(node[cols[e]]), int(eid[e])) for e in range(ptr[r], ptr[r + 1]))
        assert got == want and all(occ[cols[e]] == occ[r] for e in range(ptr[r], ptr[r + 1]))
    np.testing.assert_array_equal(vals, efeat[:, eid])
    # the layers: rows n_0 <= r < n_(j+1), columns < n_j, channel l of column c at c L + l, the removed
    # rows' columns (c < n_0) negated
    dense = np.zeros((2, occ.size, occ.size), np.float32)
    for r in range(occ.size):
        dense[:, r, cols[ptr[r]:ptr[r + 1]]] = vals[:, ptr[r]:ptr[r + 1]]
    bound = level_end[hops:]
    for j in range(3):
        lptr, lcols, lvals = layer_csr(ptr, cols, vals, below[j], bound[0], bound[j + 1], bound[j])
        assert lptr.dtype == lcols.dtype == np.int32
        got = np.zeros((bound[j + 1] - bound[0], 2 * bound[j]), np.float32)
        for r in range(got.shape[0]):
            np.add.at(got[r], lcols[lptr[r]:lptr[r + 1]], lvals[lptr[r]:lptr[r + 1]])
        want = np.stack([dense[ch, bound[0]:bound[j + 1], :bound[j]] for ch in range(2)], 2).reshape(got.shape)
        want[:, :2 * bound[0]] *= -1
        np.testing.assert_array_equal(got, want)
        edges = sum(int((cols[ptr[r]:ptr[r + 1]] < bound[j]).sum()) for r in range(bound[0], bound[j + 1]))
        assert lptr[-1] == 2 * edges  # each edge once per channel, none twice


def test_padded_csr_moves_each_row_to_its_padded_position(rng):
    ptr = np.array([0, 2, 5, 6], dtype=np.int32)
    cols = np.array([0, 2, 1, 2, 0, 1], dtype=np.int32)
    vals = rng.random((2, 6)).astype(np.float32)
    flat = np.array([4, 0, 2])  # rows 0, 1, 2 go to padded rows 4, 0, 2 of 6
    new_ptr, new_cols, new_vals = padded_csr(ptr, cols, vals, flat, 6)
    assert new_ptr.dtype == new_cols.dtype == np.int32 and new_ptr.size == 7
    for ch in range(2):
        dense = np.zeros((3, 3), np.float32)
        got = np.zeros((6, 3), np.float32)
        for r in range(3):
            dense[r, cols[ptr[r]:ptr[r + 1]]] = vals[ch, ptr[r]:ptr[r + 1]]
        for p in range(6):
            got[p, new_cols[new_ptr[p]:new_ptr[p + 1]]] = new_vals[ch, new_ptr[p]:new_ptr[p + 1]]
        want = np.zeros((6, 3), np.float32)
        want[flat] = dense
        np.testing.assert_array_equal(got, want)
