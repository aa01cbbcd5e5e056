"""RSF vertex convolution (Such et al. 2017, "Robust spatial filtering with graph convolutional
neural networks"), sparse on a DGL graph and dense on padded adjacency tensors."""

from __future__ import annotations

import torch
from torch import nn

from nucleograph.errors import InputError

from ..keys import EFEAT
from .spmm import CSRAdjacency, neighbour_combine, neighbour_stack


def _check_efeat(graph, efeat, edge_channels: int) -> torch.Tensor:
    if efeat is None:
        if EFEAT not in graph.edata and graph.num_edges() == 0:
            # DGL drops edge schemes when the last edge is removed (e.g. by dgl.remove_nodes)
            return torch.zeros(0, edge_channels)
        if EFEAT not in graph.edata:
            raise InputError(
                f"the graph has no edge channels under edata[{EFEAT!r}]; build it with gnn.data.to_dgl "
                "or pass efeat=(E, L) explicitly"
            )
        efeat = graph.edata[EFEAT]
    if efeat.dim() == 1:
        efeat = efeat.unsqueeze(-1)
    if efeat.shape != (graph.num_edges(), edge_channels):
        raise InputError(
            f"edge channels have shape {tuple(efeat.shape)}, expected ({graph.num_edges()}, {edge_channels}); "
            "build the model with edge_channels equal to the graph's number of channels"
        )
    return efeat


class RSFConv(nn.Module):
    r"""RSF vertex convolution on a sparse graph.

    .. math::
        V' = V W_0 + \sum_{l=1}^{L} A_l V W_l + b,
        \qquad (A_l V)_i = \sum_{j \in \mathcal{N}_{in}(i)} a_{l, ji} V_j

    with no degree normalisation: edge channels (e.g. ``1 - d/100``) scale messages directly and
    nodes without neighbours get ``V_i W_0 + b``.

    Parameters
    ----------
    in_feats, out_feats : int
    edge_channels : int
        ``L``, the number of edge channels.
    bias : bool

    Shapes
    ------
    feat ``(N, in_feats)``, efeat ``(E, L)`` (default ``graph.edata[EFEAT]``) -> ``(N, out_feats)``.
    The weight has shape ``(L + 1, in_feats, out_feats)``; slice 0 is ``W_0``. ``adjacency``
    (optional, from :func:`nucleograph.gnn.layers.spmm.csr_adjacency` for ``graph`` and ``efeat``)
    lets several layers share one set of CSR matrices; without it the call builds its own.
    """

    def __init__(self, in_feats: int, out_feats: int, edge_channels: int, *, bias: bool = True):
        super().__init__()
        self.in_feats = in_feats
        self.out_feats = out_feats
        self.edge_channels = edge_channels
        self.weight = nn.Parameter(torch.empty(edge_channels + 1, in_feats, out_feats))
        self.bias = nn.Parameter(torch.empty(out_feats)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.xavier_uniform_(self.weight.view(-1, self.out_feats))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_feats}, out={self.out_feats}, edge_channels={self.edge_channels}, bias={self.bias is not None}"

    def forward(
        self,
        graph,
        feat: torch.Tensor,
        efeat: torch.Tensor | None = None,
        *,
        adjacency: CSRAdjacency | None = None,
    ) -> torch.Tensor:
        if feat.shape[-1] != self.in_feats:
            raise InputError(f"RSFConv expects {self.in_feats} input features, got {feat.shape[-1]}")
        efeat = _check_efeat(graph, efeat, self.edge_channels)
        if self.in_feats > self.out_feats:
            # project first, like DGL's GraphConv: fewer channels travel along the edges
            w = self.weight.transpose(0, 1).reshape(self.in_feats, -1)  # (F, (L+1)*O), one GEMM
            proj = (feat @ w).view(-1, self.edge_channels + 1, self.out_feats)  # (N, L+1, O)
            rst = neighbour_combine(graph, efeat, proj, adjacency=adjacency)  # P_0 + sum_l A_l P_l
            return rst if self.bias is None else rst + self.bias
        full = neighbour_stack(graph, efeat, feat, adjacency=adjacency)  # (N, L+1, F): [V, A_1 V, ...]
        w = self.weight.reshape(-1, self.out_feats)
        full = full.reshape(full.shape[0], -1)
        return full @ w if self.bias is None else torch.addmm(self.bias, full, w)


def dense_rsf_conv(adj: torch.Tensor, feat: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    r"""Dense RSF convolution :math:`V W_0 + \sum_l A_l V W_l + b`.

    ``adj`` ``(B, L, N, N)`` with ``adj[b, l, i, j]`` the channel-``l`` weight of edge ``j -> i``;
    ``feat`` ``(B, N, F)``; ``weight`` ``(L + 1, F, O)`` -> ``(B, N, O)``.
    """
    agg = torch.matmul(adj, feat.unsqueeze(1)).transpose(1, 2)  # (B, N, L, F)
    full = torch.cat([feat.unsqueeze(2), agg], 2)  # (B, N, L+1, F)
    rst = full.flatten(2) @ weight.reshape(-1, weight.shape[-1])
    return rst if bias is None else rst + bias


def dense_rsf_conv_projected(adj: torch.Tensor, feat: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    r""":func:`dense_rsf_conv` with the weights applied first, :math:`V W_0 + \sum_l A_l (V W_l) + b`:
    fewer operations when the layer narrows (``F > O``), as :class:`RSFConv` does on sparse graphs."""
    n_in, n_out = weight.shape[1], weight.shape[2]
    proj = (feat @ weight.transpose(0, 1).reshape(n_in, -1)).view(*feat.shape[:-1], -1, n_out)  # (B, N, L+1, O)
    rst = proj[:, :, 0] + torch.matmul(adj, proj[:, :, 1:].transpose(1, 2)).sum(1)
    return rst if bias is None else rst + bias


class DenseRSFConv(RSFConv):
    r"""RSF vertex convolution on dense, batched adjacency (used after the first pooling).

    .. math:: V' = V W_0 + \sum_{l} A_l V W_l + b

    Same parameters (and ``state_dict`` keys) as :class:`RSFConv`.

    Shapes
    ------
    adj ``(B, L, N, N)`` (``adj[b, l, i, j]`` is edge ``j -> i``), feat ``(B, N, in_feats)``
    -> ``(B, N, out_feats)``.
    """

    def forward(self, adj: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        if adj.dim() != 4 or adj.shape[1] != self.edge_channels or feat.shape[-1] != self.in_feats:
            raise InputError(
                f"DenseRSFConv expects adj (B, {self.edge_channels}, N, N) and feat (B, N, {self.in_feats}), "
                f"got {tuple(adj.shape)} and {tuple(feat.shape)}"
            )
        if self.in_feats > self.out_feats:  # narrowing: weights first, fewer channels through A
            return dense_rsf_conv_projected(adj, feat, self.weight, self.bias)
        return dense_rsf_conv(adj, feat, self.weight, self.bias)
