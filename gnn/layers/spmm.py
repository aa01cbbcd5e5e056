"""Edge-weighted neighbour sums on a DGL graph, :math:`(A_l X)_i = \\sum_{j \\to i} a_{l,ji} X_j`.

Not a layer: the kernel the sparse RSF convolution and graph-embed pooling share. DGL's CPU
``update_all(u_mul_e, sum)`` (GSpMM) measured about 5x slower here than torch's CSR matrix product
on the same adjacency, forward and backward together, so the graph's own CSC/CSR index arrays
(``graph.adj_tensors``) are wrapped as torch CSR matrices and multiplied directly. The backward pass
uses the transposed adjacency (the graph's CSR, i.e. out-edges), also a plain CSR product. When the
edge weights themselves need a gradient, DGL's message passing is used instead.

Reusing the matrices
--------------------
Building the matrices costs about 5% of an RSF forward pass on a 1,500-nucleus graph (0.45 of 7 ms
on a loaded 2-core machine), and one forward pass runs three sparse layers on the same graph and
edge channels. So the caller builds them once with :func:`csr_adjacency` and hands the
:class:`CSRAdjacency` to each layer (``adjacency=``), as :class:`nucleograph.gnn.models.RSFNet`
does; without one, each call builds its own. The object is immutable and belongs to the caller:
nothing is stored on the graph, and threads never share a cache that one of them could overwrite.
A layer checks that the object was built for the graph and edge tensor it is given (an in-place
change of the tensor bumps its version counter and fails the check).

The beta warning
----------------
torch warns on the first sparse CSR tensor a process constructs ("Sparse CSR tensor support is in
beta", a ``TORCH_WARN_ONCE`` in its C++ code) and never again. Only matrix products are used here.
:func:`csr_matrix`, through which nucleograph constructs every CSR tensor, makes that first one
itself (1 x 1) inside ``warnings.catch_warnings`` with the message ignored. That block runs once per
process, under a lock, so two threads cannot interleave two blocks and restore each other's filters
(why ``catch_warnings`` around every call was dropped); after it each call pays one
``Event.is_set`` check, and no process-wide filter is left behind. Code that constructs a CSR tensor
with ``torch.sparse_csr_tensor`` directly, before any :func:`csr_matrix`, would meet the warning.
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

import dgl.function as fn
import torch

from nucleograph.errors import InputError

from ..keys import TMP_E, TMP_H, TMP_M

#: The start of the message torch emits on a process's first sparse CSR tensor.
CSR_BETA_WARNING = "Sparse CSR tensor support is in beta"

_beta_warning_spent = threading.Event()
_beta_warning_lock = threading.Lock()


def _spend_beta_warning() -> None:
    # torch warns on its first CSR construction only: make that one here, with the warning silenced
    with _beta_warning_lock:
        if _beta_warning_spent.is_set():
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=CSR_BETA_WARNING, category=UserWarning)
            torch.sparse_csr_tensor(
                torch.zeros(2, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.ones(1), size=(1, 1)
            )
        _beta_warning_spent.set()


def csr_matrix(indptr, indices, values, shape) -> torch.Tensor:
    """A torch sparse CSR matrix, without torch's one-time beta warning.

    Parameters
    ----------
    indptr : torch.Tensor, shape (rows + 1,)
    indices : torch.Tensor, shape (nnz,)
        Column of each stored value.
    values : torch.Tensor, shape (nnz,)
    shape : (int, int)

    Returns
    -------
    torch.Tensor
        ``torch.sparse_csr`` layout, ``shape``.
    """
    if not _beta_warning_spent.is_set():
        _spend_beta_warning()
    return torch.sparse_csr_tensor(indptr, indices, values, size=shape)


class _CSRMatMul(torch.autograd.Function):
    """``A @ X`` with ``A`` a constant CSR matrix; the gradient is ``A^T @ dY``."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, ctx.a_t @ grad.contiguous()


@dataclass(frozen=True, eq=False)
class CSRAdjacency:
    """Per edge channel ``l`` the CSR matrices ``(A_l, A_l^T)`` of one graph and one edge tensor.

    Build it with :func:`csr_adjacency`. It keeps ``graph`` and ``efeat`` alive, so the identity and
    address checks of :meth:`check` cannot be fooled by a freed object's reused address.

    Attributes
    ----------
    graph : dgl.DGLGraph
    efeat : torch.Tensor, shape (E, L)
    version : int
        ``efeat``'s version counter when the matrices were built (an in-place change bumps it).
    mats : tuple of (torch.Tensor, torch.Tensor)
        ``(A_l, A_l^T)``, shapes ``(N_dst, N_src)`` and ``(N_src, N_dst)``.
    """

    graph: object
    efeat: torch.Tensor
    version: int
    mats: tuple

    def check(self, graph, efeat: torch.Tensor) -> None:
        """Raise :class:`nucleograph.errors.InputError` unless built for ``graph`` and ``efeat`` as they are now.

        ``efeat`` may be another view of the same memory (e.g. ``unsqueeze`` of a 1-D tensor): views
        share the data, the layout and the version counter that are compared.
        """
        e = self.efeat
        same = efeat is e or (
            efeat.data_ptr() == e.data_ptr()
            and efeat.shape == e.shape
            and efeat.stride() == e.stride()
            and efeat.dtype == e.dtype
        )
        if graph is not self.graph or not same or efeat._version != self.version:
            raise InputError(
                "the CSR adjacency was built for another graph or edge tensor, or the edge tensor changed "
                "in place since; build it with csr_adjacency(graph, efeat) from the tensors you pass"
            )


def csr_adjacency(graph, efeat: torch.Tensor) -> CSRAdjacency:
    """Build the per-channel CSR matrices that :func:`weighted_sums` multiplies.

    Parameters
    ----------
    graph : dgl.DGLGraph
        Homogeneous (possibly batched) graph with ``E`` edges.
    efeat : torch.Tensor, shape (E, L)
        Edge channels ``a_l``.

    Returns
    -------
    CSRAdjacency
        Pass it as ``adjacency=`` to every layer call on this graph with these channels.

    Examples
    --------
    >>> adj = csr_adjacency(graph, efeat)  # doctest: +SKIP
    >>> h = conv1(graph, x, efeat, adjacency=adj)  # doctest: +SKIP
    >>> h = conv2(graph, h, efeat, adjacency=adj)  # doctest: +SKIP
    """
    n_dst, n_src = graph.num_dst_nodes(), graph.num_src_nodes()
    in_ptr, in_src, in_eid = graph.adj_tensors("csc")  # rows = destinations: A
    out_ptr, out_dst, out_eid = graph.adj_tensors("csr")  # rows = sources: A^T
    in_vals, out_vals = efeat[in_eid.long()], efeat[out_eid.long()]
    mats = tuple(
        (csr_matrix(in_ptr, in_src, in_vals[:, ch].contiguous(), (n_dst, n_src)),
         csr_matrix(out_ptr, out_dst, out_vals[:, ch].contiguous(), (n_src, n_dst)))
        for ch in range(efeat.shape[1])
    )
    return CSRAdjacency(graph, efeat, efeat._version, mats)


def uses_csr(graph, efeat: torch.Tensor) -> bool:
    """Whether :func:`weighted_sums` multiplies CSR matrices (False: it uses DGL's message passing,
    when the edge channels need a gradient or there are no edges); a :class:`CSRAdjacency` is only
    worth building when True."""
    return not efeat.requires_grad and graph.num_edges() > 0


def weighted_sums(
    graph, efeat: torch.Tensor, feat: torch.Tensor, *, adjacency: CSRAdjacency | None = None
) -> torch.Tensor:
    """Sum each node's in-neighbours' features weighted by every edge channel.

    Parameters
    ----------
    graph : dgl.DGLGraph
        Homogeneous (possibly batched) graph with ``E`` edges.
    efeat : torch.Tensor, shape (E, L)
        Edge channels ``a_l``.
    feat : torch.Tensor, shape (N, F) or (N, L, F)
        One feature matrix for all channels, or one per channel.
    adjacency : CSRAdjacency, optional
        From :func:`csr_adjacency` for ``graph`` and ``efeat``; built here when None.

    Returns
    -------
    torch.Tensor, shape (N, L, F)
        ``out[:, l] = A_l @ X_l``.

    Raises
    ------
    InputError
        If ``adjacency`` was built for another graph or edge tensor.
    """
    if not uses_csr(graph, efeat):
        return _message_passing(graph, efeat, feat)
    if adjacency is None:
        adjacency = csr_adjacency(graph, efeat)
    else:
        adjacency.check(graph, efeat)
    parts = []
    for ch, (a, a_t) in enumerate(adjacency.mats):
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
