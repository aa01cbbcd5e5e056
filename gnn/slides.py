"""Learning on whole slides: ROI subgraphs read from Neo4j by window, labelled by their slide.

A slide's graph (600,000 nuclei) never goes into one batch. Each labelled slide gives up to ``K``
regions of interest (ROIs), BACH-sized windows by default (:data:`ROI_SIZE`), and each ROI is a
training graph labelled with its slide's label:

1. **where** (tissue-weighted): the slide's nuclei are counted per :data:`DENSITY_CELL`-pixel cell in
   one query (:func:`nucleograph.db.store.nucleus_density`); every window position on that grid that
   lies inside the slide is a candidate, weighted by the nuclei it holds; candidates holding less than
   ``min_share`` of the densest one (glass, tissue edges) are dropped, and ``K`` are drawn in proportion
   to their nuclei, each overlapping those drawn before by at most ``max_overlap`` of its area while such
   candidates remain (:func:`sample_windows`);
2. **read**: each window is one query on the point index of ``Nucleus.pos`` (Cypher query 7,
   :func:`nucleograph.db.store.window_nuclei`): its nuclei and the edges between them;
3. **split** by slide: the ROIs of a slide (of a patient, when patients are known) are never on both
   sides of a split (the slide or patient is the split's group);
4. **aggregate**: a slide's class probabilities are the softmax of the mean of its ROIs' log-probabilities
   (:func:`aggregate`; for two classes, the mean of the ROIs' log-odds), and the run's metrics and
   predictions are the slides' (:func:`to_slides`), with the ROIs' test metrics beside them (``roi_*``).

The ROIs are drawn once per cohort version and ROI setting (seeded by the slide's id, not the training
seed) and cached on disk like whole cohorts (:mod:`nucleograph.gnn.graph_cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import dgl
import numpy as np

from nucleograph.config import Settings
from nucleograph.db import schema, store
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.data import check_one_feature_set, graph_from_arrays
from nucleograph.gnn.graph_cache import read_cache, write_cache
from nucleograph.gnn.metrics import classification_metrics
from nucleograph.gnn.train import TrainResult
from nucleograph.ingest.readers import DEFAULT_MAX_PIXELS
from nucleograph.progress import progress as progress_bar

__all__ = [
    "AUTO",
    "DENSITY_CELL",
    "ROIS_PER_SLIDE",
    "ROI_SIZE",
    "SLIDE_PIXELS",
    "RoiCohort",
    "RoiParams",
    "SlideView",
    "aggregate",
    "load_rois",
    "resolve_roi",
    "sample_windows",
    "to_slides",
]

#: ROI (width, height) in pixels: BACH's image size.
ROI_SIZE = (2048, 1536)
ROIS_PER_SLIDE = 16
#: Side of the density grid's cells, in pixels.
DENSITY_CELL = 256
#: ``roi="auto"`` trains on ROIs when a labelled image has more pixels than this: the largest image
#: ingest reads whole (:data:`nucleograph.ingest.readers.DEFAULT_MAX_PIXELS`); larger ones are slides.
SLIDE_PIXELS = DEFAULT_MAX_PIXELS
AUTO = "auto"
#: The ROI-level test metrics kept beside the slide-level ones, as ``roi_<name>``.
_ROI_METRICS = ("n", "accuracy", "balanced_accuracy", "roc_auc", "f1")


@dataclass(frozen=True)
class RoiParams:
    """How a slide's ROIs are drawn; part of the cache key of a cohort's ROIs.

    Parameters
    ----------
    width, height : int
        Window size in pixels (a slide smaller than it gives one window, the slide).
    per_slide : int
        ROIs drawn per slide (``K``); fewer where fewer positions qualify.
    cell : int
        Side of the density grid's cells; window positions step by it.
    min_share : float
        A window qualifies when it holds at least this share of the nuclei of the slide's densest window.
    max_overlap : float
        While candidates remain that overlap every drawn window by at most this share of a window's area,
        only those are drawn.
    seed : int
        With the slide's id, seeds the draw.
    """

    width: int = ROI_SIZE[0]
    height: int = ROI_SIZE[1]
    per_slide: int = ROIS_PER_SLIDE
    cell: int = DENSITY_CELL
    min_share: float = 0.25
    max_overlap: float = 0.5
    seed: int = 0

    def __post_init__(self):
        for name in ("width", "height", "per_slide", "cell"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"ROI {name} must be a positive integer, not {value!r}")
        if min(self.width, self.height) < 64:
            raise InputError(f"an ROI of {self.width}x{self.height} px is too small to hold a neighbourhood of "
                             "nuclei: give at least 64 px a side (BACH's images are 2048x1536)")
        if not 0 < self.min_share <= 1:
            raise InputError(f"min_share is a share of the densest window, in (0, 1], not {self.min_share!r}")
        if not 0 <= self.max_overlap < 1:
            raise InputError(f"max_overlap is a share of a window's area, in [0, 1), not {self.max_overlap!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values (a run's recorded params)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RoiParams:
        """Inverse of :meth:`to_dict`."""
        return cls(**d)

    def key(self) -> str:
        """A short stable hash of the parameters."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _positions(size: int, window: int, cell: int) -> np.ndarray:
    """Window starts along one axis: every cell corner that keeps the window inside, and the last fit."""
    return np.unique(np.r_[np.arange(0, size - window + 1, cell), size - window]).astype(np.int64)


def sample_windows(counts: np.ndarray, *, width: int, height: int, roi: RoiParams,
                   rng: np.random.Generator) -> np.ndarray:
    """Draw up to ``roi.per_slide`` windows where a slide's nuclei are.

    Parameters
    ----------
    counts : ndarray of int, shape (ceil(height / roi.cell), ceil(width / roi.cell))
        Nuclei per cell (:func:`nucleograph.db.store.nucleus_density`).
    width, height : int
        The slide's size in pixels.
    roi : RoiParams
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int64, shape (k, 4)
        ``x0, y0, x1, y1`` per window, inside the slide (``0 <= x0 < x1 <= width``), ``x1 - x0 =
        min(roi.width, width)`` (likewise for y), in the order drawn; ``k = 0`` when the slide has no nuclei.

    Raises
    ------
    InputError
        ``counts`` does not have the grid's shape.

    Examples
    --------
    >>> counts = np.zeros((24, 32), np.int64); counts[8:16, 8:24] = 5
    >>> w = sample_windows(counts, width=8192, height=6144, roi=RoiParams(per_slide=3), rng=np.random.default_rng(0))
    >>> w.shape, bool(((w[:, 2] - w[:, 0]) == 2048).all())
    ((3, 4), True)
    """
    cell = roi.cell
    counts = np.asarray(counts)
    grid = (-(-height // cell), -(-width // cell))
    if counts.shape != grid:
        raise InputError(f"counts has shape {counts.shape}, but a {width}x{height} slide on {cell}-px cells has {grid}")
    w, h = min(roi.width, width), min(roi.height, height)
    xs, ys = _positions(width, w, cell), _positions(height, h, cell)
    sat = np.zeros((grid[0] + 1, grid[1] + 1), np.int64)  # summed-area table: a window's nuclei in 4 reads
    sat[1:, 1:] = counts.cumsum(0).cumsum(1)
    i0, i1 = xs // cell, np.minimum(-(-(xs + w) // cell), grid[1])
    j0, j1 = ys // cell, np.minimum(-(-(ys + h) // cell), grid[0])
    weight = sat[np.ix_(j1, i1)] - sat[np.ix_(j0, i1)] - sat[np.ix_(j1, i0)] + sat[np.ix_(j0, i0)]
    if weight.max(initial=0) <= 0:
        return np.zeros((0, 4), np.int64)
    jy, ix = np.nonzero(weight >= max(1.0, roi.min_share * weight.max()))
    x, y, p = xs[ix], ys[jy], weight[jy, ix].astype(np.float64)
    available = np.ones(x.size, bool)
    apart = np.ones(x.size, bool)
    chosen = []
    for _ in range(min(roi.per_slide, x.size)):
        pool = available & apart
        if not pool.any():
            pool = available
        k = int(rng.choice(np.flatnonzero(pool), p=p[pool] / p[pool].sum()))
        chosen.append(k)
        available[k] = False
        overlap = np.clip(w - np.abs(x - x[k]), 0, None) * np.clip(h - np.abs(y - y[k]), 0, None) / (w * h)
        apart &= overlap <= roi.max_overlap
    chosen = np.asarray(chosen, np.int64)
    return np.stack([x[chosen], y[chosen], x[chosen] + w, y[chosen] + h], axis=1)


def _slide_rng(roi: RoiParams, image_id: str) -> np.random.Generator:
    return np.random.default_rng([roi.seed, int(hashlib.sha256(image_id.encode()).hexdigest()[:16], 16)])


def resolve_roi(images: list[dict[str, Any]], roi: RoiParams | str | None = AUTO) -> RoiParams | None:
    """The ROI setting a cohort trains with: ``roi`` itself, or for ``"auto"`` the default ROIs when a
    labelled image is larger than :data:`SLIDE_PIXELS` (else None: whole images).

    Parameters
    ----------
    images : list of dict
        :func:`nucleograph.db.store.cohort_images` rows (``label``, ``width``, ``height``).
    roi : RoiParams, "auto" or None
        None trains on whole images.

    Returns
    -------
    RoiParams or None

    Raises
    ------
    InputError
        ``roi`` is none of these.
    """
    if roi is None or isinstance(roi, RoiParams):
        return roi
    if roi != AUTO:
        raise InputError(f"roi must be RoiParams, {AUTO!r} or None (whole images), not {roi!r}")
    large = any(r["label"] is not None and (r.get("width") or 0) * (r.get("height") or 0) > SLIDE_PIXELS for r in images)
    return RoiParams() if large else None


@dataclass
class RoiCohort:
    """A cohort's ROIs as :func:`load_rois` reads them: one graph per ROI, labelled by its slide.

    ``image_ids``, ``groups`` and ``windows`` are per ROI (its slide's id and patient, and ``x0, y0, x1,
    y1``); the attributes :func:`nucleograph.gnn.service.train_cohort` reads are those of its
    ``CohortData``.
    """

    cohort: str
    graphs: list[dgl.DGLGraph]
    labels: np.ndarray
    class_names: list[str]
    image_ids: list[str]
    groups: list[str | None]
    data_version: str
    skipped: list[str]  # slides without nuclei
    windows: np.ndarray
    roi: RoiParams
    from_cache: bool = False


def load_rois(db: GraphDB, settings: Settings, cohort: str, roi: RoiParams, *, cache: bool = True,
              progress: bool = False) -> RoiCohort:
    """Draw and read the ROIs of every labelled slide of ``cohort`` (cached on disk).

    Parameters
    ----------
    db : GraphDB
    settings : Settings
        ``home`` holds the disk cache.
    cohort : str
    roi : RoiParams
    cache : bool
        Read from and write to the disk cache (keyed by the cohort's content and ``roi``).
    progress : bool
        Show a progress bar over slides.

    Returns
    -------
    RoiCohort

    Raises
    ------
    InputError
        The cohort has no images, or its nuclei carry different feature sets.
    """
    schema.require_current(db)
    images = store.cohort_images(db, cohort)
    if not images:
        raise InputError(f"cohort {cohort!r} has no images in Neo4j: ingest some with "
                         f"`nucleograph ingest PATH --cohort {cohort}`")
    labelled = [r for r in images if r["label"] is not None]
    check_one_feature_set(cohort, labelled)
    fingerprint = store.cohort_fingerprint(db, cohort)
    version = hashlib.sha256(f"rois:{fingerprint}:{roi.key()}".encode()).hexdigest()[:16]
    cached = read_cache(settings.home, version) if cache else None
    if cached is not None:
        graphs, meta = cached
        return RoiCohort(cohort, graphs, np.asarray(meta["labels"], np.int64), meta["class_names"], meta["image_ids"],
                         meta["groups"], version, meta["skipped"], np.asarray(meta["windows"], np.int64).reshape(-1, 4),
                         roi, from_cache=True)
    class_names = sorted({r["label"] for r in labelled})
    graphs, labels, ids, groups, windows, skipped = [], [], [], [], [], []
    with progress_bar(total=len(labelled), desc=f"read ROIs {cohort}", unit="slide", enabled=progress) as bar:
        for r in labelled:
            density = store.nucleus_density(db, cohort, r["id"], cell=roi.cell) if r["n_nuclei"] else None
            drawn = np.zeros((0, 4), np.int64) if density is None else sample_windows(
                density["counts"], width=density["width"], height=density["height"], roi=roi, rng=_slide_rng(roi, r["id"]))
            for x0, y0, x1, y1 in drawn.tolist():
                arrays = store.window_nuclei(db, cohort, r["id"], x0, y0, x1, y1)
                if arrays is None or len(arrays["nids"]) == 0:
                    continue
                graphs.append(graph_from_arrays({**arrays, "threshold_px": density["threshold_px"]}))
                labels.append(class_names.index(r["label"]))
                ids.append(r["id"])
                groups.append(r["patient"])
                windows.append([x0, y0, x1, y1])
            if not drawn.size:
                skipped.append(r["id"])
            bar.update(1)
            bar.set_postfix(rois=len(graphs))
    data = RoiCohort(cohort, graphs, np.asarray(labels, np.int64), class_names, ids, groups, version, skipped,
                     np.asarray(windows, np.int64).reshape(-1, 4), roi)
    if cache and graphs:
        write_cache(settings.home, version, graphs, {"labels": labels, "class_names": class_names, "image_ids": ids,
                                                     "groups": groups, "skipped": skipped, "windows": windows})
    return data


def aggregate(proba: np.ndarray, slide_index: np.ndarray, n_slides: int) -> np.ndarray:
    """Slides' class probabilities from their ROIs': the softmax of the mean log-probability per class.

    For two classes the slide's log-odds is the mean of its ROIs' log-odds.

    Parameters
    ----------
    proba : ndarray, shape (n_rois, C)
    slide_index : ndarray of int, shape (n_rois,)
        The slide of each ROI, in ``0 .. n_slides - 1``.
    n_slides : int

    Returns
    -------
    ndarray, shape (n_slides, C)
        Rows sum to 1; a slide without ROIs gets the uniform distribution.

    Examples
    --------
    >>> p = aggregate(np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]), np.array([0, 0, 1]), 2)
    >>> np.round(np.log(p[:, 1] / p[:, 0]), 3)  # mean of log(1/9) and log(6/4); log(4)
    array([-0.896,  1.386])
    """
    proba = np.asarray(proba, np.float64)
    logp = np.log(np.clip(proba, 1e-12, 1.0))
    sums = np.zeros((n_slides, proba.shape[1]))
    np.add.at(sums, np.asarray(slide_index, np.int64), logp)
    counts = np.bincount(slide_index, minlength=n_slides).astype(np.float64)
    mean = sums / np.maximum(counts, 1.0)[:, None]
    mean -= mean.max(1, keepdims=True)
    out = np.exp(mean)
    return out / out.sum(1, keepdims=True)


@dataclass
class SlideView:
    """A :class:`RoiCohort` seen per slide (one row per slide), as a run records its predictions."""

    cohort: str
    class_names: list[str]
    image_ids: list[str]
    labels: np.ndarray
    groups: list[str | None]
    data_version: str
    skipped: list[str]
    from_cache: bool
    n_rois: int


def to_slides(data: RoiCohort, results: list[TrainResult]) -> tuple[SlideView, list[TrainResult]]:
    """The slides' view of a run trained on ROIs: each fold's probabilities, split and test metrics per slide.

    Parameters
    ----------
    data : RoiCohort
    results : list of TrainResult
        Trained on ``data.graphs`` (one per fold).

    Returns
    -------
    (SlideView, list of TrainResult)
        Per fold, ``proba`` and ``predictions`` per slide (:func:`aggregate`), ``split`` in slide indices
        (a slide's ROIs are all in one part) and ``metrics`` of the test slides, plus the ROI-level test
        metrics as ``roi_<name>``.
    """
    slide_ids = list(dict.fromkeys(data.image_ids))
    position = {s: i for i, s in enumerate(slide_ids)}
    index = np.asarray([position[s] for s in data.image_ids], np.int64)
    first = np.asarray([data.image_ids.index(s) for s in slide_ids], np.int64)
    labels = data.labels[first]
    view = SlideView(data.cohort, data.class_names, slide_ids, labels, [data.groups[i] for i in first],
                     data.data_version, data.skipped, data.from_cache, len(data.graphs))
    out = []
    for r in results:
        proba = aggregate(r.proba, index, len(slide_ids))
        split = {part: np.unique(index[np.asarray(r.split[part], np.int64)]) for part in ("train", "val", "test")}
        _check_split(split, slide_ids)
        test = split["test"]
        metrics = classification_metrics(labels[test], proba[test]) if test.size else {}
        metrics.update({f"roi_{k}": r.metrics[k] for k in _ROI_METRICS if k in r.metrics})
        out.append(dataclasses.replace(r, metrics=metrics, split=split, proba=proba, predictions=proba.argmax(1)))
    return view, out


def _check_split(split: dict[str, np.ndarray], slide_ids: list[str]) -> None:
    """Refuse metrics from a split that put ROIs of one slide on two sides (they would be inflated)."""
    parts = list(split)
    for i, a in enumerate(parts):
        for b in parts[i + 1 :]:
            both = np.intersect1d(split[a], split[b])
            if both.size:
                raise ModelError(f"ROIs of slide(s) {', '.join(slide_ids[k] for k in both[:3])} are in both the {a} and "
                                 f"the {b} split: a slide's ROIs must stay together (group the split by slide). "
                                 "This is a bug: report it with the run's cohort")
