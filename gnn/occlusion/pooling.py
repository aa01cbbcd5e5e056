"""Pool1 of a batch of occlusions, corrected in closed form from the whole graph's sums, and its three
precision tiers (``docs/occlusion.md``, "Pooling corrections" and "Precision tiers").

:func:`float32_sums` corrects every cluster with float32 products; :class:`Precision` picks the
clusters whose rounding bound that exceeds; :func:`redo_float64` redoes their rows and columns in
float64 and :func:`sum_afresh` sums the clusters that the removed nuclei held virtually all of afresh;
:func:`class_values` runs the model's own head on the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from nucleograph.gnn.models import RSFNet
from nucleograph.gnn.occlusion.balls import afresh_sums, corrected_sums, float64_rows
from nucleograph.gnn.occlusion.cache import ImageCache, PoolingSums
from nucleograph.gnn.occlusion.reference import empty_value, target_values
from nucleograph.gnn.occlusion.rows import BatchRows
from nucleograph.gnn.occlusion.scripted import pool_products as scripted_products

#: float32 over float64 rounding: how much further float64 corrections stay as exact as float32 ones
EPS_RATIO = torch.finfo(torch.float32).eps / torch.finfo(torch.float64).eps


@dataclass(frozen=True)
class BatchChange:
    """How one batch of occlusions changes the rows of its balls, up to Pool1."""

    batch: BatchRows
    image: ImageCache
    z_new: torch.Tensor  #: (n_rows - n_removed, K) ``Z'`` on the kept rows
    h_new: torch.Tensor  #: (n_vconv2 - n_removed, F2) ``H'`` on the kept rows whose ``H`` changes
    dh: torch.Tensor  #: ``H' - H`` on those rows
    de: torch.Tensor  #: (n_rows, K) float64 ``dE = E' - E`` on every row (removed rows: ``-E``)
    e_new: torch.Tensor  #: (n_vconv2 - n_removed, K) float64 ``E'`` on the kept rows whose ``H`` changes
    dsum: torch.Tensor  #: (b, K) float64 ``1^T dE`` per occlusion
    moved: torch.Tensor  #: (b, K) float64 ``1^T |dE|`` per occlusion


@dataclass
class PoolingState:
    """One batch's corrected pooling sums, as the float32 tier leaves them; the other tiers refine
    ``sums`` in place."""

    change: BatchChange
    extra: torch.Tensor  #: (b, K, F2) ``E'^T dH`` as float32 products (remaining mass only: kept by every tier)
    sums: PoolingSums  #: (b, ...) float64 sums of the occluded graphs
    #: (b, K) numpy: each cluster's rounding bound over the model's own, ``M (1 + r)^2 / N``
    #: (``docs/occlusion.md``); 0 for an occlusion that removes the whole graph
    excess: np.ndarray


@dataclass(frozen=True)
class Precision:
    """Which precision tier corrects each (occlusion, cluster) of the fast path's pooling: the one
    documented hook for forcing or observing the tiers (``occlusion(..., precision=...)``).

    A cluster whose ``excess`` (:attr:`PoolingState.excess`) is at most ``float32_bound`` keeps its
    float32 corrections; above ``afresh_bound`` it is summed afresh; in between its rows and columns
    are redone in float64. The defaults are the bounds derived in ``docs/occlusion.md`` (exact to
    within the model's own float32 rounding); other values only trade speed, e.g.
    ``Precision(float32_bound=-1)`` redoes every cluster in float64. A subclass may override
    :meth:`tiers` to observe them.
    """

    float32_bound: float = 1.0
    afresh_bound: float = EPS_RATIO

    def tiers(self, state: PoolingState) -> tuple[np.ndarray, np.ndarray]:
        """``(float64, afresh)``: two disjoint ``(b, K)`` bool masks of the clusters to redo."""
        afresh = state.excess > self.afresh_bound
        return (state.excess > self.float32_bound) & ~afresh, afresh


def pool_products(change: BatchChange, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The corrections' products per occlusion in ``dtype``: ``dE^T [H | A E + A dE / 2]`` ``(b, K, F2 +
    L K)`` and ``E'^T dH`` ``(b, K, F2)``, over the batch's rows padded per occlusion (compiled:
    :func:`.scripted.pool_products`).

    Callers add float32 products to float64 sums, which promotes them exactly.
    """
    batch = change.batch
    return scripted_products(change.image.table(dtype), torch.from_numpy(batch.padded_node),
                             batch.padded_edges.matrices(dtype), change.de, change.e_new, change.dh,
                             batch.layout.flat, batch.layout.width, batch.changed_layout.flat,
                             batch.changed_layout.width, batch.b)


def float32_sums(change: BatchChange) -> PoolingState:
    """Every cluster's pooling sums corrected by float32 products, and each cluster's rounding bound.

    ``E'^T H' = E^T H + dE^T H + E'^T dH`` and ``E'^T A E' = E^T A E + Q + Q^T`` with
    ``Q = dE^T (A E + A dE / 2)``; denominators and the bound in float64.
    """
    batch, image = change.batch, change.image
    f2 = image.h2.shape[1]
    den = image.totals.den + change.dsum
    prod, extra = pool_products(change, torch.float32)
    # num = totals + dE^T H + E'^T dH and adj = totals + Q + Q^T in float64, in one compiled pass
    num, adj, finite = corrected_sums(image.totals.num.numpy(), image.totals.adj.numpy(), prod.numpy(),
                                      extra.numpy(), f2)
    num, adj = torch.from_numpy(num), torch.from_numpy(adj)  # (b, K, F2), (b, K, L, K)
    ratio = (change.moved / den).nan_to_num(nan=torch.inf)
    excess = ((1 + ratio) ** 2 * torch.from_numpy(batch.ball_sizes).unsqueeze(1) / batch.n_nodes).numpy()
    # An occlusion can lift a cluster's logits far above the image's fixed shift (E' ~ 1e26): its
    # float32 products then overflow although the bound above is small (the moved mass is about the new
    # mass). Such a cluster is summed afresh with its own shift, like one whose mass was all removed;
    # without this its scores were NaN. (``finite``: the cluster's row of num and of adj summed, which is
    # finite exactly when its terms are: float32 products added to finite float64 totals, far below
    # float64's overflow.)
    excess[~finite] = np.inf
    excess[batch.emptied] = 0  # the whole graph removed: the uniform prior, nothing to pool
    return PoolingState(change, extra, PoolingSums(num, den, adj), excess)


def _marked_clusters(mask: np.ndarray) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    """The occlusions with a marked cluster in ``mask`` ``(b, K)`` and their marked clusters.

    Returns ``sel`` (those occlusions), ``clusters`` ``(len(sel), s)`` (their marked clusters, padded by
    repeating the first: the same values are then written twice) and ``counts`` (marked clusters per
    selected occlusion)."""
    sel = np.flatnonzero(mask.any(1))
    marked = mask[sel]
    cnt = marked.sum(1)
    s = int(cnt.max())
    order = np.argsort(~marked, axis=1, kind="stable")[:, :s]  # marked clusters first
    return sel, torch.from_numpy(np.where(np.arange(s) < cnt[:, None], order, order[:, :1])), cnt


def _set_row_and_column(adj: torch.Tensor, occ_k: torch.Tensor, clusters: torch.Tensor, row: torch.Tensor) -> None:
    """``adj[o, k, :, :] = adj[o, :, :, k]^T = row`` for the occlusions ``occ_k`` and clusters
    ``clusters`` (``E'^T A_l E'`` is symmetric for a symmetric ``A_l``)."""
    adj[occ_k, clusters] = row
    adj.permute(0, 3, 2, 1)[occ_k, clusters] = row


def redo_float64(state: PoolingState, mask: np.ndarray, out: PoolingSums | None = None) -> None:
    """Redo in float64 the sums of the clusters ``mask`` ``(b, K)`` marks: for such an occlusion and
    cluster ``k``, row ``k`` of ``E'^T H'`` and row and column ``k`` of ``E'^T A_l E'``, written into
    ``out`` (default ``state.sums``) and nothing else.

    Only the products with ``dE`` lose precision when the removed mass dwarfs the remaining one; the
    float32 ``E'^T dH`` (``state.extra``) sums remaining mass only, so it is kept. Row ``k`` of
    ``E'^T A_l E'`` is ``t[k] + dE_k^T (A_l E) + (A_l E_k)^T dE + (A_l dE_k)^T dE``: sums over the ball
    rows with the one cluster ``k`` on one side, so a few clusters cost a fraction of all ``K``; all of a
    batch's marked clusters in one compiled call (:func:`.balls.float64_rows`, free of the interpreter lock).
    """
    change, out = state.change, state.sums if out is None else out
    batch, image, totals, edges = change.batch, change.image, change.image.totals, change.batch.padded_edges
    sel, clusters, counts = _marked_clusters(mask)
    num, adj = float64_rows(sel, clusters.numpy(), counts, batch.b, batch.occ, batch.node, change.de.numpy(),
                            edges.ptr, edges.cols, edges.vals, batch.layout.width, image.table64.numpy(),
                            totals.num.numpy(), totals.adj.numpy(), state.extra.numpy())
    occ_k = torch.from_numpy(sel).unsqueeze(1).expand_as(clusters)
    out.num[occ_k, clusters] = torch.from_numpy(num)
    _set_row_and_column(out.adj, occ_k, clusters, torch.from_numpy(adj))


#: How far (in logits) below the image's shift a cluster's numerators may lie for its cached ``A E``
#: (at that shift) to be rescaled to its own (:func:`nucleograph.gnn.occlusion.balls.afresh_sums`):
#: ``e^-300`` and the terms a few dozen logits below it stay normal float64 numbers. Further below, its
#: ``A E`` is summed from the logits.
RESCALE_GAP = 300.0


def sum_afresh(state: PoolingState, mask: np.ndarray, scratch: np.ndarray | None = None) -> None:
    """Sum afresh, in float64, the pooling sums of the clusters ``mask`` ``(b, K)`` marks (the removed
    nuclei held virtually all of their mass), in place in ``state.sums``.

    Over all remaining nuclei with the cluster's own softmax shift, as the model pools: sums of
    non-negative terms, no cancellation at all. For such an occlusion and cluster ``k`` it writes ``den``,
    row ``k`` of ``num`` and row and column ``k`` of ``adj``; the other clusters keep the global shift, and
    the entries between the two kinds use each one's shift, so ``A' = adj / (den den)`` stays consistent.

    The nuclei an occlusion leaves unchanged are summed by blocks (:class:`.cache.BlockSums`): the
    blocks it does not touch from their sums (rescaled from each block's own shifts), the other nuclei
    of the touched blocks one by one, and the ball's rows from their new values, so the cost does not
    grow with the slide (``docs/occlusion.md``, "Precision tiers"); all marked occlusions of the batch in
    one compiled call (:func:`.balls.afresh_sums`: it holds no interpreter lock, so the other threads'
    batches go on meanwhile). ``scratch`` ``(N,)`` int64 holds -1 on entry and on return (one per thread).
    """
    change = state.change
    batch, image = change.batch, change.image
    if scratch is None:
        scratch = np.full(image.e.shape[0], -1, dtype=np.int64)
    sel, clusters, counts = _marked_clusters(mask)
    blocks, edges, tab = image.blocks, image.edges, image.table64.numpy()
    den, num, adj = afresh_sums(
        sel, clusters.numpy(), counts, batch.b, batch.occ, batch.node, batch.n_removed, batch.n_vconv2,
        change.z_new.numpy(), change.h_new.numpy(), batch.padded_edges.ptr, batch.padded_edges.cols,
        batch.padded_edges.vals, batch.layout.width, edges.indptr, edges.dst, edges.eid, image.efeat,
        image.z64.numpy(), image.e.numpy(), tab, image.shift.numpy(), blocks.blocks.of_node, blocks.blocks.start,
        blocks.blocks.node, blocks.zmax.numpy(), blocks.qmax.numpy(), blocks.sums.numpy(), RESCALE_GAP, scratch)
    sums, occ_k = state.sums, torch.from_numpy(sel).unsqueeze(1).expand_as(clusters)
    sums.den[occ_k, clusters] = torch.from_numpy(den)
    sums.num[occ_k, clusters] = torch.from_numpy(num)
    _set_row_and_column(sums.adj, occ_k, clusters, torch.from_numpy(adj))


def image_logits(model: RSFNet, image: ImageCache) -> torch.Tensor:
    """``(1, C)``: the model's logits for the whole image from the cached float64 pooling sums (the
    model's head on ``V' = num / den``, ``A'_l = adj_l / (den den^T)``): no pass of the whole slide."""
    t, dtype = image.totals, model.feat_mean.dtype
    v = t.num / t.den.unsqueeze(1)
    a = (t.adj / (t.den[:, None, None] * t.den[None, None, :])).permute(1, 0, 2)
    return model.head(v.unsqueeze(0).to(dtype), a.unsqueeze(0).to(dtype))


def class_values(model: RSFNet, state: PoolingState, target: int, output: str,
                 head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """``(b,)`` log-odds or probability (``output``, :func:`.reference.target_values`) of class ``target``
    for each occluded graph: the pooled graph through the model's own head (batch norm in eval mode;
    ``head``: it compiled, :attr:`.scripted.ScriptedModel.head`, default ``model.head``), its logits to
    the value; the uniform prior's where the whole graph was removed."""
    batch, sums = state.change.batch, state.sums
    b, n_ch = batch.b, sums.adj.shape[2]
    adj = sums.adj
    if not batch.channel_left.all():  # a channel with no edge left is exactly zero: no rounding residue
        adj *= torch.from_numpy(batch.channel_left).double().view(b, 1, n_ch, 1)
    den = torch.where(sums.den > 0, sums.den, torch.ones((), dtype=torch.float64))
    v = sums.num.div_(den.unsqueeze(2))
    a = adj.div_(den[:, :, None, None] * den[:, None, None, :]).permute(0, 2, 1, 3)
    dtype = model.feat_mean.dtype
    values = target_values((model.head if head is None else head)(v.to(dtype), a.to(dtype)), target, output)
    return np.where(batch.emptied, empty_value(model.n_classes, output), values)
