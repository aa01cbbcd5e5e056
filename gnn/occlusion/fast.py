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
from nucleograph.gnn.occlusion.rows import BatchRows, GraphIndex
from nucleograph.gnn.occlusion.scripted import ScriptedModel, scripted
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
    compiled = scripted(model)  # the per-batch steps, compiled once per model
    c = pick_target(torch.softmax(logits.double(), 1)[0].numpy(), target)
    v0 = target_values(logits, c, output)[0]
    for w in range(len(windows)):
        local = first if w == 0 else index.for_centers(windows[w])
        by_size = np.argsort(local.ball_sizes(), kind="stable")
        scores = np.empty(local.centers.size)

        def run(positions, scratch, local=local, scores=scores):
            batch = BatchRows.build(positions, local, scratch)
            scores[positions] = v0 - _batch_values(model, compiled, image, batch, c, output, precision, scratch)

        # the largest balls first: the threads then end on small batches, at nearly the same time
        batches = [by_size[lo:lo + batch_size] for lo in range(0, by_size.size, batch_size)][::-1]
        _each_batch(run, batches, n, threads)
        yield local.centers, scores


def _batch_values(model: RSFNet, compiled: ScriptedModel, image: ImageCache, batch: BatchRows, target: int,
                  output: str, precision: Precision, scratch: np.ndarray) -> np.ndarray:
    """Class-``target`` log-odds or probabilities (``output``) of the occluded graphs of one batch."""
    state = float32_sums(_batch_change(compiled, image, batch))
    heavy, afresh = precision.tiers(state)
    if heavy.any():  # rows and columns first: the fresh sums overwrite the entries they share
        redo_float64(state, heavy)
    if afresh.any():
        sum_afresh(state, afresh, scratch)
    return class_values(model, state, target, output, head=compiled.head)


def _batch_change(compiled: ScriptedModel, image: ImageCache, batch: BatchRows) -> BatchChange:
    """The new node states of one batch's balls up to Pool1 (:class:`.scripted.NodeUpdate`: the
    activations between the convolutions are those of :meth:`RSFNet.node_embeddings`, with the model's
    own modules) and the changes of the softmax numerators."""
    z_new, h_new, dh, e_kept = compiled.node_update(
        image.x, image.pre1, image.h1, image.pre2, image.h2, image.z, image.shift, torch.from_numpy(batch.node),
        batch.n_removed, batch.n_vconv1, batch.n_vconv2, *batch.conv_edges)
    # their changes and the changes' sums per occlusion in one compiled pass (it was six torch calls)
    de, e_new, dsum, moved = softmax_changes(image.e.numpy(), batch.node, batch.occ, batch.n_removed,
                                             batch.n_vconv2, e_kept.numpy(), batch.b)
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
