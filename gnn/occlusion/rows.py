"""The index arrays of fast occlusion: per image (:class:`GraphIndex`) and per batch of occlusions
(:class:`BatchRows`), and the padded layout the pooling products use (:class:`PaddedLayout`).

Notation as in ``docs/occlusion.md``: a *row* is an (occlusion, nucleus) pair of the ``hops + 3``-hop
ball of the occluded nucleus; rows are sorted by hop distance ``d``, so the rows each layer changes
are a prefix of the kept rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from nucleograph.gnn.layers import spmm
from nucleograph.gnn.occlusion.balls import (
    Balls,
    BatchArrays,
    OutEdges,
    ball_lists,
    batch_rows,
    layer_csr,
    out_edges,
    padded_csr,
)


@torch.jit.script
def take_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` for a 1-d index.

    ``index_select`` into an output allocated beforehand: several times faster than advanced indexing,
    and torch 2.2's ``index_select`` without ``out`` is 2-3x slower on large row gathers (measurements in
    bench/RESULTS.md, "Explanations"). Compiled (TorchScript), like the steps that call it
    (:mod:`.scripted`)."""
    return torch.index_select(t, 0, index, out=t.new_empty([index.shape[0]] + t.shape[1:]))


@torch.jit.script
def pad_rows(t: torch.Tensor, flat: torch.Tensor, b: int, width: int) -> torch.Tensor:
    """Rows ``t`` ``(rows, ...)`` into a zero-padded ``(b, width, ...)`` tensor, row ``i`` at ``flat[i]``
    (:class:`PaddedLayout`)."""
    out = t.new_zeros([b * width] + t.shape[1:])
    out.index_copy_(0, flat, t)
    return out.view([b, width] + t.shape[1:])


@dataclass(frozen=True)
class CSRArrays:
    """A sparse matrix as CSR arrays, values per edge channel (kept as arrays: the compiled float64 and
    afresh tiers read them, :mod:`nucleograph.gnn.occlusion.balls`)."""

    ptr: np.ndarray  #: (rows + 1,) int32
    cols: np.ndarray  #: (E,) int32
    vals: np.ndarray  #: (L, E)
    shape: tuple[int, int]

    def matrices(self, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """One torch CSR matrix per channel (values in ``dtype``, default their own)."""
        return [csr_matrix(self.ptr, self.cols, v, self.shape, dtype) for v in self.vals]


def csr_matrix(ptr: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape, dtype=None) -> torch.Tensor:
    """A torch CSR matrix from numpy CSR arrays (shared memory; ``dtype`` converts the values)."""
    values = torch.from_numpy(vals)
    if dtype is not None:
        values = values.to(dtype)
    return spmm.csr_matrix(torch.from_numpy(ptr), torch.from_numpy(cols), values, shape)


@dataclass(frozen=True)
class PaddedLayout:
    """Where rows of ``b`` occlusions go in a zero-padded ``(b, width, ...)`` tensor: row ``i`` goes to
    ``flat[i] = occ[i] * width + (its rank among its occlusion's rows)``; ``width`` is the largest
    group, so the batched products run over ``b`` equal blocks."""

    b: int
    flat: torch.Tensor  #: (rows,) int64
    width: int

    @classmethod
    def of_groups(cls, occ: np.ndarray, b: int) -> PaddedLayout:
        """The layout of rows whose occlusions are ``occ``, each group in row order."""
        counts = np.bincount(occ, minlength=b)
        idx = np.argsort(occ, kind="stable")
        pos = np.empty(occ.size, dtype=np.int64)
        pos[idx] = np.arange(occ.size) - np.repeat(np.cumsum(counts) - counts, counts)
        width = int(counts.max()) if occ.size else 0
        return cls(b, torch.from_numpy(occ * width + pos), width)


@dataclass(frozen=True)
class GraphIndex:
    """One image's edges and balls as arrays, built once per image (:meth:`build`)."""

    edges: OutEdges  #: out-edges by source (on a symmetric graph also the in-edges)
    efeat: np.ndarray  #: (L, E) edge channels by edge id, contiguous per channel
    nonzero: np.ndarray  #: (E, L) bool: the edge carries a nonzero weight in channel ``l``
    total_nonzero: np.ndarray  #: (L,) such edges per channel
    #: the ``hops + 3``-hop balls of the nuclei being explained (ball ``i`` is that of ``centers[i]``)
    balls: Balls
    hops: int  #: each occlusion removes the ``hops``-hop ball of its nucleus
    centers: np.ndarray  #: (n,) int64, the nuclei whose balls ``balls`` holds

    @classmethod
    def build(cls, src: np.ndarray, dst: np.ndarray, efeat: np.ndarray, *, hops: int, n_nodes: int,
              centers: np.ndarray | None = None) -> GraphIndex:
        """From the edges ``src -> dst`` of a graph of ``n_nodes`` nuclei and their channels ``efeat``
        ``(E, L)``, with the balls of ``centers`` (default: every nucleus)."""
        edges = out_edges(src, dst, n_nodes)
        efeat_by_channel = np.ascontiguousarray(efeat.T)
        nonzero = efeat_by_channel.T != 0
        index = cls(edges, efeat_by_channel, nonzero, nonzero.sum(0), Balls(*(np.zeros(1, np.int64),) * 3), hops,
                    np.zeros(0, np.int64))
        return index.for_centers(np.arange(n_nodes, dtype=np.int64) if centers is None else centers)

    def for_centers(self, centers: np.ndarray) -> GraphIndex:
        """This index with the balls of ``centers`` (one window's nuclei) in place of its own."""
        centers = np.asarray(centers, dtype=np.int64)
        # the rows whose values change: VConv1, VConv2 and the assignment convolution each reach one hop
        # further than the removed ball
        return replace(self, balls=ball_lists(self.edges.indptr, self.edges.dst, self.hops + 3, centers),
                       centers=centers)

    @property
    def n_nodes(self) -> int:
        return self.edges.indptr.size - 1

    def ball_sizes(self) -> np.ndarray:
        """``(n,)`` rows of each center's occlusion."""
        return np.diff(self.balls.start)


@dataclass(frozen=True)
class BatchRows:
    """The rows and edges of one batch of ``b`` occlusions (:meth:`build`).

    Rows ``:n_removed`` (``d <= hops``) leave the graph; VConv1 changes the kept rows up to
    ``n_vconv1`` (``d <= hops + 1``), VConv2 up to ``n_vconv2`` (``hops + 2``) and the assignment
    convolution up to ``n_rows`` (``hops + 3``, every row).
    """

    centers: np.ndarray  #: (b,) the occluded nuclei
    occ: np.ndarray  #: (rows,) each row's occlusion, ``0..b-1``
    node: np.ndarray  #: (rows,) each row's nucleus
    n_removed: int
    n_vconv1: int
    n_vconv2: int
    n_rows: int
    n_nodes: int  #: nuclei in the whole graph, ``N``
    #: each node convolution's sparse product, from its changed input rows to the kept rows it changes,
    #: channel ``l`` of input row ``i`` at column ``i L + l``, removed rows negated
    #: (:func:`nucleograph.gnn.occlusion.balls.layer_csr`)
    conv_edges: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    layout: PaddedLayout  #: all rows, padded per occlusion (the pooling products)
    changed_layout: PaddedLayout  #: rows ``n_removed:n_vconv2`` (whose ``H`` changes), padded
    padded_edges: CSRArrays  #: the rows' in-edges with their rows moved to ``layout``
    padded_node: np.ndarray  #: (b * width,) each padded slot's nucleus, ``N`` for padding
    ball_sizes: np.ndarray  #: (b,) rows per occlusion
    emptied: np.ndarray  #: (b,) bool: the occlusion removes the whole graph
    channel_left: np.ndarray  #: (b, L) bool: a nonzero edge of channel ``l`` is left

    @property
    def b(self) -> int:
        return self.centers.size

    @classmethod
    def build(cls, positions: np.ndarray, index: GraphIndex, scratch: np.ndarray) -> BatchRows:
        """The rows of the occlusions of ``index.centers[positions]``; ``scratch`` ``(N,)`` holds -1 (one
        per thread)."""
        centers = index.centers[positions]
        rows = batch_rows(positions, index.balls, index.edges, index.efeat, hops=index.hops, scratch=scratch)
        b, n = centers.size, index.n_nodes
        n_removed, n_vconv1, n_vconv2, n_rows = (int(v) for v in rows.level_end[index.hops:])
        n_ch = rows.vals.shape[0]
        conv_edges = tuple(
            csr_matrix(*layer_csr(rows.ptr, rows.cols, rows.vals, rows.below[j], n_removed, n_out, n_in),
                       (n_out - n_removed, n_ch * n_in))
            for j, (n_out, n_in) in enumerate(((n_vconv1, n_removed), (n_vconv2, n_vconv1), (n_rows, n_vconv2))))
        layout = PaddedLayout.of_groups(rows.occ, b)
        n_pad = b * layout.width
        padded_edges = CSRArrays(*padded_csr(rows.ptr, rows.cols, rows.vals, layout.flat.numpy(), n_pad),
                                 (n_pad, n_rows))
        padded_node = np.full(n_pad, n, dtype=np.int64)
        padded_node[layout.flat.numpy()] = rows.node
        return cls(
            centers=centers, occ=rows.occ, node=rows.node, n_removed=n_removed, n_vconv1=n_vconv1,
            n_vconv2=n_vconv2, n_rows=n_rows, n_nodes=n, conv_edges=conv_edges, layout=layout,
            changed_layout=PaddedLayout.of_groups(rows.occ[n_removed:n_vconv2], b), padded_edges=padded_edges,
            padded_node=padded_node, ball_sizes=np.bincount(rows.occ, minlength=b),
            emptied=np.bincount(rows.occ[:n_removed], minlength=b) == n,
            channel_left=_channels_left(rows, index, b, n_removed),
        )


def _channels_left(rows: BatchArrays, index: GraphIndex, b: int, n_removed: int) -> np.ndarray:
    """``(b, L)``: whether a nonzero edge of each channel is left after each occlusion (a channel with
    none is exactly zero in the model). A removed set touches at most the sum of its degrees in directed
    edges per direction: count exactly only where that could reach a channel's total."""
    indptr, occ, node = index.edges.indptr, rows.occ, rows.node
    left = np.ones((b, index.nonzero.shape[1]), dtype=bool)
    deg = indptr.take(node[:n_removed] + 1) - indptr.take(node[:n_removed])  # all edges of a removed row are in
    reach_removed = 2 * np.bincount(occ[:n_removed], weights=deg, minlength=b)
    maybe = np.flatnonzero(reach_removed >= index.total_nonzero.min())
    if maybe.size:
        row_of = np.repeat(np.arange(node.size), np.diff(rows.ptr))
        out_removed = row_of < n_removed  # directed edges leaving a removed row (= entering it)
        both = out_removed & (rows.cols < n_removed)
        nz_e = index.nonzero[rows.eid]
        occ_e = occ[row_of]
        for ch in range(index.nonzero.shape[1]):
            touched = np.bincount(occ_e[out_removed], weights=nz_e[out_removed, ch], minlength=b)
            inside = np.bincount(occ_e[both], weights=nz_e[both, ch], minlength=b)
            left[maybe, ch] = (index.total_nonzero[ch] - (2 * touched - inside))[maybe] > 0.5
    return left
