"""Edge convolution of Gadiya et al. 2018 ("Some new layer architectures for graph CNN").

Not DGL's or PyG's ``EdgeConv`` (the DGCNN layer of Wang et al.): this layer computes new *edge*
channels from each edge's channels and the features of its two endpoints.
"""

from __future__ import annotations

import dgl.function as fn
import torch
from torch import nn

from nucleograph.errors import InputError

from ..keys import TMP_E, TMP_H, TMP_M
from .rsf import _check_efeat

_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


class EdgeFeatureConv(nn.Module):
    r"""Edge convolution on a sparse graph.

    For an edge :math:`j \to i` with channels :math:`A(i, j, :)`:

    .. math::
        A'(i, j, :) = \phi\big(W_e A(i, j, :) + W_{dst} V_i + W_{src} V_j + b\big)

    with :math:`\phi` monotone (``"sigmoid"``, default, keeps channels in ``(0, 1)`` like the input
    weights; or ``"relu"``). The graph's edge set is unchanged.

    Parameters
    ----------
    in_feats : int
        Node feature size ``F``.
    edge_channels : int
        Input channels ``L``.
    out_channels : int, optional
        Output channels (default ``L``).
    activation : {"sigmoid", "relu"}

    Shapes
    ------
    feat ``(N, F)``, efeat ``(E, L)`` -> ``(E, out_channels)``.
    """

    def __init__(
        self,
        in_feats: int,
        edge_channels: int,
        out_channels: int | None = None,
        *,
        activation: str = "sigmoid",
    ):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise InputError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.in_feats = in_feats
        self.edge_channels = edge_channels
        self.out_channels = out_channels or edge_channels
        self.activation = activation
        self.edge_weight = nn.Parameter(torch.empty(edge_channels, self.out_channels))
        self.dst_weight = nn.Parameter(torch.empty(in_feats, self.out_channels))
        self.src_weight = nn.Parameter(torch.empty(in_feats, self.out_channels))
        self.bias = nn.Parameter(torch.empty(self.out_channels))
        self.reset_parameters()

    def reset_parameters(self):
        for w in (self.edge_weight, self.dst_weight, self.src_weight):
            nn.init.xavier_uniform_(w)
        nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_feats={self.in_feats}, edge_channels={self.edge_channels}, out_channels={self.out_channels}, "
            f"activation={self.activation}"
        )

    def forward(self, graph, feat: torch.Tensor, efeat: torch.Tensor | None = None) -> torch.Tensor:
        efeat = _check_efeat(graph, efeat, self.edge_channels)
        with graph.local_scope():
            graph.srcdata[TMP_H] = feat @ self.src_weight
            graph.dstdata[TMP_E] = feat @ self.dst_weight
            graph.apply_edges(fn.u_add_v(TMP_H, TMP_E, TMP_M))
            pre = graph.edata[TMP_M] + efeat @ self.edge_weight + self.bias
        return _ACTIVATIONS[self.activation](pre)


class DenseEdgeFeatureConv(EdgeFeatureConv):
    r"""Edge convolution on dense batched graphs; keeps the sparsity pattern of the input.

    .. math::
        A'(i, j, :) = \mathbb{1}[A(i, j, :) \neq 0]\;
        \phi\big(W_e A(i, j, :) + W_{dst} V_i + W_{src} V_j + b\big)

    Same parameters as :class:`EdgeFeatureConv`. A pair ``(i, j)`` with all input channels zero is no
    edge and stays zero.

    Shapes
    ------
    adj ``(B, L, N, N)`` (``adj[b, :, i, j]`` is edge ``j -> i``), feat ``(B, N, F)``
    -> ``(B, out_channels, N, N)``.
    """

    def forward(self, adj: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        if adj.dim() != 4 or adj.shape[1] != self.edge_channels:
            raise InputError(
                f"DenseEdgeFeatureConv expects adj (B, {self.edge_channels}, N, N), got {tuple(adj.shape)}"
            )
        # written out for the few channels here: einsum over L, a (B N, F) x (F, O) GEMM and any() over the
        # channel axis were 13x, 5x and 5x slower on (128, 2, 32, 32) (the occlusion head's batches)
        o = self.out_channels
        ends = torch.matmul(torch.cat([self.dst_weight, self.src_weight], 1).t(), feat.transpose(1, 2))  # (B, 2O, N)
        pre = adj[:, :1] * self.edge_weight[0].view(1, o, 1, 1)  # (B, O, N, N)
        for ch in range(1, self.edge_channels):
            pre.addcmul_(adj[:, ch:ch + 1], self.edge_weight[ch].view(1, o, 1, 1))  # pre is saved by no op
        pre += (ends[:, :o] + self.bias.view(1, o, 1)).unsqueeze(-1)  # V_i on rows
        pre += ends[:, o:].unsqueeze(-2)  # V_j on columns
        mask = adj[:, 0] != 0
        for ch in range(1, self.edge_channels):
            mask |= adj[:, ch] != 0
        mask = mask.unsqueeze(1)
        return _ACTIVATIONS[self.activation](pre) * mask
