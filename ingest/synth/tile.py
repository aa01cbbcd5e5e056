"""One synthetic tile: draw the nuclei, let the class's arrangement place them, render the image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from nucleograph.ingest.synth._layouts import LAYOUTS
from nucleograph.ingest.synth._placement import COVER_CELL, Layout
from nucleograph.ingest.synth._render import render
from nucleograph.ingest.synth.tasks import check_label, resolve_size

__all__ = ["SynthImage", "synthesize_image"]

# Share of the tile that is epithelial territory (nuclei, the discs around them and lumens), drawn
# from the same range for both classes of a task; the rest is stroma, with the same density of
# stromal nuclei in both classes. So the stroma is alike in amount and spacing, near the epithelium
# and far from it, and only the epithelium's arrangement tells the classes apart (issue 18).
_EPI_COVER = {"breast": (0.4, 0.7), "prostate": (0.35, 0.65)}
# Stromal nuclei per square pixel of stroma.
_STROMA_DENSITY = {"breast": 2.5e-4, "prostate": 3.0e-4}
# Upper bound on epithelial nuclei per square pixel of territory: the length of the queue drawn.
_EPI_DENSITY_MAX = 1.6e-3
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
    epithelium : ndarray of bool, shape (ceil(H / 8), ceil(W / 8))
        Epithelial territory on an 8-px grid: the epithelial nuclei, the discs around them and the
        lumens, where no stromal nucleus goes; the rest is stroma.
    nuclei : pandas.DataFrame
        One row per nucleus with columns ``nucleus_id`` (= mask label), ``centroid_x``,
        ``centroid_y`` (pixel centroid of the mask region), ``area`` (pixels) and ``role``.
    """

    image: np.ndarray
    mask: np.ndarray
    epithelium: np.ndarray
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
        Tile size in pixels, at least 256 each. Defaults to 2048 x 1536 (breast, about
        1,400-1,750 nuclei) or 1024 x 1024 (prostate, about 550-700 nuclei); the nucleus count
        scales with area.

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
    # The same draws in the same order for both classes: territory, sizes, and the generators of the
    # stroma. Only the layout function, called afterwards, depends on the label.
    cover = rng.uniform(*_EPI_COVER[task])
    n_queue = max(8, int(_EPI_DENSITY_MAX * cover * width * height))
    mean, sd, lo, hi = _EPI_SIZE[task]
    epi_radius = np.clip(rng.normal(mean, sd, n_queue), lo, hi)
    layout_rng = np.random.default_rng(rng.integers(2**63))
    stroma_rng = np.random.default_rng(rng.integers(2**63))
    render_rng = np.random.default_rng(rng.integers(2**63))

    lay = Layout(width, height, epi_radius, layout_rng)
    lay.stop = n_queue
    lay.target_cover = cover * lay.covered.size
    LAYOUTS[task, label](lay)
    n_epi = lay.next
    # fibroblasts and lymphocytes follow no pattern that differs by class: a fixed density over the
    # stroma that the layout left
    free = (lay.covered.size - lay.n_covered) / lay.covered.size * width * height
    n_stroma = int(stroma_rng.poisson(_STROMA_DENSITY[task] * free))
    n_lymph = int(round(_LYMPHOCYTE_FRACTION * n_stroma))
    lay.extend(
        np.concatenate(
            [
                np.clip(stroma_rng.normal(0.9 * mean, 0.8 * sd, n_stroma - n_lymph), 0.7 * lo, 0.9 * hi),
                np.clip(stroma_rng.normal(0.5 * mean, 0.06 * mean, n_lymph), 0.35 * mean, 0.65 * mean),
            ]
        )
    )
    lay.rng = stroma_rng
    lay.scatter("stroma", ok=lambda x, y: not lay.covered[int(y) // COVER_CELL, int(x) // COVER_CELL])
    kind = np.concatenate(
        [np.zeros(n_epi, np.int8), np.ones(n_stroma - n_lymph, np.int8), np.full(n_lymph, 2, np.int8)]
    )

    image, mask, nuclei = render(lay, kind, render_rng)
    return SynthImage(image=image, mask=mask, epithelium=lay.covered, nuclei=nuclei)
