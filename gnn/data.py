"""In-memory DGL graphs of nuclei: construction, feature scaling and cohort splits.

Edge channels
-------------
Each undirected edge between nuclei ``i`` and ``j`` at distance ``d`` (pixels) carries ``L`` channels;
the default (:func:`edge_channels`) has ``L = 2``:

0. ``weight = 1 - d / max_distance`` clipped to ``[0, 1]`` (the paper's ``1 - d/100``;
   :func:`nucleograph.ingest.graph.edge_weight`, the formula's one home),
1. ``gaussian = exp(-d**2 / (2 sigma**2))`` with ``sigma = max_distance / 4``: it decays faster, so
   the model can tell touching nuclei from merely neighbouring ones.

The number of channels is a model argument (``edge_channels``); any ``(E, L)`` array works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dgl
import numpy as np
import torch

from nucleograph.errors import InputError
from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX, edge_weight

from .keys import CENTROID, EFEAT, FEAT, NID

DEFAULT_MAX_DISTANCE = DEFAULT_THRESHOLD_PX
DEFAULT_EDGE_CHANNELS = 2


def edge_channels(distances, *, max_distance: float = DEFAULT_MAX_DISTANCE) -> np.ndarray:
    """Default edge channels from centroid distances.

    Parameters
    ----------
    distances : array_like, shape (E,)
        Centroid distances in pixels.
    max_distance : float
        Distance at which the linear weight reaches 0 (100 px in the paper).

    Returns
    -------
    np.ndarray, shape (E, 2), float32
        ``[1 - d/max_distance (clipped to [0, 1]), exp(-d^2 / (2 (max_distance/4)^2))]``.
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    if np.any(d < 0) or not np.all(np.isfinite(d)):
        raise InputError("edge distances must be finite and >= 0; check the centroids used to build them")
    sigma = max_distance / 4.0
    weight = edge_weight(d, max_distance)  # ingest's formula: the model reads the weight ingest stores
    gauss = np.exp(-(d**2) / (2.0 * sigma**2))
    return np.stack([weight, gauss], axis=1).astype(np.float32)


def to_dgl(node_feats, src, dst, edge_feats, *, centroids=None, nucleus_ids=None) -> dgl.DGLGraph:
    """Build a bidirected DGL graph of nuclei.

    Each unordered pair ``{src[k], dst[k]}`` must be given once; it becomes two directed edges with
    the same channels. No self-loops are added: the RSF convolution has its own ``W_0`` term.

    Parameters
    ----------
    node_feats : array_like, shape (N, F)
        Per-nucleus features (raw; the models standardise them).
    src, dst : array_like of int, shape (E,)
        Endpoints of the undirected edges, each pair once.
    edge_feats : array_like, shape (E, L) or (E,)
        Edge channels (see :func:`edge_channels`).
    centroids : array_like, shape (N, 2), optional
        Stored under :data:`gnn.keys.CENTROID`.
    nucleus_ids : array_like of int, shape (N,), optional
        Stored under :data:`gnn.keys.NID`.

    Returns
    -------
    dgl.DGLGraph
        ``N`` nodes, ``2E`` edges; ``ndata[FEAT]`` float32 ``(N, F)``, ``edata[EFEAT]`` float32
        ``(2E, L)``; edges ``k`` and ``E + k`` are the two directions of pair ``k``.
    """
    x = np.asarray(node_feats, dtype=np.float32)
    if x.ndim != 2:
        raise InputError(
            f"node_feats must have shape (N, F), got {x.shape}; reshape a single feature to (N, 1)"
        )
    if not np.all(np.isfinite(x)):
        raise InputError(
            "node_feats contain NaN or inf; impute or drop those nuclei before building the graph"
        )
    n = x.shape[0]
    s = np.asarray(src, dtype=np.int64).reshape(-1)
    d = np.asarray(dst, dtype=np.int64).reshape(-1)
    e = np.asarray(edge_feats, dtype=np.float32)
    if e.ndim == 1:
        e = e[:, None]
    if s.shape != d.shape or e.ndim != 2 or e.shape[0] != s.shape[0]:
        raise InputError(
            f"src {s.shape}, dst {d.shape} and edge_feats {e.shape} disagree: give one row of edge channels per pair"
        )
    if s.size and (s.min() < 0 or d.min() < 0 or s.max() >= n or d.max() >= n):
        raise InputError(f"edge endpoints must lie in [0, {n}); some src/dst index no node")
    if np.any(s == d):
        raise InputError(
            "self-loops are not allowed (RSF has its own W_0 self term); drop pairs with src == dst"
        )
    lo, hi = np.minimum(s, d), np.maximum(s, d)
    if s.size and np.unique(lo * n + hi).size != s.size:
        raise InputError(
            "a pair of nuclei is given twice (as (i, j) and (j, i) or repeated); give each pair once"
        )
    if not np.all(np.isfinite(e)):
        raise InputError("edge_feats contain NaN or inf")
    g = dgl.graph((np.concatenate([s, d]), np.concatenate([d, s])), num_nodes=n, idtype=torch.int64)
    g.ndata[FEAT] = torch.from_numpy(x)
    g.edata[EFEAT] = torch.from_numpy(np.concatenate([e, e], axis=0))
    if centroids is not None:
        c = np.asarray(centroids, dtype=np.float32)
        if c.shape != (n, 2):
            raise InputError(f"centroids must have shape ({n}, 2), got {c.shape}")
        g.ndata[CENTROID] = torch.from_numpy(c)
    if nucleus_ids is not None:
        ids = np.asarray(nucleus_ids, dtype=np.int64).reshape(-1)
        if ids.shape != (n,):
            raise InputError(f"nucleus_ids must have shape ({n},), got {ids.shape}")
        g.ndata[NID] = torch.from_numpy(ids)
    return g


def graph_from_arrays(g: dict[str, Any]) -> dgl.DGLGraph:
    """A DGL graph from :func:`nucleograph.db.store.read_graphs` arrays (edge channels from the distances).

    Parameters
    ----------
    g : dict
        One item of :func:`~nucleograph.db.store.read_graphs`.

    Returns
    -------
    dgl.DGLGraph
    """
    return to_dgl(
        g["features"], g["src"], g["dst"], edge_channels(g["dist"], max_distance=g.get("threshold_px", DEFAULT_THRESHOLD_PX)),
        centroids=g["centroids"], nucleus_ids=g["nids"],
    )


def check_one_feature_set(cohort: str, images: list[dict[str, Any]]) -> None:
    """Refuse a cohort whose nuclei carry different features: one model reads one feature vector.

    A segmentation ingested without its image has the morphology features only (its stain and texture
    features are absent, not zero: :mod:`nucleograph.ingest.polygons`); a cohort of such files trains on
    those, but mixed with images it would need values it does not have.

    Parameters
    ----------
    cohort : str
    images : list of dict
        :func:`nucleograph.db.store.cohort_images` rows (``feature_names``, ``n_nuclei``, ``path``);
        images without nuclei are left out (training skips them).

    Raises
    ------
    InputError
        Two feature sets are present; the message names images of each and the fixes.
    """
    sets: dict[tuple[str, ...], list[str]] = {}
    for r in images:
        if r.get("n_nuclei"):
            sets.setdefault(tuple(r.get("feature_names") or ()), []).append(str(r.get("path") or r["id"]))
    if len(sets) <= 1:
        return
    (most, many), (other, few) = sorted(sets.items(), key=lambda kv: (-len(kv[0]), -len(kv[1])))[:2]
    lacking = [n for n in most if n not in other] or ["none (the same features in another order)"]
    raise InputError(
        f"cohort {cohort!r} mixes nuclei with {len(sets)} different feature sets: {len(many)} image(s) have "
        f"{len(most)} features (e.g. {many[0]}), {len(few)} have {len(other)} (e.g. {few[0]}), lacking "
        f"{', '.join(lacking)}. Segmentations ingested without their image have no stain or texture features. "
        "One model needs one feature set: ingest the segmentations without images into a cohort of their own, "
        "or give each its image (manifest path: the image; nuclei column: the segmentation) and ingest again")


@dataclass
class FeatureScaler:
    """Per-feature mean and standard deviation of node features, fitted on training graphs only.

    Features with zero spread get ``std = 1`` so that they map to 0 rather than to NaN.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, graphs) -> FeatureScaler:
        """Fit on the nodes of ``graphs`` (an iterable of DGL graphs with ``ndata[FEAT]``)."""
        feats = [g.ndata[FEAT].double() for g in graphs if g.num_nodes() > 0]
        if not feats:
            raise InputError("cannot fit a FeatureScaler: the training graphs have no nuclei")
        x = torch.cat(feats, 0)
        mean = x.mean(0)
        std = x.std(0, unbiased=False)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        return cls(mean.numpy().astype(np.float32), std.numpy().astype(np.float32))

    def transform(self, feat: torch.Tensor) -> torch.Tensor:
        """Standardise a ``(N, F)`` tensor."""
        mean = torch.as_tensor(self.mean, dtype=feat.dtype, device=feat.device)
        std = torch.as_tensor(self.std, dtype=feat.dtype, device=feat.device)
        return (feat - mean) / std

    def to_dict(self) -> dict:
        """Plain lists, for a checkpoint or JSON."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> FeatureScaler:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32))


def standardize(graphs, scaler: FeatureScaler | None = None):
    """Return copies of ``graphs`` with standardised ``ndata[FEAT]`` and the scaler used.

    Models in :mod:`nucleograph.gnn.models` standardise internally (the scaler is stored in the model), so this is
    only for code that needs standardised features outside a model.
    """
    scaler = scaler or FeatureScaler.fit(graphs)
    out = []
    for g in graphs:
        h = g.local_var()
        h.ndata[FEAT] = scaler.transform(g.ndata[FEAT])
        out.append(h)
    return out, scaler


def check_labels(labels) -> np.ndarray:
    """Labels as a flat array, checked to hold at least two classes.

    Raises
    ------
    InputError
        If there are no labels or only one class.
    """
    y = np.asarray(labels).reshape(-1)
    if y.size == 0:
        raise InputError("no labels given: the cohort is empty")
    classes = np.unique(y)
    if classes.size < 2:
        raise InputError(
            f"the cohort has only one class ({classes[0]!r}); a classifier needs images of at least two classes"
        )
    return y


def class_targets(labels, n_graphs: int, n_classes: int | None = None) -> tuple[np.ndarray, int]:
    """Training targets: labels as int64 ``0 .. C-1``, one per graph, and the class count ``C``.

    Parameters
    ----------
    labels : array_like of int, shape (n_graphs,)
    n_graphs : int
    n_classes : int, optional
        Default ``max(labels) + 1``.

    Raises
    ------
    InputError
        If the counts disagree, a label is not an integer in ``0 .. C-1``, or only one class occurs.
    """
    y = check_labels(labels)
    if n_graphs != y.size:
        raise InputError(f"{n_graphs} graphs but {y.size} labels")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InputError("labels must be integers 0 .. C-1; map class names to integers first")
    y = y.astype(np.int64)
    n_classes = n_classes or int(y.max()) + 1
    if y.max() >= n_classes:
        raise InputError(f"label {y.max()} is out of range for n_classes={n_classes}")
    return y, n_classes


def graph_dims(graphs) -> tuple[int, int]:
    """Node feature and edge channel counts shared by all ``graphs``, checked for training.

    Returns
    -------
    (in_feats, edge_channels) : (int, int)

    Raises
    ------
    InputError
        If there are no graphs, one has no nuclei or lacks the features of :func:`to_dgl`, or the
        graphs disagree on the counts.
    """
    if len(graphs) == 0:
        raise InputError("no graphs given: the cohort is empty")
    in_feats = edge_channels = None
    for k, g in enumerate(graphs):
        if g.num_nodes() == 0:
            raise InputError(f"graph {k} has no nuclei; drop images without nuclei before training")
        if FEAT not in g.ndata or EFEAT not in g.edata:
            raise InputError(
                f"graph {k} lacks ndata[{FEAT!r}] or edata[{EFEAT!r}]; build graphs with gnn.data.to_dgl"
            )
        f, e = g.ndata[FEAT].shape[1], (g.edata[EFEAT].shape[1] if g.edata[EFEAT].dim() == 2 else 1)
        if in_feats is None:
            in_feats, edge_channels = f, e
        elif (f, e) != (in_feats, edge_channels):
            raise InputError(
                f"graph {k} has {f} node features and {e} edge channels, graph 0 has {in_feats} and {edge_channels}; "
                "all graphs must share one feature set"
            )
    return in_feats, edge_channels


def _group_labels(y: np.ndarray, groups):
    """Map samples to groups and give each group its majority label."""
    g = np.asarray(groups).reshape(-1)
    if g.shape != y.shape:
        raise InputError(f"groups has {g.size} entries but there are {y.size} labels")
    uniq, inv = np.unique(g, return_inverse=True)
    glab = np.empty(uniq.size, dtype=y.dtype)
    for k in range(uniq.size):
        vals, counts = np.unique(y[inv == k], return_counts=True)
        glab[k] = vals[np.argmax(counts)]
    return inv, glab


def _split_units(units_labels: np.ndarray, val: float, test: float, rng) -> tuple[np.ndarray, ...]:
    train, valid, testi = [], [], []
    for c in np.unique(units_labels):
        idx = np.flatnonzero(units_labels == c)
        rng.shuffle(idx)
        n = idx.size
        # a requested part gets at least one unit per class when the class has three or more,
        # so a small or patient-grouped cohort still has a validation and a test set
        n_test = max(int(round(test * n)), int(test > 0 and n >= 3))
        n_val = max(int(round(val * n)), int(val > 0 and n >= 3))
        # every class keeps at least one training example
        while n_test + n_val > n - 1 and (n_test or n_val):
            if n_val >= n_test and n_val:
                n_val -= 1
            else:
                n_test -= 1
        testi.append(idx[:n_test])
        valid.append(idx[n_test : n_test + n_val])
        train.append(idx[n_test + n_val :])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in (train, valid, testi))


def stratified_split(labels, groups=None, *, val: float = 0.15, test: float = 0.15, seed: int = 0):
    """Split sample indices into train / validation / test, stratified by label.

    Parameters
    ----------
    labels : array_like, shape (n,)
    groups : array_like, shape (n,), optional
        Patient (or slide) of each sample; a group never straddles two parts. Groups are stratified by
        their majority label.
    val, test : float
        Fractions in ``[0, 1)``; rounded per class, each class keeps at least one training unit.
    seed : int

    Returns
    -------
    (train, val, test) : tuple of np.ndarray of int64, sorted
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise InputError(f"val={val} and test={test} must be fractions in [0, 1) with val + test < 1")
    y = check_labels(labels)
    rng = np.random.default_rng(seed)
    if groups is None:
        return _split_units(y, val, test, rng)
    inv, glab = _group_labels(y, groups)
    parts = _split_units(glab, val, test, rng)
    return tuple(np.flatnonzero(np.isin(inv, p)).astype(np.int64) for p in parts)


def stratified_kfold(labels, k: int = 5, groups=None, *, seed: int = 0):
    """K stratified folds (grouped by patient when ``groups`` is given).

    Returns
    -------
    list of (train_idx, test_idx)
        ``k`` pairs of sorted int64 arrays; the test parts partition the samples.
    """
    y = check_labels(labels)
    if k < 2:
        raise InputError(f"k must be at least 2, got {k}")
    rng = np.random.default_rng(seed)
    if groups is None:
        inv, units = np.arange(y.size), y
    else:
        inv, units = _group_labels(y, groups)
    if units.size < k:
        raise InputError(
            f"cannot make {k} folds from {units.size} {'groups' if groups is not None else 'samples'}"
        )
    fold_of = np.empty(units.size, dtype=np.int64)
    offset = 0
    for c in np.unique(units):
        idx = np.flatnonzero(units == c)
        rng.shuffle(idx)
        # continue the round-robin across classes so fold sizes stay balanced
        fold_of[idx] = (np.arange(idx.size) + offset) % k
        offset += idx.size
    folds = []
    for f in range(k):
        test_mask = fold_of[inv] == f
        folds.append(
            (np.flatnonzero(~test_mask).astype(np.int64), np.flatnonzero(test_mask).astype(np.int64))
        )
    return folds


def check_test_split(labels, groups=None, *, folds: int = 1, val: float = 0.15, test: float = 0.15,
                     seed: int = 0, name: str = "the cohort") -> None:
    """Refuse a run that would have no test set (so no test metrics), naming the fixes that would work.

    A single split (:func:`stratified_split`) gives the test part a unit (an image, or a patient with
    ``groups``) of a class only when the class has three or more; ``folds`` folds
    (:func:`stratified_kfold`) need ``folds`` units.

    Parameters
    ----------
    labels : array_like, shape (n,)
    groups : array_like, shape (n,), optional
        The patient of each image: splits keep a patient's images together.
    folds : int
        1 for a single split, else the number of cross-validation folds.
    val, test, seed
        As :func:`stratified_split` takes them.
    name : str
        What the labels are of, for the message (e.g. ``cohort 'prostate'``).

    Raises
    ------
    InputError
        When the test set would be empty, or there are fewer units than folds.
    """
    y = check_labels(labels)
    images_per_class = np.bincount(np.unique(y, return_inverse=True)[1])
    if groups is None:
        unit, units, per_class = "image", y.size, images_per_class
    else:
        glab = _group_labels(y, groups)[1]
        unit, units, per_class = "patient", glab.size, np.bincount(np.unique(glab, return_inverse=True)[1])
    has = f"{name} has {units} {unit}s" + ("" if groups is None else f" ({y.size} images)")
    by_image = "split by image with --split-by image (a patient's images may then be in training and test)"
    fixes = [f"ingest more {unit}s (at least 3 of each class)"]
    if folds > 1:
        if units >= folds:
            return
        if per_class.min() >= 2:  # then every fold trains on every class
            fixes.insert(0, f"use --folds {units} or fewer")
        if groups is not None and y.size >= folds and images_per_class.min() >= 2:
            fixes.insert(0, by_image)
        raise InputError(f"{has}: too few for {folds} folds, each of which tests on its own {unit}s. To fix it: "
                         + "; or ".join(fixes))
    if stratified_split(y, groups, val=val, test=test, seed=seed)[2].size:
        return
    if per_class.min() >= 2:
        fixes.insert(0, "cross-validate with --folds 2 (each fold tests on the other half)")
    if groups is not None and stratified_split(y, None, val=val, test=test, seed=seed)[2].size:
        fixes.insert(0, by_image)
    raise InputError(f"{has}, at most {per_class.max()} per class: a single split keeps them all for training, so "
                     "the run would have no test set and no test metrics. To fix it: " + "; or ".join(fixes))
