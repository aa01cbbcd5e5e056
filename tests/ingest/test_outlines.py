"""Nucleus outlines: the compiled tracing against its marching-squares reference, and rasterising back."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from skimage.draw import ellipse

from nucleograph.ingest.outlines import (
    MAX_VERTICES,
    compact_rings,
    outline_polygon,
    outlines,
    outlines_reference,
    rasterise,
)


@pytest.fixture(scope="module")
def labels():
    """Random ellipses, some cut by the image border, one touching another, one a single pixel."""
    rng = np.random.default_rng(3)
    lab = np.zeros((300, 400), np.int32)
    k = 0
    for r in range(0, 300, 36):
        for c in range(0, 400, 40):
            k += 1
            rr, cc = ellipse(r, c, rng.uniform(2, 14), rng.uniform(2, 16), rotation=rng.uniform(0, np.pi),
                             shape=lab.shape)
            lab[rr, cc] = k
    lab[150, 395] = k + 1
    return lab


def test_compiled_tracing_agrees_with_marching_squares(labels):
    ids = np.unique(labels)[1:]
    fast, ref = outlines(labels, ids), outlines_reference(labels, ids)
    ious = []
    for i, lab in enumerate(ids):
        a, b = outline_polygon(fast[i]), outline_polygon(ref[i])
        area = (labels == lab).sum()
        assert 2 * 3 <= len(fast[i]) <= 2 * MAX_VERTICES
        assert a.area == pytest.approx(area, rel=0.35, abs=1.0)
        if area >= 40:  # tiny shapes: marching squares cuts their corners off
            ious.append(a.intersection(b).area / a.union(b).area)
            assert ious[-1] > 0.75, lab
            assert abs(a.area - area) / area < 0.12, lab
    assert np.mean(ious) > 0.9


def test_outlines_rasterise_back_to_the_nuclei(labels):
    ids = np.unique(labels)[1:]
    back = rasterise([outline_polygon(o) for o in outlines(labels, ids)], labels.shape)
    assert back.dtype == np.int32
    assert ((back == labels) & (labels > 0)).sum() / (labels > 0).sum() > 0.97
    assert ((back > 0) & (labels == 0)).sum() / (labels > 0).sum() < 0.03


def test_pixel_exact_shapes():
    lab = np.zeros((8, 8), np.int32)
    lab[2:5, 2:6] = 1
    lab[7, 7] = 2
    out = outlines(lab, [1, 2, 3])
    assert outline_polygon(out[0]).equals(shapely.box(1.5, 1.5, 5.5, 4.5))
    assert outline_polygon(out[1]).equals(shapely.box(6.5, 6.5, 7.5, 7.5))
    assert out[2] == []


def test_long_rings_are_cut_to_the_vertex_limit():
    t = np.linspace(0, 2 * np.pi, 500, endpoint=False)
    big = np.column_stack([100 + 80 * np.cos(t), 100 + 60 * np.sin(t)])
    tiny = np.array([[0.0, 0.0], [0.1, 0.0], [0.1, 0.1]])
    out = compact_rings([big, tiny, np.zeros((0, 2))], max_vertices=12, tolerance=0.01)
    assert 6 <= len(out[0]) <= 24 and outline_polygon(out[0]).area == pytest.approx(np.pi * 80 * 60, rel=0.1)
    assert len(out[1]) == 6 and out[2] == []


def test_rasterise_clears_holes_and_later_polygons_win():
    ring = shapely.Polygon(shapely.box(0, 0, 10, 10).exterior, [shapely.box(4, 4, 6, 6).exterior.coords])
    lab = rasterise([ring, shapely.box(8, 8, 12, 12)], (14, 14))
    assert lab[5, 5] == 0 and lab[2, 2] == 1 and lab[9, 9] == 2 and lab[13, 13] == 0


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        outlines(np.zeros((2, 3, 4), np.int32), [1])
    with pytest.raises(TypeError, match="integer"):
        outlines(np.zeros((4, 4)), [1])
    with pytest.raises(ValueError, match="max_vertices"):
        outlines(np.zeros((4, 4), np.int32), [1], max_vertices=2)
    with pytest.raises(ValueError, match="3 points"):
        outline_polygon([1.0, 2.0, 3.0, 4.0])
