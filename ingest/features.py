"""Per-nucleus morphology, stain and texture features as a column dict.

:func:`nucleus_features` returns a ``regionprops_table``-style dict (one row per nucleus) that
goes straight into ``pandas.DataFrame``. Lengths and areas are in pixels; multiply by ``mpp``
(or ``mpp**2`` for area) for microns.

Column names and their QuPath / HistomicsTK counterparts (also in :data:`FEATURE_ALIASES`)::

    column                QuPath                            HistomicsTK
    area                  Nucleus: Area                     Size.Area
    perimeter             Nucleus: Perimeter                Size.Perimeter
    eccentricity          Nucleus: Eccentricity             Shape.Eccentricity
    solidity              Nucleus: Solidity                 Shape.Solidity
    major_axis            Nucleus: Max diameter (approx.)   Size.MajorAxisLength
    minor_axis            Nucleus: Min diameter (approx.)   Size.MinorAxisLength
    orientation           -                                 Orientation.Orientation
    circularity           Nucleus: Circularity              Shape.Circularity
    hematoxylin_od_mean   Nucleus: Hematoxylin OD mean      Nucleus.Intensity.Mean (H channel)
    hematoxylin_od_std    Nucleus: Hematoxylin OD std dev   Nucleus.Intensity.Std (H channel)
    eosin_od_mean         Nucleus: Eosin OD mean            -
    texture_contrast      -                                 Nucleus.Haralick.Contrast.Mean
    texture_homogeneity   -                                 Nucleus.Haralick.IDM.Mean

``major_axis``/``minor_axis`` are the axes of the ellipse with the same second moments
(skimage ``axis_major_length``), not calipers. ``orientation`` is skimage's: the angle in
radians between the image's row axis and the major axis, in [-pi/2, pi/2].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.measure import regionprops_table

from .stain import separate_hed

__all__ = [
    "FEATURE_ALIASES",
    "FEATURE_COLUMNS",
    "ALL_COLUMNS",
    "TEXTURE_LEVELS",
    "TEXTURE_MAX_OD",
    "concat_features",
    "empty_features",
    "nucleus_features",
    "texture_glcm",
]

#: Numeric features a model uses (no id, no position), in a fixed order.
FEATURE_COLUMNS: tuple[str, ...] = (
    "area",
    "perimeter",
    "eccentricity",
    "solidity",
    "major_axis",
    "minor_axis",
    "orientation",
    "circularity",
    "hematoxylin_od_mean",
    "hematoxylin_od_std",
    "eosin_od_mean",
    "texture_contrast",
    "texture_homogeneity",
)
#: Every column :func:`nucleus_features` returns, in order.
ALL_COLUMNS: tuple[str, ...] = ("nucleus_id", "centroid_x", "centroid_y", *FEATURE_COLUMNS)

FEATURE_ALIASES: dict[str, dict[str, str | None]] = {
    "nucleus_id": {"qupath": "Object ID", "histomicstk": "Label"},
    "centroid_x": {"qupath": "Centroid X px", "histomicstk": "Identifier.CentroidX"},
    "centroid_y": {"qupath": "Centroid Y px", "histomicstk": "Identifier.CentroidY"},
    "area": {"qupath": "Nucleus: Area", "histomicstk": "Size.Area"},
    "perimeter": {"qupath": "Nucleus: Perimeter", "histomicstk": "Size.Perimeter"},
    "eccentricity": {"qupath": "Nucleus: Eccentricity", "histomicstk": "Shape.Eccentricity"},
    "solidity": {"qupath": "Nucleus: Solidity", "histomicstk": "Shape.Solidity"},
    "major_axis": {"qupath": "Nucleus: Max diameter", "histomicstk": "Size.MajorAxisLength"},
    "minor_axis": {"qupath": "Nucleus: Min diameter", "histomicstk": "Size.MinorAxisLength"},
    "orientation": {"qupath": None, "histomicstk": "Orientation.Orientation"},
    "circularity": {"qupath": "Nucleus: Circularity", "histomicstk": "Shape.Circularity"},
    "hematoxylin_od_mean": {
        "qupath": "Nucleus: Hematoxylin OD mean",
        "histomicstk": "Nucleus.Intensity.Mean",
    },
    "hematoxylin_od_std": {
        "qupath": "Nucleus: Hematoxylin OD std dev",
        "histomicstk": "Nucleus.Intensity.Std",
    },
    "eosin_od_mean": {"qupath": "Nucleus: Eosin OD mean", "histomicstk": None},
    "texture_contrast": {"qupath": None, "histomicstk": "Nucleus.Haralick.Contrast.Mean"},
    "texture_homogeneity": {"qupath": None, "histomicstk": "Nucleus.Haralick.IDM.Mean"},
}

#: Hematoxylin OD is quantised to this many grey levels for the texture features ...
TEXTURE_LEVELS = 32
#: ... over the fixed range [0, TEXTURE_MAX_OD], so values compare across images.
TEXTURE_MAX_OD = 2.5

_SHAPE_PROPS = (
    "label",
    "centroid",
    "area",
    "perimeter",
    "eccentricity",
    "solidity",
    "axis_major_length",
    "axis_minor_length",
    "orientation",
)


def empty_features() -> dict[str, np.ndarray]:
    """The column dict of an image without nuclei: every column, zero rows."""
    out = {name: np.zeros(0, np.float64) for name in ALL_COLUMNS}
    out["nucleus_id"] = np.zeros(0, np.int64)
    return out


def concat_features(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate column dicts row-wise (e.g. the tiles of a slide)."""
    if not parts:
        return empty_features()
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _quantise(h: np.ndarray) -> np.ndarray:
    q = np.floor(h * (TEXTURE_LEVELS / TEXTURE_MAX_OD))
    return np.clip(q, 0, TEXTURE_LEVELS - 1).astype(np.int32)


def texture_glcm(h: np.ndarray, labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Haralick contrast and homogeneity of each nucleus, vectorised over the whole image.

    Hematoxylin OD is quantised to :data:`TEXTURE_LEVELS` levels over [0, :data:`TEXTURE_MAX_OD`].
    Over the pixel pairs at distance 1, angles 0 and 90 degrees, with both pixels inside the
    same nucleus, this computes the co-occurrence statistics

    .. math::

        \\mathrm{contrast} = \\sum_{i,j} P_{ij} (i-j)^2, \\qquad
        \\mathrm{homogeneity} = \\sum_{i,j} \\frac{P_{ij}}{1 + (i-j)^2}

    where :math:`P` is the normalised symmetric GLCM pooled over both angles. For a nucleus
    that fills its bounding box this equals the mean over the two angles of
    ``skimage.feature.graycoprops(graycomatrix(q, [1], [0, pi/2], levels, symmetric=True,
    normed=True))`` (pooled counts; equal when both angles have the same number of pairs).
    One pass over the image instead of one GLCM per nucleus: about 50 ms for a 2048x1536 image.

    Parameters
    ----------
    h : (H, W) float ndarray
        Hematoxylin optical density.
    labels : (H, W) int ndarray
        Instance labels.
    ids : (N,) int ndarray
        Labels to report, in output order.

    Returns
    -------
    contrast, homogeneity : (N,) float64 ndarray
        0 and 1 for nuclei with no interior pixel pair.
    """
    q = _quantise(h)
    n_lab = int(labels.max(initial=0)) + 1
    sq_sum = np.zeros(n_lab)
    hom_sum = np.zeros(n_lab)
    count = np.zeros(n_lab)
    for a, b in (
        (np.s_[:, :-1], np.s_[:, 1:]),  # 0 degrees: right neighbour
        (np.s_[:-1, :], np.s_[1:, :]),  # 90 degrees: lower neighbour
    ):
        la, lb = labels[a], labels[b]
        same = (la == lb) & (la > 0)
        lab = la[same]
        d2 = (q[a][same] - q[b][same]).astype(np.float64) ** 2
        sq_sum += np.bincount(lab, weights=d2, minlength=n_lab)
        hom_sum += np.bincount(lab, weights=1.0 / (1.0 + d2), minlength=n_lab)
        count += np.bincount(lab, minlength=n_lab)
    with np.errstate(invalid="ignore", divide="ignore"):
        contrast = np.where(count > 0, sq_sum / count, 0.0)
        homogeneity = np.where(count > 0, hom_sum / count, 1.0)
    return contrast[ids], homogeneity[ids]


def nucleus_features(image: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Measure every nucleus of an instance label image.

    Parameters
    ----------
    image : (H, W, 3) uint8 ndarray
        The RGB image the labels were detected on.
    labels : (H, W) int ndarray
        Instance labels, 0 = background (e.g. from :func:`nucleograph.ingest.detect.detect_nuclei`).

    Returns
    -------
    features : dict of str to (N,) ndarray
        Columns :data:`ALL_COLUMNS`, one row per label present, in increasing label order:
        ``nucleus_id`` (int64, the label), ``centroid_x`` (column) and ``centroid_y`` (row)
        in pixels, then :data:`FEATURE_COLUMNS` (float64). An image without nuclei gives
        empty columns. ``circularity`` is ``4*pi*area/perimeter**2`` (1 for a disc; clipped
        at 1 because digital perimeters of tiny objects are underestimated).
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB); got shape {image.shape}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D (H, W); got shape {labels.shape}")
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels shape {labels.shape} does not match image shape {image.shape[:2]}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer array; got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("labels must be >= 0 (0 = background)")
    if not labels.any():
        return empty_features()
    labels = labels.astype(np.int32, copy=False)

    props = regionprops_table(labels, properties=_SHAPE_PROPS)
    ids = props["label"].astype(np.int64)
    area = props["area"].astype(np.float64)
    perimeter = props["perimeter"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        circularity = np.where(perimeter > 0, 4.0 * np.pi * area / perimeter**2, 1.0)
    circularity = np.minimum(circularity, 1.0)

    hed = separate_hed(image)
    h, e = hed[..., 0], hed[..., 1]
    flat = labels.ravel()
    n_lab = int(flat.max()) + 1
    counts = np.bincount(flat, minlength=n_lab).astype(np.float64)
    h64 = h.ravel().astype(np.float64)
    h_sum = np.bincount(flat, weights=h64, minlength=n_lab)
    h_sq = np.bincount(flat, weights=h64 * h64, minlength=n_lab)
    e_sum = np.bincount(flat, weights=e.ravel().astype(np.float64), minlength=n_lab)
    h_mean = h_sum[ids] / counts[ids]
    h_std = np.sqrt(np.maximum(h_sq[ids] / counts[ids] - h_mean**2, 0.0))
    e_mean = e_sum[ids] / counts[ids]
    contrast, homogeneity = texture_glcm(h, labels, ids)

    return {
        "nucleus_id": ids,
        "centroid_x": props["centroid-1"].astype(np.float64),
        "centroid_y": props["centroid-0"].astype(np.float64),
        "area": area,
        "perimeter": perimeter,
        "eccentricity": props["eccentricity"].astype(np.float64),
        "solidity": props["solidity"].astype(np.float64),
        "major_axis": props["axis_major_length"].astype(np.float64),
        "minor_axis": props["axis_minor_length"].astype(np.float64),
        "orientation": props["orientation"].astype(np.float64),
        "circularity": circularity,
        "hematoxylin_od_mean": h_mean,
        "hematoxylin_od_std": h_std,
        "eosin_od_mean": e_mean,
        "texture_contrast": contrast,
        "texture_homogeneity": homogeneity,
    }
