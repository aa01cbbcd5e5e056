"""One synthetic tile: draw the nuclei, let the class's arrangement place them, render the image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from skimage import draw

from nucleograph.ingest.synth._layouts import LAYOUTS
from nucleograph.ingest.synth._placement import Layout
from nucleograph.ingest.synth._render import render
from nucleograph.ingest.synth.tasks import check_label, resolve_size

__all__ = ["SynthImage", "synthesize_image"]

# Mean nucleus count per pixel, so smaller tiles get proportionally fewer nuclei.
_DENSITY = {"breast": 1500 / (2048 * 1536), "prostate": 600 / (1024 * 1024)}
_COUNT_CV = 0.03
# Fraction of stromal-type nuclei, identical for both classes of a task.
_STROMA_FRACTION = {"breast": 0.22, "prostate": 0.25}
_LYMPHOCYTE_FRACTION = 0.3  # of the stromal-type nuclei
# Epithelial semi-major axis (mean, sd, low, high) in pixels.
_EPI_SIZE = {"breast": (11.0, 1.6, 7.5, 16.0), "prostate": (8.5, 1.1, 6.0, 12.0)}


@dataclasses.dataclass(frozen=True)
class SynthImage:
    """One synthetic tile with its ground truth.

    Attributes
    ----------
    image : ndarray of uint8, shape (H, W, 3)
        RGB H&E-like image.
    mask : ndarray of int32, shape (H, W)
        Instance labels, 0 = background, nucleus ``i`` painted with label ``i`` (1..N).
    nuclei : pandas.DataFrame
        One row per nucleus with columns ``nucleus_id`` (= mask label), ``centroid_x``,
        ``centroid_y`` (pixel centroid of the mask region), ``area`` (pixels) and ``role``.
    """

    image: np.ndarray
    mask: np.ndarray
    nuclei: pd.DataFrame


def synthesize_image(task: str, label: str, *, rng: np.random.Generator, size=None) -> SynthImage:
    """Draw one synthetic H&E tile with ground-truth nuclei.

    Parameters
    ----------
    task : {"breast", "prostate"}
        Which cohort to imitate, see :data:`~nucleograph.ingest.synth.tasks.TASKS`.
    label : str
        Class within the task: ``InSitu``/``Invasive`` (breast) or ``Gleason3``/``Gleason4``
        (prostate).
    rng : numpy.random.Generator
        Source of all randomness; the same generator state gives the same tile.
    size : (width, height), optional
        Tile size in pixels, at least 256 each. Defaults to 2048 x 1536 (breast, about 1500
        nuclei) or 1024 x 1024 (prostate, about 600 nuclei); the nucleus count scales with area.

    Returns
    -------
    SynthImage
        RGB image (H, W, 3) uint8, instance mask (H, W) int32 and the nuclei table.

    Raises
    ------
    ValueError
        Unknown task or label, or a size that is too small.
    """
    check_label(task, label)
    width, height = resolve_size(task, size)
    # The same draws in the same order for both classes: count, kinds, sizes. Only the layout
    # function, called afterwards, depends on the label.
    n = max(8, int(round(rng.normal(1.0, _COUNT_CV) * _DENSITY[task] * width * height)))
    n_stroma = int(round(_STROMA_FRACTION[task] * n))
    n_epi = n - n_stroma
    n_lymph = int(round(_LYMPHOCYTE_FRACTION * n_stroma))
    mean, sd, lo, hi = _EPI_SIZE[task]
    kind = np.concatenate(
        [np.zeros(n_epi, np.int8), np.ones(n_stroma - n_lymph, np.int8), np.full(n_lymph, 2, np.int8)]
    )
    radius = np.concatenate(
        [
            np.clip(rng.normal(mean, sd, n_epi), lo, hi),
            np.clip(rng.normal(0.9 * mean, 0.8 * sd, n_stroma - n_lymph), 0.7 * lo, 0.9 * hi),
            np.clip(rng.normal(0.5 * mean, 0.06 * mean, n_lymph), 0.35 * mean, 0.65 * mean),
        ]
    )
    layout_rng = np.random.default_rng(rng.integers(2**63))
    render_rng = np.random.default_rng(rng.integers(2**63))

    lay = Layout(width, height, radius, layout_rng)
    lay.stop = n_epi
    LAYOUTS[task, label](lay)
    _scatter_stroma(lay, n_epi)

    image, mask, nuclei = render(lay, kind, render_rng)
    return SynthImage(image=image, mask=mask, nuclei=nuclei)


def _scatter_stroma(lay: Layout, n_epi: int) -> None:
    """Place the rest of the queue (stromal nuclei) where there is neither epithelium nor lumen."""
    # fibroblasts follow no pattern that differs by class, they only fill the stroma that the
    # layout left
    f = 8
    occupied = np.zeros((-(-lay.height // f), -(-lay.width // f)), bool)
    for i in range(n_epi):
        rr, cc = draw.disk((lay.y[i] / f, lay.x[i] / f), (lay.radius[i] * 2.2 + 6) / f, shape=occupied.shape)
        occupied[rr, cc] = True
    for cx, cy, rx, ry, rot in lay.lumens:
        if rx > 2 and ry > 2:
            rr, cc = draw.ellipse(cy / f, cx / f, ry / f + 1, rx / f + 1, shape=occupied.shape, rotation=-rot)
            occupied[rr, cc] = True
    lay.stop = lay.n
    lay.scatter("stroma", ok=lambda x, y: not occupied[int(y) // f, int(x) // f])
