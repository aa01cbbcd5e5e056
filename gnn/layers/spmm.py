"""Edge-weighted neighbour sums on a DGL graph, :math:`(A_l X)_i = \\sum_{j \\to i} a_{l,ji} X_j`.

Not a layer: the kernel the sparse RSF convolution and graph-embed pooling share. The graph's own
CSC/CSR index arrays (``graph.adj_tensors``) become torch CSR matrices, multiplied by torch's CSR
product (MKL's sparse BLAS in the PyPI build). Measured per kernel on 2 cores of an AMD EPYC, where
MKL is said to take slow paths (``bench/bench_kernels.py``; bench/RESULTS.md, issue 20), MKL's CSR
product was still the fastest or tied at every width from 16 to 128 features, on Delaunay and on
ingest radius graphs: scipy's CSR product 1.4-2.7x slower, a COO product 2.3-10x, DGL's GSpMM
(``update_all(u_mul_e, sum)``) 5.6-8.5x, an ``index_add_`` scatter 3.4-17x. So no run-time choice is
made. All edge channels and the node's own row go into ONE matrix, so an RSF convolution is one sparse
product and one dense one (:class:`CSRAdjacency`); the backward pass multiplies the transposed matrix,
also CSR. When the edge weights themselves need a gradient, DGL's message passing is used instead.

Reusing the matrices
--------------------
Building the two matrices takes about 0.23 ms for a 1,500-nucleus graph and 1.3 ms for a batch of
eight (2 cores, AMD EPYC; their transposes, built on the first backward pass, as much again), and one
forward pass runs three sparse layers on the same graph and edge channels. So the caller builds them
once with :func:`csr_adjacency` and hands the :class:`CSRAdjacency` to each layer (``adjacency=``), as
:class:`nucleograph.gnn.models.RSFNet` does; without one, each call builds its own. The object belongs
to the caller and nothing is stored on the graph; its only mutable part, the transposes, is filled in
once under a lock, so threads that share it never overwrite each other.
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
import numba
import numpy as np
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


#: Matrices with fewer rows, columns and stored values than this get 32-bit indices (:func:`csr_matrix`).
INT32_LIMIT = 2**31 - 1


def csr_matrix(indptr, indices, values, shape) -> torch.Tensor:
    """A torch sparse CSR matrix, without torch's one-time beta warning, with 32-bit indices where they fit.

    MKL's sparse BLAS (the LP64 interface torch links) takes 32-bit indices: torch converts 64-bit ones
    into new arrays on every product, 10-60 % of a product's time on a 1,500-nucleus graph (16-128 features).

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
    if indptr.dtype == torch.int64 and max(*shape, indices.numel()) < INT32_LIMIT:
        indptr, indices = indptr.to(torch.int32), indices.to(torch.int32)
    return torch.sparse_csr_tensor(indptr, indices, values, size=shape)


class _CSRMatMul(torch.autograd.Function):
    """``A @ X`` with ``A`` a constant CSR matrix; the gradient is ``A^T @ dY`` (``A^T`` from
    ``transposes.get(which)``, built on the first backward pass)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, transposes, which: str, x: torch.Tensor) -> torch.Tensor:
        ctx.transposes, ctx.which = transposes, which
        return csr_mm(a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, None, None, csr_mm(ctx.transposes.get(ctx.which), grad.contiguous())


def csr_mm(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` for a CSR matrix ``a`` and a dense, contiguous ``x``, written once into a new tensor.

    torch 2.2's ``a @ x`` zero-fills one output, multiplies into a second and copies it over; ``addmm``
    with ``beta=0`` into an uninitialised output writes it once (its old contents are never read: no NaN
    of it can leak in; rows without entries get their zeros). With 32-bit indices (:func:`csr_matrix`)
    MKL reads them as they are. Same values, bit for bit; with both, a product on a 1,500-nucleus graph
    takes 2.2-3.1x less time at 16-128 features (bench/RESULTS.md, issue 20).
    """
    out = x.new_empty(a.shape[0], x.shape[1])
    return torch.addmm(out, a, x, beta=0, out=out)


@dataclass(frozen=True, eq=False)
class CSRAdjacency:
    r"""The CSR matrices of one graph and one edge tensor, every edge channel in one matrix.

    With ``L`` channels, ``N`` nodes and the identity as channel 0 (:math:`A_0 = I`):

    ``stack``
        ``S`` ``(N (L+1), N)``, row ``i (L+1) + l`` = row ``i`` of ``A_l``: ``S X`` viewed as
        ``(N, L+1, F)`` is ``[X_i, (A_1 X)_i, ..., (A_L X)_i]`` per node, the input of an RSF
        convolution's weight product, in one sparse product (no per-channel products, stack or cat).
    ``combine``
        ``C`` ``(N, N (L+1))``, column ``j (L+1) + l`` = column ``j`` of ``A_l``: with ``P`` ``(N, L+1, O)``
        viewed as ``(N (L+1), O)``, ``C P = P_0 + \sum_l A_l P_l``, a projected RSF convolution's
        output, again one product.

    Build it with :func:`csr_adjacency`. It keeps ``graph`` and ``efeat`` alive, so the identity and
    address checks of :meth:`check` cannot be fooled by a freed object's reused address.

    Attributes
    ----------
    graph : dgl.DGLGraph
    efeat : torch.Tensor, shape (E, L)
    version : int
        ``efeat``'s version counter when the matrices were built (an in-place change bumps it).
    stack, combine : torch.Tensor
        The two matrices; their transposes (for the backward pass) are built when first needed.
    """

    graph: object
    efeat: torch.Tensor
    version: int
    stack: torch.Tensor
    combine: torch.Tensor
    transposes: _Transposes

    @property
    def channels(self) -> int:
        """``L``, the edge channels (the identity not counted)."""
        return self.efeat.shape[1]

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


# Compiled: the interleaving is one pass over the entries, where numpy or torch advanced indexing
# took a dozen passes and 4-5x the time of the per-channel matrices it replaced (cache=True: compiled
# once per machine, like gnn.occlusion.balls).
@numba.njit(cache=True, nogil=True)
def _rows_arrays(ptr, idx, eid, vals):  # pragma: no cover - compiled
    n, e, ell = ptr.size - 1, idx.size, vals.shape[1]
    indptr = np.empty(n * (ell + 1) + 1, np.int64)
    cols, out = np.empty(n + e * ell, np.int64), np.empty(n + e * ell, vals.dtype)
    k = 0
    indptr[0] = 0
    for r in range(n):
        cols[k], out[k] = r, 1
        k += 1
        indptr[r * (ell + 1) + 1] = k
        for ch in range(ell):
            for j in range(ptr[r], ptr[r + 1]):
                cols[k], out[k] = idx[j], vals[eid[j], ch]
                k += 1
            indptr[r * (ell + 1) + 2 + ch] = k
    return indptr, cols, out


@numba.njit(cache=True, nogil=True)
def _columns_arrays(ptr, idx, eid, vals):  # pragma: no cover - compiled
    n, e, ell = ptr.size - 1, idx.size, vals.shape[1]
    indptr = np.empty(n + 1, np.int64)
    cols, out = np.empty(n + e * ell, np.int64), np.empty(n + e * ell, vals.dtype)
    k = 0
    for r in range(n):
        indptr[r] = k
        own = False  # the identity entry goes where its column sorts (rows stay sorted if idx is)
        for j in range(ptr[r], ptr[r + 1]):
            if not own and idx[j] >= r:
                cols[k], out[k] = r * (ell + 1), 1
                k += 1
                own = True
            for ch in range(ell):
                cols[k], out[k] = idx[j] * (ell + 1) + 1 + ch, vals[eid[j], ch]
                k += 1
        if not own:
            cols[k], out[k] = r * (ell + 1), 1
            k += 1
    indptr[n] = k
    return indptr, cols, out


def _interleaved_rows(ptr: np.ndarray, idx: np.ndarray, eid: np.ndarray, vals: np.ndarray) -> torch.Tensor:
    """``(n (L+1), n)``: row ``r (L+1)`` is ``e_r``, row ``r (L+1) + l`` the compressed row ``r``
    (``ptr``, ``idx``, edge ids ``eid``) with channel ``l``'s values (``vals`` ``(E, L)`` by edge id)."""
    n, ell = ptr.size - 1, vals.shape[1]
    indptr, cols, out = _rows_arrays(ptr, idx, eid, vals)
    return csr_matrix(torch.from_numpy(indptr), torch.from_numpy(cols), torch.from_numpy(out), (n * (ell + 1), n))


def _interleaved_columns(ptr: np.ndarray, idx: np.ndarray, eid: np.ndarray, vals: np.ndarray) -> torch.Tensor:
    """``(n, n (L+1))``: row ``r`` holds ``1`` at column ``r (L+1)`` and channel ``l``'s value of its
    entry ``(r, j)`` at column ``j (L+1) + l``."""
    n, ell = ptr.size - 1, vals.shape[1]
    indptr, cols, out = _columns_arrays(ptr, idx, eid, vals)
    return csr_matrix(torch.from_numpy(indptr), torch.from_numpy(cols), torch.from_numpy(out), (n, n * (ell + 1)))


class _Transposes:
    """The transposed matrices of a :class:`CSRAdjacency`, built from the graph's out-edges when a
    backward pass first needs them (inference never does: half the build saved), once, under a lock."""

    def __init__(self, graph, values: np.ndarray):
        self._graph, self._values, self._lock, self._mats = graph, values, threading.Lock(), None

    def get(self, which: str) -> torch.Tensor:
        with self._lock:
            if self._mats is None:
                ptr, dst, eid = (t.numpy().astype(np.int64, copy=False) for t in self._graph.adj_tensors("csr"))
                self._mats = {"stack": _interleaved_columns(ptr, dst, eid, self._values),
                              "combine": _interleaved_rows(ptr, dst, eid, self._values)}
            return self._mats[which]


def csr_adjacency(graph, efeat: torch.Tensor) -> CSRAdjacency:
    """Build the CSR matrices that :func:`neighbour_stack`, :func:`neighbour_combine` and
    :func:`weighted_sums` multiply.

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

    Raises
    ------
    InputError
        If the graph has separate source and destination nodes (a DGL block).

    Examples
    --------
    >>> adj = csr_adjacency(graph, efeat)  # doctest: +SKIP
    >>> h = conv1(graph, x, efeat, adjacency=adj)  # doctest: +SKIP
    >>> h = conv2(graph, h, efeat, adjacency=adj)  # doctest: +SKIP
    """
    if graph.num_dst_nodes() != graph.num_src_nodes():
        raise InputError("the RSF layers take a graph whose nodes are both sources and destinations, not a block")
    values = np.ascontiguousarray(efeat.detach().numpy())
    ptr, src, eid = (t.numpy().astype(np.int64, copy=False) for t in graph.adj_tensors("csc"))  # rows: A
    return CSRAdjacency(graph, efeat, efeat._version, _interleaved_rows(ptr, src, eid, values),
                        _interleaved_columns(ptr, src, eid, values), _Transposes(graph, values))


def uses_csr(graph, efeat: torch.Tensor) -> bool:
    """Whether the sums below multiply CSR matrices (False: DGL's message passing, when the edge
    channels need a gradient or there are no edges); a :class:`CSRAdjacency` is only worth building
    when True."""
    return not efeat.requires_grad and graph.num_edges() > 0


def _adjacency(graph, efeat: torch.Tensor, adjacency: CSRAdjacency | None) -> CSRAdjacency:
    if adjacency is None:
        return csr_adjacency(graph, efeat)
    adjacency.check(graph, efeat)
    return adjacency


def neighbour_stack(
    graph, efeat: torch.Tensor, feat: torch.Tensor, *, adjacency: CSRAdjacency | None = None
) -> torch.Tensor:
    """Each node's own features followed by its in-neighbours' sums weighted by every edge channel.

    Parameters
    ----------
    graph : dgl.DGLGraph
    efeat : torch.Tensor, shape (E, L)
    feat : torch.Tensor, shape (N, F)
    adjacency : CSRAdjacency, optional
        From :func:`csr_adjacency` for ``graph`` and ``efeat``; built here when None.

    Returns
    -------
    torch.Tensor, shape (N, L + 1, F)
        ``out[:, 0] = X``, ``out[:, l] = A_l @ X``; contiguous, so ``out.view(N, -1)`` is free.
    """
    if not uses_csr(graph, efeat):
        return torch.cat([feat.unsqueeze(1), _message_passing(graph, efeat, feat)], 1)
    adjacency = _adjacency(graph, efeat, adjacency)
    out = _CSRMatMul.apply(adjacency.stack, adjacency.transposes, "stack", feat.contiguous())
    return out.view(feat.shape[0], -1, feat.shape[1])


def neighbour_combine(
    graph, efeat: torch.Tensor, proj: torch.Tensor, *, adjacency: CSRAdjacency | None = None
) -> torch.Tensor:
    """``P_0 + sum_l A_l P_l``: node features already multiplied by each channel's weights, summed.

    Parameters
    ----------
    graph : dgl.DGLGraph
    efeat : torch.Tensor, shape (E, L)
    proj : torch.Tensor, shape (N, L + 1, O)
        ``proj[:, 0]`` stays with its node; ``proj[:, l]`` travels along channel ``l``.
    adjacency : CSRAdjacency, optional

    Returns
    -------
    torch.Tensor, shape (N, O)
    """
    if not uses_csr(graph, efeat):
        return proj[:, 0] + _message_passing(graph, efeat, proj[:, 1:]).sum(1)
    adjacency = _adjacency(graph, efeat, adjacency)
    return _CSRMatMul.apply(adjacency.combine, adjacency.transposes, "combine", proj.reshape(-1, proj.shape[2]))


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
    feat : torch.Tensor, shape (N, F)
    adjacency : CSRAdjacency, optional
        From :func:`csr_adjacency` for ``graph`` and ``efeat``; built here when None.

    Returns
    -------
    torch.Tensor, shape (N, L, F)
        ``out[:, l] = A_l @ X`` (a view of :func:`neighbour_stack`'s result without the node's own row).

    Raises
    ------
    InputError
        If ``adjacency`` was built for another graph or edge tensor.
    """
    if not uses_csr(graph, efeat):
        return _message_passing(graph, efeat, feat)
    return neighbour_stack(graph, efeat, feat, adjacency=adjacency)[:, 1:]


def _message_passing(graph, efeat: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    with graph.local_scope():
        graph.edata[TMP_E] = efeat.unsqueeze(-1)  # (E, L, 1)
        graph.srcdata[TMP_H] = feat.unsqueeze(1) if feat.dim() == 2 else feat  # (N, 1 or L, F)
        graph.update_all(fn.u_mul_e(TMP_H, TMP_E, TMP_M), fn.sum(TMP_M, TMP_H))
        out = graph.dstdata[TMP_H]
    if out.shape[1] != efeat.shape[1]:  # isolated graph pieces: broadcast shape
        out = out.expand(-1, efeat.shape[1], -1)
    return out
