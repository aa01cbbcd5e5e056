"""Synthetic whole slides: a pyramidal TIFF whose tissue is drawn by a task's tile generator, with its truth.

A slide is a grid of *blocks* the size of the task's images (breast 2048 x 1536, prostate 1024 x 1024).
Tissue is a few fragments with irregular outlines on glass: a smooth field sampled every
:data:`FIELD_STEP` pixels, positive inside tissue and kept :data:`MARGIN` pixels away from the border.
The blocks the tissue touches are grouped into *regions* (the Voronoi cells of a few seed blocks) and
each region is given one class of the task. Every such block is drawn by
:func:`~nucleograph.ingest.synth.tile.synthesize_image` with its region's class and a seed of its own;
pixels outside the tissue are glass, and a nucleus is kept when its centroid lies in tissue (the others
become glass too), so the nucleus table is exactly what the pixels show.

The slide's label is its highest class (:data:`~nucleograph.ingest.synth.tasks.TASKS` lists each task's
classes from low to high: ``InSitu`` < ``Invasive``, ``Gleason3`` < ``Gleason4``), as Gleason grading
counts a slide with any pattern-4 region as containing pattern 4: a slide of the low class holds only
low regions; in a slide of the high class each region is high with probability ``high_share`` (at least
one is). The ground truth file says so (``label_rule``) and lists every region.

The TIFF is written tile by tile (tifffile takes an iterator of tiles): one row of blocks is in memory at
a time, so memory grows with the slide's width, never with its area. Level 0 is JPEG-compressed
:data:`TIFF_TILE`-pixel tiles with the microns per pixel in the resolution tags (which tiffslide reads as
``tiffslide.mpp-x``); reduced levels (each :data:`LEVEL_FACTOR` times smaller, area means) are SubIFDs
of level 0, computed from the rows as they stream past and parked in raw temporary files until level 0
is written. The slide appears under its name only when complete (written as ``NAME.part``, then renamed).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import tifffile

from nucleograph.ingest.synth._render import _smooth_noise
from nucleograph.ingest.synth.cohort import check_cohort_args, image_seed
from nucleograph.ingest.synth.tasks import (
    DEFAULT_SIZE,
    MANIFEST_COLUMNS,
    MIN_SIDE,
    MPP,
    NUCLEI_COLUMNS,
    TASKS,
    check_label,
)
from nucleograph.ingest.synth.tile import synthesize_image
from nucleograph.progress import progress as progress_bar

__all__ = [
    "LABEL_RULE",
    "SLIDE_MANIFEST_COLUMNS",
    "SLIDE_NUCLEI_COLUMNS",
    "SLIDE_SIZE",
    "SlideTruth",
    "slide_levels",
    "synthesize_slide",
    "synthesize_slide_cohort",
]

#: Default slide size (width, height) in pixels: a small real slide at 20x.
SLIDE_SIZE = (40_000, 30_000)
#: Shortest slide side accepted.
MIN_SLIDE_SIDE = 2048
#: Side of the TIFF's square tiles, at every level.
TIFF_TILE = 512
#: Each reduced level is this many times smaller than the one above (as in Aperio's SVS files).
LEVEL_FACTOR = 4
#: Reduced levels are added while the next one's shorter side is at least this.
MIN_LEVEL_SIDE = 256
JPEG_QUALITY = 90
#: Pixels per sample of the tissue field.
FIELD_STEP = 32
#: Tissue never comes closer to the slide's border than this (minus one field step).
MARGIN = 512
#: Mean number of tissue blocks per region.
BLOCKS_PER_REGION = 6
#: The slide's nucleus table: the image synth's columns, plus the region and that region's class.
SLIDE_NUCLEI_COLUMNS = (*NUCLEI_COLUMNS, "region", "region_label")
#: A slide cohort's manifest: the image synth's columns (``mask`` empty), plus the ground truth file.
SLIDE_MANIFEST_COLUMNS = (*MANIFEST_COLUMNS, "regions")
LABEL_RULE = (
    "the slide's label is the highest class of any of its regions, the task's classes ordered low to high "
    "as listed in 'classes' (as Gleason grading counts a slide with any pattern-4 region as containing "
    "pattern 4): a slide of the low class has only low regions, one of the high class at least one high region"
)
_GLASS_PERIOD = 509  # glass noise repeats with this period in pixels (prime: never in step with the tiles)
_SLIDE_STREAM = 7  # keeps slide seeds apart from the seeds of the cohort's images


@dataclass(frozen=True)
class SlideTruth:
    """What a synthetic slide holds, as :func:`synthesize_slide` writes it to its JSON file.

    Attributes
    ----------
    task, label : str
        The task and the slide's label (its highest region class, :data:`LABEL_RULE`).
    classes : tuple of str
        The task's classes, low to high.
    width, height : int
        Level-0 size in pixels.
    mpp : float
        Microns per pixel at level 0.
    levels : tuple of (int, int)
        (width, height) of every pyramid level, level 0 first.
    block : (int, int)
        (width, height) of the blocks each drawn as one synthetic image.
    n_nuclei : int
    tissue_fraction : float
        Share of the slide's pixels inside tissue.
    regions : tuple of dict
        Per region: ``id``, ``label``, ``blocks``, ``tissue_px``, ``nuclei`` and ``bbox`` (x0, y0, x1, y1 of
        its blocks, x1 and y1 exclusive).
    label_rule : str
    """

    task: str
    label: str
    classes: tuple[str, ...]
    width: int
    height: int
    mpp: float
    levels: tuple[tuple[int, int], ...]
    block: tuple[int, int]
    n_nuclei: int
    tissue_fraction: float
    regions: tuple[dict, ...]
    label_rule: str = LABEL_RULE

    def to_dict(self) -> dict:
        """Plain JSON-ready values."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class _Plan:
    """Where the tissue is and which class each block of it is drawn with."""

    task: str
    width: int
    height: int
    block: tuple[int, int]
    field: np.ndarray  # (gh, gw) float32, > 0 inside tissue, sampled at cell centres
    region: np.ndarray  # (n_block_rows, n_block_cols) int64, -1 where a block holds no tissue
    region_labels: list[str]
    block_seed: int


def slide_levels(width: int, height: int) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level of a ``width`` x ``height`` slide, level 0 first.

    Parameters
    ----------
    width, height : int

    Returns
    -------
    list of (int, int)
        Each level :data:`LEVEL_FACTOR` times smaller (rounded up), down to a shorter side of
        :data:`MIN_LEVEL_SIDE`.
    """
    levels = [(int(width), int(height))]
    while True:
        w, h = (-(-v // LEVEL_FACTOR) for v in levels[-1])
        if min(w, h) < MIN_LEVEL_SIDE:
            return levels
        levels.append((w, h))


def _check_size(size) -> tuple[int, int]:
    if size is None:
        return SLIDE_SIZE
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"slide size must be a (width, height) pair of ints, got {size!r}") from None
    if min(width, height) < MIN_SLIDE_SIDE:
        raise ValueError(f"slide size {width}x{height} is too small: both sides must be >= {MIN_SLIDE_SIDE} px "
                         "(for smaller images use `nucleograph synth` without --slide)")
    return width, height


# --- tissue and regions -----------------------------------------------------------------------------


def _tissue_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """2-4 overlapping elliptic fragments with outlines roughened by smooth noise; > 0 inside tissue."""
    gw, gh = -(-width // FIELD_STEP), -(-height // FIELD_STEP)
    xs = ((np.arange(gw) + 0.5) * FIELD_STEP).astype(np.float32)[None, :]
    ys = ((np.arange(gh) + 0.5) * FIELD_STEP).astype(np.float32)[:, None]
    field = np.full((gh, gw), -np.inf, np.float32)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
        rx, ry = rng.uniform(0.15, 0.3) * width, rng.uniform(0.15, 0.3) * height
        c, s = math.cos(rot := rng.uniform(0, math.pi)), math.sin(rot)
        u, v = c * (xs - cx) + s * (ys - cy), -s * (xs - cx) + c * (ys - cy)
        field = np.maximum(field, 1 - (u / rx) ** 2 - (v / ry) ** 2)
    # fragments fade out towards the margin before the noise roughens them, so tissue that reaches the
    # margin ends in a ragged edge, not a ruled line
    border = np.minimum(np.minimum(xs, width - xs), np.minimum(ys, height - ys))
    ramp = 0.06 * min(width, height)
    field -= 1.5 * np.clip((MARGIN + ramp - border) / ramp, 0, None)
    field += 0.45 * _smooth_noise(rng, (gh, gw), 0.04 * min(width, height) / FIELD_STEP)
    field[border < MARGIN] = -1.0
    return field


def _cells(p0: int, p1: int, n: int) -> slice:
    """The field cells whose values reach pixels ``p0 .. p1 - 1`` by bilinear interpolation."""
    lo = math.floor((p0 + 0.5) / FIELD_STEP - 0.5)
    hi = math.floor((p1 - 0.5) / FIELD_STEP - 0.5) + 1
    return slice(max(lo, 0), min(hi, n - 1) + 1)


def _tissue_mask(field: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """``(h, w)`` bool: the pixels of a block inside tissue (the field, interpolated bilinearly, > 0)."""
    gh, gw = field.shape

    def axis(p0, n, size):
        f = (np.arange(p0, p0 + n) + 0.5) / FIELD_STEP - 0.5
        i = np.clip(np.floor(f).astype(np.int64), 0, size - 2)
        return i, np.clip(f - i, 0.0, 1.0).astype(np.float32)

    iy, wy = axis(y0, h, gh)
    ix, wx = axis(x0, w, gw)
    cols = slice(int(ix.min()), int(ix.max()) + 2)
    rows = field[iy, cols] * (1 - wy)[:, None] + field[iy + 1, cols] * wy[:, None]
    jx = ix - cols.start
    return rows[:, jx] * (1 - wx) + rows[:, jx + 1] * wx > 0


def _plan(task: str, label: str, rng: np.random.Generator, width: int, height: int, high_share: float) -> _Plan:
    bw, bh = DEFAULT_SIZE[task]
    n_cols, n_rows = -(-width // bw), -(-height // bh)
    for _ in range(20):  # a draw without tissue (noise can erase small fragments) is drawn again
        field = _tissue_field(rng, width, height)
        has = np.zeros((n_rows, n_cols), bool)  # some pixel of the block may be tissue: draw it
        share = np.zeros((n_rows, n_cols))  # the share of the block's own field samples inside tissue
        for by in range(n_rows):
            for bx in range(n_cols):
                y0, x0 = by * bh, bx * bw
                w, h = min(bw, width - x0), min(bh, height - y0)
                if min(w, h) < MIN_SIDE:
                    continue
                reach = field[_cells(y0, y0 + h, field.shape[0]), _cells(x0, x0 + w, field.shape[1])]
                has[by, bx] = bool((reach > 0).any())
                own = field[y0 // FIELD_STEP : -(-(y0 + h) // FIELD_STEP), x0 // FIELD_STEP : -(-(x0 + w) // FIELD_STEP)]
                share[by, bx] = float((own > 0).mean())
        if has.any():
            break
    else:  # pragma: no cover - 20 tissue-free draws in a row
        raise ValueError(f"could not place tissue on a {width}x{height} slide; make it larger")
    blocks = np.argwhere(has)
    n_regions = max(1, int(round(len(blocks) / BLOCKS_PER_REGION)))
    # regions grow from blocks mostly of tissue, so each has nuclei (and a high slide's high region does)
    full = share[has]
    candidates = np.flatnonzero(full >= min(0.5, full.max()))
    seeds = blocks[rng.choice(candidates, min(n_regions, candidates.size), replace=False)]
    n_regions = len(seeds)
    scale = np.array([bh, bw], float)
    dist = np.linalg.norm((blocks[:, None, :] - seeds[None, :, :]) * scale, axis=2)
    region = np.full((n_rows, n_cols), -1, np.int64)
    region[has] = dist.argmin(1)
    low, high = TASKS[task][0], TASKS[task][-1]
    is_high = np.zeros(n_regions, bool)
    if label == high:
        is_high = rng.random(n_regions) < high_share
        if not is_high.any():
            is_high[int(rng.integers(n_regions))] = True
    labels = [high if h else low for h in is_high]
    return _Plan(task, width, height, (bw, bh), field, region, labels, int(rng.integers(2**63)))


# --- pixels -----------------------------------------------------------------------------------------


def _glass_pattern(rng: np.random.Generator) -> np.ndarray:
    light = rng.uniform(238, 246) + rng.normal(0, 1.5, 3)
    noise = rng.normal(0, 2.0, (_GLASS_PERIOD, _GLASS_PERIOD, 3))
    return np.clip(np.rint(light + noise), 0, 255).astype(np.uint8)


def _glass(pattern: np.ndarray, y0: int, h: int, width: int) -> np.ndarray:
    band = pattern[(y0 + np.arange(h)) % _GLASS_PERIOD]
    return np.tile(band, (1, -(-width // _GLASS_PERIOD), 1))[:, :width].copy()


def _draw_block(plan: _Plan, by: int, bx: int, x0: int, y0: int, w: int, h: int):
    """One tissue block: its pixels, which of them show (tissue or kept nuclei), the kept nuclei, tissue px."""
    label = plan.region_labels[plan.region[by, bx]]
    tile = synthesize_image(plan.task, label, rng=np.random.default_rng([plan.block_seed, by, bx]), size=(w, h))
    inside = _tissue_mask(plan.field, x0, y0, w, h)
    nuclei = tile.nuclei
    cx = np.clip(np.rint(nuclei["centroid_x"].to_numpy()).astype(np.int64), 0, w - 1)
    cy = np.clip(np.rint(nuclei["centroid_y"].to_numpy()).astype(np.int64), 0, h - 1)
    keep = inside[cy, cx]
    shown = np.zeros(len(nuclei) + 1, bool)
    shown[nuclei["nucleus_id"].to_numpy()[keep]] = True
    show = shown[tile.mask] | (inside & (tile.mask == 0))
    return tile.image, show, nuclei[keep], int(inside.sum())


class _Pyramid:
    """The reduced levels of a slide, built from its level-0 rows as they stream past, in raw files."""

    def __init__(self, levels: list[tuple[int, int]], folder: pathlib.Path):
        self.levels = levels
        self.paths = [folder / f"level{k}.raw" for k in range(len(levels))]
        self.files = {k: open(self.paths[k], "wb") for k in range(1, len(levels))}  # closed in finish() or close()
        self.pending: dict[int, np.ndarray] = {}

    def feed(self, rows: np.ndarray, level: int = 1) -> None:
        """Take rows of ``level - 1`` and pass on every full group of :data:`LEVEL_FACTOR` as a row of ``level``."""
        if level >= len(self.levels):
            return
        if level in self.pending:
            rows = np.concatenate([self.pending.pop(level), rows])
        n = rows.shape[0] // LEVEL_FACTOR * LEVEL_FACTOR
        if n < rows.shape[0]:
            self.pending[level] = rows[n:].copy()
        if n:
            self._emit(_reduce(rows[:n]), level)

    def _emit(self, out: np.ndarray, level: int) -> None:
        self.files[level].write(out.tobytes())
        self.feed(out, level + 1)

    def finish(self) -> None:
        """Pass on the last rows of each level (fewer than :data:`LEVEL_FACTOR`, the last one repeated)."""
        for level in range(1, len(self.levels)):
            if level in self.pending:
                rest = self.pending.pop(level)
                pad = np.repeat(rest[-1:], LEVEL_FACTOR - rest.shape[0], axis=0)
                self._emit(_reduce(np.concatenate([rest, pad])), level)
            self.files[level].close()

    def rows(self, level: int, chunk: int) -> Iterator[np.ndarray]:
        """The rows of a reduced level, ``chunk`` at a time."""
        width, height = self.levels[level]
        with open(self.paths[level], "rb") as fh:
            for y in range(0, height, chunk):
                n = min(chunk, height - y)
                yield np.fromfile(fh, np.uint8, n * width * 3).reshape(n, width, 3)

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def _reduce(rows: np.ndarray) -> np.ndarray:
    """Area means of ``LEVEL_FACTOR`` x ``LEVEL_FACTOR`` pixels; a last, narrower column group is averaged alone."""
    f = LEVEL_FACTOR
    m, w = rows.shape[0] // f, rows.shape[1]
    wf = w // f * f
    out = np.empty((m, -(-w // f), 3), np.uint8)
    s = rows[:, :wf].reshape(m, f, wf // f, f, 3).sum(axis=(1, 3), dtype=np.uint32)
    out[:, : wf // f] = (s + f * f // 2) // (f * f)
    if wf < w:
        out[:, -1] = np.rint(rows[:, wf:].reshape(m, f, w - wf, 3).mean(axis=(1, 2)))
    return out


def _tiles(row_chunks, width: int, tile: int = TIFF_TILE) -> Iterator[np.ndarray]:
    """Square tiles, row by row, from an iterator of ``(h, width, 3)`` row chunks of any height.

    Tiles on the right and bottom edges are padded with white (outside the image: never read).
    """
    carry = None
    for rows in row_chunks:
        if carry is not None:
            rows, carry = np.concatenate([carry, rows]), None
        n = rows.shape[0] // tile * tile
        for y in range(0, n, tile):
            yield from _band_tiles(rows[y : y + tile], width, tile)
        if n < rows.shape[0]:
            carry = rows[n:].copy()
    if carry is not None:
        yield from _band_tiles(carry, width, tile)


def _band_tiles(band: np.ndarray, width: int, tile: int) -> Iterator[np.ndarray]:
    for x in range(0, width, tile):
        t = band[:, x : x + tile]
        if t.shape[:2] != (tile, tile):
            padded = np.full((tile, tile, 3), 255, np.uint8)
            padded[: t.shape[0], : t.shape[1]] = t
            t = padded
        yield np.ascontiguousarray(t)


# --- the slide ----------------------------------------------------------------------------------------


class _Level0:
    """Level 0, a row of blocks at a time: draws the blocks, writes their nuclei, feeds the pyramid."""

    def __init__(self, plan: _Plan, glass: np.ndarray, pyramid: _Pyramid, nuclei_file, bar):
        self.plan, self.glass, self.pyramid, self.nuclei_file, self.bar = plan, glass, pyramid, nuclei_file, bar
        n = len(plan.region_labels)
        self.stats = {"blocks": np.zeros(n, np.int64), "tissue_px": np.zeros(n, np.int64),
                      "nuclei": np.zeros(n, np.int64)}
        self.n_nuclei = 0

    def strips(self) -> Iterator[np.ndarray]:
        plan = self.plan
        (bw, bh), width, height = plan.block, plan.width, plan.height
        n_rows, n_cols = plan.region.shape
        for by in range(n_rows):
            y0, h = by * bh, min(bh, height - by * bh)
            strip = _glass(self.glass, y0, h, width)
            for bx in range(n_cols):
                x0, w = bx * bw, min(bw, width - bx * bw)
                if plan.region[by, bx] >= 0:
                    image, show, nuclei, tissue_px = _draw_block(plan, by, bx, x0, y0, w, h)
                    np.copyto(strip[:, x0 : x0 + w], image, where=show[..., None])
                    self._write_nuclei(nuclei, plan.region[by, bx], x0, y0, tissue_px)
                self.bar.update(1)
            self.pyramid.feed(strip)
            yield strip

    def _write_nuclei(self, nuclei: pd.DataFrame, region: int, x0: int, y0: int, tissue_px: int) -> None:
        n = len(nuclei)
        table = pd.DataFrame({
            "nucleus_id": np.arange(self.n_nuclei + 1, self.n_nuclei + n + 1, dtype=np.int64),
            "centroid_x": nuclei["centroid_x"].to_numpy() + x0,
            "centroid_y": nuclei["centroid_y"].to_numpy() + y0,
            "area": nuclei["area"].to_numpy(),
            "role": nuclei["role"].to_numpy(),
            "region": np.full(n, region, np.int64),
            "region_label": self.plan.region_labels[region],
        }, columns=list(SLIDE_NUCLEI_COLUMNS))
        table.to_csv(self.nuclei_file, header=False, index=False, float_format="%.3f", lineterminator="\n")
        self.n_nuclei += n
        for key, value in (("blocks", 1), ("tissue_px", tissue_px), ("nuclei", n)):
            self.stats[key][region] += value


def _regions(plan: _Plan, stats: dict) -> tuple[dict, ...]:
    bw, bh = plan.block
    out = []
    for r, label in enumerate(plan.region_labels):
        rows, cols = np.nonzero(plan.region == r)
        out.append({
            "id": r, "label": label, "blocks": int(stats["blocks"][r]), "tissue_px": int(stats["tissue_px"][r]),
            "nuclei": int(stats["nuclei"][r]),
            "bbox": [int(cols.min() * bw), int(rows.min() * bh), int(min((cols.max() + 1) * bw, plan.width)),
                     int(min((rows.max() + 1) * bh, plan.height))],
        })
    return tuple(out)


def synthesize_slide(
    task: str,
    label: str,
    path,
    *,
    nuclei_path,
    truth_path,
    rng: np.random.Generator,
    size=None,
    high_share: float = 0.6,
    progress: bool = False,
) -> SlideTruth:
    """Write one synthetic whole slide (pyramidal TIFF), its nucleus table and its ground truth.

    Parameters
    ----------
    task : {"breast", "prostate"}
    label : str
        The slide's class, see :data:`LABEL_RULE`.
    path : path-like
        The TIFF to write (``.tif``); its folder must exist.
    nuclei_path : path-like
        CSV with :data:`SLIDE_NUCLEI_COLUMNS`, one row per nucleus, in level-0 pixels.
    truth_path : path-like
        JSON of :class:`SlideTruth`. Keep it out of the slide's folder: ingest would take
        ``SLIDE.json`` beside ``SLIDE.tif`` for the slide's segmentation.
    rng : numpy.random.Generator
        The same state gives the same files.
    size : (width, height), optional
        Default :data:`SLIDE_SIZE`; both sides at least 2048 px.
    high_share : float
        In a slide of the high class, the probability that a region is high.
    progress : bool
        Show a progress bar over blocks.

    Returns
    -------
    SlideTruth

    Raises
    ------
    ValueError
        Unknown task or label, a size that is too small, or ``high_share`` outside (0, 1].

    Examples
    --------
    >>> import numpy as np, tiffslide
    >>> truth = synthesize_slide("prostate", "Gleason4", "s.tif", nuclei_path="s.csv", truth_path="t.json",
    ...                          rng=np.random.default_rng(0), size=(4096, 3072))  # doctest: +SKIP
    >>> tiffslide.TiffSlide("s.tif").level_dimensions  # doctest: +SKIP
    ((4096, 3072), (1024, 768), (256, 192))
    """
    check_label(task, label)
    width, height = _check_size(size)
    if not 0 < high_share <= 1:
        raise ValueError(f"high_share is a probability in (0, 1], got {high_share!r}")
    path, nuclei_path, truth_path = (pathlib.Path(p) for p in (path, nuclei_path, truth_path))
    plan = _plan(task, label, rng, width, height, high_share)
    glass = _glass_pattern(rng)
    levels = slide_levels(width, height)
    part = path.with_name(path.name + ".part")
    nuclei_part = nuclei_path.with_name(nuclei_path.name + ".part")
    desc = f"nucleograph synthetic slide: task={task} label={label} mpp={MPP}"
    options = {"photometric": "rgb", "tile": (TIFF_TILE, TIFF_TILE), "compression": "jpeg",
               "compressionargs": {"level": JPEG_QUALITY}, "resolutionunit": "CENTIMETER", "metadata": None}
    try:
        level0 = _write(plan, glass, levels, part, nuclei_part, desc, options, progress=progress)
    except BaseException:
        part.unlink(missing_ok=True)
        nuclei_part.unlink(missing_ok=True)
        raise
    truth = SlideTruth(
        task=task, label=label, classes=tuple(TASKS[task]), width=width, height=height, mpp=MPP,
        levels=tuple(levels), block=plan.block, n_nuclei=level0.n_nuclei,
        tissue_fraction=float(level0.stats["tissue_px"].sum() / (width * height)), regions=_regions(plan, level0.stats),
    )
    truth_path.write_text(json.dumps(truth.to_dict(), indent=1) + "\n")
    os.replace(nuclei_part, nuclei_path)
    os.replace(part, path)
    return truth


def _write(plan: _Plan, glass, levels, part: pathlib.Path, nuclei_part: pathlib.Path, desc: str, options: dict, *,
           progress: bool) -> _Level0:
    """Write the TIFF (all levels) and the nucleus table to their ``.part`` files."""
    width, height = levels[0]
    with (tempfile.TemporaryDirectory(prefix=".synth-slide-", dir=part.parent) as tmp,
          open(nuclei_part, "w", newline="") as nuclei_file,
          progress_bar(total=plan.region.size, desc=f"synth {part.name[:-5]}", unit="block", enabled=progress) as bar):
        nuclei_file.write(",".join(SLIDE_NUCLEI_COLUMNS) + "\n")
        pyramid = _Pyramid(levels, pathlib.Path(tmp))
        try:
            level0 = _Level0(plan, glass, pyramid, nuclei_file, bar)
            with tifffile.TiffWriter(part, bigtiff=True) as tw:
                tiles = _tiles(level0.strips(), width)
                tw.write(tiles, shape=(height, width, 3), dtype=np.uint8, subifds=len(levels) - 1,
                         resolution=(1e4 / MPP, 1e4 / MPP), description=desc, **options)
                for _ in tiles:  # the rows tifffile did not need (none): their nuclei must still be written
                    raise RuntimeError("tifffile wrote fewer tiles than the slide has")
                pyramid.finish()
                for k in range(1, len(levels)):
                    w, h = levels[k]
                    mpp = MPP * width / w
                    tw.write(_tiles(pyramid.rows(k, TIFF_TILE), w), shape=(h, w, 3), dtype=np.uint8,
                             subfiletype=1, resolution=(1e4 / mpp, 1e4 / mpp), **options)
        finally:
            pyramid.close()
    return level0


def slide_seed(seed: int, task: str, label: str, k: int) -> np.random.SeedSequence:
    """The seed of slide ``k`` of class ``label`` in the slide cohort drawn with ``seed``.

    Apart from :func:`~nucleograph.ingest.synth.cohort.image_seed`'s, so a slide never repeats an image.
    """
    return np.random.SeedSequence([*image_seed(seed, task, label, k).entropy, _SLIDE_STREAM])


def synthesize_slide_cohort(
    task: str,
    *,
    n_per_class: int,
    out_dir,
    seed: int = 0,
    size=None,
    progress: bool = False,
) -> pathlib.Path:
    """Write ``n_per_class`` synthetic slides per class and a manifest that ``nucleograph ingest`` reads.

    Layout under ``out_dir``::

        slides/<Label>/<task>_<Label>_slide_<k>.tif    pyramidal TIFF (mpp in its resolution tags)
        nuclei/<Label>/<same stem>.csv                 SLIDE_NUCLEI_COLUMNS
        regions/<Label>/<same stem>.json               SlideTruth: regions, their classes, the label rule
        manifest.csv                                   SLIDE_MANIFEST_COLUMNS (mask empty), one row a slide

    Each slide is its own patient, so a split by patient is a split by slide.

    Parameters
    ----------
    task : {"breast", "prostate"}
    n_per_class : int
        Slides per class, at least 1.
    out_dir : path-like
        Created if missing.
    seed : int
        Non-negative; the same arguments give the same files.
    size : (width, height), optional
        Slide size, default :data:`SLIDE_SIZE`.
    progress : bool
        Show progress bars.

    Returns
    -------
    pathlib.Path
        Path of ``manifest.csv``.
    """
    check_cohort_args(task, n_per_class, seed)
    _check_size(size)
    out = pathlib.Path(out_dir)
    rows = []
    for label in TASKS[task]:
        for k in range(n_per_class):
            stem = f"{task}_{label}_slide_{k:03d}"
            rel = {"path": pathlib.Path("slides", label, stem + ".tif"),
                   "nuclei": pathlib.Path("nuclei", label, stem + ".csv"),
                   "regions": pathlib.Path("regions", label, stem + ".json")}
            for p in rel.values():
                (out / p).parent.mkdir(parents=True, exist_ok=True)
            synthesize_slide(task, label, out / rel["path"], nuclei_path=out / rel["nuclei"],
                             truth_path=out / rel["regions"], rng=np.random.default_rng(slide_seed(seed, task, label, k)),
                             size=size, progress=progress)
            rows.append({"path": rel["path"].as_posix(), "label": label, "patient": f"{task}-{label}-S{k:03d}",
                         "mpp": MPP, "mask": "", "nuclei": rel["nuclei"].as_posix(), "task": task,
                         "regions": rel["regions"].as_posix()})
    manifest = out / "manifest.csv"
    pd.DataFrame(rows, columns=list(SLIDE_MANIFEST_COLUMNS)).to_csv(manifest, index=False, lineterminator="\n")
    return manifest
