"""Heat maps of per-nucleus importance drawn over the H&E image (the paper's Fig. 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def relative_importance(scores: np.ndarray, *, percentile: float = 99.0) -> np.ndarray:
    """Scores scaled to [-1, 1] by the ``percentile`` of their absolute values (0 stays 0: no effect).

    A robust scale, not the maximum: occlusion maps often have a few extreme nuclei that would
    otherwise wash every other nucleus out to the neutral colour.
    """
    s = np.nan_to_num(np.asarray(scores, dtype=float), nan=0.0)
    m = float(np.percentile(np.abs(s), percentile)) if s.size else 0.0
    if m <= 0 and s.size:
        m = float(np.max(np.abs(s)))
    return np.clip(s / m, -1.0, 1.0) if m > 0 else s


def rank_importance(scores: np.ndarray) -> np.ndarray:
    """Each score's rank among ``scores``, from -1 (lowest) to +1 (highest), ties at their mean rank; NaN
    stays NaN. The median nucleus maps to 0 whatever the sign: for maps read by their order (local
    evidence, whose scores are nearly all negative on the synthetic cohorts)."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float)
    out = np.full(s.shape, np.nan)
    finite = np.isfinite(s)
    ranks = rankdata(s[finite])  # 1 .. n
    out[finite] = 2 * (ranks - 1) / max(ranks.size - 1, 1) - 1
    return out


def rank_on_scale(scores: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Each score's rank, from -1 (lowest) to +1 (highest), among the scores whose evenly spaced order
    statistics are ``quantiles`` (lowest first; e.g. a slide's, :func:`nucleograph.db.store.score_quantiles`),
    linear between two of them, a score equal to several at their middle; NaN stays NaN. With every score
    of an image as ``quantiles`` it is :func:`rank_importance`: a slide drawn viewport by viewport ranks
    each nucleus against the whole slide."""
    qs = np.asarray(quantiles, dtype=float)
    s = np.asarray(scores, dtype=float)
    if qs.size == 0:
        return np.full(s.shape, np.nan)
    levels = np.linspace(-1.0, 1.0, qs.size) if qs.size > 1 else np.zeros(1)
    out = np.interp(s, qs, levels)
    lo, hi = np.searchsorted(qs, s, side="left"), np.searchsorted(qs, s, side="right")
    equal = hi > lo
    out[equal] = (levels[lo[equal]] + levels[hi[equal] - 1]) / 2
    out[~np.isfinite(s)] = np.nan
    return out


#: How :func:`render_importance` maps scores to its colour scale, and the colour bar's label.
SCALINGS = {
    "relative": "relative importance (score / 99th percentile of |score|)",
    "rank": "rank in the image (lowest -1, highest +1)",
}
#: Methods whose maps are drawn by rank unless a scaling is asked for: local evidence is nearly all
#: negative on a confident model (one field alone rarely carries the class), so relative colours draw
#: it all blue, and local contribution is near 0 for most nuclei with a few large ones, so relative
#: colours draw it nearly all grey; for both, the order is what they show (bench/RESULTS.md, issue 18).
RANK_METHODS = frozenset({"local", "contribution"})


def default_scaling(method: str) -> str:
    """The scaling a map of ``method`` is drawn with when none is asked for: ``rank`` for local evidence and
    local contribution, ``relative`` (scores as measured) for every other method."""
    return "rank" if method in RANK_METHODS else "relative"


def render_importance(
    image: np.ndarray, centroids: np.ndarray, radii: np.ndarray, scores: np.ndarray, out: str | Path, *,
    edges: tuple[np.ndarray, np.ndarray] | None = None, title: str = "", max_side: int = 2048, dpi: int = 100,
    scaling: str = "relative",
) -> Path:
    """Write a PNG of ``image`` with each nucleus a disc coloured by relative importance (or by its rank,
    ``scaling="rank"``: :func:`rank_importance`).

    Parameters
    ----------
    image : (H, W, 3) uint8
    centroids : (N, 2) float, as (x, y) pixels
    radii : (N,) float, disc radii in pixels (e.g. ``sqrt(area / pi)``)
    scores : (N,) float
        Occlusion scores may be negative (removing the nucleus raised the probability); the
        diverging colour scale is centred on 0.
    edges : (src, dst) index arrays, optional
        Drawn as thin lines (the nucleus graph).
    scaling : {"relative", "rank"}
        :func:`relative_importance` or :func:`rank_importance`.
    """
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}: use one of {', '.join(SCALINGS)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection, PatchCollection
    from matplotlib.patches import Circle

    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    fig_w, fig_h = w * scale / dpi, h * scale / dpi
    fig, ax = plt.subplots(figsize=(fig_w + 1.4, fig_h + 0.5), dpi=dpi)
    ax.imshow(image, interpolation="lanczos")
    rel = relative_importance(scores) if scaling == "relative" else np.nan_to_num(rank_importance(scores))
    if edges is not None and len(edges[0]):
        src, dst = edges
        segs = np.stack([centroids[src], centroids[dst]], axis=1)
        ax.add_collection(LineCollection(segs, colors=(0.1, 0.1, 0.1, 0.25), linewidths=0.4))
    patches = [Circle((float(x), float(y)), float(r)) for (x, y), r in zip(centroids, radii, strict=True)]
    coll = PatchCollection(patches, cmap="coolwarm", alpha=0.85, edgecolor="none")
    coll.set_array(rel)
    coll.set_clim(-1, 1)
    ax.add_collection(coll)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    cbar = fig.colorbar(coll, ax=ax, fraction=0.035, pad=0.01)
    cbar.set_label(SCALINGS[scaling])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # JPEG for figures meant to be shared small; PNG (lossless) otherwise
    extra = {"pil_kwargs": {"quality": 85}} if out.suffix.lower() in (".jpg", ".jpeg") else {}
    fig.savefig(out, bbox_inches="tight", **extra)
    plt.close(fig)
    return out
