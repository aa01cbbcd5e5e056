"""The slide viewer's viewport: where it looks, how it moves, which pyramid tiles it needs, and the
nuclei aggregated into bins when too many are in view (pure functions: no Streamlit, no database).

Coordinates are full-resolution (level-0) pixels of the slide, ``x`` to the right and ``y`` down, as
nucleus centroids are stored. A viewport keeps the aspect :data:`ASPECT` (the chart's), so a zoom
or pan never changes the shape of what is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

ASPECT = 1.5  # viewport width / height (the chart's plot area)
MIN_WIDTH = 256.0  # the closest zoom: a 256-px-wide view shows a few dozen nuclei
SCREEN_PX = 1024  # pixels of the viewport image sent to the browser along its width (the payload's bound)
TILE = 512  # deep-zoom tile side in level pixels (the unit of the tile cache)
# A pyramid level is drawn up to this many times magnified (OpenSeadragon's default minPixelRatio 0.5, i.e.
# 2x): with levels 4x apart, a view then decodes at most 4x the screen's pixels instead of 16x
MAX_MAGNIFY = 2.0
BINS_ACROSS = 64  # aggregated bins along the viewport's width when zoomed out (each an SVG point to select)


@dataclass(frozen=True)
class Viewport:
    """A rectangle of the slide: its centre and width; the height follows from :data:`ASPECT`.

    Attributes
    ----------
    cx, cy : float
        The centre in level-0 pixels.
    width : float
        The width in level-0 pixels.
    slide_width, slide_height : int
        The slide's level-0 size (the viewport is kept over it).
    """

    cx: float
    cy: float
    width: float
    slide_width: int
    slide_height: int

    @classmethod
    def whole(cls, slide_width: int, slide_height: int) -> Viewport:
        """The viewport that shows the whole slide."""
        return cls(slide_width / 2, slide_height / 2, float(max(slide_width, slide_height * ASPECT)),
                   int(slide_width), int(slide_height)).clamped()

    @property
    def height(self) -> float:
        return self.width / ASPECT

    @property
    def max_width(self) -> float:
        """The width that shows the whole slide (its larger side, at the viewport's aspect)."""
        return float(max(self.slide_width, self.slide_height * ASPECT))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in level-0 pixels."""
        hw, hh = self.width / 2, self.height / 2
        return self.cx - hw, self.cy - hh, self.cx + hw, self.cy + hh

    @property
    def zoom(self) -> float:
        """How many times closer than the whole slide (1 = the whole slide)."""
        return self.max_width / self.width

    def clamped(self) -> Viewport:
        """The same view with its width in [:data:`MIN_WIDTH`, whole slide] and its centre kept over the
        slide (a view wider than the slide is centred on it)."""
        width = float(min(max(self.width, MIN_WIDTH), self.max_width))
        height = width / ASPECT

        def axis(c: float, span: float, size: int) -> float:
            return size / 2 if span >= size else min(max(c, span / 2), size - span / 2)

        return replace(self, cx=axis(self.cx, width, self.slide_width), cy=axis(self.cy, height, self.slide_height),
                       width=width)

    def zoomed(self, factor: float) -> Viewport:
        """``factor`` times closer (> 1) or farther (< 1), about the centre."""
        if not factor > 0:
            raise ValueError(f"a zoom factor is positive, not {factor!r}")
        return replace(self, width=self.width / factor).clamped()

    def panned(self, dx: float, dy: float) -> Viewport:
        """Moved by ``dx`` widths and ``dy`` heights (0.5: half a view to the right / down)."""
        return replace(self, cx=self.cx + dx * self.width, cy=self.cy + dy * self.height).clamped()

    def centred(self, x: float, y: float) -> Viewport:
        """The same zoom, centred on (x, y)."""
        return replace(self, cx=float(x), cy=float(y)).clamped()

    def framing(self, x0: float, y0: float, x1: float, y1: float) -> Viewport:
        """The view that just holds the box (x0, y0)-(x1, y1) (corners in any order) at the viewport's aspect."""
        xa, xb, ya, yb = min(x0, x1), max(x0, x1), min(y0, y1), max(y0, y1)
        width = max(xb - xa, (yb - ya) * ASPECT)
        return replace(self, cx=(xa + xb) / 2, cy=(ya + yb) / 2, width=width).clamped()

    def to_query(self) -> dict[str, str]:
        """The view as query-string values (``x``, ``y``: centre, ``w``: width; whole pixels)."""
        return {"x": str(round(self.cx)), "y": str(round(self.cy)), "w": str(round(self.width))}

    @classmethod
    def from_query(cls, params, slide_width: int, slide_height: int) -> Viewport:
        """The view a query string names (see :meth:`to_query`), else the whole slide."""
        try:
            view = cls(float(params["x"]), float(params["y"]), float(params["w"]), int(slide_width), int(slide_height))
        except (KeyError, TypeError, ValueError):
            return cls.whole(slide_width, slide_height)
        if not all(math.isfinite(v) for v in (view.cx, view.cy, view.width)):
            return cls.whole(slide_width, slide_height)
        return view.clamped()


def tiles_for(bounds, downsample: float, level_size: tuple[int, int], *, tile: int = TILE) -> list[tuple[int, int]]:
    """The (column, row) of the ``tile``-px tiles of a pyramid level that a viewport covers.

    Parameters
    ----------
    bounds : (x0, y0, x1, y1)
        The viewport in level-0 pixels.
    downsample : float
        The level's downsample.
    level_size : (int, int)
        The level's (width, height) in its own pixels.
    tile : int
        The tile side in level pixels.

    Returns
    -------
    list of (int, int)
        Row by row; empty when the viewport misses the level.
    """
    x0, y0, x1, y1 = (v / downsample for v in bounds)
    cols = range(max(0, int(x0 // tile)), min(-(-level_size[0] // tile), int(math.ceil(x1 / tile))))
    rows = range(max(0, int(y0 // tile)), min(-(-level_size[1] // tile), int(math.ceil(y1 / tile))))
    return [(c, r) for r in rows for c in cols]


def grid_cell(slide_width: int, slide_height: int, *, max_cells: int = 2**18, min_cell: int = 32) -> int:
    """The side (a power of two, at least ``min_cell``) of the square cells that cut the slide into at
    most ``max_cells``: the stored grid's resolution, which bounds its size by the slide's area."""
    cell = min_cell
    while -(-slide_width // cell) * -(-slide_height // cell) > max_cells:
        cell *= 2
    return cell


def in_view(grid: dict, bounds) -> int:
    """How many nuclei the grid's cells that touch ``bounds`` hold: an upper bound of the nuclei in view."""
    cell, counts = grid["cell"], grid["counts"]
    x0, y0, x1, y1 = bounds
    i0, i1 = max(0, int(y0 // cell)), min(counts.shape[0], int(y1 // cell) + 1)
    j0, j1 = max(0, int(x0 // cell)), min(counts.shape[1], int(x1 // cell) + 1)
    return int(counts[i0:i1, j0:j1].sum()) if i0 < i1 and j0 < j1 else 0


def aggregate(grid: dict, bounds, *, bins_across: int = BINS_ACROSS) -> dict[str, np.ndarray | float]:
    """The grid's cells that a viewport covers, merged into square bins about ``bins_across`` to its width.

    Bins are whole multiples of the grid's cell, aligned to the slide's origin, so a bin holds exactly
    the nuclei whose centroids fall in it (bins cut by the viewport's edge count their nuclei outside
    it too). The output's size is bounded by ``bins_across`` and the viewport's aspect, whatever the
    number of nuclei.

    Parameters
    ----------
    grid : dict
        ``cell`` and the ``counts``, ``scored``, ``totals`` arrays of :func:`nucleograph.db.store.nucleus_grid`.
    bounds : (x0, y0, x1, y1)
        The viewport in level-0 pixels.
    bins_across : int
        About how many bins span the viewport's width (fewer when a cell is already wider).

    Returns
    -------
    dict
        ``bin`` (the bin side in pixels), ``x`` and ``y`` (bin centres, ``(nx,)`` and ``(ny,)``),
        ``counts`` (``(ny, nx)`` int64) and ``mean`` (``(ny, nx)``, the mean score; NaN where no
        nucleus is scored).
    """
    cell = int(grid["cell"])
    x0, y0, x1, y1 = bounds
    k = max(1, int(math.ceil((x1 - x0) / bins_across / cell)))
    size = k * cell
    ny, nx = grid["counts"].shape
    i0, i1 = max(0, int(y0 // size)), min(-(-ny // k), int(y1 // size) + 1)
    j0, j1 = max(0, int(x0 // size)), min(-(-nx // k), int(x1 // size) + 1)
    out = {}
    for key in ("counts", "scored", "totals"):
        part = grid[key][i0 * k:i1 * k, j0 * k:j1 * k]
        pad = ((0, (i1 - i0) * k - part.shape[0]), (0, (j1 - j0) * k - part.shape[1]))
        part = np.pad(part, pad)
        out[key] = part.reshape(i1 - i0, k, j1 - j0, k).sum(axis=(1, 3)) if part.size else part
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(out["scored"] > 0, out["totals"] / out["scored"], np.nan)
    return {"bin": float(size), "x": (np.arange(j0, j1) + 0.5) * size, "y": (np.arange(i0, i1) + 0.5) * size,
            "counts": out["counts"], "mean": mean}
