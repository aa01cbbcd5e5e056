"""Nucleus placement for synthetic tiles: nuclei whose sizes were drawn beforehand, never overlapping.

The arrangements in :mod:`nucleograph.ingest.synth._layouts` propose positions; :class:`Layout` accepts
or rejects them and remembers what was placed (positions, orientations, roles, reserved structure
discs and lumens) for the renderer.
"""

from __future__ import annotations

import math

import numpy as np

GAP = 3.0  # pixels of background kept between the bounding circles of two nuclei
BOUND = 1.1  # a nucleus' outline stays within BOUND * its semi-major axis


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
