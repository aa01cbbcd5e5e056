"""What fast occlusion computes once per image (:class:`ImageCache`): the model's node states before
Pool1 from one float64 pass of the model's own layers, window by window, and the pooling sums the
corrections start from (``docs/occlusion.md``, "Cached per image" and "Slides")."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import dgl
import numpy as np
import torch

from nucleograph.gnn.models import RSFNet
from nucleograph.gnn.occlusion.balls import OutEdges, block_neighbour_sums, halo, neighbour_sums
from nucleograph.gnn.occlusion.windows import Windows

#: How many hops of input the node states entering Pool1's softmax read: VConv1, VConv2 and the
#: assignment convolution, one hop each (a window's halo for its pass).
DEPTH = 3


@dataclass
class PoolingSums:
    """Pool1's sums with a fixed softmax shift: ``V' = num / den``, ``A'_l = adj[:, l] / (den den^T)``.

    For the whole graph the shapes are as below; per batch of ``b`` occlusions each gains a leading
    ``b`` (and the tiers of :mod:`nucleograph.gnn.occlusion.pooling` refine them in place).
    """

    num: torch.Tensor  #: (K, F2) float64, ``E^T H``
    den: torch.Tensor  #: (K,) float64, ``1^T E``
    adj: torch.Tensor  #: (K, L, K) float64, ``E^T A_l E``


@dataclass(frozen=True)
class BlockSums:
    """The pooling sums of each block of nuclei on its own, each with its own softmax shifts: a cluster
    summed afresh adds up the blocks an occlusion does not touch instead of every nucleus
    (:func:`nucleograph.gnn.occlusion.pooling.sum_afresh`).

    Block ``b`` holds, for each cluster ``k`` (rows) and ``j`` (columns of ``A E``), with its nuclei's
    ``r_b = max Z`` and its nuclei's neighbours' ``q_b = max Z`` as the shifts:
    ``exp(Z_b,k - r_b,k)^T [1 | H_b | A_l exp(Z_j - q_b,j)]``; sums of non-negative terms, none of
    which underflows however far the block lies below the image's shift.
    """

    blocks: Windows  #: spatially compact groups of nuclei
    sums: torch.Tensor  #: (K, n_blocks, 1 + F2 + L K) float64, by cluster (an afresh cluster reads one slice)
    zmax: torch.Tensor  #: (n_blocks, K) float64, ``r_b``: the largest ``Z`` of each block's nuclei
    qmax: torch.Tensor  #: (n_blocks, K) float64, ``q_b``: the largest ``Z`` of their neighbours


@dataclass(frozen=True)
class ImageCache:
    """The full-graph values that every occlusion of one image starts from.

    The node states come from a float64 copy of the model (so the totals carry no float32 rounding of
    all ``N`` nodes, only the rows an occlusion changes do) and are kept in the model's dtype for the
    per-batch updates. ``N`` nuclei, ``L`` edge channels, ``K`` clusters of Pool1, ``F2`` its input width.
    """

    graph: object  #: the image's DGL graph
    edges: OutEdges  #: its out-edges by source (on a symmetric graph also the in-edges)
    efeat: np.ndarray  #: (L, E) edge channels by edge id, in the model's dtype
    x: torch.Tensor  #: (N, F0) VConv1's input (standardised features)
    pre1: torch.Tensor  #: (N, c1) VConv1's output, before batch norm
    h1: torch.Tensor  #: (N, c1) VConv2's input
    pre2: torch.Tensor  #: (N, F2) VConv2's output, before batch norm
    h2: torch.Tensor  #: (N, F2) ``H``, the node states entering Pool1
    z: torch.Tensor  #: (N, K) ``Z``, the assignment logits
    shift: torch.Tensor  #: (K,) float64 ``max Z``, the fixed softmax shift of every occlusion
    e: torch.Tensor  #: (N, K) float64 ``E = exp(Z - shift)``
    totals: PoolingSums  #: the whole graph's sums, float64
    table64: torch.Tensor  #: (N + 1, F2 + L K) float64 per node ``[H | A E]``, a zero row ``N`` for padding
    table32: torch.Tensor  #: the same in float32
    z64: torch.Tensor  #: (N, K) float64 ``Z``
    blocks: BlockSums  #: the sums per block of nuclei

    @property
    def h2_64(self) -> torch.Tensor:
        """(N, F2) float64 ``H`` (a view of :attr:`table64`)."""
        return self.table64[:-1, :self.h2.shape[1]]

    def table(self, dtype: torch.dtype) -> torch.Tensor:
        """The node table in ``dtype`` (float32 or float64)."""
        return self.table64 if dtype == torch.float64 else self.table32


class _Recorder:
    """Record the feature input (second argument) and the output of some modules during a forward pass
    (forward hooks, removed on exit)."""

    def __init__(self, *modules):
        self.modules = modules
        self.seen: dict = {}
        self.handles: list = []

    def _hook(self, module, args, output):
        self.seen[module] = (args[1], output)

    def __enter__(self) -> dict:
        self.handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self.seen

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def window_graphs(graph, windows: Windows, edges: OutEdges, hops: int) -> Iterator[tuple[np.ndarray, object]]:
    """Each window's nodes and the subgraph of them and their ``hops``-hop halo, the window's nodes first
    (in order): a layer stack ``hops`` hops deep gives the window's rows of its whole-graph output on it.
    A single window is the graph itself.

    Parameters
    ----------
    graph : dgl.DGLGraph
    windows : Windows
    edges : OutEdges
        ``graph``'s out-edges (symmetric: also its in-edges).
    hops : int

    Yields
    ------
    (np.ndarray, dgl.DGLGraph)
    """
    if len(windows) == 1:
        yield windows[0], graph if np.array_equal(windows[0], np.arange(graph.num_nodes())) else \
            dgl.node_subgraph(graph, torch.from_numpy(windows[0]).to(graph.idtype))
        return
    scratch = np.full(graph.num_nodes(), -1, dtype=np.int64)
    for i in range(len(windows)):
        nodes = halo(windows[i], edges, hops, scratch)
        yield windows[i], dgl.node_subgraph(graph, torch.from_numpy(nodes).to(graph.idtype))


def build_image_cache(model: RSFNet, graph, *, edges: OutEdges, efeat: np.ndarray, windows: Windows,
                      blocks: Windows) -> ImageCache:
    """Run the model's layers up to Pool1 on ``graph`` in float64 and cache what occlusions start from.

    The pass runs window by window on each window with its :data:`DEPTH`-hop halo, so a slide never
    goes through the model at once (its rows equal the whole graph's: each layer reads one hop).

    Parameters
    ----------
    model : RSFNet
        In eval mode.
    graph : dgl.DGLGraph
        One image's graph (symmetric).
    edges : OutEdges
        Its out-edges (:attr:`nucleograph.gnn.occlusion.rows.GraphIndex.edges`).
    efeat : np.ndarray, shape (L, E)
        Its edge channels by edge id, in the model's dtype.
    windows, blocks : Windows
        The passes' windows, and the blocks of :class:`BlockSums`.

    Returns
    -------
    ImageCache
    """
    dtype = model.feat_mean.dtype
    model64 = copy.deepcopy(model).double()
    n, n_ch = graph.num_nodes(), efeat.shape[0]
    (c1, f2, _), k = model.conv_feats, model.pool1.n_clusters
    x, pre1, h1 = torch.empty(n, model.in_feats, dtype=dtype), torch.empty(n, c1, dtype=dtype), torch.empty(n, c1, dtype=dtype)
    pre2, h2 = torch.empty(n, f2, dtype=dtype), torch.empty(n, f2, dtype=dtype)
    z64 = torch.empty(n, k, dtype=torch.float64)
    table64 = torch.zeros(n + 1, f2 + n_ch * k, dtype=torch.float64)
    for nodes, sub in window_graphs(graph, windows, edges, DEPTH):
        # the model's own forward up to Pool1, recording the convolutions' inputs and pre-activations
        with _Recorder(model64.vconv1, model64.vconv2) as seen:
            h_sub, _ = model64.node_embeddings(sub)
        z_sub = model64.pool1.embed(sub, h_sub, model64.edge_features(sub))  # (n_sub, K): assignment logits
        m, idx = nodes.size, torch.from_numpy(nodes)
        for out, value in ((x, seen[model64.vconv1][0]), (pre1, seen[model64.vconv1][1]), (h1, seen[model64.vconv2][0]),
                           (pre2, seen[model64.vconv2][1]), (h2, h_sub), (z64, z_sub)):
            out[idx] = value[:m].to(out.dtype)
        table64[idx, :f2] = h_sub[:m]
    shift = z64.max(0).values
    e = torch.exp(z64 - shift)  # softmax numerators with a fixed shift
    # A_l E in one pass over the edges, straight into the table (an (E, L, K) product would not fit a slide)
    neighbour_sums(edges.indptr, edges.dst, edges.eid, efeat, e.numpy(), table64.numpy()[:n, f2:])
    h2_64, ae = table64[:n, :f2], table64[:n, f2:]
    totals = PoolingSums(e.T @ h2_64, e.sum(0), (e.T @ ae).view(k, n_ch, k))
    return ImageCache(
        graph, edges, efeat, x, pre1, h1, pre2, h2, z64.to(dtype), shift, e, totals, table64, table64.float(), z64,
        _block_sums(blocks, edges, efeat, table64[:n, :f2], z64),
    )


def _block_sums(blocks: Windows, edges: OutEdges, efeat: np.ndarray, h2_64: torch.Tensor,
                z64: torch.Tensor) -> BlockSums:
    k, f2, n_ch = z64.shape[1], h2_64.shape[1], efeat.shape[0]
    sums = torch.empty(k, len(blocks), 1 + f2 + n_ch * k, dtype=torch.float64)
    zmax = torch.empty(len(blocks), k, dtype=torch.float64)
    qmax = torch.empty(len(blocks), k, dtype=torch.float64)
    scratch = np.full(z64.shape[0], -1, dtype=np.int64)
    for b in range(len(blocks)):
        idx = torch.from_numpy(blocks[b])
        zb = z64[idx]
        zmax[b] = zb.max(0).values
        eb = torch.exp(zb - zmax[b])
        q, ae = block_neighbour_sums(blocks[b], edges, efeat, z64.numpy(), scratch)
        qmax[b] = torch.from_numpy(q)
        sums[:, b, 0] = eb.sum(0)
        sums[:, b, 1:1 + f2] = eb.T @ h2_64[idx]
        sums[:, b, 1 + f2:] = eb.T @ torch.from_numpy(ae)
    return BlockSums(blocks, sums, zmax, qmax)
