"""Edge-weighted neighbour sums on a DGL graph, :math:`(A_l X)_i = \\sum_{j \\to i} a_{l,ji} X_j`.

Not a layer: the kernel the sparse RSF convolution and graph-embed pooling share. DGL's CPU
``update_all(u_mul_e, sum)`` (GSpMM) measured about 5x slower here than torch's CSR matrix product
on the same adjacency, forward and backward together, so the graph's own CSC/CSR index arrays
(``graph.adj_tensors``) are wrapped as torch CSR matrices and multiplied directly. The backward pass
uses the transposed adjacency (the graph's CSR, i.e. out-edges), also a plain CSR product. When the
edge weights themselves need a gradient, DGL's message passing is used instead.
"""

from __future__ import annotations

import warnings

import dgl.function as fn
import torch

from ..keys import TMP_E, TMP_H, TMP_M


class _CSRMatMul(torch.autograd.Function):
    """``A @ X`` with ``A`` a constant CSR matrix; the gradient is ``A^T @ dY``."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, ctx.a_t @ grad.contiguous()


# "Sparse CSR tensor support is in beta": used only for matrix products here. A filter set once rather
# than warnings.catch_warnings() around each call, which is not thread-safe (occlusion batches run on
# several threads).
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


def _csr(indptr, indices, values, shape) -> torch.Tensor:
    return torch.sparse_csr_tensor(indptr, indices, values, size=shape)


_CACHE_ATTR = "_nucleograph_csr"


def _adjacency(graph, efeat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per channel ``(A_l, A_l^T)`` as CSR matrices, cached on the graph for this edge tensor.

    The layers of one forward pass reuse the same matrices; an in-place change of the edge tensor
    (its version counter) or another tensor rebuilds them.
    """
    cache = graph.__dict__.get(_CACHE_ATTR)
    # identity, not address: the entry keeps its tensor alive, so a freed address cannot alias it
    if cache is not None and cache[0] is efeat and cache[1] == efeat._version:
        return cache[2]
    n_dst, n_src = graph.num_dst_nodes(), graph.num_src_nodes()
    in_ptr, in_src, in_eid = graph.adj_tensors("csc")  # rows = destinations: A
    out_ptr, out_dst, out_eid = graph.adj_tensors("csr")  # rows = sources: A^T
    in_vals, out_vals = efeat[in_eid.long()], efeat[out_eid.long()]
    mats = [
        (_csr(in_ptr, in_src, in_vals[:, ch].contiguous(), (n_dst, n_src)),
         _csr(out_ptr, out_dst, out_vals[:, ch].contiguous(), (n_src, n_dst)))
        for ch in range(efeat.shape[1])
    ]
    graph.__dict__[_CACHE_ATTR] = (efeat, efeat._version, mats)
    return mats


def weighted_sums(graph, efeat: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """Sum each node's in-neighbours' features weighted by every edge channel.

    Parameters
    ----------
    graph : dgl.DGLGraph
        Homogeneous (possibly batched) graph with ``E`` edges.
    efeat : torch.Tensor, shape (E, L)
        Edge channels ``a_l``.
    feat : torch.Tensor, shape (N, F) or (N, L, F)
        One feature matrix for all channels, or one per channel.

    Returns
    -------
    torch.Tensor, shape (N, L, F)
        ``out[:, l] = A_l @ X_l``.
    """
    if efeat.requires_grad or graph.num_edges() == 0:
        return _message_passing(graph, efeat, feat)
    mats = _adjacency(graph, efeat)
    parts = []
    for ch, (a, a_t) in enumerate(mats):
        x = feat if feat.dim() == 2 else feat[:, ch]
        parts.append(_CSRMatMul.apply(a, a_t, x.contiguous()))
    return torch.stack(parts, 1)


def _message_passing(graph, efeat: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    with graph.local_scope():
        graph.edata[TMP_E] = efeat.unsqueeze(-1)  # (E, L, 1)
        graph.srcdata[TMP_H] = feat.unsqueeze(1) if feat.dim() == 2 else feat  # (N, 1 or L, F)
        graph.update_all(fn.u_mul_e(TMP_H, TMP_E, TMP_M), fn.sum(TMP_M, TMP_H))
        out = graph.dstdata[TMP_H]
    if out.shape[1] != efeat.shape[1]:  # isolated graph pieces: broadcast shape
        out = out.expand(-1, efeat.shape[1], -1)
    return out
