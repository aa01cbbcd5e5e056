"""Fast exact occlusion for RSF models on symmetric graphs (``docs/occlusion.md``).

Per image: one float64 pass of the model's layers up to Pool1, window by window (:func:`build_image_cache`).
Per window of nuclei (an image up to :data:`.windows.WINDOW_NUCLEI` nuclei is one): the balls of its
nuclei (:class:`GraphIndex`). Per batch of occlusions: the three node convolutions
before Pool1 update their cached pre-activations on the rows they change (:func:`_batch_change`), the
pooling sums are corrected in closed form in the precision tier each cluster needs
(:mod:`nucleograph.gnn.occlusion.pooling`), and the model's own head runs on all occlusions at once;
its logits give the explained class's log-odds or probability (:func:`.reference.target_values`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.nn import functional as F

from nucleograph.gnn.keys import CENTROID
from nucleograph.gnn.models import RSFNet
from nucleograph.gnn.occlusion.balls import softmax_changes
from nucleograph.gnn.occlusion.cache import ImageCache, build_image_cache
from nucleograph.gnn.occlusion.pooling import (
    BatchChange,
    Precision,
    class_values,
    float32_sums,
    image_logits,
    redo_float64,
    sum_afresh,
)
from nucleograph.gnn.occlusion.reference import pick_target, target_values
from nucleograph.gnn.occlusion.rows import BatchRows, GraphIndex, take_rows
from nucleograph.gnn.occlusion.windows import BLOCK_NUCLEI, WINDOW_NUCLEI, spatial_windows


def occlusion_rsf(model: RSFNet, graph, *, hops: int, target: int | None, batch_size: int, threads: int,
                  precision: Precision, output: str = "logodds", window: int = WINDOW_NUCLEI) -> np.ndarray:
    """Occlusion scores of every nucleus of ``graph`` (symmetric) for an RSF ``model`` in eval mode.

    Parameters are those of :func:`nucleograph.gnn.explain.occlusion`, checked there.

    Returns
    -------
    np.ndarray, shape (N,), float64
    """
    scores = np.empty(graph.num_nodes())
    for nodes, values in occlusion_rsf_windows(model, graph, hops=hops, target=target, batch_size=batch_size,
                                               threads=threads, precision=precision, output=output, window=window):
        scores[nodes] = values
    return scores


def occlusion_rsf_windows(model: RSFNet, graph, *, hops: int, target: int | None, batch_size: int, threads: int,
                          precision: Precision, output: str = "logodds",
                          window: int = WINDOW_NUCLEI) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`occlusion_rsf` one window of nuclei at a time: yields ``(nodes, scores)`` per window.

    Per image: the float64 pass up to Pool1, window by window with a halo (:func:`.cache.build_image_cache`),
    the pooling totals and the block sums. Per window: the balls of its own nuclei (reaching into the
    neighbouring windows), its occlusions batched by ball size (little padding wasted), run on up to
    ``threads`` threads. Every occlusion reads the whole image's totals, so the scores are those of the
    whole graph whatever the windows.
    """
    n = graph.num_nodes()
    efeat = model.edge_features(graph).numpy()
    src, dst = (t.numpy() for t in graph.edges())
    index = GraphIndex.build(src, dst, efeat, hops=hops, n_nodes=n, centers=np.zeros(0, dtype=np.int64))
    centroids = graph.ndata[CENTROID].numpy() if CENTROID in graph.ndata else None
    windows = spatial_windows(centroids, n, size=window)
    blocks = spatial_windows(centroids, n, size=min(window, BLOCK_NUCLEI))
    with ThreadPoolExecutor(1) as pool:
        # the first window's balls (compiled, free of the interpreter lock) meanwhile, if threads allow
        first = pool.submit(index.for_centers, windows[0]) if threads > 1 else None
        image = build_image_cache(model, graph, edges=index.edges, efeat=index.efeat, windows=windows,
                                  blocks=blocks)
        # the model's own pass when the image is one window; a slide's from the cached float64 pooling sums
        logits = model(graph) if len(windows) == 1 else image_logits(model, image)
        first = index.for_centers(windows[0]) if first is None else first.result()
    c = pick_target(torch.softmax(logits.double(), 1)[0].numpy(), target)
    v0 = target_values(logits, c, output)[0]
    for w in range(len(windows)):
        local = first if w == 0 else index.for_centers(windows[w])
        by_size = np.argsort(local.ball_sizes(), kind="stable")
        scores = np.empty(local.centers.size)

        def run(positions, scratch, local=local, scores=scores):
            batch = BatchRows.build(positions, local, scratch)
            scores[positions] = v0 - _batch_values(model, image, batch, c, output, precision, scratch)

        # the largest balls first: the threads then end on small batches, at nearly the same time
        batches = [by_size[lo:lo + batch_size] for lo in range(0, by_size.size, batch_size)][::-1]
        _each_batch(run, batches, n, threads)
        yield local.centers, scores


def _batch_values(model: RSFNet, image: ImageCache, batch: BatchRows, target: int, output: str,
                  precision: Precision, scratch: np.ndarray) -> np.ndarray:
    """Class-``target`` log-odds or probabilities (``output``) of the occluded graphs of one batch."""
    state = float32_sums(_batch_change(model, image, batch))
    heavy, afresh = precision.tiers(state)
    if heavy.any():  # rows and columns first: the fresh sums overwrite the entries they share
        redo_float64(state, heavy)
    if afresh.any():
        sum_afresh(state, afresh, scratch)
    return class_values(model, state, target, output)


def _conv_update(conv, pre: torch.Tensor, *, removed_in: torch.Tensor, delta: torch.Tensor | None,
                 edges: torch.Tensor) -> torch.Tensor:
    """An RSF convolution's pre-activation on the kept rows it changes, updated in place.

    The convolution is linear, so after its input lost the removed rows and changed by ``delta`` on the
    first kept rows its output changes by ``delta W_0 + sum_l A_l P_l``, ``P_l`` the change of ``V W_l``
    (weights first: fewer rows change than are updated). A removed row's ``P_l = -V W_l`` is multiplied
    from its ``V`` (``removed_in``; a table of them for every nucleus would cost a slide a gigabyte), and
    its own output is never computed (it leaves the graph).

    ``pre`` ``(n_out, O)`` the cached pre-activations of the rows to update, ``removed_in`` ``(n_removed, F)``,
    ``delta`` ``(n_changed, F)`` or None, ``edges`` the layer's in-edges, channel ``l`` of input row ``i`` at
    column ``i L + l`` and the removed rows' entries negated (:attr:`BatchRows.conv_edges`): the
    projections of all ``L`` channels come from one product per part of the input, ``(n_in, L O)``.
    """
    w = conv.weight  # (L + 1, F, O)
    n_rem, n_ch, n_out = removed_in.shape[0], 0 if delta is None else delta.shape[0], w.shape[2]
    if pre.shape[0] == 0:  # the whole graph removed
        return pre
    w_edges = w[1:].transpose(0, 1).reshape(w.shape[1], -1)  # (F, L O): [W_1 | ... | W_L]
    proj = pre.new_empty(n_rem + n_ch, w_edges.shape[1])
    torch.matmul(removed_in, w_edges, out=proj[:n_rem])
    if n_ch:
        torch.matmul(delta, w_edges, out=proj[n_rem:])
        pre[:n_ch].addmm_(delta, w[0])
    return pre.addmm_(edges, proj.view(-1, n_out))


def _batch_change(model: RSFNet, image: ImageCache, batch: BatchRows) -> BatchChange:
    """The new node states of one batch's balls up to Pool1, each layer one hop further out.

    The activations between the convolutions are those of :meth:`RSFNet.node_embeddings` (batch norm in
    eval mode, ReLU, the attention gate), applied with the model's own modules.
    """
    node = torch.from_numpy(batch.node)
    removed, n_rem = node[:batch.n_removed], batch.n_removed
    rows1, rows2, rows3 = node[n_rem:batch.n_vconv1], node[n_rem:batch.n_vconv2], node[n_rem:]
    pre1 = _conv_update(model.vconv1, take_rows(image.pre1, rows1), removed_in=take_rows(image.x, removed),
                        delta=None, edges=batch.conv_edges[0])
    dh1 = F.relu(model.bn1(pre1)) - take_rows(image.h1, rows1)
    pre2 = _conv_update(model.vconv2, take_rows(image.pre2, rows2), removed_in=take_rows(image.h1, removed),
                        delta=dh1, edges=batch.conv_edges[1])
    h_new = F.relu(model.bn2(pre2))
    if model.attention is not None:
        h_new, _ = model.attention(None, h_new)
    dh = h_new - take_rows(image.h2, rows2)
    z_new = _conv_update(model.pool1.embed, take_rows(image.z, rows3), removed_in=take_rows(image.h2, removed),
                         delta=dh, edges=batch.conv_edges[2])
    # new softmax numerators in float32, as the model computes its softmax: their rounding is relative
    # to the remaining mass, which no correction amplifies; their changes and the changes' sums per
    # occlusion in one compiled pass (it was six torch calls)
    e_kept = torch.exp(z_new - image.shift.to(z_new.dtype))
    de, e_new, dsum, moved = softmax_changes(image.e.numpy(), batch.node, batch.occ, n_rem, batch.n_vconv2,
                                             e_kept.numpy(), batch.b)
    return BatchChange(batch, image, z_new, h_new, dh, *map(torch.from_numpy, (de, e_new, dsum, moved)))


def _each_batch(run: Callable[[np.ndarray, np.ndarray], None], batches: list[np.ndarray], n: int,
                threads: int) -> None:
    """``run(centers, scratch)`` for every batch of occlusions, on up to ``threads`` threads.

    Each thread runs one intra-op thread: a batch is many mid-sized operations (gathers, paddings,
    sparse and batched products) that two intra-op threads speed up less than two batches at once do
    (bench/RESULTS.md, "Explanations"). ``scratch``: a node-sized ``-1`` array per thread.
    """
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
