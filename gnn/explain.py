"""Per-nucleus explanations: attention scores and occlusion.

Occlusion (the seed paper's explanation): for each nucleus ``i`` remove it and its ``hops``-hop
neighbourhood with their edges, and score

.. math:: s_i = v_c(M(G)) - v_c(M(G \\setminus \\mathcal{N}_k(i)))

where ``c`` is the predicted class (or ``target``) and ``v_c`` its log-odds
``log(p_c / (1 - p_c)) = z_c - logsumexp_{j != c} z_j`` computed from the logits ``z`` (``output="logodds"``,
the default), or its probability ``p_c`` (``output="prob"``, the seed paper's score). Probabilities
saturate: for a confidently classified graph ``p_c`` rounds to 1 with or without most nuclei, so
probability drops are mostly 0 or rounding noise, while log-odds drops stay as resolved as the logits.
A graph emptied by the removal has no defined model output; its value is the uniform prior's
(``1 / C``, log-odds ``log(1 / (C - 1))``).

:func:`occlusion_naive` runs the model once per nucleus (:mod:`nucleograph.gnn.occlusion.reference`).
:func:`occlusion` gives the same scores fast for the RSF models (:mod:`nucleograph.gnn.occlusion.fast`):
only the ``hops + 3``-hop ball of each nucleus changes before Pool1, the pooling sums are corrected in
closed form, and the model's head runs for many occlusions at once. ``docs/occlusion.md`` derives it:
what is cached per image, why each update is exact, and the three precision tiers of the pooling
corrections (:class:`Precision`, the hook that forces or observes them).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.keys import CENTROID, EFEAT
from nucleograph.gnn.models import GraphClassifier, RSFNet, SeedEnsemble
from nucleograph.gnn.occlusion.balls import out_edges
from nucleograph.gnn.occlusion.cache import window_graphs
from nucleograph.gnn.occlusion.fast import occlusion_rsf_windows
from nucleograph.gnn.occlusion.pooling import Precision
from nucleograph.gnn.occlusion.reference import (
    EvalMode,
    check_hops,
    check_output,
    check_single_graph,
    occlusion_batched,
    occlusion_naive,
    pick_target,
    proba_without,
)
from nucleograph.gnn.occlusion.windows import WINDOW_NUCLEI, spatial_windows

__all__ = ["Precision", "attention_scores", "occlusion", "occlusion_naive", "occlusion_windows", "proba_without"]


def attention_scores(model: RSFNet, graph, *, window: int = WINDOW_NUCLEI) -> np.ndarray:
    """Attention score of every nucleus, shape ``(N,)``, in ``(0, 1)`` (``rsf-attention`` only).

    The gate reads VConv2's output, two hops of input deep: an image larger than ``window`` nuclei (a
    slide) is scored window by window, each with its two-hop halo, with the scores of the whole graph
    and the memory of one window.

    Parameters
    ----------
    model : RSFNet
        An ``rsf-attention`` model; run in eval mode (restored afterwards).
    graph : dgl.DGLGraph
        One image's graph (raw features).
    window : int
        Nuclei per window.

    Returns
    -------
    np.ndarray, shape (N,), float64

    Raises
    ------
    ModelError
        The model has no attention gate; use :func:`occlusion` instead.

    A seed ensemble of ``rsf-attention`` models scores the mean of its members' gates.
    """
    if isinstance(model, SeedEnsemble):
        return np.mean([attention_scores(m, graph, window=window) for m in model.members], axis=0)
    if not isinstance(model, RSFNet) or model.attention is None:
        raise ModelError("attention scores need an rsf-attention model; use occlusion() for the other models")
    check_single_graph(graph)
    n = graph.num_nodes()
    centroids = graph.ndata[CENTROID].numpy() if CENTROID in graph.ndata else None
    windows = spatial_windows(centroids, n, size=window)
    src, dst = (t.numpy() for t in graph.edges())
    edges = out_edges(src, dst, n)
    scores = np.empty(n)
    with EvalMode(model):
        for nodes, sub in window_graphs(graph, windows, edges, hops=2):
            _, gate = model.node_embeddings(sub)
            scores[nodes] = gate[:nodes.size].double().cpu().numpy()
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


def occlusion(
    model: GraphClassifier,
    graph,
    *,
    hops: int = 1,
    target: int | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    precision: Precision | None = None,
    output: str = "logodds",
    window: int = WINDOW_NUCLEI,
) -> np.ndarray:
    """Occlusion scores, equal to :func:`occlusion_naive` up to float rounding, computed fast.

    For RSF models on symmetric graphs (all graphs from :func:`nucleograph.gnn.data.to_dgl`) it updates
    only the ``hops + 3``-hop ball of each nucleus and corrects the pooling sums in closed form
    (``docs/occlusion.md``). Other models or non-symmetric graphs use batched occluded copies (exact,
    but only a constant factor faster than the naive loop).

    Parameters
    ----------
    model, graph, hops, target, output
        As for :func:`occlusion_naive` (``output``: ``"logodds"``, the default, or ``"prob"``).
    batch_size : int
        Occlusions processed together (memory grows linearly with it; the default was the fastest
        measured, bench/RESULTS.md "Explanations").
    threads : int, optional
        Batches processed at once, each on one thread (RSF models on symmetric graphs); default
        ``torch.get_num_threads()``. Memory grows linearly with it too.
    precision : Precision, optional
        The precision tiers of the fast path's pooling corrections; the default, ``Precision()``, keeps
        every score within the model's own float32 rounding. Tests and benchmarks pass another to force
        a tier or (subclassing it) to observe which ones run. Ignored by the batched fallback.
    window : int
        Nuclei per window (RSF models on symmetric graphs): a larger image is explained window by window
        (:func:`occlusion_windows`), with the same scores; memory per window grows with it.

    Returns
    -------
    np.ndarray, shape (N,), float64

    Raises
    ------
    InputError
        ``graph`` is a batch or has no nuclei, ``hops`` is not a non-negative integer, ``target`` is
        out of range, ``output`` is unknown, or ``batch_size``/``threads``/``window`` is not positive.
    """
    windows = occlusion_windows(model, graph, hops=hops, target=target, batch_size=batch_size, threads=threads,
                                precision=precision, output=output, window=window)
    scores = np.empty(graph.num_nodes())
    for nodes, values in windows:
        scores[nodes] = values
    return scores


def occlusion_windows(
    model: GraphClassifier,
    graph,
    *,
    hops: int = 1,
    target: int | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    precision: Precision | None = None,
    output: str = "logodds",
    window: int = WINDOW_NUCLEI,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`occlusion` window by window, for images as large as a whole slide.

    The nuclei are split into windows of about ``window`` (square cells over their centroids,
    :func:`nucleograph.gnn.occlusion.windows.spatial_windows`), and each window's scores come as soon as
    they are computed, so a caller can write them back and show progress while the next is computed.
    Each occlusion reads its own ball (reaching into neighbouring windows: the halo) and the whole
    image's pooling sums, so the scores equal those of :func:`occlusion` on the whole graph, and the
    time per nucleus does not grow with the image (``docs/occlusion.md``, "Slides").

    Parameters
    ----------
    model, graph, hops, target, batch_size, threads, precision, output, window
        As for :func:`occlusion`. Models other than RSF, or non-symmetric graphs, yield one window: all
        nuclei (the batched fallback runs the model on each occluded graph).

    Yields
    ------
    (np.ndarray, np.ndarray)
        A window's node indices ``(n,)`` and their scores ``(n,)`` float64; every node exactly once.

    Raises
    ------
    InputError
        As :func:`occlusion`, when called (not at the first window).
    """
    hops = check_hops(hops)
    check_output(output)
    check_single_graph(graph)
    if batch_size < 1:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    threads = torch.get_num_threads() if threads is None else threads
    if threads < 1:
        raise InputError(f"threads must be positive, got {threads}")
    if int(window) != window or window < 1:
        raise InputError(f"window must be a positive number of nuclei, got {window!r}")
    if (isinstance(model, SeedEnsemble) and isinstance(model.members[0], RSFNet) and output == "logodds"
            and model.n_classes == 2 and _symmetric(graph)):
        return _ensemble_windows(model, graph, hops=hops, target=target, batch_size=batch_size, threads=threads,
                                 precision=precision, window=int(window))
    if not isinstance(model, RSFNet) or not _symmetric(graph):
        return iter([(np.arange(graph.num_nodes()), occlusion_batched(
            model, graph, hops=hops, target=target, batch_size=batch_size, output=output))])
    return _in_eval_mode(model, occlusion_rsf_windows(
        model, graph, hops=hops, target=target, batch_size=batch_size, threads=threads,
        precision=Precision() if precision is None else precision, output=output, window=int(window)))


def _ensemble_windows(model: SeedEnsemble, graph, *, target: int | None, **options) -> Iterator:
    """A two-class seed ensemble's log-odds occlusion: the mean of its members' fast scores for the class the
    ensemble predicts. Exact, not an approximation: with two classes the log-odds ``z_c - z_other`` is linear
    in the logits, and the ensemble's logits are the mean of its members'. Every member windows the graph
    alike (the windows depend on the centroids only)."""
    with EvalMode(model):
        c = pick_target(torch.softmax(model(graph).double(), 1)[0].numpy(), target)
    streams = [occlusion_windows(m, graph, target=c, output="logodds", **options) for m in model.members]
    for parts in zip(*streams, strict=True):
        nodes = parts[0][0]
        yield nodes, np.mean([values for _, values in parts], axis=0)


def _in_eval_mode(model, windows: Iterator) -> Iterator:
    """``windows`` drawn with ``model`` in eval mode and gradients off (restored between draws: the
    caller's code runs in its own modes)."""
    while True:
        with EvalMode(model):
            item = next(windows, None)
        if item is None:
            return
        yield item
