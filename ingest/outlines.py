"""Nucleus outlines: label image -> compact polygons, and polygons -> label image.

Coordinates are in image pixels with the centroids' convention (``centroid_x``/``centroid_y`` from
:func:`nucleograph.ingest.features.nucleus_features`): the centre of pixel ``(row, col)`` is the point
``(x=col, y=row)``, so the image covers ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. GeoJSON and QuPath put
the corner of the image at ``(0, 0)`` instead (pixel centres at ``+0.5``); :data:`EDGE_OFFSET` converts.

An outline is stored on each Nucleus as one flat list ``[x0, y0, x1, y1, ...]`` (the ring, not closed),
simplified to at most :data:`MAX_VERTICES` vertices and rounded to 0.1 px: a few dozen numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from scipy import ndimage
from skimage.draw import polygon as draw_polygon
from skimage.measure import find_contours

__all__ = ["EDGE_OFFSET", "MAX_VERTICES", "compact_rings", "outline_polygon", "outlines", "outlines_reference", "rasterise"]

#: Add to our coordinates to get GeoJSON/QuPath ones (pixel corners at integers); subtract to come back.
EDGE_OFFSET = 0.5
#: Most vertices an outline keeps (twice as many numbers).
MAX_VERTICES = 32
_DECIMALS = 1


def _ring(mask: np.ndarray) -> np.ndarray | None:
    """The outer boundary of a binary crop as (row, col) points between in and out pixel centres."""
    padded = np.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=np.float64)
    padded[1:-1, 1:-1] = mask
    # "high": diagonal neighbours belong to the object, so an 8-connected nucleus has one outer ring
    contours = find_contours(padded, 0.5, fully_connected="high")
    if not contours:
        return None
    if len(contours) == 1:
        return contours[0] - 1.0
    areas = [abs(_shoelace(c)) for c in contours]
    return contours[int(np.argmax(areas))] - 1.0


def _shoelace(rc: np.ndarray) -> float:
    r, c = rc[:, 0], rc[:, 1]
    return 0.5 * float(np.dot(c, np.roll(r, -1)) - np.dot(r, np.roll(c, -1)))


def _check(labels: np.ndarray, max_vertices: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W); got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array; got dtype {labels.dtype}")
    if max_vertices < 3:
        raise ValueError(f"max_vertices must be at least 3; got {max_vertices}")
    return labels


def compact_rings(rings: Sequence[np.ndarray], *, max_vertices: int = MAX_VERTICES,
                  tolerance: float = 0.5) -> np.ndarray:
    """Simplify rings to at most ``max_vertices`` vertices and flatten them to ``[x0, y0, x1, y1, ...]``.

    Douglas-Peucker (``shapely.simplify``) with ``tolerance`` pixels, doubled for the rings still too
    long; coordinates rounded to 0.1 px.

    Parameters
    ----------
    rings : sequence of (K, 2) ndarray
        ``x, y`` points of each ring, not closed; fewer than 3 points gives an empty outline.
    max_vertices : int, optional
    tolerance : float, optional

    Returns
    -------
    (N,) object ndarray of list of float
    """
    out = np.empty(len(rings), dtype=object)
    out[:] = [[] for _ in range(len(rings))]
    todo = np.array([i for i, r in enumerate(rings) if len(r) >= 3], dtype=np.int64)
    if not len(todo):
        return out
    counts = np.array([len(rings[i]) for i in todo])
    geoms = shapely.linearrings(np.concatenate([rings[i] for i in todo]), indices=np.repeat(np.arange(len(todo)), counts))
    tol = tolerance
    pending = np.arange(len(todo))
    while len(pending):
        simple = shapely.simplify(geoms[pending], tol, preserve_topology=False)
        n = shapely.get_num_coordinates(simple) - 1  # rings repeat their first point
        fits = (n >= 3) & (n <= max_vertices)
        collapsed = n < 3
        if fits.any():
            coords, which = shapely.get_coordinates(simple[fits], return_index=True)
            for j, part in zip(pending[fits], np.split(coords, np.flatnonzero(np.diff(which)) + 1), strict=True):
                out[todo[j]] = np.round(part[:-1], _DECIMALS).ravel().tolist()
        for j in pending[collapsed]:  # a tiny nucleus: keep its raw ring, thinned evenly
            raw = rings[todo[j]]
            out[todo[j]] = np.round(raw[:: max(1, -(-len(raw) // max_vertices))], _DECIMALS).ravel().tolist()
        pending = pending[~fits & ~collapsed]
        tol *= 2.0
    return out


def outlines(
    labels: np.ndarray, ids: Sequence[int], *, max_vertices: int = MAX_VERTICES, tolerance: float = 0.5
) -> np.ndarray:
    """The outline of each labelled nucleus as a flat ``[x0, y0, x1, y1, ...]`` list.

    The outer boundary is followed along pixel edges (diagonal neighbours joined; holes ignored) in
    one compiled pass over all labels (:mod:`nucleograph.ingest.tracing`), then compacted by
    :func:`compact_rings`. :func:`outlines_reference` is the same with marching squares per nucleus.

    Parameters
    ----------
    labels : (H, W) int ndarray
        Instance labels, 0 = background.
    ids : sequence of int
        Labels to outline, in output order (e.g. ``nucleus_features(...)["nucleus_id"]``).
    max_vertices : int, optional
        Most vertices per outline.
    tolerance : float, optional
        Initial simplification tolerance in pixels.

    Returns
    -------
    (N,) object ndarray of list of float
        Empty list for a label not present.

    Raises
    ------
    ValueError
        ``labels`` is not 2-D, or ``max_vertices < 3``.
    TypeError
        ``labels`` is not an integer array.

    Examples
    --------
    >>> labels = np.zeros((8, 8), int); labels[2:5, 2:6] = 1
    >>> outlines(labels, [1])[0]
    [5.5, 1.5, 5.5, 4.5, 1.5, 4.5, 1.5, 1.5]
    """
    # numba loads in about a second: imported here so that commands which never trace do not pay it
    from nucleograph.ingest.tracing import trace_rings

    labels = _check(labels, max_vertices)
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if not len(ids):
        return np.empty(0, dtype=object)
    corners, offsets = trace_rings(np.ascontiguousarray(labels), ids)
    corners -= EDGE_OFFSET  # pixel corners -> this module's coordinates
    rings = [corners[offsets[i]:offsets[i + 1]] for i in range(len(ids))]
    return compact_rings(rings, max_vertices=max_vertices, tolerance=tolerance)


def outlines_reference(
    labels: np.ndarray, ids: Sequence[int], *, max_vertices: int = MAX_VERTICES, tolerance: float = 0.5
) -> np.ndarray:
    """:func:`outlines` by marching squares (``skimage.measure.find_contours`` at level 0.5, one
    nucleus at a time): the reference the compiled tracing is tested against."""
    labels = _check(labels, max_vertices)
    rings = []
    if len(ids):
        slices = ndimage.find_objects(labels.astype(np.int64, copy=False), max_label=int(np.max(ids)))
    for lab in ids:
        sl = slices[int(lab) - 1] if 0 < int(lab) <= len(slices) else None
        ring = None if sl is None else _ring(labels[sl] == lab)
        rings.append(np.zeros((0, 2)) if ring is None else
                     np.column_stack([ring[:, 1] + sl[1].start, ring[:, 0] + sl[0].start]))
    return compact_rings(rings, max_vertices=max_vertices, tolerance=tolerance)


def outline_polygon(flat: Sequence[float], *, offset: float = 0.0) -> shapely.Polygon:
    """The polygon of a stored outline, shifted by ``offset`` (``EDGE_OFFSET`` for GeoJSON).

    Parameters
    ----------
    flat : sequence of float
        ``[x0, y0, x1, y1, ...]`` as :func:`outlines` returns it.
    offset : float, optional

    Returns
    -------
    shapely.Polygon

    Raises
    ------
    ValueError
        Fewer than three points, or an odd count of numbers.
    """
    xy = np.asarray(flat, dtype=np.float64)
    if xy.size % 2 or xy.size < 6:
        raise ValueError(f"an outline needs an even count of at least 6 numbers (3 points); got {xy.size}")
    return shapely.Polygon(xy.reshape(-1, 2) + offset)


def rasterise(geometries: Sequence, shape: tuple[int, int]) -> np.ndarray:
    """Paint polygons into an instance label image: geometry ``k`` (0-based) becomes label ``k + 1``.

    A pixel belongs to a polygon when its centre lies inside or on the boundary (``skimage.draw.polygon``);
    holes are cleared. Where polygons overlap the later one wins, so a nucleus entirely under later
    ones, or smaller than a pixel, ends with no pixel (callers count those).

    Parameters
    ----------
    geometries : sequence of shapely Polygon or MultiPolygon
        In this module's coordinates (pixel centres at integers).
    shape : (int, int)
        ``(H, W)`` of the image.

    Returns
    -------
    (H, W) int32 ndarray
    """
    labels = np.zeros(shape, dtype=np.int32)
    for k, geom in enumerate(geometries, start=1):
        for part in getattr(geom, "geoms", (geom,)):
            ext = shapely.get_coordinates(part.exterior)
            rr, cc = draw_polygon(ext[:, 1], ext[:, 0], shape)
            labels[rr, cc] = k
            for hole in part.interiors:
                h = shapely.get_coordinates(hole)
                rr, cc = draw_polygon(h[:, 1], h[:, 0], shape)
                inside = labels[rr, cc] == k
                labels[rr[inside], cc[inside]] = 0
    return labels


def shift_outlines(flats: Sequence[Sequence[float]], x0: float, y0: float) -> np.ndarray:
    """Outlines moved by ``(x0, y0)``: a tile's outlines in its slide's coordinates.

    Parameters
    ----------
    flats : sequence of flat ``[x0, y0, x1, y1, ...]`` lists
        As :func:`outlines` returns them.
    x0, y0 : float
        The tile's offset in the slide.

    Returns
    -------
    (N,) object ndarray of list of float
        Rounded to 0.1 px, as stored.
    """
    out = np.empty(len(flats), dtype=object)
    for i, flat in enumerate(flats):
        xy = np.asarray(flat, dtype=np.float64).reshape(-1, 2) + (x0, y0)
        out[i] = np.round(xy, 1).ravel().tolist()
    return out
