"""Compiled boundary tracing for :func:`nucleograph.ingest.outlines.outlines` (numba).

Marching squares per nucleus (``skimage.measure.find_contours``, the reference in ``outlines.py``) costs
about 0.5 ms a nucleus, as long as measuring all features; following the pixel edges of every label in
one compiled pass costs microseconds. Imported on first use: numba takes a moment to load, and most
``nucleograph`` commands never trace. Compiled code is cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np

# Clockwise headings in image coordinates (y down): east, south, west, north.
_DX = np.array([1, 0, -1, 0], dtype=np.int64)
_DY = np.array([0, 1, 0, -1], dtype=np.int64)
# Pixel ahead on the right and ahead on the left of a corner, per heading, as (row, col) offsets.
_RIGHT_R = np.array([0, 0, -1, -1], dtype=np.int64)
_RIGHT_C = np.array([0, -1, -1, 0], dtype=np.int64)
_LEFT_R = np.array([-1, 0, 0, -1], dtype=np.int64)
_LEFT_C = np.array([0, 0, -1, -1], dtype=np.int64)


@numba.njit(cache=True, nogil=True)
def _first_pixels(labels, max_label):
    """Row and column of each label's first pixel in raster order (-1 where absent)."""
    rows = np.full(max_label + 1, -1, dtype=np.int64)
    cols = np.full(max_label + 1, -1, dtype=np.int64)
    h, w = labels.shape
    for r in range(h):
        for c in range(w):
            v = labels[r, c]
            if 0 < v <= max_label and rows[v] < 0:
                rows[v] = r
                cols[v] = c
    return rows, cols


@numba.njit(cache=True, nogil=True)
def _inside(labels, r, c, lab):
    h, w = labels.shape
    return 0 <= r < h and 0 <= c < w and labels[r, c] == lab


@numba.njit(cache=True, nogil=True)
def _walk(labels, lab, r0, c0, out, start, count_only):
    """Follow the outer boundary of label ``lab`` from the top-left corner of its first pixel, clockwise
    with the nucleus on the right (diagonal neighbours joined); store the corners where it turns."""
    x, y, d = c0, r0, 0
    n = 0
    limit = 4 * labels.shape[0] * labels.shape[1] + 8
    for _ in range(limit):
        x += _DX[d]
        y += _DY[d]
        if _inside(labels, y + _LEFT_R[d], x + _LEFT_C[d], lab):
            nd = (d + 3) % 4
        elif _inside(labels, y + _RIGHT_R[d], x + _RIGHT_C[d], lab):
            nd = d
        else:
            nd = (d + 1) % 4
        if nd != d:
            if not count_only:
                out[start + n, 0] = x
                out[start + n, 1] = y
            n += 1
        d = nd
        if x == c0 and y == r0 and d == 0:
            break
    return n


@numba.njit(cache=True, nogil=True)
def trace_rings(labels, ids):
    """The outer boundary of each label in ``ids`` along pixel edges, as corner points.

    Parameters
    ----------
    labels : (H, W) int ndarray
    ids : (N,) int64 ndarray

    Returns
    -------
    corners : (M, 2) float64 ndarray
        ``x, y`` of pixel corners (pixel ``(r, c)`` spans ``[c, c+1] x [r, r+1]``), ring after ring.
    offsets : (N + 1,) int64 ndarray
        Ring ``i`` is ``corners[offsets[i]:offsets[i + 1]]`` (empty for an absent label).
    """
    max_label = 0
    for v in ids:
        max_label = max(max_label, v)
    rows, cols = _first_pixels(labels, max_label)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    dummy = np.zeros((1, 2), dtype=np.float64)
    for i in range(len(ids)):
        lab = ids[i]
        n = 0
        if 0 < lab <= max_label and rows[lab] >= 0:
            n = _walk(labels, lab, rows[lab], cols[lab], dummy, 0, True)
        offsets[i + 1] = offsets[i] + n
    corners = np.empty((offsets[-1], 2), dtype=np.float64)
    for i in range(len(ids)):
        lab = ids[i]
        if offsets[i + 1] > offsets[i]:
            _walk(labels, lab, rows[lab], cols[lab], corners, offsets[i], False)
    return corners, offsets
