"""Pool1 of a batch of occlusions, corrected in closed form from the whole graph's sums, and its three
precision tiers (``docs/occlusion.md``, "Pooling corrections" and "Precision tiers").

:func:`float32_sums` corrects every cluster with float32 products; :class:`Precision` picks the
clusters whose rounding bound that exceeds; :func:`redo_float64` redoes their rows and columns in
float64 and :func:`sum_afresh` sums the clusters that the removed nuclei held virtually all of afresh;
:func:`class_values` runs the model's own head on the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nucleograph.gnn.models import RSFNet
from nucleograph.gnn.occlusion.balls import (
    afresh_region,
    boundary_sums,
    csr_rows_times,
    outside_pool,
    row_blocks,
)
from nucleograph.gnn.occlusion.cache import ImageCache, PoolingSums
from nucleograph.gnn.occlusion.reference import empty_value, target_values
from nucleograph.gnn.occlusion.rows import BatchRows, CSRArrays, take_rows

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
    L K)`` and ``E'^T dH`` ``(b, K, F2)``.

    Callers add float32 products to float64 sums, which promotes them exactly.
    """
    batch, table = change.batch, change.image.table(dtype)
    de, e_new, dh = change.de.to(dtype), change.e_new.to(dtype), change.dh.to(dtype)
    f2, k = change.image.h2.shape[1], de.shape[1]
    rhs = take_rows(table, torch.from_numpy(batch.padded_node))  # (b M, F2 + L K)
    for ch, a in enumerate(batch.padded_edges.matrices(dtype)):  # + A_l dE / 2, into the padded rows
        rhs[:, f2 + ch * k:f2 + (ch + 1) * k].addmm_(a, de, alpha=0.5)
    rhs = rhs.view(batch.b, -1, table.shape[1])  # (b, M, F2 + L K)
    prod = torch.bmm(batch.layout.pad(de).transpose(1, 2), rhs)
    extra = torch.bmm(batch.changed_layout.pad(e_new).transpose(1, 2), batch.changed_layout.pad(dh))
    return prod, extra


def float32_sums(change: BatchChange) -> PoolingState:
    """Every cluster's pooling sums corrected by float32 products, and each cluster's rounding bound.

    ``E'^T H' = E^T H + dE^T H + E'^T dH`` and ``E'^T A E' = E^T A E + Q + Q^T`` with
    ``Q = dE^T (A E + A dE / 2)``; denominators and the bound in float64.
    """
    batch, image = change.batch, change.image
    b, (k, n_ch, _), f2 = batch.b, image.totals.adj.shape, image.h2.shape[1]
    occ = torch.from_numpy(batch.occ)
    den = image.totals.den + torch.zeros(b, k, dtype=torch.float64).index_add_(0, occ, change.de)
    moved = torch.zeros(b, k, dtype=torch.float64).index_add_(0, occ, change.de.abs())
    prod, extra = pool_products(change, torch.float32)
    num = image.totals.num + prod[:, :, :f2] + extra
    q = prod[:, :, f2:].reshape(b, k, n_ch, k)
    adj = image.totals.adj + q + q.permute(0, 3, 2, 1)  # (b, K, L, K)
    ratio = (moved / den).nan_to_num(nan=torch.inf)
    excess = ((1 + ratio) ** 2 * torch.from_numpy(batch.ball_sizes).unsqueeze(1) / batch.n_nodes).numpy()
    # An occlusion can lift a cluster's logits far above the image's fixed shift (E' ~ 1e26): its
    # float32 products then overflow although the bound above is small (the moved mass is about the new
    # mass). Such a cluster is summed afresh with its own shift, like one whose mass was all removed;
    # without this its scores were NaN.
    finite = torch.isfinite(num).all(2) & torch.isfinite(adj).flatten(2).all(2)
    excess[~finite.numpy()] = np.inf
    excess[batch.emptied] = 0  # the whole graph removed: the uniform prior, nothing to pool
    return PoolingState(change, extra, PoolingSums(num, den, adj), excess)


def _marked_clusters(mask: np.ndarray, occ: np.ndarray):
    """The occlusions with a marked cluster in ``mask`` ``(b, K)`` and their marked clusters.

    Returns ``sel`` (those occlusions), ``clusters`` ``(len(sel), s)`` (their marked clusters, padded by
    repeating the first: the same values are then written twice) and, for each row (``occ``: the rows'
    occlusions), the position of its occlusion in ``sel``, -1 for the others."""
    sel = np.flatnonzero(mask.any(1))
    marked = mask[sel]
    cnt = marked.sum(1)
    s = int(cnt.max())
    order = np.argsort(~marked, axis=1, kind="stable")[:, :s]  # marked clusters first
    clusters = torch.from_numpy(np.where(np.arange(s) < cnt[:, None], order, order[:, :1]))
    pick = np.full(mask.shape[0], -1, dtype=np.int64)
    pick[sel] = np.arange(sel.size)
    return sel, clusters, pick[occ]


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
    ``E'^T A_l E'`` is ``t[k] + dE_k^T (A_l E) + (A_l E_k)^T dE + (A_l dE_k)^T dE``: three products over
    the ball rows with the one cluster ``k`` on one side, so a few clusters cost a fraction of all ``K``.
    """
    change, out = state.change, state.sums if out is None else out
    batch, image, totals = change.batch, change.image, change.image.totals
    (k, n_ch, _), f2 = totals.adj.shape, image.h2.shape[1]
    sel, clusters, pick = _marked_clusters(mask, batch.occ)
    b_s, s = clusters.shape
    rows = np.flatnonzero(pick >= 0)  # the ball rows of the selected occlusions
    layout = batch.layout.subset(batch.occ, rows, pick, b_s)
    width = layout.width
    rows_t = torch.from_numpy(rows)
    de_rows = take_rows(change.de, rows_t)
    de_all = layout.pad(de_rows)  # (b_s, M, K)
    de_k = torch.gather(de_all, 2, clusters.unsqueeze(1).expand(b_s, width, s))  # (b_s, M, s)
    node = batch.padded_node.reshape(batch.b, width)[sel].reshape(-1)  # each kept occlusion's padded block
    tab = take_rows(image.table64, torch.from_numpy(node)).view(b_s, width, -1)  # [H | A E]
    ae_k = torch.gather(tab[:, :, f2:].view(b_s, width, n_ch, k), 3,
                        clusters.view(b_s, 1, 1, s).expand(b_s, width, n_ch, s))
    # A_l dE_k over the selected occlusions' ball edges, straight into their padded rows
    de_in = change.de.new_zeros(batch.n_rows, s)
    de_in[rows_t] = torch.gather(de_rows, 1, clusters[torch.from_numpy(pick[rows])])
    edges = batch.padded_edges
    block = CSRArrays(*row_blocks(edges.ptr, edges.cols, edges.vals, sel, width), (b_s * width, batch.n_rows))
    ade_k = torch.stack([a @ de_in for a in block.matrices()], 1).view(b_s, width, n_ch, s)
    row = torch.bmm(de_k.transpose(1, 2), tab)  # (b_s, s, F2 + L K)
    col = torch.bmm(de_all.transpose(1, 2), (ae_k + ade_k).view(b_s, width, n_ch * s)).view(b_s, k, n_ch, s)
    adj_rows = totals.adj[clusters] + row[:, :, f2:].view(b_s, s, n_ch, k) + col.permute(0, 3, 2, 1)
    occ_k = torch.from_numpy(sel).unsqueeze(1).expand(b_s, s)
    out.num[occ_k, clusters] = totals.num[clusters] + row[:, :, :f2] + state.extra[occ_k, clusters]
    _set_row_and_column(out.adj, occ_k, clusters, adj_rows)


#: How far (in logits) below the image's shift a cluster's numerators may lie for its cached ``A E``
#: (at that shift) to be rescaled to its own (:func:`nucleograph.gnn.occlusion.balls.outside_pool`):
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
    grow with the slide (``docs/occlusion.md``, "Precision tiers"). ``scratch`` ``(N,)`` int64 holds -1
    on entry and on return (one per thread).
    """
    change = state.change
    batch, image = change.batch, change.image
    if scratch is None:
        scratch = np.full(image.e.shape[0], -1, dtype=np.int64)
    order = np.argsort(batch.occ, kind="stable")  # each occlusion's rows, in level order
    start = np.concatenate([[0], np.cumsum(np.bincount(batch.occ, minlength=batch.b))])
    for o in np.flatnonzero(mask.any(1)):
        _afresh_from_blocks(state, int(o), order[start[o]:start[o + 1]], np.flatnonzero(mask[o]), scratch)


def _afresh_from_blocks(state: PoolingState, o: int, rows: np.ndarray, clusters: np.ndarray,
                        scratch: np.ndarray) -> None:
    """:func:`sum_afresh` for occlusion ``o`` (its batch ``rows``, ascending) and its afresh ``clusters``.

    With ``U`` the nuclei outside the ball, ``C`` the kept rows and ``E''`` the numerators with each afresh
    cluster at its own shift (the largest remaining logit ``m_k``), the others at the image's:
    ``den_k = 1^T E''_k`` and ``num_k = E''_k^T H'`` over ``U`` and ``C``, and row ``k`` of ``E''^T A_l E''``
    sums its edges by ends: U-U (the untouched blocks' sums and the touched blocks' other nuclei), U-C
    and C-U (the edges leaving the ball's last level) and C-rows (the ball's own edges). Small arrays:
    numpy, whose calls cost a fraction of torch's.
    """
    change = state.change
    batch, image = change.batch, change.image
    blocks = image.blocks
    n_rem, n_v2, f2 = batch.n_removed, batch.n_vconv2, image.h2.shape[1]
    (k, n_ch, _), s = image.totals.adj.shape, clusters.size
    z64, tab, shift = image.z64.numpy(), image.table64.numpy(), image.shift.numpy()
    zmax, qmax, block_sums = blocks.zmax.numpy(), blocks.qmax.numpy(), blocks.sums.numpy()
    nodes = batch.node[rows]
    n_rem_o, last_lo = int(np.searchsorted(rows, n_rem)), int(np.searchsorted(rows, n_v2))
    region = afresh_region(nodes, last_lo, image.edges, blocks.blocks, scratch)
    kept = rows[n_rem_o:] - n_rem
    z_c = change.z_new.numpy()[kept].astype(np.float64)  # (n_C, K)
    untouched = np.ones(zmax.shape[0], dtype=bool)
    untouched[region.touched] = False
    top = np.full(s, -np.inf)  # m_k
    for part in (z_c[:, clusters], z64[region.x_node[:, None], clusters],
                 np.where(untouched[:, None], zmax[:, clusters], -np.inf)):
        if part.shape[0]:
            top = np.maximum(top, part.max(0))
    own = shift.copy()
    own[clusters] = top
    e_c = np.exp(z_c - own)  # (n_C, K) E'' on the kept rows
    ek_c = e_c[:, clusters]
    h_c = tab[nodes[n_rem_o:], :f2]  # H' on the kept rows
    changed = rows[n_rem_o:] < n_v2
    h_c[changed] = change.h_new.numpy()[kept[changed]]
    den, num, adj = ek_c.sum(0), ek_c.T @ h_c, np.zeros((s, n_ch, k))
    # U-U: the untouched blocks (their shifts r_b, q_b lie at or below the ones used here: weights <= 1)
    w_row = np.where(untouched[:, None], np.exp(np.minimum(zmax[:, clusters] - top, 0.0)), 0.0)  # (n_b, s)
    w_col = np.exp(np.minimum(qmax - own, 0.0))  # (n_b, K)
    for j, c in enumerate(clusters):
        part = block_sums[c]  # (n_b, 1 + F2 + L K)
        den[j] += w_row[:, j] @ part[:, 0]
        num[j] += w_row[:, j] @ part[:, 1:1 + f2]
        adj[j] += np.einsum("bc,blc->lc", w_row[:, j:j + 1] * w_col, part[:, 1 + f2:].reshape(-1, n_ch, k))
    # ... and the touched blocks' nuclei outside the ball, over their edges to nuclei outside it; the
    # cached numerators rescaled to the afresh clusters' shifts, but where that would leave float64
    gap = shift - own  # 0 but for the afresh clusters
    far = gap > RESCALE_GAP
    scale, e = np.where(far, 0.0, np.exp(np.minimum(gap, RESCALE_GAP))), image.e.numpy()
    if region.x_node.size:
        x_den, x_num, x_adj = outside_pool(region, nodes, image.edges, image.efeat, z64, e, tab[:, :f2], tab[:, f2:],
                                           own, scale, clusters, top, far, scratch)
        den += x_den
        num += x_num
        adj += x_adj.reshape(s, n_ch, k)
    # U-C and C-U: the edges leaving the last level, P_n = sum over them of a_l E''_u per last-level row n
    p = boundary_sums(region.bnd_row - last_lo, region.bnd_node, region.bnd_eid, rows.size - last_lo, image.efeat,
                      z64, e, own, scale, far)
    adj += (e_c[last_lo - n_rem_o:].T @ p[:, :, clusters].reshape(-1, n_ch * s)).reshape(k, n_ch, s).transpose(2, 1, 0)
    adj += (ek_c[last_lo - n_rem_o:].T @ p.reshape(-1, n_ch * k)).reshape(s, n_ch, k)
    # C-rows: the ball's own edges (removed rows have E'' = 0)
    e_rows = np.zeros((rows.size, k))
    e_rows[n_rem_o:] = e_c
    edges = batch.padded_edges
    ptr, cols, vals = row_blocks(edges.ptr, edges.cols, edges.vals, np.array([o]), batch.layout.width)
    ae_rows = csr_rows_times(ptr, np.searchsorted(rows, cols), vals, e_rows, n_rem_o, rows.size)  # (n_C, L K)
    adj += (ek_c.T @ ae_rows).reshape(s, n_ch, k)
    sums, cl = state.sums, torch.from_numpy(clusters)
    sums.den[o, cl] = torch.from_numpy(den)
    sums.num[o, cl] = torch.from_numpy(num)
    _set_row_and_column(sums.adj, torch.full((1, s), o, dtype=torch.int64), cl.unsqueeze(0),
                        torch.from_numpy(adj).unsqueeze(0))


def image_logits(model: RSFNet, image: ImageCache) -> torch.Tensor:
    """``(1, C)``: the model's logits for the whole image from the cached float64 pooling sums (the
    model's head on ``V' = num / den``, ``A'_l = adj_l / (den den^T)``): no pass of the whole slide."""
    t, dtype = image.totals, model.feat_mean.dtype
    v = t.num / t.den.unsqueeze(1)
    a = (t.adj / (t.den[:, None, None] * t.den[None, None, :])).permute(1, 0, 2)
    return model.head(v.unsqueeze(0).to(dtype), a.unsqueeze(0).to(dtype))


def class_values(model: RSFNet, state: PoolingState, target: int, output: str) -> np.ndarray:
    """``(b,)`` log-odds or probability (``output``, :func:`.reference.target_values`) of class ``target``
    for each occluded graph: the pooled graph through the model's own head (batch norm in eval mode),
    its logits to the value; the uniform prior's where the whole graph was removed."""
    batch, sums = state.change.batch, state.sums
    b, n_ch = batch.b, sums.adj.shape[2]
    adj = sums.adj
    if not batch.channel_left.all():  # a channel with no edge left is exactly zero: no rounding residue
        adj *= torch.from_numpy(batch.channel_left).double().view(b, 1, n_ch, 1)
    den = torch.where(sums.den > 0, sums.den, torch.ones((), dtype=torch.float64))
    v = sums.num.div_(den.unsqueeze(2))
    a = adj.div_(den[:, :, None, None] * den[:, None, None, :]).permute(0, 2, 1, 3)
    dtype = model.feat_mean.dtype
    values = target_values(model.head(v.to(dtype), a.to(dtype)), target, output)
    return np.where(batch.emptied, empty_value(model.n_classes, output), values)
