"""Nucleus placement for synthetic tiles: nuclei whose sizes were drawn beforehand, never overlapping.

The arrangements in :mod:`nucleograph.ingest.synth._layouts` propose positions; :class:`Layout` accepts
or rejects them and remembers what was placed (positions, orientations, roles, reserved structure
discs and lumens) for the renderer.
"""

from __future__ import annotations

import math

import numpy as np
from skimage import draw

GAP = 3.0  # pixels of background kept between the bounding circles of two nuclei
BOUND = 1.1  # a nucleus' outline stays within BOUND * its semi-major axis
COVER_CELL = 8  # pixels per cell of the epithelial territory grid


class Layout:
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
        self.cell = 2 * BOUND * float(radius.max(initial=1.0)) + GAP
        self.grid: dict[tuple[int, int], list[int]] = {}
        self.blobs: list[tuple[float, float, float]] = []  # reserved structure discs (x, y, r)
        self.lumens: list[tuple[float, float, float, float, float]] = []  # (cx, cy, rx, ry, rot)
        # Epithelial territory on a coarse grid: the discs around epithelial nuclei and the lumens,
        # where no stromal nucleus goes. Placement of the epithelium ends once it covers
        # ``target_cover`` of the tile, so both classes of a task get the same amount of stroma.
        self.covered = np.zeros((-(-height // COVER_CELL), -(-width // COVER_CELL)), bool)
        self.n_covered = 0
        self.target_cover = math.inf  # cells; set by the caller while placing epithelium

    @property
    def left(self) -> int:
        return self.stop - self.next

    @property
    def next_radius(self) -> float:
        return float(self.radius[self.next]) if self.next < self.stop else 0.0

    def fits(self, x: float, y: float, r: float) -> bool:
        m = BOUND * r + 2
        if not (m <= x <= self.width - 1 - m and m <= y <= self.height - 1 - m):
            return False
        gx, gy = int(x // self.cell), int(y // self.cell)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in self.grid.get((gx + dx, gy + dy), ()):
                    d = BOUND * (r + self.radius[j]) + GAP
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
        if self.target_cover < math.inf:
            f = COVER_CELL
            rr, cc = draw.disk((y / f, x / f), (self.radius[i] * 2.2 + 6) / f, shape=self.covered.shape)
            self._cover(rr, cc)
        return True

    def add_lumen(self, cx: float, cy: float, rx: float, ry: float, rot: float) -> None:
        """Record a lumen (an ellipse no nucleus is drawn in); it counts as epithelial territory."""
        self.lumens.append((cx, cy, rx, ry, rot))
        if rx > 2 and ry > 2 and self.target_cover < math.inf:
            f = COVER_CELL
            rr, cc = draw.ellipse(cy / f, cx / f, ry / f + 1, rx / f + 1, shape=self.covered.shape, rotation=-rot)
            self._cover(rr, cc)

    def _cover(self, rr: np.ndarray, cc: np.ndarray) -> None:
        new = ~self.covered[rr, cc]
        self.covered[rr[new], cc[new]] = True
        self.n_covered += int(new.sum())
        if self.n_covered >= self.target_cover:
            self.stop = self.next  # the epithelium has its share of the tile: end the queue

    def extend(self, radius: np.ndarray) -> None:
        """Drop the unplaced rest of the queue and queue ``radius`` instead (the stromal nuclei)."""
        keep = self.next
        self.radius = np.concatenate([self.radius[:keep], radius])
        self.n = len(self.radius)
        grow = self.n - keep
        self.x = np.concatenate([self.x[:keep], np.zeros(grow)])
        self.y = np.concatenate([self.y[:keep], np.zeros(grow)])
        self.theta = np.concatenate([self.theta[:keep], np.full(grow, np.nan)])
        self.role = self.role[:keep] + [""] * grow
        self.stop = self.n
        self.target_cover = math.inf

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
