"""One image (or slide) to one nucleus graph: read -> detect -> measure -> link.

:class:`IngestParams` holds every option that changes the graph; its :meth:`~IngestParams.key` is
the cache key stored on the ``Image`` node, so re-ingesting a file with the same parameters is
recognised as a no-op and new parameters replace the image's graph.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nucleograph.errors import InputError
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.detect import (
    DETECTION_METHODS,
    SLIDE_OVERLAP,
    detect_nuclei,
    detect_slide,
    detect_slide_tile,
    merge_slide_tiles,
    unet_version,
)
from nucleograph.ingest.features import FEATURE_COLUMNS, nucleus_features
from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX, build_edges, threshold_pixels
from nucleograph.ingest.importers import ImportParams, import_image, import_slide
from nucleograph.ingest.outlines import outlines
from nucleograph.ingest.polygons import SegmentationParams, import_segmentation
from nucleograph.ingest.readers import is_slide, read_image, read_slide_tile, slide_info, slide_tile_grid

PIPELINE_VERSION = 1
#: The detectors an ingest can use: the one list, detect.py's (the CLI's --detector choices come from here).
DETECTORS = DETECTION_METHODS


@dataclass(frozen=True)
class IngestParams:
    """Options that determine an image's graph.

    Parameters
    ----------
    detector : {"watershed", "unet"}
        Nucleus detector (``unet`` is the paper's choice; ``watershed`` is stain deconvolution).
    threshold : float
        Link two nuclei when their centroids are closer than this (edge weight ``1 - d/threshold``).
    threshold_unit : {"px", "um"}
        ``um`` converts with the image's microns per pixel (required then).
    min_area : int
        Smallest nucleus kept, in pixels.
    slide_tile : int
        Tile side used to read whole-slide images.
    """

    detector: str = "watershed"
    threshold: float = DEFAULT_THRESHOLD_PX
    threshold_unit: str = "px"
    min_area: int = 30
    slide_tile: int = 2048

    def __post_init__(self):
        if self.detector not in DETECTORS:
            raise InputError(f"unknown detector {self.detector!r}: choose one of {', '.join(DETECTORS)}")
        if self.threshold_unit not in ("px", "um"):
            raise InputError(f"threshold unit {self.threshold_unit!r}: choose px or um")
        if not self.threshold > 0:
            raise InputError(f"the edge threshold must be positive, got {self.threshold}")

    def key(self) -> str:
        """A short stable hash of the parameters and the pipeline version (with the U-Net, also of its
        shipped weights, test-time augmentation and post-processing defaults, :func:`unet_version`: new ones
        detect other nuclei, so a re-ingest redoes the images instead of keeping the old detector's graphs)."""
        payload = {**asdict(self), "version": PIPELINE_VERSION}
        if self.detector == "unet":
            payload["unet"] = unet_version()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ImageGraph:
    """An image's nuclei (feature columns) and their edges, ready to store."""

    image_id: str
    record: ImageRecord
    width: int
    height: int
    nuclei: dict[str, np.ndarray]
    edges: dict[str, np.ndarray]
    threshold_px: float
    timings: dict[str, float] = field(default_factory=dict)
    #: imported nuclei: objects of the file repaired, clipped or skipped, by reason (ingest.importers)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def n_nuclei(self) -> int:
        return int(len(self.nuclei["nucleus_id"]))

    @property
    def n_edges(self) -> int:
        return int(len(self.edges["src"]))


def content_hash(path: Path, *, chunk: int = 1 << 20) -> str:
    """The image's id: the first 16 hex digits of the SHA-256 of the file's bytes.

    Parameters
    ----------
    path : Path
    chunk : int, optional
        Bytes read at a time, so a whole slide never sits in memory.

    Returns
    -------
    str

    Raises
    ------
    InputError
        The file cannot be read.
    """
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions") from exc
    return h.hexdigest()[:16]


def process_image(
    record: ImageRecord, params: IngestParams | ImportParams, *, unet=None, image_id: str | None = None
) -> ImageGraph:
    """Turn one image or slide into an :class:`ImageGraph` (pure: touches no database).

    Every nucleus gets an ``outline`` (:func:`nucleograph.ingest.outlines.outlines`), except those
    detected on whole slides.

    Parameters
    ----------
    record : ImageRecord
        The file, its label and its microns per pixel.
    params : IngestParams or ImportParams
        Detect nuclei, or read them from the segmentation file :class:`ImportParams` names (then
        measured the same way; ``notes`` counts what was repaired, clipped or skipped). With
        :class:`~nucleograph.ingest.polygons.SegmentationParams`, ``record.path`` is that file and
        there is no image: morphology features only.
    unet : nucleograph.ingest.unet.UNet, optional
        Loaded network for ``params.detector == "unet"`` (default: the shipped weights).
    image_id : str, optional
        The file's :func:`content_hash` when the caller has it already.

    Returns
    -------
    ImageGraph

    Raises
    ------
    InputError
        The file is unreadable, too small, too large, or the threshold needs a missing mpp; or the
        segmentation file is unusable.
    """
    path = Path(record.path)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    image_id = image_id or content_hash(path)
    threshold_px = edge_threshold_px(record, params)
    width, height, nuclei, notes = _nuclei(path, params, unet, timings, t)
    return link_nuclei(record, image_id=image_id, width=width, height=height, nuclei=nuclei,
                       threshold_px=threshold_px, notes=notes, timings=timings)


def edge_threshold_px(record: ImageRecord, params: IngestParams | ImportParams) -> float:
    """The edge threshold in pixels for ``record``: checked before any detection, so that an image whose
    threshold cannot be converted fails at once.

    Parameters
    ----------
    record : ImageRecord
    params : IngestParams or ImportParams

    Returns
    -------
    float

    Raises
    ------
    InputError
        The threshold is in microns and the image's microns per pixel are unknown.
    """
    if params.threshold_unit == "um" and not record.mpp:
        raise InputError(
            f"{record.path}: the edge threshold is in microns but the image's microns-per-pixel is unknown; "
            "add an mpp column to the manifest or use --threshold-unit px"
        )
    return threshold_pixels(params.threshold, unit=params.threshold_unit, mpp=record.mpp)


def link_nuclei(
    record: ImageRecord, *, image_id: str, width: int, height: int, nuclei: dict[str, np.ndarray],
    threshold_px: float, notes: dict[str, int] | None = None, timings: dict[str, float] | None = None,
) -> ImageGraph:
    """The last step of :func:`process_image`: link nuclei closer than ``threshold_px`` into the image's graph
    (also the step that joins a slide's tiles when a Dask cluster detected them as separate tasks).

    Parameters
    ----------
    record : ImageRecord
    image_id : str
        The file's :func:`content_hash`.
    width, height : int
        The image's size in pixels.
    nuclei : dict of str to ndarray
        Feature columns with ``centroid_x``, ``centroid_y`` and ``nucleus_id``.
    threshold_px : float
        :func:`edge_threshold_px`.
    notes, timings : dict, optional
        Carried into the graph; ``timings["edges"]`` is added.

    Returns
    -------
    ImageGraph
    """
    timings = dict(timings or {})
    t = time.perf_counter()
    centroids = np.stack([nuclei["centroid_x"], nuclei["centroid_y"]], axis=1).astype(np.float64)
    edges = build_edges(centroids.reshape(-1, 2), threshold=threshold_px)
    timings["edges"] = time.perf_counter() - t
    return ImageGraph(
        image_id=image_id, record=record, width=int(width), height=int(height), nuclei=nuclei, edges=edges,
        threshold_px=float(threshold_px), timings=timings, notes=dict(notes or {}),
    )


def _nuclei(path: Path, params, unet, timings: dict[str, float], t: float):
    """``width, height, nuclei, notes`` of the image or slide at ``path``: detected, or imported (from
    the segmentation file ``path`` itself when there is no image)."""
    if isinstance(params, SegmentationParams):
        width, height, nuclei, notes = import_segmentation(params)
        timings["import+features"] = time.perf_counter() - t
        return width, height, nuclei, notes
    imported = isinstance(params, ImportParams)
    notes: dict[str, int] = {}
    if is_slide(path):
        width, height = slide_info(path)["level_dimensions"][0]
        timings["read"] = time.perf_counter() - t
        t = time.perf_counter()
        if imported:
            nuclei, notes = import_slide(path, params, width=width, height=height)
            timings["import+features"] = time.perf_counter() - t
        else:
            nuclei = detect_slide(path, tile=params.slide_tile, **_detect_kwargs(params, unet))
            timings["detect+features"] = time.perf_counter() - t
        return width, height, nuclei, notes
    image = read_image(path)
    height, width = image.shape[:2]
    timings["read"] = time.perf_counter() - t
    t = time.perf_counter()
    if imported:
        nuclei, notes = import_image(image, params)
        timings["import+features"] = time.perf_counter() - t
        return width, height, nuclei, notes
    labels = detect_nuclei(image, **_detect_kwargs(params, unet))
    timings["detect"] = time.perf_counter() - t
    t = time.perf_counter()
    nuclei = nucleus_features(image, labels)
    nuclei["outline"] = outlines(labels, nuclei["nucleus_id"])
    timings["features"] = time.perf_counter() - t
    return width, height, nuclei, notes


def slide_tiles(record: ImageRecord, params: IngestParams | ImportParams) -> list[tuple[int, int, int, int]] | None:
    """The tiles on which :func:`process_image` detects the nuclei of a whole slide, each of which can be a task
    of its own (:func:`detect_tile`); None when ``record`` is detected in one piece (an image, or nuclei read
    from a file).

    Parameters
    ----------
    record : ImageRecord
    params : IngestParams or ImportParams

    Returns
    -------
    list of (x0, y0, w, h) or None
    """
    if isinstance(params, ImportParams) or not is_slide(record.path):
        return None
    width, height = slide_info(record.path)["level_dimensions"][0]
    return slide_tile_grid(width, height, tile=params.slide_tile, overlap=SLIDE_OVERLAP)


def detect_tile(
    record: ImageRecord, params: IngestParams, tile: tuple[int, int, int, int], *, unet=None
) -> dict[str, np.ndarray] | None:
    """One tile of :func:`slide_tiles`: read, detected and measured as :func:`process_image` does it.

    Parameters
    ----------
    record : ImageRecord
        The slide.
    params : IngestParams
    tile : (x0, y0, w, h)
    unet : nucleograph.ingest.unet.UNet, optional

    Returns
    -------
    dict of str to ndarray or None
        :func:`~nucleograph.ingest.detect.detect_slide_tile`'s nuclei; None for glass.
    """
    x0, y0, w, h = tile
    width, height = slide_info(record.path)["level_dimensions"][0]
    rgb = read_slide_tile(record.path, x0, y0, w, h)
    return detect_slide_tile(rgb, x0, y0, width=width, height=height, overlap=SLIDE_OVERLAP,
                             **_detect_kwargs(params, unet))


def slide_graph(
    record: ImageRecord, params: IngestParams, parts: list[dict[str, np.ndarray] | None], *, image_id: str,
    timings: dict[str, float] | None = None,
) -> ImageGraph:
    """A slide's graph from its tiles' nuclei (:func:`detect_tile` of every tile of :func:`slide_tiles`, in
    that order): the graph :func:`process_image` builds from the slide.

    Parameters
    ----------
    record : ImageRecord
    params : IngestParams
    parts : list
        Each tile's nuclei, or None for glass.
    image_id : str
    timings : dict, optional

    Returns
    -------
    ImageGraph
    """
    width, height = slide_info(record.path)["level_dimensions"][0]
    nuclei = merge_slide_tiles([p for p in parts if p is not None])
    return link_nuclei(record, image_id=image_id, width=width, height=height, nuclei=nuclei,
                       threshold_px=edge_threshold_px(record, params), timings=timings)


def _detect_kwargs(params: IngestParams, unet) -> dict:
    kwargs = {"method": params.detector, "min_area": params.min_area}
    if params.detector == "unet":
        kwargs["model"] = unet
    return kwargs


def feature_names(nuclei: dict[str, np.ndarray] | None = None) -> list[str]:
    """The per-nucleus model features, in the order of ``Nucleus.features``.

    Parameters
    ----------
    nuclei : dict of str to ndarray, optional
        An image's nuclei: only the features measured on them (a segmentation ingested without its image
        has no stain or texture features: absent, not zero). Default: every feature.

    Returns
    -------
    list of str
    """
    return [c for c in FEATURE_COLUMNS if nuclei is None or c in nuclei]
