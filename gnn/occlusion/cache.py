"""What fast occlusion computes once per image (:class:`ImageCache`): the model's node states before
Pool1 from one float64 pass of the model's own layers, and the pooling sums the corrections start from
(``docs/occlusion.md``, "Cached per image")."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from nucleograph.gnn.layers.spmm import CSRAdjacency, csr_adjacency
from nucleograph.gnn.models import RSFNet


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
class ImageCache:
    """The full-graph values that every occlusion of one image starts from.

    The node states come from a float64 copy of the model (so the totals carry no float32 rounding of
    all ``N`` nodes, only the rows an occlusion changes do) and are kept in the model's dtype for the
    per-batch updates. ``N`` nuclei, ``L`` edge channels, ``K`` clusters of Pool1, ``F2`` its input width.
    """

    graph: object  #: the image's DGL graph
    pre1: torch.Tensor  #: (N, c1) VConv1's output, before batch norm
    h1: torch.Tensor  #: (N, c1) VConv2's input
    pre2: torch.Tensor  #: (N, F2) VConv2's output, before batch norm
    h2: torch.Tensor  #: (N, F2) ``H``, the node states entering Pool1
    z: torch.Tensor  #: (N, K) ``Z``, the assignment logits
    #: per node convolution (VConv1, VConv2, the assignment convolution), ``-V W_l`` of its input ``V`` for
    #: ``l >= 1``, ``(L, N, O)``: the change of a removed row's projections, looked up instead of multiplied
    removed_proj: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    shift: torch.Tensor  #: (K,) float64 ``max Z``, the fixed softmax shift of every occlusion
    e: torch.Tensor  #: (N, K) float64 ``E = exp(Z - shift)``
    totals: PoolingSums  #: the whole graph's sums, float64
    table64: torch.Tensor  #: (N + 1, F2 + L K) float64 per node ``[H | A E]``, a zero row ``N`` for padding
    table32: torch.Tensor  #: the same in float32
    z64: torch.Tensor  #: (N, K) float64 ``Z``
    h2_64: torch.Tensor  #: (N, F2) float64 ``H``
    efeat64: torch.Tensor  #: (E, L) float64 edge channels
    adjacency64: CSRAdjacency  #: the float64 channels as CSR matrices, built once per image

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


def build_image_cache(model: RSFNet, graph) -> ImageCache:
    """Run the model's layers up to Pool1 on ``graph`` in float64 and cache what occlusions start from.

    Parameters
    ----------
    model : RSFNet
        In eval mode.
    graph : dgl.DGLGraph
        One image's graph.

    Returns
    -------
    ImageCache
    """
    dtype = model.feat_mean.dtype
    model64 = copy.deepcopy(model).double()
    # the model's own forward up to Pool1, recording the convolutions' inputs and pre-activations
    with _Recorder(model64.vconv1, model64.vconv2) as seen:
        h2, _ = model64.node_embeddings(graph)
    x, pre1 = seen[model64.vconv1]
    h1, pre2 = seen[model64.vconv2]
    efeat = model64.edge_features(graph)
    z = model64.pool1.embed(graph, h2, efeat)  # (N, K): Pool1's assignment logits
    n, n_ch, k = graph.num_nodes(), efeat.shape[1], z.shape[1]

    shift = z.max(0).values
    e = torch.exp(z - shift)  # softmax numerators with a fixed shift
    ae = torch.zeros(n, n_ch, k, dtype=torch.float64)  # A_l E
    if graph.num_edges():
        src, dst = graph.edges()
        ae.index_add_(0, dst.long(), efeat.unsqueeze(-1) * e[src.long()].unsqueeze(1))
    totals = PoolingSums(e.T @ h2, e.sum(0), torch.einsum("ic,ild->cld", e, ae))
    table = torch.cat([torch.cat([h2, ae.reshape(n, n_ch * k)], 1), h2.new_zeros(1, h2.shape[1] + n_ch * k)])
    removed_proj = tuple(torch.stack([-(v @ w) for w in conv.weight[1:]]).to(dtype)
                         for v, conv in ((x, model64.vconv1), (h1, model64.vconv2), (h2, model64.pool1.embed)))
    return ImageCache(
        graph, pre1.to(dtype), h1.to(dtype), pre2.to(dtype), h2.to(dtype), z.to(dtype), removed_proj,
        shift, e, totals, table, table.float(), z, h2, efeat, csr_adjacency(graph, efeat),
    )
