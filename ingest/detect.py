"""Nucleus instance segmentation: one interface, two methods.

:func:`detect_nuclei` returns an instance label image (0 = background, 1..N = nuclei) from
either a small U-Net trained on real and synthetic H&E (:mod:`nucleograph.ingest.unet`, the
default) or a classical hematoxylin watershed. :func:`detect_slide` runs either over a whole
slide, tile by tile, and returns one feature table in slide coordinates.
:func:`match_centroids`, :func:`aggregated_jaccard_index` and :func:`panoptic_quality` score a
detection against reference nuclei.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from .stain import hematoxylin_od

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_TTA",
    "DETECTION_METHODS",
    "MIN_TISSUE",
    "SLIDE_OVERLAP",
    "aggregated_jaccard_index",
    "detect_nuclei",
    "detect_slide",
    "detect_slide_tile",
    "filter_labels",
    "match_centroids",
    "merge_slide_tiles",
    "panoptic_quality",
    "rasterize_polygons",
    "split_by_cores",
    "split_instances",
    "unet_instances",
    "unet_version",
]

DETECTION_METHODS = ("watershed", "unet")
#: The detector used when none is named. On held-out real H&E reference nuclei the U-Net
#: (ingest/weights/unet_he.pt) scores F1@6px 0.86 and AJI 0.70 where the watershed scores 0.71 and
#: 0.47, and F1 1.00 vs 0.89 on synthetic breast tiles (bench/RESULTS.md, issue 14).
DEFAULT_METHOD = "unet"
#: Test-time augmentation of the U-Net by default: its maps are averaged over the image and its mirror
#: image (``predict_maps(tta=2)``). On held-out real H&E it lifts F1@6px 0.859 -> 0.869 (tumour nest) and
#: 0.684 -> 0.710 (stroma) for 0.4 s more CPU per 2048 x 1536 tile; 4 symmetries pass the 2 s budget
#: (bench/RESULTS.md, "Test-time augmentation").
DEFAULT_TTA = 2
#: The U-Net's post-processing: Gaussian sigma of the distance map, in pixels, and the foreground
#: probability each nucleus found above the threshold (0.5) is grown into. Chosen on real stroma that the
#: networks choosing it never saw (two networks, each trained without one half of the stromal image's
#: training rows); on the held-out rows it lifts stroma F1@6px 0.712 -> 0.725 and AJI 0.548 -> 0.595
#: (bench/choose_unet_postprocessing.py; bench/RESULTS.md, "Post-processing chosen on unseen stroma").
DIST_SMOOTH = 3.0
GROW = 0.4
#: Pixels shared by neighbouring tiles of a slide: a nucleus up to half of it wide is measured whole.
SLIDE_OVERLAP = 128
#: A slide tile whose share of non-white pixels is below this is glass and skipped.
MIN_TISSUE = 0.05


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB); got shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(
            f"image must be uint8 RGB; got dtype {image.dtype} (read it with ingest.readers.read_image)"
        )
    return image


def detect_nuclei(
    image: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    model=None,
    min_area: int = 30,
    max_area: int | None = 5000,
    min_distance: int = 6,
    sigma: float = 2.0,
    threshold: float | None = None,
    min_od: float = 0.3,
    core: float = 0.4,
    tile: int | None = None,
    overlap: int = 64,
    tta: int = DEFAULT_TTA,
    dist_smooth: float = DIST_SMOOTH,
    grow: float | None = GROW,
    device: str = "cpu",
) -> np.ndarray:
    """Segment nuclei in an RGB H&E image.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
        RGB image, e.g. from :func:`nucleograph.ingest.readers.read_image`.
    method : {"unet", "watershed"}
        ``"unet"`` (default, :data:`DEFAULT_METHOD`): :class:`nucleograph.ingest.unet.UNet`
        foreground probability and normalised distance-to-boundary maps (at half resolution for
        the shipped weights, tiled, averaged over ``tta`` symmetries) -> foreground ``prob > threshold``
        -> one marker per nucleus core (``dist > core``, on the distance smoothed by ``dist_smooth``)
        -> :func:`skimage.segmentation.watershed` on the distance -> each nucleus grown into
        ``prob > grow``.
        ``"watershed"``: hematoxylin optical density -> Gaussian smoothing -> threshold
        (Otsu over stained pixels, at least ``min_od``) -> fill holes -> distance transform
        -> :func:`skimage.feature.peak_local_max` markers -> :func:`skimage.segmentation.watershed`.
        It needs no network and suits synthetic tiles, but on real H&E it splits large vesicular
        nuclei into chromatin fragments and misses pale ones (bench/RESULTS.md, issue 14).
    model : ingest.unet.UNet, optional
        Network for ``method="unet"``; default :func:`nucleograph.ingest.unet.load_unet` (shipped weights).
    min_area, max_area : int, optional
        Objects outside [min_area, max_area] pixels are dropped (``max_area=None``: no limit).
    min_distance : int, optional
        Minimum distance in pixels between two nucleus centres (marker spacing; watershed only).
    sigma : float, optional
        Gaussian smoothing of the hematoxylin channel, in pixels (watershed only).
    threshold : float, optional
        Watershed: hematoxylin OD above which a pixel is nuclear (default Otsu). U-Net: foreground
        probability above which a pixel is nuclear (default 0.5).
    min_od : float, optional
        Lower bound on the automatic threshold, so a blank or stroma-only image yields no
        nuclei instead of Otsu splitting noise (watershed only).
    core : float, optional
        Normalised distance above which a foreground pixel belongs to a nucleus' core; each
        connected core seeds one nucleus (unet only). Lower merges fewer touching nuclei into one
        seed but splits elongated ones more.
    tile, overlap : int, optional
        Tiled inference window and overlap in network pixels (unet only; see
        :func:`nucleograph.ingest.unet.predict_maps`; ``tile=None``: ``unet.DEFAULT_TILE``, one window
        for a 2048-pixel tile at the shipped half resolution).
    dist_smooth : float, optional
        Gaussian sigma applied to the U-Net's distance map, in pixels (unet only; see
        :func:`split_by_cores`).
    grow : float or None, optional
        Each nucleus found in ``prob > threshold`` is grown by the watershed into ``prob > grow`` (unet only;
        a hysteresis: pale rims join their nucleus, no new nucleus starts there). None: no growth.
    tta : {1, 2, 4, 8}, optional
        Symmetries of the image whose U-Net maps are averaged (unet only; :data:`DEFAULT_TTA`, each one
        a network pass; 1 turns test-time augmentation off).
    device : str, optional
        Torch device for ``method="unet"``.

    Returns
    -------
    labels : (H, W) int32 ndarray
        0 for background, 1..N for nuclei (consecutive; the order is deterministic but arbitrary).
    """
    image = _check_image(image)
    if method not in DETECTION_METHODS:
        raise ValueError(f"method must be one of {DETECTION_METHODS}; got {method!r}")
    if min_area < 1:
        raise ValueError(f"min_area must be >= 1 pixel; got {min_area}")
    if max_area is not None and max_area < min_area:
        raise ValueError(f"max_area ({max_area}) must be >= min_area ({min_area}) or None")
    if min_distance < 1:
        raise ValueError(f"min_distance must be >= 1 pixel; got {min_distance}")
    if not 0.0 < core < 1.0:
        raise ValueError(f"core must be in (0, 1) (a normalised distance); got {core}")
    if image.size == 0 or int(image.max()) - int(image.min()) < 8:
        # A flat image (blank glass, black frame, padding) has no nuclei; the U-Net would
        # otherwise be asked about inputs far from anything it was trained on.
        return np.zeros(image.shape[:2], np.int32)
    if method == "watershed":
        labels = _watershed(image, min_distance=min_distance, sigma=sigma, threshold=threshold, min_od=min_od)
        return filter_labels(labels, min_area=min_area, max_area=max_area)
    from .unet import DEFAULT_TILE, load_unet, predict_maps

    net = load_unet() if model is None else model
    tile = DEFAULT_TILE if tile is None else tile
    prob, dist = predict_maps(net, image, tile=tile, overlap=overlap, tta=tta, device=device)
    return unet_instances(
        prob, dist, threshold=0.5 if threshold is None else threshold, core=core, dist_smooth=dist_smooth,
        grow=grow, min_area=min_area, max_area=max_area,
    )


def unet_instances(
    prob: np.ndarray, dist: np.ndarray, *, threshold: float = 0.5, core: float = 0.4,
    dist_smooth: float = DIST_SMOOTH, grow: float | None = GROW, min_area: int = 30, max_area: int | None = 5000,
) -> np.ndarray:
    """The U-Net detector's nuclei from its maps (:func:`detect_nuclei`'s post-processing, whose parameters
    these are): :func:`split_by_cores` on ``prob > threshold``, grown into ``prob > grow``, then
    :func:`filter_labels`."""
    wider = None if grow is None or grow >= threshold else prob > grow
    labels = split_by_cores(prob > threshold, dist, core=core, smooth=dist_smooth, grow=wider, min_seed=min_area)
    return filter_labels(labels, min_area=min_area, max_area=max_area)


@functools.cache
def unet_version() -> str:
    """What decides the default U-Net detector's nuclei beyond its arguments: a hash of the shipped
    weights' bytes, :data:`DEFAULT_TTA` and the post-processing defaults (part of an ingest's parameter key)."""
    from .unet import DEFAULT_WEIGHTS

    try:
        digest = hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()[:12]
    except OSError:
        digest = "missing"  # load_unet() names the file and the fix when the detector runs
    return f"{digest}:tta{DEFAULT_TTA}:smooth{DIST_SMOOTH:g}:grow{GROW}"


def _watershed(image, *, min_distance, sigma, threshold, min_od) -> np.ndarray:
    h = hematoxylin_od(image)
    if sigma > 0:
        h = ndi.gaussian_filter(h, sigma)
    if threshold is None:
        stained = h[h > 0.5 * min_od]
        if stained.size < 2 or np.ptp(stained) < 1e-3:
            return np.zeros(h.shape, np.int32)
        threshold = max(float(threshold_otsu(stained)), min_od)
    mask = ndi.binary_fill_holes(h > threshold)
    # Opening removes one-pixel bridges between touching nuclei and thin stained fibres.
    mask = ndi.binary_opening(mask, structure=np.ones((3, 3), bool))
    dist = ndi.distance_transform_edt(mask).astype(np.float32)
    return split_instances(mask, dist, min_distance=min_distance, smooth=1.0)


def split_instances(
    mask: np.ndarray, dist: np.ndarray, *, min_distance: int = 4, smooth: float = 1.0
) -> np.ndarray:
    """Split a foreground mask into instances by watershed on a distance map.

    Parameters
    ----------
    mask : (H, W) bool ndarray
        Foreground.
    dist : (H, W) float ndarray
        Distance-like map, highest at object centres.
    min_distance : int, optional
        Minimum distance between two markers, in pixels.
    smooth : float, optional
        Gaussian sigma applied to ``dist`` before finding peaks; suppresses split nuclei
        caused by jagged outlines.

    Returns
    -------
    labels : (H, W) int32 ndarray
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    d = ndi.gaussian_filter(dist.astype(np.float32), smooth) if smooth > 0 else dist.astype(np.float32)
    components, n = ndi.label(mask)
    peaks = peak_local_max(d, min_distance=min_distance, labels=components, exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # Components without a peak (flat plateaus) still get one marker each.
    has_peak = np.zeros(n + 1, bool)
    has_peak[components[tuple(peaks.T)]] = True
    missing = np.flatnonzero(~has_peak[1:]) + 1
    if missing.size:
        centres = ndi.maximum_position(d, components, missing)
        for k, (r, c) in enumerate(centres, start=len(peaks) + 1):
            markers[r, c] = k
    return watershed(-d, markers, mask=mask).astype(np.int32)


def split_by_cores(
    mask: np.ndarray, dist: np.ndarray, *, core: float = 0.4, smooth: float = 2.0,
    grow: np.ndarray | None = None, min_seed: int = 1,
) -> np.ndarray:
    """Split a foreground mask into instances grown from the cores of a normalised distance map.

    Each connected region of ``mask & (dist > core)`` seeds one instance, which a watershed on
    ``-dist`` grows to fill the mask; a foreground component without a core is one instance.
    With a distance normalised per nucleus (1 at each centre, as the U-Net predicts) a core
    threshold treats small and large nuclei alike, where :func:`split_instances`' fixed marker
    spacing splits large nuclei and merges small ones.

    Parameters
    ----------
    mask : (H, W) bool ndarray
        Foreground.
    dist : (H, W) float ndarray
        Normalised distance to the nucleus boundary, in [0, 1].
    core : float, optional
        Core threshold in (0, 1).
    smooth : float, optional
        Gaussian sigma applied to ``dist`` first, in pixels; without it a long spindle-shaped
        nucleus, whose predicted distance ripples along its axis, falls apart into several
        cores (on hgsc_nest it changes F1 by < 0.01; on the stromal image it lifts F1 from
        0.59 to 0.64, bench/RESULTS.md).
    grow : (H, W) bool ndarray, optional
        A wider foreground (e.g. a lower probability threshold): the instances, once those smaller than
        ``min_seed`` pixels are dropped, are grown into it by a second watershed on ``-dist``. Its pixels
        that no instance reaches stay background: nothing new starts there.
    min_seed : int, optional
        Smallest instance, in pixels, grown into ``grow``.

    Returns
    -------
    labels : (H, W) int32 ndarray
    """
    mask = np.asarray(mask, bool)
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    dist = np.asarray(dist, np.float32)
    if smooth > 0:
        dist = ndi.gaussian_filter(dist, smooth)
    markers, n = ndi.label(mask & (dist > core))
    components, m = ndi.label(mask)
    has_core = np.zeros(m + 1, bool)
    has_core[components[markers > 0]] = True
    missing = np.flatnonzero(~has_core[1:]) + 1
    if missing.size:
        extra = np.zeros(m + 1, np.int32)
        extra[missing] = np.arange(n + 1, n + 1 + missing.size, dtype=np.int32)
        markers = np.where(markers > 0, markers, extra[components])
    labels = watershed(-dist, markers, mask=mask).astype(np.int32)
    if grow is None:
        return labels
    seeds = filter_labels(labels, min_area=min_seed)
    return watershed(-dist, seeds, mask=np.asarray(grow, bool) | (seeds > 0)).astype(np.int32)


def filter_labels(labels: np.ndarray, *, min_area: int = 1, max_area: int | None = None) -> np.ndarray:
    """Drop objects outside [min_area, max_area] pixels and renumber the rest 1..N.

    Returns
    -------
    labels : (H, W) int32 ndarray
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D; got shape {labels.shape}")
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    if max_area is not None:
        keep &= areas <= max_area
    keep[0] = False
    lut = np.zeros(areas.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def detect_slide(
    path: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    tile: int = 2048,
    overlap: int = SLIDE_OVERLAP,
    level: int = 0,
    max_tiles: int | None = None,
    min_tissue: float = MIN_TISSUE,
    progress: bool = False,
    **detect_kwargs,
) -> dict[str, np.ndarray]:
    """Detect and measure nuclei over a whole slide, tile by tile.

    Tiles overlap by ``overlap`` pixels; a nucleus is kept by the tile in whose core (the
    tile minus half the overlap on each shared side) its centroid lies, so nuclei on tile
    borders are counted once and measured whole as long as they are smaller than
    ``overlap / 2``.

    Parameters
    ----------
    path : str or Path
        Whole slide (SVS, pyramidal TIFF, ...).
    method : {"unet", "watershed"}
    tile, overlap, level, max_tiles
        See :func:`nucleograph.ingest.readers.iter_slide_tiles`.
    min_tissue : float, optional
        Skip tiles whose fraction of non-white pixels is below this (background glass).
    progress : bool, optional
        Show a tqdm progress bar.
    **detect_kwargs
        Passed to :func:`detect_nuclei`.

    Returns
    -------
    features : dict of str to ndarray
        :func:`nucleograph.ingest.features.nucleus_features` columns with ``centroid_x``/``centroid_y`` in
        slide pixels at ``level`` and ``nucleus_id`` renumbered 1..N across the slide.
    """
    from .readers import iter_slide_tiles, slide_info

    if overlap < 0 or overlap >= tile:
        raise ValueError(f"overlap must be in [0, tile); got overlap={overlap}, tile={tile}")
    levels = slide_info(path)["level_dimensions"]
    if not 0 <= level < len(levels):
        raise ValueError(f"level must be in [0, {len(levels)}) for {path}; got {level}")
    width, height = levels[level]
    step = tile - overlap
    n_tiles = -(-max(width - overlap, 1) // step) * -(-max(height - overlap, 1) // step)
    tiles = iter_slide_tiles(path, tile=tile, overlap=overlap, level=level, max_tiles=max_tiles)
    if progress:
        from tqdm import tqdm

        tiles = tqdm(
            tiles, total=min(n_tiles, max_tiles or n_tiles), desc=f"nuclei {Path(path).name}", unit="tile"
        )
    if method == "unet" and detect_kwargs.get("model") is None:
        from .unet import load_unet

        detect_kwargs["model"] = load_unet()  # once, not once per tile
    parts = []
    for x0, y0, rgb in tiles:
        part = detect_slide_tile(rgb, x0, y0, width=width, height=height, overlap=overlap, method=method,
                                 min_tissue=min_tissue, **detect_kwargs)
        if part is not None:
            parts.append(part)
    return merge_slide_tiles(parts)


def detect_slide_tile(
    rgb: np.ndarray, x0: int, y0: int, *, width: int, height: int, overlap: int = SLIDE_OVERLAP,
    method: str = DEFAULT_METHOD, min_tissue: float = MIN_TISSUE, **detect_kwargs,
) -> dict[str, np.ndarray] | None:
    """The nuclei of one tile of a slide that the tile keeps (:func:`detect_slide`'s step per tile).

    A nucleus is kept by the tile in whose core (the tile minus half the overlap on each side shared
    with a neighbour) its centroid lies; a tile is a task of its own when a Dask cluster ingests a slide.

    Parameters
    ----------
    rgb : (h, w, 3) uint8 ndarray
        The tile's pixels.
    x0, y0 : int
        Its top-left corner in slide pixels.
    width, height : int
        The slide level's size (tiles on its border keep nuclei up to the edge).
    overlap : int
        The overlap the tiles were read with.
    method, min_tissue, **detect_kwargs
        As for :func:`detect_slide`.

    Returns
    -------
    dict of str to ndarray or None
        Feature columns and ``outline`` in slide coordinates (``nucleus_id`` still per tile), or None
        for background glass.
    """
    from .features import nucleus_features
    from .outlines import outlines, shift_outlines

    if (rgb.min(axis=-1) < 220).mean() < min_tissue:
        return None
    labels = detect_nuclei(rgb, method=method, **detect_kwargs)
    feats = nucleus_features(rgb, labels)
    feats["outline"] = outlines(labels, feats["nucleus_id"])
    cx, cy = feats["centroid_x"], feats["centroid_y"]
    h, w = rgb.shape[:2]
    half = overlap / 2.0
    lo_x = half if x0 > 0 else -np.inf
    lo_y = half if y0 > 0 else -np.inf
    hi_x = w - half if x0 + w < width else np.inf
    hi_y = h - half if y0 + h < height else np.inf
    keep = (cx >= lo_x) & (cx < hi_x) & (cy >= lo_y) & (cy < hi_y)
    part = {k: v[keep] for k, v in feats.items()}
    part["centroid_x"] = part["centroid_x"] + x0
    part["centroid_y"] = part["centroid_y"] + y0
    part["outline"] = shift_outlines(part["outline"], x0, y0)
    return part


def merge_slide_tiles(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One slide's nuclei from its tiles' (:func:`detect_slide_tile`, in grid order; glass left out),
    ``nucleus_id`` renumbered 1..N across the slide.

    Parameters
    ----------
    parts : list of dict of str to ndarray

    Returns
    -------
    dict of str to ndarray
    """
    from .features import concat_features

    out = concat_features(parts)
    out["nucleus_id"] = np.arange(1, out["nucleus_id"].size + 1, dtype=out["nucleus_id"].dtype)
    return out


def match_centroids(pred, true, *, radius: float = 8.0) -> dict[str, float]:
    """Score detected against true nuclei by one-to-one centroid matching.

    Pairs closer than ``radius`` are matched by minimum total distance (Hungarian algorithm,
    :func:`scipy.optimize.linear_sum_assignment`); each nucleus matches at most once.

    Parameters
    ----------
    pred, true : (N, 2) and (M, 2) array_like
        Centroids (x, y) in pixels.
    radius : float, optional
        Largest distance of a match, in pixels.

    Returns
    -------
    scores : dict
        ``tp``, ``fp``, ``fn`` (int), ``precision``, ``recall``, ``f1`` (float; 1.0 when both
        sets are empty) and ``mean_dist`` of the matches.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial import cKDTree

    pred = np.asarray(pred, np.float64).reshape(-1, 2)
    true = np.asarray(true, np.float64).reshape(-1, 2)
    tp, dists = 0, np.zeros(0)
    if len(pred) and len(true):
        sparse = cKDTree(true).sparse_distance_matrix(cKDTree(pred), radius, output_type="coo_matrix")
        if sparse.nnz:
            # Only rows/columns with a candidate take part; a large cost marks impossible pairs.
            rows, r_inv = np.unique(sparse.row, return_inverse=True)
            cols, c_inv = np.unique(sparse.col, return_inverse=True)
            big = 1e6 * (radius + 1.0)
            cost = np.full((len(rows), len(cols)), big)
            cost[r_inv, c_inv] = sparse.data
            i, j = linear_sum_assignment(cost)
            ok = cost[i, j] <= radius
            tp, dists = int(ok.sum()), cost[i, j][ok]
    fp, fn = len(pred) - tp, len(true) - tp
    precision = tp / len(pred) if len(pred) else float(len(true) == 0)
    recall = tp / len(true) if len(true) else float(len(pred) == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_dist": float(dists.mean()) if len(dists) else float("nan"),
    }


def _label_overlaps(true: np.ndarray, pred: np.ndarray):
    """Areas of every object and (true id, pred id, intersection, IoU) of every overlapping pair."""
    from skimage.metrics import contingency_table

    true, pred = np.asarray(true), np.asarray(pred)
    if true.ndim != 2 or true.shape != pred.shape:
        raise ValueError(
            f"true and pred must be 2-D label images of one shape; got {true.shape} and {pred.shape}"
        )
    for name, a in (("true", true), ("pred", pred)):
        if not np.issubdtype(a.dtype, np.integer) or (a.size and a.min() < 0):
            raise TypeError(f"{name} must be a non-negative integer label image; got dtype {a.dtype}")
    area_true = np.bincount(true.ravel()).astype(np.float64)
    area_pred = np.bincount(pred.ravel()).astype(np.float64)
    cont = contingency_table(true, pred).tocoo()
    keep = (cont.row > 0) & (cont.col > 0)
    rows, cols, inter = cont.row[keep], cont.col[keep], cont.data[keep].astype(np.float64)
    iou = inter / (area_true[rows] + area_pred[cols] - inter)
    return area_true, area_pred, rows, cols, inter, iou


def aggregated_jaccard_index(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (AJI) of a predicted against a true instance segmentation.

    After Kumar et al. (2017, IEEE TMI 36:1550): each true nucleus is paired with the predicted
    one of highest IoU; AJI is the summed intersections of the pairs over the summed unions, with
    the areas of unpaired true and never-paired predicted nuclei added to the unions. Fragments,
    merges, misses and false detections all lower it.

    .. math::

        AJI = \\frac{\\sum_i |G_i \\cap S_{j(i)}|}{\\sum_i |G_i \\cup S_{j(i)}| + \\sum_{k \\in U} |S_k|}

    Parameters
    ----------
    true, pred : (H, W) int ndarray
        Instance label images, 0 = background.

    Returns
    -------
    aji : float
        In [0, 1]; 1.0 when both are empty.

    Raises
    ------
    ValueError
        If the images are not 2-D or differ in shape.
    TypeError
        If either is not a non-negative integer label image.
    """
    area_true, area_pred, rows, cols, inter, iou = _label_overlaps(true, pred)
    true_ids = np.flatnonzero(area_true[1:]) + 1
    pred_ids = np.flatnonzero(area_pred[1:]) + 1
    if true_ids.size == 0 and pred_ids.size == 0:
        return 1.0
    # Best partner per true nucleus: sort pairs by true id, then IoU descending; keep the first.
    order = np.lexsort((-iou, rows))
    rows, cols, inter, iou = rows[order], cols[order], inter[order], iou[order]
    first = np.r_[True, rows[1:] != rows[:-1]] if rows.size else np.zeros(0, bool)
    paired_true, paired_pred, paired_inter = rows[first], cols[first], inter[first]
    intersection = paired_inter.sum()
    union = (area_true[paired_true] + area_pred[paired_pred] - paired_inter).sum()
    union += area_true[np.setdiff1d(true_ids, paired_true)].sum()
    union += area_pred[np.setdiff1d(pred_ids, paired_pred)].sum()
    return float(intersection / union) if union else 0.0


def panoptic_quality(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Panoptic quality (Kirillov et al., 2019) of a predicted against a true instance segmentation.

    A predicted and a true nucleus match when their IoU exceeds 0.5 (such pairs are unique).

    .. math::

        PQ = \\underbrace{\\frac{\\sum_{(p, g) \\in TP} IoU(p, g)}{|TP|}}_{SQ}
             \\times \\underbrace{\\frac{|TP|}{|TP| + |FP| / 2 + |FN| / 2}}_{DQ}

    Parameters
    ----------
    true, pred : (H, W) int ndarray
        Instance label images, 0 = background.

    Returns
    -------
    scores : dict
        ``pq``, ``sq``, ``dq`` (float; 1.0 when both are empty) and ``tp``, ``fp``, ``fn`` (int).

    Raises
    ------
    ValueError, TypeError
        As :func:`aggregated_jaccard_index`.
    """
    area_true, area_pred, _, _, _, iou = _label_overlaps(true, pred)
    n_true, n_pred = int((area_true[1:] > 0).sum()), int((area_pred[1:] > 0).sum())
    matched = iou > 0.5
    tp = int(matched.sum())
    fp, fn = n_pred - tp, n_true - tp
    if n_true == 0 and n_pred == 0:
        return {"pq": 1.0, "sq": 1.0, "dq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[matched].mean()) if tp else 0.0
    return {"pq": dq * sq, "sq": sq, "dq": dq, "tp": tp, "fp": fp, "fn": fn}


def rasterize_polygons(polygons, shape: tuple[int, int]) -> np.ndarray:
    """Instance label image of nucleus outlines, e.g. a GeoParquet or QuPath export, for scoring.

    Pixel (row r, column c) belongs to a polygon when its centre (x = c, y = r) is inside or on
    the outline, so outlines traced through boundary pixel centres (as contour tracers write
    them) give back those pixels. Later polygons overwrite earlier ones where they overlap.

    Parameters
    ----------
    polygons : sequence of shapely.Polygon or shapely.MultiPolygon
        Outlines in pixel coordinates (x right, y down).
    shape : (int, int)
        (H, W) of the image.

    Returns
    -------
    labels : (H, W) int32 ndarray
        Polygon k (0-based) is label k + 1; 0 outside every polygon.
    """
    from skimage.draw import polygon as fill_polygon
    from skimage.draw import polygon_perimeter

    labels = np.zeros(shape, np.int32)
    for k, geom in enumerate(polygons, start=1):
        for part in getattr(geom, "geoms", [geom]):
            if part.is_empty:
                continue
            xy = np.asarray(part.exterior.coords)
            rr, cc = fill_polygon(xy[:, 1], xy[:, 0], shape)
            labels[rr, cc] = k
            rr, cc = polygon_perimeter(np.round(xy[:, 1]), np.round(xy[:, 0]), shape)
            labels[rr, cc] = k
    return labels
