import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from gnn.balls import ball_lists, batch_rows, layer_csr


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
    n, reach = indptr.size - 1, 2
    balls = ball_lists(indptr, indices, reach)
    centers = np.array([5, 0, 17])
    scratch = np.full(n, -1, dtype=np.int64)
    occ, node, level_end, ptr, cols, eid = batch_rows(centers, *balls, reach, indptr, indices, order, scratch)
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


def test_layer_csr_stacks_the_channels_of_a_row_range_and_leading_columns(rng):
    ptr = np.array([0, 2, 5, 6, 8])
    cols = np.array([0, 3, 1, 2, 3, 0, 1, 3])
    vals = rng.random((2, 8)).astype(np.float32)
    new_ptr, new_cols, new_vals = layer_csr(ptr, cols, vals, 1, 4, 2)
    dense = np.zeros((2, 4, 4), np.float32)
    for r in range(4):
        dense[:, r, cols[ptr[r]:ptr[r + 1]]] = vals[:, ptr[r]:ptr[r + 1]]
    got = np.zeros((3, 4), np.float32)  # rows 1..3, columns (channel, column < 2)
    for r in range(3):
        got[r, new_cols[new_ptr[r]:new_ptr[r + 1]]] = new_vals[new_ptr[r]:new_ptr[r + 1]]
    np.testing.assert_array_equal(got, np.concatenate([dense[0, 1:, :2], dense[1, 1:, :2]], 1))
    assert new_ptr[-1] == 2 * 3  # rows 1..3 hold three edges into columns 0 and 1, once per channel
