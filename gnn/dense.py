"""Dense ``N x N x L`` reference of the RSF models, for benchmarks and tests.

:class:`DenseRSFReference` wraps a trained :class:`nucleograph.gnn.models.RSFNet` and recomputes everything up
to Pool1 with dense padded tensors (``adj`` ``(B, L, N, N)``), as the original TensorFlow RSF code
does, then runs the model's own (already dense) head. It shares the model's parameters, so its
outputs must match ``model(graph)`` up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nucleograph.errors import ModelError

from .keys import EFEAT, FEAT
from .layers import dense_graph_embed_pool, dense_rsf_conv, to_dense_batch
from .models import RSFNet, build_model


def to_dense(graph, feat: torch.Tensor | None = None):
    """Padded dense form of a batched graph.

    Returns
    -------
    adj : (B, L, N_max, N_max)
        ``adj[b, l, i, j]`` is channel ``l`` of edge ``j -> i``.
    feat : (B, N_max, F)
        ``feat`` (default: the model-free ``ndata`` features are *not* used; pass them).
    mask : (B, N_max) bool
        True for real nodes.
    """
    counts = graph.batch_num_nodes()
    b, n_max = counts.numel(), int(counts.max())
    efeat = graph.edata[EFEAT]
    src, dst = graph.edges()
    graph_id = torch.repeat_interleave(torch.arange(b), counts)
    offsets = torch.cumsum(counts, 0) - counts
    local = torch.arange(graph.num_nodes()) - offsets[graph_id]
    adj = efeat.new_zeros(b, efeat.shape[1], n_max, n_max)
    eg = graph_id[dst]
    adj[eg, :, local[dst], local[src]] = efeat
    mask = to_dense_batch(torch.ones(graph.num_nodes(), dtype=torch.bool), counts)
    dense_feat = to_dense_batch(feat, counts) if feat is not None else None
    return adj, dense_feat, mask


def _masked_bn(bn: nn.BatchNorm1d, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Batch norm of ``(B, N, F)`` over real nodes only (padded rows do not enter the statistics)."""
    if bn.training:
        rows = x[mask]
        mean = rows.mean(0)
        var = rows.var(0, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    y = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight + bn.bias
    return y * mask.unsqueeze(-1)


class DenseRSFReference(nn.Module):
    """Dense reference sharing an :class:`RSFNet`'s parameters.

    Shapes
    ------
    forward(adj ``(B, L, N, N)``, feat ``(B, N, F)`` raw features, mask ``(B, N)``) -> logits ``(B, C)``.
    """

    def __init__(self, model: RSFNet):
        super().__init__()
        if not isinstance(model, RSFNet):
            raise ModelError(f"the dense reference covers the RSF models, not {type(model).__name__}")
        self.model = model

    @classmethod
    def from_state_dict(cls, name: str, state_dict: dict, **build_kwargs) -> DenseRSFReference:
        """The reference of a model built by :func:`nucleograph.gnn.models.build_model` from ``state_dict``."""
        model = build_model(name, **build_kwargs)
        model.load_state_dict(state_dict)
        return cls(model)

    def forward(self, adj: torch.Tensor, feat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = ((feat - m.feat_mean) / m.feat_std) * mask.unsqueeze(-1)
        h = dense_rsf_conv(adj, x, m.vconv1.weight, m.vconv1.bias)
        h = F.relu(_masked_bn(m.bn1, h, mask))
        h = dense_rsf_conv(adj, h, m.vconv2.weight, m.vconv2.bias)
        h = F.relu(_masked_bn(m.bn2, h, mask))
        if m.attention is not None:
            h, _ = m.attention(None, h)
        logits = dense_rsf_conv(adj, h, m.pool1.embed.weight, m.pool1.embed.bias)
        v, a, _ = dense_graph_embed_pool(adj, h, logits, mask)
        return m.head(v, a)

    def forward_graph(self, graph) -> torch.Tensor:
        """Convenience: convert a batched DGL graph and run :meth:`forward`."""
        adj, feat, mask = to_dense(graph, graph.ndata[FEAT])
        return self.forward(adj, feat, mask)
