"""Per-nucleus explanations: attention scores and occlusion.

Occlusion (the seed paper's explanation): for each nucleus ``i`` remove it and its ``hops``-hop
neighbourhood with their edges, and score

.. math:: s_i = p_c(M(G)) - p_c(M(G \\setminus \\mathcal{N}_k(i)))

where ``c`` is the predicted class (or ``target``). A graph emptied by the removal has no defined
model output; its probability is the uniform prior ``1 / C``.

:func:`occlusion_naive` runs the model once per nucleus. :func:`occlusion` gives the same scores
fast for the RSF models: before Pool1 only the ``hops + 3`` hop ball around ``i`` changes (three
vertex convolutions: VConv1, VConv2 and the pooling's assignment convolution), so it recomputes
only those rows from cached activations, then corrects the pooling sums exactly,

.. math::
    V' = \\frac{E'^\\top H'}{\\mathbf 1^\\top E'},\\qquad
    A'_l = \\frac{E'^\\top A_l E'}{(\\mathbf 1^\\top E')^\\top (\\mathbf 1^\\top E')},\\qquad
    E' = E + \\Delta,\\quad E = \\exp(Z - \\max Z)

with ``E'^T A_l E' = E^T A_l E + \\Delta^T (A_l E) + (A_l E)^T \\Delta + \\Delta^T A_l \\Delta`` (``A_l``
symmetric; removed nodes have zero rows in ``E'``, which also removes their edges), and runs the
small dense head for many occlusions at once. It computes in float64, with batch norm in eval mode.
"""

from __future__ import annotations

import dgl
import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra
from torch.nn import functional as F

from nucleograph.errors import InputError, ModelError

from .keys import EFEAT
from .models import GraphClassifier, RSFNet


def _single_graph(graph):
    if graph.batch_size != 1:
        raise InputError(
            f"explanations take one image's graph, got a batch of {graph.batch_size}; use dgl.unbatch"
        )
    if graph.num_nodes() == 0:
        raise InputError("the graph has no nuclei; there is nothing to explain")


class _EvalMode:
    """Put a model in eval mode and restore its previous mode afterwards."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        return self.model

    def __exit__(self, *exc):
        torch.set_grad_enabled(self.grad)
        self.model.train(self.was_training)


def attention_scores(model: RSFNet, graph) -> np.ndarray:
    """Attention score of every nucleus, shape ``(N,)``, in ``(0, 1)`` (``rsf-attention`` only)."""
    if not isinstance(model, RSFNet) or model.attention is None:
        raise ModelError("attention scores need an rsf-attention model; use occlusion() for the other models")
    _single_graph(graph)
    with _EvalMode(model):
        _, scores = model.node_embeddings(graph)
    return scores.double().cpu().numpy()


def _proba(model: GraphClassifier, graph) -> np.ndarray:
    if graph.num_nodes() == 0:
        return np.full(model.n_classes, 1.0 / model.n_classes)
    return torch.softmax(model(graph).double(), 1)[0].cpu().numpy()


def _occluded(graph, node: int, hops: int):
    """``graph`` without ``node``, its ``hops``-hop in-neighbourhood and their edges."""
    if hops == 0:
        removed = torch.tensor([node], dtype=graph.idtype)
    else:
        sub, _ = dgl.khop_in_subgraph(graph, node, k=hops)
        removed = sub.ndata[dgl.NID]
    keep = torch.ones(graph.num_nodes(), dtype=torch.bool)
    keep[removed] = False
    # node_subgraph rather than dgl.remove_nodes: the latter fails on graphs whose batch info is half
    # cached (DGL 2.1), and a model run caches it
    return dgl.node_subgraph(graph, torch.nonzero(keep).flatten().to(graph.idtype), store_ids=False)


def _check_hops(hops: int) -> int:
    if int(hops) != hops or hops < 0:
        raise InputError(f"hops must be a non-negative integer, got {hops!r}")
    return int(hops)


def _target(p0: np.ndarray, target):
    if target is None:
        return int(np.argmax(p0))
    if not 0 <= int(target) < p0.size:
        raise InputError(f"target class {target} is out of range for {p0.size} classes")
    return int(target)


def occlusion_naive(model: GraphClassifier, graph, *, hops: int = 1, target: int | None = None) -> np.ndarray:
    """Occlusion scores by one model run per nucleus (the reference for :func:`occlusion`).

    Parameters
    ----------
    model : GraphClassifier
        Run in eval mode (restored afterwards).
    graph : dgl.DGLGraph
        One image's graph (raw features).
    hops : int
        Remove each nucleus with its ``hops``-hop in-neighbourhood (``dgl.khop_in_subgraph``).
    target : int, optional
        Class to score; default the class predicted for the whole graph.

    Returns
    -------
    np.ndarray, shape (N,), float64
        ``p_c(G) - p_c(G_i)``; positive where removing the nucleus lowers the class probability.
    """
    hops = _check_hops(hops)
    _single_graph(graph)
    with _EvalMode(model):
        p0 = _proba(model, graph)
        c = _target(p0, target)
        scores = np.empty(graph.num_nodes())
        for i in range(graph.num_nodes()):
            g_i = _occluded(graph, i, hops)
            scores[i] = p0[c] - _proba(model, g_i)[c]
    return scores


def _symmetric(graph) -> bool:
    """True when every edge ``u -> v`` has a reverse ``v -> u`` with the same channels."""
    src, dst = graph.edges()
    if graph.num_edges() == 0:
        return True
    if not bool(graph.has_edges_between(dst, src).all()):
        return False
    rev = graph.edge_ids(dst, src)
    efeat = graph.edata[EFEAT]
    return bool(torch.equal(efeat, efeat[rev]))


def _occlusion_batched(model, graph, hops, target, batch_size):
    """Exact fallback: occluded copies run through the model in batches."""
    with _EvalMode(model):
        p0 = _proba(model, graph)
        c = _target(p0, target)
        n = graph.num_nodes()
        scores = np.empty(n)
        for start in range(0, n, batch_size):
            parts, idx_nonempty = [], []
            for i in range(start, min(n, start + batch_size)):
                g_i = _occluded(graph, i, hops)
                if g_i.num_nodes() == 0:
                    scores[i] = p0[c] - 1.0 / model.n_classes
                    continue
                if g_i.num_edges() == 0 and EFEAT not in g_i.edata:
                    g_i.edata[EFEAT] = torch.zeros(
                        0, model.edge_channels or 1, dtype=graph.edata[EFEAT].dtype
                    )
                parts.append(g_i)
                idx_nonempty.append(i)
            if parts:
                p = torch.softmax(model(dgl.batch(parts)).double(), 1)[:, c].cpu().numpy()
                scores[idx_nonempty] = p0[c] - p
    return scores


def occlusion(
    model: GraphClassifier, graph, *, hops: int = 1, target: int | None = None, batch_size: int = 128
) -> np.ndarray:
    """Occlusion scores, equal to :func:`occlusion_naive` up to float rounding, computed fast.

    For RSF models on symmetric graphs (all graphs from :func:`gnn.data.to_dgl`) it updates only the
    ``hops + 3``-hop ball of each nucleus and corrects the pooling sums in closed form (see the module
    docstring), in float64. Other models or non-symmetric graphs use batched occluded copies (exact,
    but only a constant factor faster than the naive loop).

    Parameters
    ----------
    model, graph, hops, target
        As for :func:`occlusion_naive`.
    batch_size : int
        Occlusions processed together (memory grows linearly with it).

    Returns
    -------
    np.ndarray, shape (N,), float64
    """
    hops = _check_hops(hops)
    _single_graph(graph)
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    if not isinstance(model, RSFNet) or not _symmetric(graph):
        return _occlusion_batched(model, graph, hops, target, batch_size)
    with _EvalMode(model):
        return _occlusion_rsf(model, graph, hops, target, batch_size)


def _bn_eval(bn, x):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _conv_rows(conv, x_rows, sel, e_src, e_dst, e_a, proj_rows=None):
    """An RSF convolution's output on the rows ``sel`` only, from their in-edges.

    ``x_rows`` ``(R, F)`` inputs of the ball rows; edges ``e_src -> e_dst`` (row indices, ``e_dst``
    already as positions in ``sel``) with channels ``e_a`` ``(E', L)``. ``proj_rows`` ``(R, L+1, O)``
    holds ``x W`` when the layer projects first (as :class:`gnn.layers.RSFConv` does for in > out).
    """
    L = conv.edge_channels
    if proj_rows is not None:
        agg = x_rows.new_zeros(sel.numel(), L, conv.out_feats)
        agg.index_add_(0, e_dst, e_a.unsqueeze(-1) * proj_rows[e_src, 1:])
        out = proj_rows[sel, 0] + agg.sum(1)
    else:
        agg = x_rows.new_zeros(sel.numel(), L, conv.in_feats)
        agg.index_add_(0, e_dst, e_a.unsqueeze(-1) * x_rows[e_src].unsqueeze(1))
        full = torch.cat([x_rows[sel].unsqueeze(1), agg], 1)
        out = full.reshape(sel.numel(), (L + 1) * conv.in_feats) @ conv.weight.reshape(-1, conv.out_feats)
    return out if conv.bias is None else out + conv.bias


def _project(conv, x):
    return (x @ conv.weight.transpose(0, 1).reshape(conv.in_feats, -1)).view(
        -1, conv.edge_channels + 1, conv.out_feats
    )


def _layer_edges(t, hops, d, rem, rows, r_src, r_dst, a_loc):
    """Rows with ``hops < d <= hops + t`` and their in-edges from rows that are not removed."""
    sel = np.flatnonzero(~rem & (d <= hops + t))
    pos = np.full(rows, -1, dtype=np.int64)
    pos[sel] = np.arange(sel.size)
    k = (pos[r_dst] >= 0) & ~rem[r_src]
    return (
        torch.from_numpy(sel),
        torch.from_numpy(r_src[k]),
        torch.from_numpy(pos[r_dst[k]]),
        a_loc[torch.from_numpy(k)],
    )


def _pad(where, t_):
    """Rows of several occlusions into a zero-padded ``(b, M, ...)`` tensor."""
    b, m_max, occ, pos = where
    out = t_.new_zeros((b, m_max) + tuple(t_.shape[1:]))
    out[occ, pos] = t_
    return out


def _occlusion_rsf(m: RSFNet, graph, hops: int, target, batch_size: int) -> np.ndarray:
    """Fast exact occlusion for RSF models on symmetric graphs (see the module docstring).

    Node layers run in the model's dtype and recompute changed rows from all their remaining
    in-neighbours (no subtraction, so no cancellation); the pooling sums are corrected in float64.
    """
    n = graph.num_nodes()
    n_classes = m.n_classes
    L = m.edge_channels
    K = m.pool1.n_clusters
    x = m.input_features(graph)
    efeat = m.edge_features(graph)
    src, dst = (t.numpy() for t in graph.edges())

    # full-graph pass (the same layers as model.forward), caching pre-pool activations
    h1 = F.relu(_bn_eval(m.bn1, m.vconv1(graph, x, efeat)))
    h2 = F.relu(_bn_eval(m.bn2, m.vconv2(graph, h1, efeat)))
    if m.attention is not None:
        h2, _ = m.attention(None, h2)
    z = m.pool1.embed(graph, h2, efeat)  # (N, K)
    p0 = torch.softmax(m(graph).double(), 1)[0].numpy()
    c = _target(p0, target)
    pool_conv = m.pool1.embed
    proj3 = _project(pool_conv, h2) if pool_conv.in_feats > pool_conv.out_feats else None

    zd, h2d, ed = z.double(), h2.double(), efeat.double()
    shift = zd.max(0).values
    e = torch.exp(zd - shift)  # (N, K), softmax numerators with a fixed shift
    num = e.T @ h2d  # (K, F2)
    den = e.sum(0)  # (K,)
    ae = torch.zeros(n, L, K, dtype=torch.float64)
    if len(src):
        ae.index_add_(0, torch.from_numpy(dst), ed.unsqueeze(-1) * e[torch.from_numpy(src)].unsqueeze(1))
    t_full = torch.einsum("ic,ild->cld", e, ae)  # (K, L, K): E^T A_l E

    adj = csr_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    order = np.argsort(src, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))])
    out_dst = dst[order]
    nz = (efeat != 0).numpy()
    total_nz = nz.sum(0)
    reach = hops + 4  # rows whose value changes (<= hops + 3) and their in-neighbours
    scores = np.empty(n)
    for start in range(0, n, batch_size):
        centers = np.arange(start, min(n, start + batch_size))
        b = centers.size
        dist = dijkstra(adj, directed=True, unweighted=True, limit=reach + 0.5, indices=centers)
        occ, node = np.nonzero(dist <= reach)
        d = dist[occ, node].astype(np.int64)
        rows = occ.size
        rowmap = np.full((b, n), -1, dtype=np.int64)
        rowmap[occ, node] = np.arange(rows)
        deg = indptr[node + 1] - indptr[node]
        rep = np.repeat(np.arange(rows), deg)
        slot = np.repeat(indptr[node], deg) + np.arange(rep.size) - np.repeat(np.cumsum(deg) - deg, deg)
        r_dst = rowmap[occ[rep], out_dst[slot]]
        keep = r_dst >= 0
        r_src, r_dst, eid = rep[keep], r_dst[keep], order[slot[keep]]
        rem = d <= hops
        node_t = torch.from_numpy(node)
        a_loc = efeat[torch.from_numpy(eid)]

        ctx = (hops, d, rem, rows, r_src, r_dst, a_loc)
        sel1, s1, d1, a1 = _layer_edges(1, *ctx)
        h1_rows = h1[node_t].clone()
        h1_rows[sel1] = F.relu(_bn_eval(m.bn1, _conv_rows(m.vconv1, x[node_t], sel1, s1, d1, a1)))
        sel2, s2, d2, a2 = _layer_edges(2, *ctx)
        h2_rows = h2[node_t].clone()
        new2 = F.relu(_bn_eval(m.bn2, _conv_rows(m.vconv2, h1_rows, sel2, s2, d2, a2)))
        if m.attention is not None:
            new2, _ = m.attention(None, new2)
        h2_rows[sel2] = new2
        sel3, s3, d3, a3 = _layer_edges(3, *ctx)
        proj_rows = None
        if proj3 is not None:
            proj_rows = proj3[node_t].clone()
            proj_rows[sel2] = _project(pool_conv, new2)
        z_rows = z[node_t].clone()
        z_rows[sel3] = _conv_rows(pool_conv, h2_rows, sel3, s3, d3, a3, proj_rows)

        # pooling sums over the rows that differ (d <= hops + 3), in float64
        in_d = np.flatnonzero(d <= hops + 3)
        occ_d = occ[in_d]
        counts = np.bincount(occ_d, minlength=b)
        pos_d = np.arange(in_d.size) - np.concatenate([[0], np.cumsum(counts)[:-1]])[occ_d]
        m_max = int(counts.max())
        in_d_t = torch.from_numpy(in_d)
        rem_d = torch.from_numpy(rem[in_d])
        e_old = e[node_t[in_d_t]]
        e_new = torch.exp(z_rows[in_d_t].double() - shift)
        e_new[rem_d] = 0.0
        de = e_new - e_old

        where = (b, m_max, torch.from_numpy(occ_d), torch.from_numpy(pos_d))
        de_p = _pad(where, de).transpose(1, 2)  # (b, K, M)
        num_o = (
            num
            + torch.bmm(_pad(where, e_new).transpose(1, 2), _pad(where, h2_rows[in_d_t].double()))
            - torch.bmm(_pad(where, e_old).transpose(1, 2), _pad(where, h2d[node_t[in_d_t]]))
        )
        den_o = den + de_p.sum(2)
        term1 = torch.bmm(de_p, _pad(where, ae[node_t[in_d_t]].reshape(in_d.size, L * K))).view(b, K, L, K)
        # A_l (Delta E) on the differing rows, over edges between them
        drow = np.full(rows, -1, dtype=np.int64)
        drow[in_d] = np.arange(in_d.size)
        k = (drow[r_src] >= 0) & (drow[r_dst] >= 0)
        ade = torch.zeros(in_d.size, L, K, dtype=torch.float64)
        ade.index_add_(
            0,
            torch.from_numpy(drow[r_dst[k]]),
            ed[torch.from_numpy(eid[k])].unsqueeze(-1) * de[torch.from_numpy(drow[r_src[k]])].unsqueeze(1),
        )
        term3 = torch.bmm(de_p, _pad(where, ade.reshape(in_d.size, L * K))).view(b, K, L, K)
        t_o = t_full + term1 + term1.permute(0, 3, 2, 1) + term3  # (b, K, L, K)
        # a channel with no edge left is exactly zero in the model: leave no rounding residue
        src_in = rem[r_src]
        both = src_in & rem[r_dst]
        touched = np.stack(
            [np.bincount(occ[r_src[src_in]], weights=nz[eid[src_in], ch], minlength=b) for ch in range(L)], 1
        )
        inside = np.stack(
            [np.bincount(occ[r_src[both]], weights=nz[eid[both], ch], minlength=b) for ch in range(L)], 1
        )
        left = total_nz[None, :] - (2 * touched - inside)
        t_o = t_o * torch.from_numpy(left > 0.5).double().view(b, 1, L, 1)

        empty = (dist <= hops).sum(1) == n  # the whole graph removed: uniform prior
        safe_den = torch.where(den_o > 0, den_o, torch.ones((), dtype=torch.float64))
        v_o = num_o / safe_den.unsqueeze(2)
        a_o = (t_o / (safe_den[:, :, None, None] * safe_den[:, None, None, :])).permute(0, 2, 1, 3)
        dtype = m.feat_mean.dtype
        p = torch.softmax(m.head(v_o.to(dtype), a_o.to(dtype)).double(), 1)[:, c].numpy()
        p = np.where(empty, 1.0 / n_classes, p)
        scores[centers] = p0[c] - p
    return scores
