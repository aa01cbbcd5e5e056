"""The slide viewer's viewport arithmetic (pure functions): zoom, pan, boxes, the address, tiles, bins."""

from __future__ import annotations

import numpy as np
import pytest

from nucleograph.dashboard.viewport import (
    ASPECT,
    MIN_WIDTH,
    Viewport,
    aggregate,
    grid_cell,
    in_view,
    tiles_for,
)
from nucleograph.ingest.readers import slide_level_for

W, H = 40_000, 30_000


def test_the_whole_slide_and_zooming_keep_the_view_over_the_slide():
    whole = Viewport.whole(W, H)
    assert whole.bounds == pytest.approx((W / 2 - H * ASPECT / 2, 0, W / 2 + H * ASPECT / 2, H))  # all of it
    assert whole.zoom == 1 and whole.zoomed(0.5) == whole  # no farther than the whole slide
    near = whole.zoomed(2).zoomed(2)
    assert near.width == H * ASPECT / 4 and (near.cx, near.cy) == (W / 2, H / 2)
    assert whole.zoomed(1e6).width == MIN_WIDTH
    with pytest.raises(ValueError, match="positive"):
        whole.zoomed(0)


def test_panning_stops_at_the_slide_edge_and_boxes_frame_the_view():
    v = Viewport.whole(W, H).zoomed(4)
    right = v.panned(0.5, 0)
    assert right.cx == v.cx + v.width / 2
    far = v.panned(100, 100)
    x0, y0, x1, y1 = far.bounds
    assert x1 == pytest.approx(W) and y1 == pytest.approx(H)
    box = v.framing(1000, 2000, 400, 1600)  # corners in any order
    assert (box.cx, box.cy) == (700, 1800) and box.width == pytest.approx(max(600, 400 * ASPECT))
    assert v.centred(-5, -5).bounds[:2] == (0, 0)


def test_the_address_round_trips_and_nonsense_shows_the_whole_slide():
    v = Viewport.whole(W, H).zoomed(8).centred(12_345, 6_789)
    back = Viewport.from_query(v.to_query(), W, H)
    assert (back.cx, back.cy, back.width) == pytest.approx((v.cx, v.cy, v.width), abs=1)
    for bad in ({}, {"x": "a", "y": "1", "w": "2"}, {"x": "nan", "y": "1", "w": "2"}):
        assert Viewport.from_query(bad, W, H) == Viewport.whole(W, H)


def test_tiles_and_levels():
    assert tiles_for((0, 0, 1024, 512), 1.0, (W, H), tile=512) == [(0, 0), (1, 0)]
    assert tiles_for((600, 0, 1100, 10), 1.0, (W, H), tile=512) == [(1, 0), (2, 0)]
    assert tiles_for((0, 0, W, H), 64.0, (625, 469), tile=512) == [(0, 0), (1, 0)]
    assert tiles_for((W + 600, 0, W + 900, 10), 1.0, (W, H)) == []  # beyond the last tile
    downs = [1.0, 4.0, 16.0, 64.0]
    assert [slide_level_for(downs, s) for s in (0.5, 1, 3.9, 4, 20, 1000)] == [0, 0, 0, 1, 2, 3]


def test_bins_count_the_nuclei_in_them_and_stay_bounded():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, [W, H], (20_000, 2))
    scores = rng.normal(size=len(pts))
    cell = grid_cell(W, H)
    assert cell >= 32 and (-(-W // cell)) * (-(-H // cell)) <= 2**18
    shape = (-(-H // cell), -(-W // cell))
    ix, iy = (pts[:, 0] // cell).astype(int), (pts[:, 1] // cell).astype(int)
    grid = {"cell": cell, "counts": np.zeros(shape, np.int64), "scored": np.zeros(shape, np.int64),
            "totals": np.zeros(shape)}
    np.add.at(grid["counts"], (iy, ix), 1)
    np.add.at(grid["scored"], (iy, ix), 1)
    np.add.at(grid["totals"], (iy, ix), scores)
    whole = Viewport.whole(W, H)
    bins = aggregate(grid, whole.bounds, bins_across=50)
    assert bins["counts"].sum() == len(pts) and bins["counts"].shape[1] <= 50 + 1
    size = bins["bin"]
    for i, j in [(0, 0), (3, 7), (bins["counts"].shape[0] - 1, bins["counts"].shape[1] - 1)]:
        bx, by = bins["x"][j] - size / 2, bins["y"][i] - size / 2
        inside = (pts[:, 0] >= bx) & (pts[:, 0] < bx + size) & (pts[:, 1] >= by) & (pts[:, 1] < by + size)
        assert bins["counts"][i, j] == inside.sum()
        if inside.any():
            assert bins["mean"][i, j] == pytest.approx(scores[inside].mean())
        else:
            assert np.isnan(bins["mean"][i, j])  # no scored nucleus: no colour
    near = Viewport.whole(W, H).zoomed(16)
    assert in_view(grid, near.bounds) >= ((pts[:, 0] >= near.bounds[0]) & (pts[:, 0] <= near.bounds[2])
                                          & (pts[:, 1] >= near.bounds[1]) & (pts[:, 1] <= near.bounds[3])).sum()
    assert aggregate(grid, near.bounds, bins_across=50)["bin"] == cell  # never finer than the stored grid


def test_a_views_tiles_read_side_by_side_equal_the_slides_pixels_and_stay_bounded(tmp_path, monkeypatch):
    from collections import OrderedDict

    from nucleograph.dashboard import data
    from nucleograph.ingest.readers import read_slide_tile
    from nucleograph.ingest.synth import synthesize_slide

    path = tmp_path / "slide.tif"
    synthesize_slide("breast", "Invasive", path, nuclei_path=tmp_path / "n.csv", truth_path=tmp_path / "t.json",
                     rng=np.random.default_rng(0), size=(2048, 2048))
    monkeypatch.setattr(data, "_TILES", OrderedDict())  # the server's tile LRU, empty
    src = data._Slide(str(path))
    keys = tiles_for(Viewport.whole(2048, 2048).bounds, 1.0, src.dimensions[0], tile=256)
    assert len(keys) == 64
    tiles = src.tiles_of(0, keys, 256)
    assert src.opened == data.SLIDE_READERS  # a second handle was opened to read beside the first
    for (c, r), t in zip(keys, tiles, strict=True):
        np.testing.assert_array_equal(t, read_slide_tile(path, c * 256, r * 256, 256, 256))
    assert len(data._TILES) == 64 and src.tiles_of(0, keys[:1], 256)[0] is tiles[0]  # the second read: cached
    src.close()
    monkeypatch.setattr(data, "TILE_CACHE", 10)
    monkeypatch.setattr(data, "_TILES", OrderedDict())
    src = data._Slide(str(path))
    for c, r in keys[:12]:
        src.tile(0, c, r, 256)
    src.tile(0, *keys[2], 256)  # used again: the most recent
    # the least recently used dropped first, whatever slide they came from
    assert list(data._TILES) == [(str(path), 0, c, r, 256) for c, r in keys[3:12] + keys[2:3]]
    src.close()
