import numpy as np
import pytest

from nucleograph.ingest.graph import EDGE_COLUMNS, brute_force_edges, build_edges, threshold_pixels


def _pairs(edges):
    return set(zip(edges["src"].tolist(), edges["dst"].tolist(), strict=True))


@pytest.mark.parametrize("n", [2, 10, 500])
@pytest.mark.parametrize("threshold", [1.0, 25.0, 100.0, 1e4])
def test_matches_brute_force(n, threshold):
    rng = np.random.default_rng(n)
    pts = rng.uniform(0, 1000, size=(n, 2))
    fast, ref = build_edges(pts, threshold=threshold), brute_force_edges(pts, threshold=threshold)
    for key in EDGE_COLUMNS:
        np.testing.assert_array_equal(fast[key], ref[key])


def test_brute_force_blocks_agree():
    pts = np.random.default_rng(0).uniform(0, 300, size=(400, 2))
    whole = brute_force_edges(pts, threshold=30.0)
    blocked = brute_force_edges(pts, threshold=30.0, max_block=1000)  # 2 rows per block
    assert _pairs(whole) == _pairs(blocked)


def test_integer_grid_with_ties():
    # Many pairs sit exactly at the threshold; strict < must drop all of them.
    xs, ys = np.meshgrid(np.arange(20) * 5.0, np.arange(20) * 5.0)
    pts = np.c_[xs.ravel(), ys.ravel()]
    fast = build_edges(pts, threshold=10.0)
    assert _pairs(fast) == _pairs(brute_force_edges(pts, threshold=10.0))
    assert fast["dist"].max() < 10.0
    assert np.isclose(fast["dist"], 5.0).any() and np.isclose(fast["dist"], np.sqrt(50)).any()


def test_strict_threshold_and_weight():
    pts = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    e = build_edges(pts, threshold=5.0)
    assert _pairs(e) == {(0, 2), (1, 2)}  # (0, 1) is exactly 5 apart: excluded
    np.testing.assert_allclose(e["weight"], 1.0 - e["dist"] / 5.0)
    assert _pairs(build_edges(pts, threshold=5.0 + 1e-9)) == {(0, 1), (0, 2), (1, 2)}


def test_layout_and_types():
    pts = np.random.default_rng(1).uniform(0, 100, size=(60, 2))
    e = build_edges(pts, threshold=20.0)
    assert set(e) == set(EDGE_COLUMNS)
    assert e["src"].dtype == np.int64 and e["dst"].dtype == np.int64
    assert np.all(e["src"] < e["dst"])
    order = np.lexsort((e["dst"], e["src"]))
    np.testing.assert_array_equal(order, np.arange(len(order)))
    assert np.all((e["weight"] > 0) & (e["weight"] <= 1))
    assert len(_pairs(e)) == len(e["src"])  # one entry per unordered pair


def test_duplicate_points_weight_one():
    e = build_edges([[5.0, 5.0], [5.0, 5.0]], threshold=1.0)
    assert _pairs(e) == {(0, 1)} and e["weight"][0] == 1.0


@pytest.mark.parametrize("pts", [np.zeros((0, 2)), np.array([[1.0, 2.0]]), [[0, 0], [500, 500]]])
def test_empty(pts):
    for fn in (build_edges, brute_force_edges):
        e = fn(pts, threshold=100.0)
        assert all(len(e[k]) == 0 for k in EDGE_COLUMNS)
        assert e["src"].dtype == np.int64


@pytest.mark.parametrize(
    ("pts", "kwargs", "match"),
    [
        (np.zeros((3, 3)), {}, r"shape \(N, 2\)"),
        (np.zeros(4), {}, r"shape \(N, 2\)"),
        ([[0, 0], [np.nan, 1]], {}, "NaN or infinite"),
        ([[0, 0], [1, 1]], {"threshold": 0}, "positive finite"),
        ([[0, 0], [1, 1]], {"threshold": np.inf}, "positive finite"),
    ],
)
def test_bad_input(pts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_edges(pts, **kwargs)


def test_threshold_pixels():
    assert threshold_pixels(100.0) == 100.0
    assert threshold_pixels(42.0, unit="um", mpp=0.42) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="needs mpp"):
        threshold_pixels(10.0, unit="um")
    with pytest.raises(ValueError, match="mpp must be a positive"):
        threshold_pixels(10.0, unit="um", mpp=0)
    with pytest.raises(ValueError, match="unit must be 'px' or 'um'"):
        threshold_pixels(10.0, unit="mm")
    with pytest.raises(ValueError, match="positive finite"):
        threshold_pixels(-1.0)
