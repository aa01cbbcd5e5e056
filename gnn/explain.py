"""Per-nucleus explanations: attention scores and occlusion.

Occlusion (the seed paper's explanation): for each nucleus ``i`` remove it and its ``hops``-hop
neighbourhood with their edges, and score

.. math:: s_i = p_c(M(G)) - p_c(M(G \\setminus \\mathcal{N}_k(i)))

where ``c`` is the predicted class (or ``target``). A graph emptied by the removal has no defined
model output; its probability is the uniform prior ``1 / C``.

:func:`occlusion_naive` runs the model once per nucleus. :func:`occlusion` gives the same scores
fast for the RSF models: before Pool1 only the ``hops + 3`` hop ball around ``i`` changes (three
vertex convolutions: VConv1, VConv2 and the pooling's assignment convolution). Each convolution is
linear before its batch norm, so its cached pre-activation is updated by the change of its input,
one hop further out per layer, as sparse products over the balls' block-diagonal adjacency, only on
the kept rows that change (a removed nucleus's own outputs are never needed, and its projections
``-V W_l`` are looked up from a table computed once per image). The pooling sums are then corrected
in closed form,

.. math::
    V' = \\frac{E'^\\top H'}{\\mathbf 1^\\top E'},\\qquad
    A'_l = \\frac{E'^\\top A_l E'}{(\\mathbf 1^\\top E')^\\top (\\mathbf 1^\\top E')},\\qquad
    E' = E + \\Delta,\\quad E = \\exp(Z - \\max Z)

with ``E'^T A_l E' = E^T A_l E + Q + Q^T``, ``Q = \\Delta^T (A_l E + A_l \\Delta / 2)`` (``A_l``
symmetric; removed nodes have zero rows in ``E'``, which also removes their edges), and the small
dense head runs for many occlusions at once, with batch norm in eval mode.

Precision: totals and denominators are float64. The correction products run in float32 while their
worst-case rounding stays below that of the model's own float32 pooling over all N nodes (ball rows x
(1 + changed / remaining mass of a cluster)^2 <= N); the clusters of an occlusion beyond that bound
get their rows (and columns) of the pooled sums redone in float64, up to 5e8 times further; and a
cluster whose removed nuclei held virtually all of its mass is summed afresh in float64 over all
remaining nuclei with its own softmax shift (no cancellation at all). Scores match the naive loop to
about 1e-7, also for models with sharply peaked assignments.
"""

from __future__ import annotations

import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import dgl
import numpy as np
import torch
from torch.nn import functional as F

from nucleograph.errors import InputError, ModelError

from .balls import ball_lists, batch_rows, layer_csr, padded_csr, row_blocks
from .keys import EFEAT
from .layers.spmm import _csr, weighted_sums
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
    model: GraphClassifier,
    graph,
    *,
    hops: int = 1,
    target: int | None = None,
    batch_size: int = 64,
    threads: int | None = None,
) -> np.ndarray:
    """Occlusion scores, equal to :func:`occlusion_naive` up to float rounding, computed fast.

    For RSF models on symmetric graphs (all graphs from :func:`nucleograph.gnn.data.to_dgl`) it updates only the
    ``hops + 3``-hop ball of each nucleus and corrects the pooling sums in closed form (see the module
    docstring). Other models or non-symmetric graphs use batched occluded copies (exact,
    but only a constant factor faster than the naive loop).

    Parameters
    ----------
    model, graph, hops, target
        As for :func:`occlusion_naive`.
    batch_size : int
        Occlusions processed together (memory grows linearly with it). The default, 64, ran the RSF
        path 5-10% faster than 128 on 100 px radius graphs of 1,500 nuclei (2 cores; 32 was slower).
    threads : int, optional
        Batches processed at once, each on one thread (RSF models on symmetric graphs); default
        ``torch.get_num_threads()``. Memory grows linearly with it too.

    Returns
    -------
    np.ndarray, shape (N,), float64
    """
    hops = _check_hops(hops)
    _single_graph(graph)
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise InputError(f"threads must be positive, got {threads}")
    if not isinstance(model, RSFNet) or not _symmetric(graph):
        return _occlusion_batched(model, graph, hops, target, batch_size)
    with _EvalMode(model):
        return _occlusion_rsf(model, graph, hops, target, batch_size, threads)


# float32 over float64 rounding: how much further float64 corrections stay as exact as float32 ones
_EPS_RATIO = torch.finfo(torch.float32).eps / torch.finfo(torch.float64).eps
# float32 corrections for a cluster while M (1 + r)^2 <= _FLOAT32_BOUND * N (see _occluded_probas)
_FLOAT32_BOUND = 1.0


def _float64(module):
    """A float64 copy of ``module`` (None stays None)."""
    return None if module is None else copy.deepcopy(module).double()


def _bn_eval(bn, x):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def _csr_mats(arrays):
    """Torch CSR matrices, one per channel, from CSR arrays ``(ptr, cols, vals (L, E), shape)``."""
    ptr, cols, vals, shape = arrays
    p, c = torch.from_numpy(ptr), torch.from_numpy(cols)
    return [_csr(p, c, torch.from_numpy(v), shape) for v in vals]


def _delta_conv(conv, out, neg_proj, removed, delta, mat):
    """An RSF convolution's pre-activation on the kept rows it changes, after its input lost the removed
    rows and changed by ``delta`` on the first kept rows: ``pre + delta W_0 + sum_l A_l P_l``, the
    convolution being linear, with ``P_l`` the change of ``V W_l`` (weights first: fewer rows change than
    are updated, and the removed rows' change ``-V W_l`` is a lookup in ``neg_proj`` ``(L, N, O)``,
    computed once per image). ``out`` ``(n_out, O)`` the cached pre-activations (updated in place and
    returned), ``removed`` the removed rows' nodes, ``delta`` ``(n_ch, F)`` or None, ``mat`` the
    layer's in-edges with channel ``l`` in column block ``l`` (:func:`nucleograph.gnn.balls.layer_csr`); the removed
    rows' own outputs are never computed."""
    w = conv.weight  # (L+1, F, O)
    n_rem, n_ch = removed.numel(), 0 if delta is None else delta.shape[0]
    if out.shape[0] == 0:  # the whole graph removed
        return out
    proj = out.new_empty(w.shape[0] - 1, n_rem + n_ch, w.shape[2])  # (L, n_in, O)
    for ch in range(proj.shape[0]):
        torch.index_select(neg_proj[ch], 0, removed, out=proj[ch, :n_rem])
        if n_ch:
            torch.matmul(delta, w[ch + 1], out=proj[ch, n_rem:])
    if n_ch:
        out[:n_ch].addmm_(delta, w[0])
    return out.addmm_(mat, proj.view(-1, proj.shape[2]))


def _group_positions(occ: np.ndarray, b: int):
    """Where rows belonging to occlusions ``occ`` go in a ``(b, M)`` padded layout: ``(b, flat
    positions, M)``, ``M`` the largest group."""
    counts = np.bincount(occ, minlength=b)
    idx = np.argsort(occ, kind="stable")
    pos = np.empty(occ.size, dtype=np.int64)
    pos[idx] = np.arange(occ.size) - np.repeat(np.cumsum(counts) - counts, counts)
    m_max = int(counts.max()) if occ.size else 0
    return b, torch.from_numpy(occ * m_max + pos), m_max


class _BatchRows:
    """Index arrays of one batch of occlusions.

    Rows are (occlusion, nucleus) pairs of the ``hops + 3``-hop balls sorted by hop distance ``d``;
    ``n_rem``, ``n1``, ``n2``, ``n3``: rows with ``d <= hops``, ``hops + 1``, ``hops + 2``, ``hops + 3``.
    Edges: the in-edges of every row (on a symmetric graph its out-edges with the same channels; edges
    to neighbours outside the ball left out), as each node convolution's CSR (``layers``) and with their
    rows in the padded layout of the pooling products (``pad_edges``).
    """

    def __init__(self, centers, balls, hops, csr, efeat, nz, total_nz, row_of_node):
        indptr, out_dst, order = csr
        n = indptr.size - 1
        self.centers = centers
        b = self.b = centers.size
        occ, node, level_end, ptr, cols, vals, eid, below = batch_rows(centers, *balls, hops, indptr, out_dst, order,
                                                                       efeat, row_of_node)
        self.occ, self.node = occ, node
        self.n_rem, self.n1, self.n2, self.n3 = (int(v) for v in level_end[hops:])
        n_rem, n1, n2, n3 = self.n_rem, self.n1, self.n2, self.n3
        # the node convolutions' sparse products: from their changed input rows to the kept rows they change
        self.layers = [_csr(*(torch.from_numpy(a) for a in layer_csr(ptr, cols, vals, below[j], n_rem, n_out, n_in)),
                            (n_out - n_rem, vals.shape[0] * n_in))
                       for j, (n_out, n_in) in enumerate(((n1, n_rem), (n2, n1), (n3, n2)))]
        self.where = _group_positions(occ, b)
        # the in-edges with their rows in the padded layout of the pooling products
        self.pad_edges = (*padded_csr(ptr, cols, vals, self.where[1].numpy(), b * self.where[2]),
                          (b * self.where[2], n3))
        self.n_nodes, self.ball_rows = n, np.bincount(occ, minlength=b)
        self.changed = _group_positions(occ[n_rem:n2], b)
        self.node_pad = np.full(b * self.where[2], n, dtype=np.int64)
        self.node_pad[self.where[1].numpy()] = node
        self.empty = np.bincount(occ[:n_rem], minlength=b) == n  # the whole graph removed
        # channels with no edge left (exactly zero in the model). A removed set touches at most the
        # sum of its degrees in directed edges per direction: count exactly only where that could
        # reach a channel's total.
        self.left = np.ones((b, nz.shape[1]), dtype=bool)
        deg = indptr.take(node[:n_rem] + 1) - indptr.take(node[:n_rem])  # all edges of a removed row are in
        reach_rem = 2 * np.bincount(occ[:n_rem], weights=deg, minlength=b)
        maybe = np.flatnonzero(reach_rem >= total_nz.min())
        if maybe.size:
            row_of = np.repeat(np.arange(n3), np.diff(ptr))
            out_rem = row_of < n_rem  # directed edges leaving a removed row (= entering it)
            both = out_rem & (cols < n_rem)
            nz_e = nz[eid]
            occ_e = occ[row_of]
            for ch in range(nz.shape[1]):
                touched = np.bincount(occ_e[out_rem], weights=nz_e[out_rem, ch], minlength=b)
                inside = np.bincount(occ_e[both], weights=nz_e[both, ch], minlength=b)
                self.left[maybe, ch] = (total_nz[ch] - (2 * touched - inside))[maybe] > 0.5


def _rows(t_, index):
    """``t_[index]`` for a 1-d index: ``index_select`` (several times faster than advanced indexing) into
    an output allocated beforehand (torch 2.2's ``index_select`` without ``out`` is 2-3x slower on large
    row gathers here, e.g. 2.7 vs 1.1 ms for 21,000 rows of 192 floats)."""
    return torch.index_select(t_, 0, index, out=t_.new_empty((index.numel(),) + tuple(t_.shape[1:])))


def _pad(where, t_):
    """Rows of several occlusions into a zero-padded ``(b, M, ...)`` tensor."""
    b, flat, m_max = where
    out = t_.new_zeros((b * m_max,) + tuple(t_.shape[1:]))
    out.index_copy_(0, flat, t_)
    return out.view((b, m_max) + tuple(t_.shape[1:]))


def _each_batch(run, batches, n: int, threads: int) -> None:
    """``run(centers, scratch)`` for every batch of occlusions, on up to ``threads`` threads, each with
    one intra-op thread: a batch is many mid-sized operations (gathers, paddings, sparse and
    batched products) that two intra-op threads speed up by only 1.3-1.45x here, while two batches at
    once keep both cores busy (about 20% faster). ``scratch``: a node-sized ``-1`` array per thread."""
    workers = min(threads, len(batches))
    if workers <= 1:
        for centers in batches:
            run(centers, np.full(n, -1, dtype=np.int64))
        return
    todo, lock, outer = iter(batches), threading.Lock(), torch.get_num_threads()

    def worker():
        torch.set_num_threads(1)
        scratch = np.full(n, -1, dtype=np.int64)
        with torch.no_grad():  # grad mode is per thread
            while True:
                with lock:
                    centers = next(todo, None)
                if centers is None:
                    return
                run(centers, scratch)

    try:
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(worker) for _ in range(workers)]:
                f.result()  # re-raises a worker's error
    finally:
        torch.set_num_threads(outer)


def _occlusion_rsf(m: RSFNet, graph, hops: int, target, batch_size: int, threads: int) -> np.ndarray:
    """Fast exact occlusion for RSF models on symmetric graphs (see the module docstring).

    Rows are (occlusion, nucleus) pairs of the ``hops + 3``-hop balls, sorted by hop distance, so the
    rows each layer changes are a prefix. The three node convolutions are linear before their batch
    norm, so each updates its cached pre-activation by the change of its input, propagated along the
    balls' edges as sparse products. The pooling sums are corrected from their float64 totals, with
    float32 products and a float64 redo where the module docstring's bound says so. Occlusions with
    similar ball sizes are batched together, so little padding is wasted.
    """
    n = graph.num_nodes()
    L = m.edge_channels
    K = m.pool1.n_clusters
    x = m.input_features(graph)
    efeat = m.edge_features(graph)
    src, dst = (t.numpy() for t in graph.edges())

    # full-graph pass (the same layers as model.forward) in float64, caching pre-activations and
    # activations: the totals that the corrections start from carry no float32 rounding of all N nodes,
    # only the changed rows do (on a trained RSF+Attention model the fast path's distance to the float64
    # model fell from 6.7e-6 to 3.9e-6; the float32 naive loop's own is 6.9e-6)
    vconv1, bn1, vconv2, bn2, attention, embed = (
        _float64(mod) for mod in (m.vconv1, m.bn1, m.vconv2, m.bn2, m.attention, m.pool1.embed))
    xd, ed = x.double(), efeat.double()
    pre1d = vconv1(graph, xd, ed)
    h1d = F.relu(_bn_eval(bn1, pre1d))
    pre2d = vconv2(graph, h1d, ed)
    h2d = F.relu(_bn_eval(bn2, pre2d))
    if attention is not None:
        h2d, _ = attention(None, h2d)
    zd = embed(graph, h2d, ed)  # (N, K)
    pre1, h1, pre2, h2, z = (t_.to(x.dtype) for t_ in (pre1d, h1d, pre2d, h2d, zd))
    p0 = torch.softmax(m(graph).double(), 1)[0].numpy()
    c = _target(p0, target)

    shift = zd.max(0).values
    e = torch.exp(zd - shift)  # (N, K), softmax numerators with a fixed shift
    num = e.T @ h2d  # (K, F2)
    den = e.sum(0)  # (K,)
    ae = torch.zeros(n, L, K, dtype=torch.float64)
    if len(src):
        ae.index_add_(0, torch.from_numpy(dst), ed.unsqueeze(-1) * e[torch.from_numpy(src)].unsqueeze(1))
    t_full = torch.einsum("ic,ild->cld", e, ae)  # (K, L, K): E^T A_l E
    f2 = h2.shape[1]
    # per node [H | A E], with a zero row at index n for padding
    table = torch.cat([torch.cat([h2d, ae.reshape(n, L * K)], 1), h2d.new_zeros(1, f2 + L * K)])
    tables = {torch.float64: table, torch.float32: table.float()}
    # the removed rows' change of V W_l for each node convolution's input V, l >= 1: (L, N, O)
    neg = [torch.stack([-(v @ w) for w in conv.weight[1:]]).to(x.dtype)
           for v, conv in ((xd, vconv1), (h1d, vconv2), (h2d, embed))]
    cache = (pre1, h1, pre2, h2, z, e, shift, num, den, t_full, tables, (graph, zd, h2d, ed), neg)

    # out-edges by source; on a symmetric graph they are also the in-edges, with the same channels
    order = np.argsort(src, kind="stable")
    csr = (np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))]), dst[order], order)
    efeat_np = np.ascontiguousarray(efeat.numpy().T)  # (L, E)
    nz = efeat_np.T != 0
    total_nz = nz.sum(0)
    reach = hops + 3  # rows whose value changes
    balls = ball_lists(csr[0], csr[1], reach)  # (start, node, hop distance) per nucleus
    by_size = np.argsort(np.diff(balls[0]), kind="stable")
    scores = np.empty(n)

    def run(centers, row_of_node):
        r = _BatchRows(centers, balls, hops, csr, efeat_np, nz, total_nz, row_of_node)
        scores[r.centers] = p0[c] - _occluded_probas(m, r, c, cache)

    _each_batch(run, [by_size[start:start + batch_size] for start in range(0, n, batch_size)], n, threads)
    return scores


def _pool_products(r: _BatchRows, table, f2: int, de, e_new, dh):
    """``dE^T [H | A E + A dE / 2]`` and ``E'^T dH`` per occlusion as products in ``table``'s dtype
    (``table``: per node ``[H | A E]`` and a zero row for padding; float32 here, the callers add them to
    float64 sums, which promotes them exactly)."""
    cd = table.dtype
    de_c, e_new, dh = de.to(cd), e_new.to(cd), dh.to(cd)
    k = de.shape[1]
    rhs = _rows(table, torch.from_numpy(r.node_pad))  # (b M, F2 + L K)
    for ch, a in enumerate(_csr_mats(r.pad_edges)):  # + A_l dE / 2, summed into the padded rows' columns
        rhs[:, f2 + ch * k:f2 + (ch + 1) * k].addmm_(a.to(cd), de_c, alpha=0.5)
    rhs = rhs.view(r.b, -1, table.shape[1])  # (b, M, F2 + L K)
    prod = torch.bmm(_pad(r.where, de_c).transpose(1, 2), rhs)  # (b, K, F2 + L K)
    extra = torch.bmm(_pad(r.changed, e_new).transpose(1, 2), _pad(r.changed, dh))  # (b, K, F2)
    return prod, extra


def _subset(where, occ: np.ndarray, rows: np.ndarray, po: np.ndarray, b: int):
    """The padded layout ``where`` (of rows whose occlusions are ``occ``) restricted to ``rows``, whose
    occlusions are renumbered ``0..b-1`` (``po``: each row's new occlusion number)."""
    m_max = where[2]
    flat = where[1].numpy()[rows] + (po[rows] - occ[rows]) * m_max
    return b, torch.from_numpy(flat), m_max


def _marked_clusters(mask: np.ndarray, occ: np.ndarray):
    """The occlusions with a marked cluster in ``mask`` ``(b, K)`` and their marked clusters.

    Returns ``sel`` (those occlusions), ``hk`` ``(len(sel), s)`` (their marked clusters, padded by
    repeating the first: the same values are then written twice) and ``po``, the position in ``sel``
    of each row's occlusion (``occ``: the rows' occlusions), -1 for the others."""
    sel = np.flatnonzero(mask.any(1))
    marked = mask[sel]
    cnt = marked.sum(1)
    s = int(cnt.max())
    order = np.argsort(~marked, axis=1, kind="stable")[:, :s]  # marked clusters first
    hk = torch.from_numpy(np.where(np.arange(s) < cnt[:, None], order, order[:, :1]))
    pick = np.full(mask.shape[0], -1, dtype=np.int64)
    pick[sel] = np.arange(sel.size)
    return sel, hk, pick[occ]


def _set_row_and_column(t_o, occ_k, hk, t_row) -> None:
    """``t_o[o, k, :, :] = t_o[o, :, :, k]^T = t_row`` for the occlusions ``occ_k`` and clusters ``hk``
    (``E'^T A_l E'`` is symmetric for a symmetric ``A_l``)."""
    t_o[occ_k, hk] = t_row
    t_o.permute(0, 3, 2, 1)[occ_k, hk] = t_row


def _heavy_clusters(r: _BatchRows, heavy: np.ndarray, table64, f2: int, de, num_extra, num, t_full, num_o, t_o):
    """Redo in float64 the pooling sums of the clusters ``heavy`` ``(b, K)`` marks: for such an
    occlusion and cluster ``k``, row ``k`` of ``E'^T H'`` (into ``num_o``) and row and column ``k`` of
    ``E'^T A_l E'`` (into ``t_o``, symmetric for a symmetric ``A_l``), in place.

    Only the products with ``dE`` lose precision when the removed mass dwarfs the remaining one; the
    float32 ``E'^T dH`` (``num_extra``) sums remaining mass only (``E'`` on rows that stay), so its
    rounding relative to the cluster's mass stays within the model's own and it is kept.

    Row ``k`` of ``E'^T A_l E' = E^T A_l E + dE^T A_l E + E^T A_l dE + dE^T A_l dE`` is
    ``t[k] + dE_k^T (A_l E) + (A_l E_k)^T dE + (A_l dE_k)^T dE``: three products over the ball rows
    with the one cluster ``k`` on one side, so a few heavy clusters cost a fraction of all ``K``."""
    K, L = t_full.shape[0], t_full.shape[1]
    sel, hk, po = _marked_clusters(heavy, r.occ)
    b_s, s = hk.shape
    rows = np.flatnonzero(po >= 0)
    where = _subset(r.where, r.occ, rows, po, b_s)
    m_max = where[2]
    rows_t, hk_rows = torch.from_numpy(rows), hk[torch.from_numpy(po[rows])]  # hk_rows (rows, s)
    de_rows = _rows(de, rows_t)
    de_all = _pad(where, de_rows)  # (b_s, M, K)
    de_k = torch.gather(de_all, 2, hk.unsqueeze(1).expand(b_s, m_max, s))  # (b_s, M, s)
    node = r.node_pad.reshape(r.b, m_max)[sel].reshape(-1)  # the subset keeps each occlusion's padded block
    tab = _rows(table64, torch.from_numpy(node)).view(b_s, m_max, -1)  # (b_s, M, F2 + L K): [H | A E]
    ae_k = torch.gather(tab[:, :, f2:].view(b_s, m_max, L, K), 3, hk.view(b_s, 1, 1, s).expand(b_s, m_max, L, s))
    # A_l dE_k over the selected occlusions' ball edges, straight into their padded rows
    de_in = de.new_zeros(r.n3, s)
    de_in[rows_t] = torch.gather(de_rows, 1, hk_rows)
    ptr, cols, vals, _ = r.pad_edges
    block = row_blocks(ptr, cols, vals, sel, m_max)
    ade_k = torch.stack([a @ de_in for a in _csr_mats((*block, (b_s * m_max, r.n3)))], 1).view(b_s, m_max, L, s)
    row = torch.bmm(de_k.transpose(1, 2), tab)  # (b_s, s, F2 + L K)
    col = torch.bmm(de_all.transpose(1, 2), (ae_k + ade_k).view(b_s, m_max, L * s)).view(b_s, K, L, s)
    t_row = t_full[hk] + row[:, :, f2:].view(b_s, s, L, K) + col.permute(0, 3, 2, 1)  # (b_s, s, L, K)
    occ_k = torch.from_numpy(sel).unsqueeze(1).expand(b_s, s)
    num_o[occ_k, hk] = num[hk] + row[:, :, :f2] + num_extra[occ_k, hk]
    _set_row_and_column(t_o, occ_k, hk, t_row)


def _afresh_clusters(r: _BatchRows, afresh: np.ndarray, z_new, new2, e, de, full, den_o, num_o, t_o, chunk: int = 16):
    """Sum afresh, in float64, the pooling sums of the clusters ``afresh`` ``(b, K)`` marks (the removed
    nuclei held virtually all of their mass): over all remaining nuclei, with the cluster's own softmax
    shift, as the model pools (sums of non-negative terms: no cancellation at all). For such an
    occlusion and cluster ``k`` it writes ``den_o``, row ``k`` of ``num_o`` and row and column ``k`` of
    ``t_o``, in place; the other clusters keep the global shift, and the entries between the two kinds
    use each one's shift, so ``A' = t / (den den)`` stays consistent. ``full``: the graph and float64
    ``Z``, ``H`` and edge channels."""
    graph, zd, h2d, ed = full
    n, K, L = zd.shape[0], zd.shape[1], ed.shape[1]
    sel, hk_all, po = _marked_clusters(afresh, r.occ)
    s = hk_all.shape[1]
    for lo in range(0, sel.size, chunk):
        f = min(chunk, sel.size - lo)
        hk = hk_all[lo:lo + f]  # (f, s)
        rows = np.flatnonzero((po >= lo) & (po < lo + f))  # the ball rows of these occlusions
        o, v, rows_t = torch.from_numpy(po[rows] - lo), torch.from_numpy(r.node[rows]), torch.from_numpy(rows)
        # E' (global shift) of each occlusion: E with its ball rows changed (removed rows: e - e = 0)
        eo = e.unsqueeze(0).repeat(f, 1, 1)  # (f, N, K)
        eo[o, v] = e[v] + de[rows_t]
        # the afresh clusters' logits, removed nuclei at -inf, and their own shift
        zt = zd.t()[hk]  # (f, s, N)
        rem = rows < r.n_rem
        zt[o[rem], :, v[rem]] = -torch.inf
        kept = torch.from_numpy(~rem)
        zt[o[kept], :, v[kept]] = torch.gather(z_new[rows_t[kept] - r.n_rem].double(), 1, hk[o[kept]])
        ek = torch.exp(zt - zt.amax(2, keepdim=True))  # (f, s, N)
        # E''^T H' = E''^T H + E''^T (H' - H), the second over the rows whose H changed
        num_k = ek @ h2d  # (f, s, F2)
        ch = torch.from_numpy((rows >= r.n_rem) & (rows < r.n2))
        dh = new2[rows_t[ch] - r.n_rem].double() - h2d[v[ch]]  # (rows, F2)
        num_k.index_add_(0, o[ch], ek[o[ch], :, v[ch]].unsqueeze(2) * dh.unsqueeze(1))
        # E'': E' with the afresh columns at their own shift; row k of E''^T A_l E'' is (A_l e''_k)^T E''
        eo.scatter_(2, hk.unsqueeze(1).expand(f, n, s), ek.transpose(1, 2))
        aek = weighted_sums(graph, ed, ek.permute(2, 0, 1).reshape(n, f * s))  # (N, L, f s)
        aek = aek.view(n, L, f, s).permute(2, 3, 1, 0).reshape(f, s * L, n)
        t_k = torch.bmm(aek, eo).view(f, s, L, K)
        occ_k = torch.from_numpy(sel[lo:lo + f]).unsqueeze(1).expand(f, s)
        den_o[occ_k, hk] = ek.sum(2)
        num_o[occ_k, hk] = num_k
        _set_row_and_column(t_o, occ_k, hk, t_k)


def _occluded_probas(m: RSFNet, r: _BatchRows, c: int, cache) -> np.ndarray:
    """Class-``c`` probabilities of the occluded graphs of one batch (see :func:`_occlusion_rsf`)."""
    pre1, h1, pre2, h2, z, e, shift, num, den, t_full, tables, full, neg = cache
    b, n_rem, n1, n2 = r.b, r.n_rem, r.n1, r.n2
    L, K, f2 = m.edge_channels, m.pool1.n_clusters, h2.shape[1]
    node_t = torch.from_numpy(r.node)

    # removed rows (d <= hops, a prefix) lose all input; each layer changes one hop further out
    removed = node_t[:n_rem]
    pre = _delta_conv(m.vconv1, _rows(pre1, node_t[n_rem:n1]), neg[0], removed, None, r.layers[0])
    new1 = F.relu(_bn_eval(m.bn1, pre))
    d2 = new1 - _rows(h1, node_t[n_rem:n1])
    pre = _delta_conv(m.vconv2, _rows(pre2, node_t[n_rem:n2]), neg[1], removed, d2, r.layers[1])
    new2 = F.relu(_bn_eval(m.bn2, pre))
    if m.attention is not None:
        new2, _ = m.attention(None, new2)
    dh = new2 - _rows(h2, node_t[n_rem:n2])
    # the assignment convolution over all kept rows of the ball
    z_new = _delta_conv(m.pool1.embed, _rows(z, node_t[n_rem:]), neg[2], removed, dh, r.layers[2])

    # pooling sums over the changed rows; totals and the precision test in float64
    e_old = _rows(e, node_t)
    # new softmax numerators in float32, as the model computes its softmax (4x faster than float64): their
    # rounding is relative to the remaining mass, which no correction amplifies
    de = torch.cat([-e_old[:n_rem], torch.exp(z_new - shift.to(z_new.dtype)).double() - e_old[n_rem:]])
    occ_t = torch.from_numpy(r.occ)
    den_o = den + torch.zeros(b, K, dtype=torch.float64).index_add_(0, occ_t, de)
    moved = torch.zeros(b, K, dtype=torch.float64).index_add_(0, occ_t, de.abs())
    # E'^T H' - E^T H = dE^T H + E'^T dH (dH on rows hops < d <= hops + 2) and
    # E'^T A E' - E^T A E = Q + Q^T with Q = dE^T (A E + A dE / 2), as float32 products. Their rounding,
    # relative to the pooled values, grows like M (1 + r)^2 with M the ball's rows and r the changed
    # over the remaining mass of a cluster (entry k, k' of A' like M (1 + r_k)(1 + r_k'): it divides by
    # two such masses); the model's own float32 pooling rounds like N. So: float32 for the clusters with
    # M (1 + r)^2 <= N (then every entry between two of them is within the bound too), float64 rows and
    # columns for the others (rounding 5e8 times smaller) up to 5e8 times that, and beyond, when the
    # removed nuclei held virtually all of a cluster, that cluster is summed afresh with its own
    # softmax shift
    e_new = de[n_rem:n2] + e_old[n_rem:n2]
    prod, num_extra = _pool_products(r, tables[torch.float32], f2, de, e_new, dh)
    num_o = num + prod[:, :, :f2] + num_extra
    q = prod[:, :, f2:].reshape(b, K, L, K)
    t_o = t_full + q + q.permute(0, 3, 2, 1)  # (b, K, L, K)
    ratio = (moved / den_o).nan_to_num(nan=torch.inf)
    excess = ((1 + ratio) ** 2 * torch.from_numpy(r.ball_rows).unsqueeze(1) / r.n_nodes).numpy()  # (b, K)
    excess[r.empty] = 0  # the whole graph removed: the uniform prior below, nothing to pool
    afresh = excess > _EPS_RATIO
    heavy = (excess > _FLOAT32_BOUND) & ~afresh
    if heavy.any():  # rows and columns: before the fresh sums, which overwrite their shared entries
        _heavy_clusters(r, heavy, tables[torch.float64], f2, de, num_extra, num, t_full, num_o, t_o)
    if afresh.any():
        _afresh_clusters(r, afresh, z_new, new2, e, de, full, den_o, num_o, t_o)
    # a channel with no edge left is exactly zero in the model: leave no rounding residue
    if not r.left.all():
        t_o *= torch.from_numpy(r.left).double().view(b, 1, L, 1)

    safe_den = torch.where(den_o > 0, den_o, torch.ones((), dtype=torch.float64))
    v_o = num_o.div_(safe_den.unsqueeze(2))
    a_o = t_o.div_(safe_den[:, :, None, None] * safe_den[:, None, None, :]).permute(0, 2, 1, 3)
    dtype = m.feat_mean.dtype
    p = torch.softmax(m.head(v_o.to(dtype), a_o.to(dtype)).double(), 1)[:, c].numpy()
    return np.where(r.empty, 1.0 / m.n_classes, p)
