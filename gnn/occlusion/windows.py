"""Windows of an image's nuclei: spatially compact groups that slide-scale explanations work through in
turn (``docs/occlusion.md``, "Slides").

A whole slide holds hundreds of thousands of nuclei. Occlusion explains them window by window: the
balls and batch rows of a window's own nuclei (each ball reaches into the neighbouring windows: the
halo), then the next window, so the per-window index arrays stay small and the rows a batch gathers lie
close together in memory. The same partition, at a smaller size, gives the blocks whose pooling sums
let a cluster be summed afresh without a pass over the whole graph (:mod:`.pooling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nucleograph.errors import InputError

#: Nuclei per window by default: an image up to this size is one window (explained as before windows),
#: a 600k-nucleus slide about 70.
WINDOW_NUCLEI = 8192
#: Nuclei per block of the afresh pooling sums (at most the window's size): smaller blocks leave fewer
#: nuclei to sum one by one around a ball, more blocks to add up (2,300 on a 600k-nucleus slide).
BLOCK_NUCLEI = 256


@dataclass(frozen=True)
class Windows:
    """A partition of ``N`` nodes into groups: group ``i`` is ``node[start[i]:start[i + 1]]``."""

    start: np.ndarray  #: (W + 1,) int64
    node: np.ndarray  #: (N,) int64, the nodes group by group
    of_node: np.ndarray  #: (N,) int64, each node's group

    def __len__(self) -> int:
        return self.start.size - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.node[self.start[i]:self.start[i + 1]]

    def sizes(self) -> np.ndarray:
        """``(W,)`` nodes per group."""
        return np.diff(self.start)

    @classmethod
    def of_groups(cls, group: np.ndarray) -> Windows:
        """From each node's group number ``group`` ``(N,)`` (``0..W-1``, every group non-empty); within a
        group nodes keep their order."""
        node = np.argsort(group, kind="stable")
        counts = np.bincount(group)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), node.astype(np.int64),
                   np.asarray(group, dtype=np.int64))


def spatial_windows(centroids: np.ndarray | None, n_nodes: int, *, size: int) -> Windows:
    """Square cells of a grid over the nuclei's centroids, each holding about ``size`` of them.

    The cell side is set from the bounding box, then adjusted once so that the occupied cells (tissue,
    not the slide's background) hold ``size`` nuclei on average. Cells are numbered row by row, every
    other row right to left, so consecutive windows touch. Empty cells are left out.

    Parameters
    ----------
    centroids : np.ndarray, shape (N, 2), or None
        Without centroids the windows are consecutive runs of ``size`` node ids.
    n_nodes : int
    size : int
        Target nuclei per window; an image with at most this many is one window.

    Returns
    -------
    Windows

    Raises
    ------
    InputError
        ``size`` is not positive, or the centroids are not ``(N, 2)`` finite values.
    """
    if int(size) != size or size < 1:
        raise InputError(f"a window must hold at least one nucleus, got size={size!r}")
    if n_nodes <= size or centroids is None:
        return Windows.of_groups(np.arange(n_nodes, dtype=np.int64) // size)
    pts = np.asarray(centroids, dtype=np.float64)
    if pts.shape != (n_nodes, 2) or not np.isfinite(pts).all():
        raise InputError(f"window centroids must be finite (N, 2) = ({n_nodes}, 2) values, got shape {pts.shape}")
    lo = pts.min(0)
    extent = np.maximum(pts.max(0) - lo, 1e-9)
    side = float(np.sqrt(extent.prod() * size / n_nodes))
    for _ in range(2):  # the second pass corrects the side for the empty cells (background)
        cols = int(extent[0] // side) + 1
        cell = (np.minimum(((pts - lo) // side).astype(np.int64), [cols - 1, int(extent[1] // side)]))
        row_major = cell[:, 1] * cols + np.where(cell[:, 1] % 2 == 0, cell[:, 0], cols - 1 - cell[:, 0])
        occupied = np.unique(row_major).size
        side *= float(np.sqrt(size / (n_nodes / occupied)))
    _, group = np.unique(row_major, return_inverse=True)
    return Windows.of_groups(group.astype(np.int64))
