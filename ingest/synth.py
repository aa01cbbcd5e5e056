"""Synthetic H&E cohorts with ground-truth nuclei.

No real histology can be downloaded where nucleograph is built and tested, so this module draws
H&E-like tiles whose nuclei are known exactly: an RGB image, an instance label mask and a table of
nuclei per tile. It feeds demos, tests, detector (U-Net) training and benchmarks.

Two tasks mirror the paper (Sureka et al., arXiv 2006.09464):

``breast`` (BACH-like, default 2048 x 1536 px, about 1500 nuclei)
    ``InSitu``: ducts (roughly elliptical) whose wall carries layered nuclei, an outer
    myoepithelial layer (role ``duct_outer``) and 2-4 inner epithelial layers (``duct_inner``),
    around an open lumen that holds a few cells (``lumen``); sparse stromal nuclei (``stroma``)
    elsewhere.
    ``Invasive``: tumour nuclei infiltrating the stroma as cords (``cord``), single files
    (``single_file``), small clusters (``cluster``) and scattered cells (``infiltrating``); no duct
    layering, no lumens.
``prostate`` (default 1024 x 1024 px, about 600 nuclei)
    ``Gleason3``: separate, well-formed small glands, each a ring of nuclei (``gland_boundary``)
    around an open lumen, with stroma between.
    ``Gleason4``: cribriform glands, large nests with several punched-out lumens (``cribriform``),
    fused glands sharing one irregular lumen (``fused``) and poorly formed glands, cords and nests
    (``poorly_formed``).

Only the arrangement separates the classes of a task, as in BACH: both classes draw the nucleus
count, the nuclear size, shape, chromatin and stain from the same distributions, and both have the
same fraction of stromal-type (smaller, spindle or lymphocyte) nuclei. Nuclei never overlap (centres
are at least the sum of their bounding radii apart, plus a gap), so a detector merges them equally
rarely in both classes.

Tiles are rendered in optical-density space (Beer-Lambert) with the Ruifrok-Johnston H&E vectors of
:data:`skimage.color.rgb_from_hed`, jittered per image, so colour deconvolution recovers the
haematoxylin channel. The scale is 0.42 microns per pixel (BACH) for both tasks.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from skimage import draw
from skimage.color import rgb_from_hed

__all__ = [
    "DEFAULT_SIZE",
    "MANIFEST_COLUMNS",
    "MPP",
    "NUCLEI_COLUMNS",
    "ROLES",
    "TASKS",
    "SynthImage",
    "synthesize_cohort",
    "synthesize_image",
]

TASKS: dict[str, tuple[str, str]] = {
    "breast": ("InSitu", "Invasive"),
    "prostate": ("Gleason3", "Gleason4"),
}
#: Default tile size per task as (width, height) in pixels.
DEFAULT_SIZE: dict[str, tuple[int, int]] = {"breast": (2048, 1536), "prostate": (1024, 1024)}
#: Microns per pixel written to the manifest (BACH's scale).
MPP = 0.42
#: Roles a nucleus can carry, per task.
ROLES: dict[str, tuple[str, ...]] = {
    "breast": (
        "duct_outer",
        "duct_inner",
        "lumen",
        "cord",
        "single_file",
        "cluster",
        "infiltrating",
        "stroma",
    ),
    "prostate": ("gland_boundary", "cribriform", "fused", "poorly_formed", "stroma"),
}
NUCLEI_COLUMNS = ("nucleus_id", "centroid_x", "centroid_y", "area", "role")
MANIFEST_COLUMNS = ("path", "label", "patient", "mpp", "mask", "nuclei", "task")
MIN_SIDE = 256

# Mean nucleus count per pixel, so smaller tiles get proportionally fewer nuclei.
_DENSITY = {"breast": 1500 / (2048 * 1536), "prostate": 600 / (1024 * 1024)}
_COUNT_CV = 0.03
# Fraction of stromal-type nuclei, identical for both classes of a task.
_STROMA_FRACTION = {"breast": 0.22, "prostate": 0.25}
_LYMPHOCYTE_FRACTION = 0.3  # of the stromal-type nuclei
# Epithelial semi-major axis (mean, sd, low, high) in pixels.
_EPI_SIZE = {"breast": (11.0, 1.6, 7.5, 16.0), "prostate": (8.5, 1.1, 6.0, 12.0)}
_GAP = 3.0  # pixels of background kept between the bounding circles of two nuclei
_BOUND = 1.1  # a nucleus' outline stays within _BOUND * its semi-major axis


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


# --------------------------------------------------------------------------------------------
# argument checks


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")


def _check_label(task: str, label: str) -> None:
    _check_task(task)
    if label not in TASKS[task]:
        raise ValueError(f"unknown label {label!r} for task {task!r}; choose one of {list(TASKS[task])}")


def _resolve_size(task: str, size) -> tuple[int, int]:
    if size is None:
        return DEFAULT_SIZE[task]
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be a (width, height) pair of ints, got {size!r}") from None
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"size {size!r} is too small; both width and height must be >= {MIN_SIDE} px")
    return width, height


# --------------------------------------------------------------------------------------------
# nucleus placement


class _Layout:
    """Places nuclei whose sizes were drawn beforehand, never letting two overlap.

    Layout functions propose positions; :meth:`place` puts the *next* pending nucleus there if it
    fits, otherwise keeps it pending for the next proposal. Every drawn nucleus is eventually
    placed, so rejections cannot bias the size distribution by class.
    """

    def __init__(self, width: int, height: int, radius: np.ndarray, rng: np.random.Generator):
        self.width, self.height = width, height
        self.radius = radius  # bounding radius (semi-major axis) of each nucleus in placement order
        self.rng = rng
        self.n = len(radius)
        self.x = np.zeros(self.n)
        self.y = np.zeros(self.n)
        self.theta = np.full(self.n, np.nan)  # nan: orientation drawn at random later
        self.role = [""] * self.n
        self.next = 0  # index of the next nucleus to place
        self.stop = 0  # placement of the current queue ends before this index
        self.cell = 2 * _BOUND * float(radius.max(initial=1.0)) + _GAP
        self.grid: dict[tuple[int, int], list[int]] = {}
        self.blobs: list[tuple[float, float, float]] = []  # reserved structure discs (x, y, r)
        self.lumens: list[tuple[float, float, float, float, float]] = []  # (cx, cy, rx, ry, rot)

    @property
    def left(self) -> int:
        return self.stop - self.next

    @property
    def next_radius(self) -> float:
        return float(self.radius[self.next]) if self.next < self.stop else 0.0

    def fits(self, x: float, y: float, r: float) -> bool:
        m = _BOUND * r + 2
        if not (m <= x <= self.width - 1 - m and m <= y <= self.height - 1 - m):
            return False
        gx, gy = int(x // self.cell), int(y // self.cell)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in self.grid.get((gx + dx, gy + dy), ()):
                    d = _BOUND * (r + self.radius[j]) + _GAP
                    if (self.x[j] - x) ** 2 + (self.y[j] - y) ** 2 < d * d:
                        return False
        return True

    def place(self, x: float, y: float, role: str, theta: float = math.nan) -> bool:
        if self.next >= self.stop:
            return False
        i = self.next
        if not self.fits(x, y, self.radius[i]):
            return False
        self.x[i], self.y[i], self.theta[i], self.role[i] = x, y, theta, role
        self.grid.setdefault((int(x // self.cell), int(y // self.cell)), []).append(i)
        self.next += 1
        return True

    def place_near(
        self, x: float, y: float, role: str, theta: float = math.nan, tries: int = 6, spread: float = 3.0
    ) -> bool:
        """:meth:`place` at ``(x, y)`` or, failing that, at a few points close by."""
        if self.place(x, y, role, theta):
            return True
        for k in range(1, tries):
            dx, dy = self.rng.normal(0, spread * k / tries, 2)
            if self.place(x + dx, y + dy, role, theta):
                return True
        return False

    def crowded(self, x: float, y: float, r: float) -> bool:
        """Whether a placed nucleus lies within ``r`` of ``(x, y)``."""
        reach = int(r // self.cell) + 1
        gx, gy = int(x // self.cell), int(y // self.cell)
        for dx in range(-reach, reach + 1):
            for dy in range(-reach, reach + 1):
                for j in self.grid.get((gx + dx, gy + dy), ()):
                    if (self.x[j] - x) ** 2 + (self.y[j] - y) ** 2 < r * r:
                        return True
        return False

    def reserve(self, x: float, y: float, r: float, gap: float) -> bool:
        """Claim a disc for a structure unless it comes within ``gap`` of another one."""
        for bx, by, br in self.blobs:
            if (bx - x) ** 2 + (by - y) ** 2 < (br + r + gap) ** 2:
                return False
        self.blobs.append((x, y, r))
        return True

    def scatter(self, role: str, ok=None, tries: int = 20000) -> None:
        """Place every pending nucleus of the queue at random positions (``ok(x, y)`` filters)."""
        for _ in range(tries):
            if not self.left:
                return
            x = self.rng.uniform(0, self.width)
            y = self.rng.uniform(0, self.height)
            if ok is None or ok(x, y):
                self.place(x, y, role)
        if self.left:
            raise RuntimeError(
                f"could not place {self.left} nuclei on a {self.width}x{self.height} tile; use a larger size"
            )


def _ellipse_point(cx, cy, rx, ry, rot, phi):
    """Point at parameter ``phi`` on an ellipse and the tangent angle there."""
    ex, ey = rx * math.cos(phi), ry * math.sin(phi)
    c, s = math.cos(rot), math.sin(rot)
    tx, ty = -rx * math.sin(phi), ry * math.cos(phi)
    return cx + c * ex - s * ey, cy + s * ex + c * ey, math.atan2(s * tx + c * ty, c * tx - s * ty)


def _ring(lay: _Layout, cx, cy, rx, ry, rot, role, *, tangent: bool, skip=None, jitter: float = 1.0):
    """Walk once around an ellipse, placing pending nuclei shoulder to shoulder."""
    if rx < 4 or ry < 4:
        return
    perimeter = math.pi * (3 * (rx + ry) - math.sqrt((3 * rx + ry) * (rx + 3 * ry)))
    start = lay.rng.uniform(0, 2 * math.pi)
    t = 0.0
    while lay.left:
        r = lay.next_radius
        t += r * _BOUND + _GAP / 2
        if t > perimeter - r:
            return
        phi = start + 2 * math.pi * t / perimeter
        x, y, tang = _ellipse_point(cx, cy, rx, ry, rot, phi)
        if skip is None or not skip(x, y):
            theta = tang + lay.rng.normal(0, 0.2) if tangent else math.nan
            jr = lay.rng.normal(0, jitter)
            nx, ny = math.sin(tang), -math.cos(tang)
            placed = lay.place_near(x + jr * nx, y + jr * ny, role, theta, tries=4, spread=jitter + 1)
            if not placed:  # slide along the ring rather than leave a hole
                for _ in range(3):
                    t += 2.0
                    x, y, tang = _ellipse_point(cx, cy, rx, ry, rot, start + 2 * math.pi * t / perimeter)
                    if lay.place(x, y, role, tang if tangent else math.nan):
                        break
        t += r * _BOUND + _GAP / 2


def _inside(cx, cy, rx, ry, rot, x, y, scale=1.0) -> bool:
    c, s = math.cos(rot), math.sin(rot)
    dx, dy = x - cx, y - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / (rx * scale)) ** 2 + (v / (ry * scale)) ** 2 < 1.0


def _path(lay: _Layout, x, y, angle, length, step):
    """Points along a gently curving random path."""
    pts = []
    bend = lay.rng.normal(0, 0.006)
    for _ in range(int(length / step)):
        pts.append((x, y, angle))
        angle += bend * step + lay.rng.normal(0, 0.06)
        x += step * math.cos(angle)
        y += step * math.sin(angle)
    return pts


def _hex_points(lay: _Layout, cx, cy, radius, spacing):
    """Jittered hexagonal lattice inside a disc, shuffled so partial fills look natural."""
    pts = []
    n = int(radius / spacing) + 1
    off = lay.rng.uniform(0, spacing, 2)
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            px = (i + 0.5 * (j % 2)) * spacing + off[0]
            py = j * spacing * 0.866 + off[1]
            if px * px + py * py <= radius * radius:
                pts.append((cx + px, cy + py))
    order = lay.rng.permutation(len(pts))
    return [pts[k] for k in order]


def _pick_center(lay: _Layout, r: float, gap: float, margin: float = 0.25, tries: int = 60):
    """A centre for a structure of radius ``r`` that may overhang the tile edge by ``margin * r``."""
    for _ in range(tries):
        x = lay.rng.uniform(-margin * r, lay.width + margin * r)
        y = lay.rng.uniform(-margin * r, lay.height + margin * r)
        if lay.reserve(x, y, r, gap):
            return x, y
    return None


def _spacing(lay: _Layout) -> float:
    return 2 * _BOUND * float(np.mean(lay.radius[lay.next : lay.stop] if lay.left else lay.radius)) + _GAP


# breast ---------------------------------------------------------------------------------------


def _layout_insitu(lay: _Layout) -> None:
    rng = lay.rng
    step = _spacing(lay) + 1
    max_r = 0.42 * min(lay.width, lay.height)
    shrink, failures = 1.0, 0
    while lay.left:
        rx = min(rng.uniform(170, 300) * shrink, max_r)
        ry = rx * rng.uniform(0.7, 1.0)
        rot = rng.uniform(0, math.pi)
        layers = int(rng.integers(5, 9))
        layers = max(1, min(layers, int(ry / step) - 2))
        centre = _pick_center(lay, rx, gap=rng.uniform(50, 150) * shrink)
        if centre is None:
            failures += 1
            shrink = max(0.4, shrink * 0.85)
            if failures > 30:
                lay.scatter("duct_inner")
            continue
        cx, cy = centre
        before = lay.left
        _ring(lay, cx, cy, rx, ry, rot, "duct_outer", tangent=True)
        for k in range(1, layers + 1):
            _ring(lay, cx, cy, rx - k * step, ry - k * step, rot, "duct_inner", tangent=False, jitter=1.5)
        lrx, lry = rx - (layers + 0.5) * step - 2, ry - (layers + 0.5) * step - 2
        if lrx > 10 and lry > 10 and before - lay.left >= 8:
            lay.lumens.append((cx, cy, lrx, lry, rot))
            for _ in range(int(rng.integers(0, 4))):
                u, v = rng.uniform(-0.6, 0.6, 2)
                x, y, _t = _ellipse_point(
                    cx, cy, lrx * math.hypot(u, v), lry * math.hypot(u, v), rot, math.atan2(v, u)
                )
                lay.place(x, y, "lumen")


def _layout_invasive(lay: _Layout) -> None:
    rng = lay.rng
    step = _spacing(lay)
    kinds = ("cord", "single_file", "cluster", "infiltrating")
    clearance = 70.0  # a new structure starts in stroma, so tumour spreads instead of piling up
    while lay.left:
        kind = kinds[int(rng.choice(4, p=[0.35, 0.3, 0.25, 0.1]))]
        for _ in range(30):
            x0, y0 = rng.uniform(0, lay.width), rng.uniform(0, lay.height)
            if not lay.crowded(x0, y0, clearance):
                break
        else:
            clearance *= 0.8
        if kind in ("cord", "single_file"):
            width = 1 if kind == "single_file" else int(rng.integers(2, 4))
            pts = _path(lay, x0, y0, rng.uniform(0, 2 * math.pi), rng.uniform(120, 400), step + 1)
            for px, py, ang in pts:
                if width == 1 and lay.crowded(px, py, step * 1.6):
                    continue  # a file that runs into other tumour stops
                for w in range(width):
                    off = (w - (width - 1) / 2) * (step + 1)
                    theta = ang + rng.normal(0, 0.25) if kind == "single_file" else math.nan
                    lay.place_near(px - off * math.sin(ang), py + off * math.cos(ang), kind, theta)
        elif kind == "cluster":
            n = int(rng.integers(5, 16))
            placed = 0
            for px, py in _hex_points(lay, x0, y0, math.sqrt(n) * step * 0.6, step + 1):
                placed += lay.place_near(px, py, "cluster")
                if placed >= n:
                    break
        else:
            for _ in range(int(rng.integers(1, 4))):
                lay.place_near(x0 + rng.normal(0, 50), y0 + rng.normal(0, 50), "infiltrating")


# prostate -------------------------------------------------------------------------------------


def _layout_gleason3(lay: _Layout) -> None:
    rng = lay.rng
    step = _spacing(lay)
    failures = 0
    while lay.left:
        rx = rng.uniform(32, 70)
        ry = rx * rng.uniform(0.65, 1.0)
        rot = rng.uniform(0, math.pi)
        centre = _pick_center(lay, rx + step / 2, gap=rng.uniform(25, 60), margin=0.1)
        if centre is None:
            failures += 1
            if failures > 30:
                lay.scatter("gland_boundary")
            continue
        cx, cy = centre
        before = lay.left
        _ring(lay, cx, cy, rx, ry, rot, "gland_boundary", tangent=True)
        if lay.left < before:
            lay.lumens.append((cx, cy, rx - step * 0.5 - 7, ry - step * 0.5 - 7, rot))


def _layout_gleason4(lay: _Layout) -> None:
    rng = lay.rng
    step = _spacing(lay)
    failures = 0
    while lay.left:
        kind = ("cribriform", "fused", "poorly_formed")[int(rng.choice(3, p=[0.5, 0.3, 0.2]))]
        if kind == "cribriform":
            rx = min(rng.uniform(100, 170), 0.4 * min(lay.width, lay.height))
            ry = rx * rng.uniform(0.75, 1.0)
            rot = rng.uniform(0, math.pi)
            centre = _pick_center(lay, rx + step / 2, gap=rng.uniform(10, 30), margin=0.1)
            if centre is None:
                failures += 1
                if failures > 30:
                    lay.scatter("cribriform")
                continue
            cx, cy = centre
            _ring(lay, cx, cy, rx, ry, rot, "cribriform", tangent=True)
            holes: list[tuple[float, float, float]] = []
            for _ in range(int(rng.integers(4, 11)) * 4):
                hr = rng.uniform(9, 20)
                u, v = rng.uniform(-1, 1, 2)
                if u * u + v * v > 1:
                    continue
                hx, hy, _t = _ellipse_point(
                    cx,
                    cy,
                    (rx - step - hr) * math.hypot(u, v),
                    (ry - step - hr) * math.hypot(u, v),
                    rot,
                    math.atan2(v, u),
                )
                if min(rx, ry) - step - hr < 0 or any(
                    (hx - a) ** 2 + (hy - b) ** 2 < (hr + c + step) ** 2 for a, b, c in holes
                ):
                    continue
                holes.append((hx, hy, hr))
                if len(holes) >= 10:
                    break
            for hx, hy, hr in holes:
                lay.lumens.append((hx, hy, hr, hr, 0.0))
            for px, py in _hex_points(lay, cx, cy, max(rx, ry), step + 0.5):
                if not _inside(cx, cy, rx - step * 0.9, ry - step * 0.9, rot, px, py):
                    continue
                if any((px - a) ** 2 + (py - b) ** 2 < (c + step * 0.55) ** 2 for a, b, c in holes):
                    continue
                lay.place_near(px, py, "cribriform")
        elif kind == "fused":
            parts = []
            n_parts = int(rng.integers(2, 5))
            x, y = rng.uniform(0, lay.width), rng.uniform(0, lay.height)
            ang = rng.uniform(0, 2 * math.pi)
            for p in range(n_parts):
                rx = rng.uniform(32, 60)
                ry = rx * rng.uniform(0.7, 1.0)
                if p:
                    prev = parts[-1]
                    d = (prev[2] + rx) * rng.uniform(0.65, 0.9)
                    ang += rng.normal(0, 0.9)
                    x, y = prev[0] + d * math.cos(ang), prev[1] + d * math.sin(ang)
                parts.append((x, y, rx, ry, rng.uniform(0, math.pi)))
            xs = [p[0] for p in parts]
            ys = [p[1] for p in parts]
            bx, by = float(np.mean(xs)), float(np.mean(ys))
            br = max(math.hypot(p[0] - bx, p[1] - by) + p[2] for p in parts)
            if not lay.reserve(bx, by, br + step / 2, gap=rng.uniform(5, 20)):
                failures += 1
                if failures > 60:
                    lay.scatter("fused")
                continue
            for i, (px, py, rx, ry, rot) in enumerate(parts):
                others = [q for j, q in enumerate(parts) if j != i]
                _ring(
                    lay,
                    px,
                    py,
                    rx,
                    ry,
                    rot,
                    "fused",
                    tangent=True,
                    skip=lambda sx, sy, others=others: any(_inside(*q, sx, sy, scale=1.05) for q in others),
                )
                lay.lumens.append((px, py, rx - step * 0.5 - 6, ry - step * 0.5 - 6, rot))
        else:
            x0, y0 = rng.uniform(0, lay.width), rng.uniform(0, lay.height)
            if rng.random() < 0.5:
                width = int(rng.integers(1, 3))
                for px, py, ang in _path(
                    lay, x0, y0, rng.uniform(0, 2 * math.pi), rng.uniform(60, 200), step + 1
                ):
                    for w in range(width):
                        off = (w - (width - 1) / 2) * (step + 1)
                        lay.place(
                            px - off * math.sin(ang) + rng.normal(0, 1.5),
                            py + off * math.cos(ang) + rng.normal(0, 1.5),
                            "poorly_formed",
                        )
            else:
                n = int(rng.integers(4, 13))
                for px, py in _hex_points(lay, x0, y0, math.sqrt(n) * step * 0.6, step + 1):
                    lay.place_near(px, py, "poorly_formed")


_LAYOUTS = {
    ("breast", "InSitu"): _layout_insitu,
    ("breast", "Invasive"): _layout_invasive,
    ("prostate", "Gleason3"): _layout_gleason3,
    ("prostate", "Gleason4"): _layout_gleason4,
}


# --------------------------------------------------------------------------------------------
# rendering


def _stain_vectors(rng: np.random.Generator) -> np.ndarray:
    """Per-image haematoxylin and eosin OD vectors (rows), jittered around Ruifrok-Johnston."""
    vectors = rgb_from_hed[:2].copy()
    # eosin as measured on slides absorbs a little more blue than Ruifrok's vector; pinker, less magenta
    vectors[1] += (0.03, 0.0, 0.17)
    vectors += rng.normal(0, 0.03, vectors.shape)
    vectors = np.clip(vectors, 0.02, None)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _smooth_noise(rng, shape, sigma, dtype=np.float32) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=dtype), sigma, mode="wrap")
    return field / (field.std() + 1e-6)


def _fibres(rng, shape, n_orient: int = 6) -> np.ndarray:
    """Collagen-like texture in [0, 1]: noise filtered along a smoothly turning fibre direction."""
    h, w = shape
    noise = np.fft.rfft2(rng.standard_normal(shape, dtype=np.float32))
    fy = np.fft.fftfreq(h)[:, None].astype(np.float32)
    fx = np.fft.rfftfreq(w)[None, :].astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = np.zeros(shape, np.float32)
    for _ in range(3):
        k = rng.uniform(0.5, 2.5, 2) * 2 * math.pi / np.array([w, h])
        direction += rng.uniform(0.4, 0.9) * np.cos(k[0] * xx + k[1] * yy + rng.uniform(0, 2 * math.pi))
    direction += rng.uniform(0, math.pi)
    along, across = rng.uniform(6, 12), rng.uniform(0.8, 1.4)
    out = np.zeros(shape, np.float32)
    total = np.zeros(shape, np.float32)
    for k in range(n_orient):
        phi = math.pi * k / n_orient
        fa = fx * math.cos(phi) + fy * math.sin(phi)
        fc = -fx * math.sin(phi) + fy * math.cos(phi)
        kernel = np.exp(-2 * math.pi**2 * (along**2 * fa**2 + across**2 * fc**2))
        band = np.fft.irfft2(noise * kernel, s=shape).astype(np.float32)
        band /= band.std() + 1e-6
        weight = np.cos(direction - phi) ** 8
        out += weight * band
        total += weight
    out /= total + 1e-6
    return 1 / (1 + np.exp(-1.6 * out))


def _upsample(field: np.ndarray, factor: int, shape) -> np.ndarray:
    big = np.repeat(np.repeat(field, factor, axis=0), factor, axis=1)
    return big[: shape[0], : shape[1]]


def _paint_nuclei(lay: _Layout, kind: np.ndarray, rng: np.random.Generator, shape):
    """Paint each nucleus as a slightly irregular ellipse; returns label, radial and level maps."""
    h, w = shape
    mask = np.zeros(shape, np.int32)
    radial = np.zeros(shape, np.float32)
    n = lay.n
    ratio = np.where(
        kind == 0,
        rng.uniform(0.65, 0.95, n),
        np.where(kind == 1, rng.uniform(0.3, 0.5, n), rng.uniform(0.85, 1.0, n)),
    )
    theta = np.where(np.isnan(lay.theta), rng.uniform(0, math.pi, n), lay.theta)
    amp = rng.uniform(0, 0.05, (n, 2))
    phase = rng.uniform(0, 2 * math.pi, (n, 2))
    cx_out = np.zeros(n)
    cy_out = np.zeros(n)
    area = np.zeros(n, np.int64)
    for i in range(n):
        a = lay.radius[i]
        b = a * ratio[i]
        x, y = lay.x[i], lay.y[i]
        half = int(math.ceil(_BOUND * a)) + 1
        x0, y0 = int(round(x)) - half, int(round(y)) - half
        x0c, y0c = max(x0, 0), max(y0, 0)
        x1c, y1c = min(x0 + 2 * half + 1, w), min(y0 + 2 * half + 1, h)
        yy, xx = np.ogrid[y0c:y1c, x0c:x1c]
        dx, dy = xx - x, yy - y
        c, s = math.cos(theta[i]), math.sin(theta[i])
        u = (c * dx + s * dy) / a
        v = (-s * dx + c * dy) / b
        rho = np.sqrt(u * u + v * v)
        ang = np.arctan2(v, u)
        rho = rho / (
            1 + amp[i, 0] * np.cos(2 * ang + phase[i, 0]) + amp[i, 1] * np.cos(3 * ang + phase[i, 1])
        )
        inside = rho <= 1.0
        rows, cols = np.nonzero(inside)
        mask[y0c:y1c, x0c:x1c][inside] = i + 1
        radial[y0c:y1c, x0c:x1c][inside] = rho[inside]
        area[i] = rows.size
        cx_out[i] = cols.mean() + x0c
        cy_out[i] = rows.mean() + y0c
    return mask, radial, cx_out, cy_out, area


def _render(
    lay: _Layout, kind: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    h, w = lay.height, lay.width
    shape = (h, w)
    f = 4  # coarse grid for tissue compartments
    cshape = (-(-h // f), -(-w // f))
    hshape = (-(-h // 2), -(-w // 2))  # half resolution for textures

    # compartments: epithelial cytoplasm within reach of an epithelial nucleus, lumens
    seeds = np.ones(cshape, bool)
    epi = kind == 0
    seeds[
        np.clip((lay.y[epi] / f).astype(int), 0, cshape[0] - 1),
        np.clip((lay.x[epi] / f).astype(int), 0, cshape[1] - 1),
    ] = False
    reach = (1.9 * float(np.mean(lay.radius[epi])) + 4) / f if epi.any() else 0.0
    cyto = (ndimage.distance_transform_edt(seeds) <= reach).astype(np.float32)
    lumen = np.zeros(cshape, np.float32)
    for cx, cy, rx, ry, rot in lay.lumens:
        if rx > 2 and ry > 2:
            rr, cc = draw.ellipse(cy / f, cx / f, ry / f, rx / f, shape=cshape, rotation=-rot)
            lumen[rr, cc] = 1.0
    cyto = np.clip(ndimage.gaussian_filter(cyto, 1.0) * 1.6, 0, 1)
    lumen = np.clip(ndimage.gaussian_filter(lumen, 0.7) * 1.3, 0, 1)
    cyto = _upsample(cyto * (1 - lumen), 2, hshape)
    lumen = _upsample(lumen, 2, hshape)
    stroma = 1 - np.maximum(cyto, lumen)

    # stroma: collagen fibres with paler gaps and low-frequency density variation; cytoplasm
    # finely granular; lumens nearly empty
    fib = _fibres(rng, hshape)
    density = _upsample(1 + 0.15 * _smooth_noise(rng, cshape, 12), 2, hshape)
    grain = _smooth_noise(rng, hshape, 1.0)
    e_str = rng.uniform(0.45, 0.7)
    E = stroma * e_str * density * (0.25 + 1.1 * fib) + cyto * (0.26 + 0.03 * grain) + lumen * 0.03
    H = stroma * 0.05 + cyto * (0.13 + 0.025 * grain) + lumen * 0.01
    E = _upsample(ndimage.gaussian_filter(E, 0.7), 2, shape)
    H = _upsample(ndimage.gaussian_filter(H, 0.7), 2, shape)

    # nuclei: haematoxylin with chromatin clumps and a darker rim
    mask, radial, cx, cy, area = _paint_nuclei(lay, kind, rng, shape)
    level = np.where(
        kind == 0,
        rng.normal(1.15, 0.12, lay.n),
        np.where(kind == 1, rng.normal(1.45, 0.12, lay.n), rng.normal(1.75, 0.12, lay.n)),
    )
    clump = np.where(kind == 0, 0.38, 0.18)
    inside = mask > 0
    idx = mask[inside] - 1
    chrom = _upsample(_smooth_noise(rng, hshape, 0.7), 2, shape)[inside]
    r = radial[inside]
    H[inside] = np.clip(level[idx] * (0.72 + 0.45 * r**4) * (1 + clump[idx] * chrom), 0.2, None)
    E[inside] = 0.12 + 0.05 * E[inside]

    # optics: per-image stain vectors and strengths, Beer-Lambert, blur, sensor noise
    vectors = _stain_vectors(rng)
    blur = rng.uniform(0.6, 1.0)
    H = ndimage.gaussian_filter(H * rng.uniform(0.8, 1.2), blur)
    E = ndimage.gaussian_filter(E * rng.uniform(0.8, 1.2), blur)
    light = rng.uniform(232, 250) + rng.normal(0, 3, 3)
    image = np.empty((h, w, 3), np.float32)
    noise_sd = rng.uniform(2, 4)
    # one noise draw, read at three offsets: independent-looking per channel at a third of the cost
    noise = rng.standard_normal(h * w + 2 * 7919, dtype=np.float32) * noise_sd
    for ch in range(3):
        od = H * vectors[0, ch] + E * vectors[1, ch]
        image[..., ch] = light[ch] * np.exp(-od) + noise[ch * 7919 : ch * 7919 + h * w].reshape(shape)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    nuclei = pd.DataFrame(
        {
            "nucleus_id": np.arange(1, lay.n + 1, dtype=np.int64),
            "centroid_x": cx,
            "centroid_y": cy,
            "area": area,
            "role": lay.role,
        },
        columns=list(NUCLEI_COLUMNS),
    )
    return image, mask, nuclei


def synthesize_image(task: str, label: str, *, rng: np.random.Generator, size=None) -> SynthImage:
    """Draw one synthetic H&E tile with ground-truth nuclei.

    Parameters
    ----------
    task : {"breast", "prostate"}
        Which cohort to imitate, see :data:`TASKS`.
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
    _check_label(task, label)
    width, height = _resolve_size(task, size)
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

    lay = _Layout(width, height, radius, layout_rng)
    lay.stop = n_epi
    _LAYOUTS[task, label](lay)

    # stromal nuclei go where there is neither epithelium nor lumen; fibroblasts follow no pattern
    # that differs by class, they only fill the stroma that the layout left
    f = 8
    occupied = np.zeros((-(-height // f), -(-width // f)), bool)
    for i in range(n_epi):
        rr, cc = draw.disk((lay.y[i] / f, lay.x[i] / f), (lay.radius[i] * 2.2 + 6) / f, shape=occupied.shape)
        occupied[rr, cc] = True
    for cx, cy, rx, ry, rot in lay.lumens:
        if rx > 2 and ry > 2:
            rr, cc = draw.ellipse(cy / f, cx / f, ry / f + 1, rx / f + 1, shape=occupied.shape, rotation=-rot)
            occupied[rr, cc] = True
    lay.stop = n
    lay.scatter("stroma", ok=lambda x, y: not occupied[int(y) // f, int(x) // f])

    image, mask, nuclei = _render(lay, kind, render_rng)
    return SynthImage(image=image, mask=mask, nuclei=nuclei)


# --------------------------------------------------------------------------------------------
# cohort


def _image_seed(seed: int, task: str, label: str, k: int) -> np.random.SeedSequence:
    # stable across processes and Python versions, unlike hash()
    return np.random.SeedSequence([seed, sorted(TASKS).index(task), TASKS[task].index(label), k])


def _patient(task: str, label: str, k: int) -> str:
    # alternate patients with 3 and 2 images so grouped splits have something to group
    block, pos = divmod(k, 5)
    return f"{task}-{label}-P{2 * block + (pos >= 3):03d}"


def synthesize_cohort(
    task: str,
    *,
    n_per_class: int,
    out_dir,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    progress: bool = False,
) -> pathlib.Path:
    """Write a synthetic cohort of ``n_per_class`` tiles per class and its manifest.

    Layout under ``out_dir``::

        images/<Label>/<task>_<Label>_<k>.png   RGB
        masks/<Label>/<same name>.png           16-bit instance labels (1..N)
        nuclei/<Label>/<same stem>.csv          nucleus_id, centroid_x, centroid_y, area, role
        manifest.csv                            path, label, patient, mpp, mask, nuclei, task

    Manifest paths are relative to ``out_dir``; each synthetic patient owns 2-3 consecutive
    tiles of one class. Every tile has its own seed derived from ``(seed, task, label, k)``, so
    the same arguments give byte-identical files and any subset can be regenerated alone.

    Parameters
    ----------
    task : {"breast", "prostate"}
    n_per_class : int
        Tiles per class, at least 1.
    out_dir : path-like
        Created if missing.
    seed : int
        Non-negative cohort seed.
    size : (width, height), optional
        See :func:`synthesize_image`.
    progress : bool
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        Path of ``manifest.csv``.
    """
    _check_task(task)
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _resolve_size(task, size)
    out = pathlib.Path(out_dir)
    jobs = [(label, k) for label in TASKS[task] for k in range(n_per_class)]
    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc=f"synth {task}", unit="image")
    rows = []
    for label, k in jobs:
        tile = synthesize_image(
            task, label, rng=np.random.default_rng(_image_seed(seed, task, label, k)), size=size
        )
        stem = f"{task}_{label}_{k:04d}"
        paths = {
            "path": pathlib.Path("images", label, stem + ".png"),
            "mask": pathlib.Path("masks", label, stem + ".png"),
            "nuclei": pathlib.Path("nuclei", label, stem + ".csv"),
        }
        for rel in paths.values():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(tile.image, mode="RGB").save(out / paths["path"])
        Image.fromarray(tile.mask.astype(np.uint16)).save(out / paths["mask"])
        tile.nuclei.to_csv(out / paths["nuclei"], index=False, float_format="%.3f", lineterminator="\n")
        rows.append(
            {
                "path": paths["path"].as_posix(),
                "label": label,
                "patient": _patient(task, label, k),
                "mpp": MPP,
                "mask": paths["mask"].as_posix(),
                "nuclei": paths["nuclei"].as_posix(),
                "task": task,
            }
        )
    manifest = out / "manifest.csv"
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False, lineterminator="\n")
    return manifest
