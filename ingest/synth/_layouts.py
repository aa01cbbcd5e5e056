"""Where the nuclei of each class go: the arrangements that alone separate the classes of a task.

Each arrangement takes a :class:`~nucleograph.ingest.synth._placement.Layout` whose pending queue
holds the epithelial nuclei and places all of them; stromal nuclei are scattered afterwards by
:func:`nucleograph.ingest.synth.tile.synthesize_image`, the same way for both classes.
"""

from __future__ import annotations

import math

import numpy as np

from nucleograph.ingest.synth._placement import BOUND, GAP, Layout


def _ellipse_point(cx, cy, rx, ry, rot, phi):
    """Point at parameter ``phi`` on an ellipse and the tangent angle there."""
    ex, ey = rx * math.cos(phi), ry * math.sin(phi)
    c, s = math.cos(rot), math.sin(rot)
    tx, ty = -rx * math.sin(phi), ry * math.cos(phi)
    return cx + c * ex - s * ey, cy + s * ex + c * ey, math.atan2(s * tx + c * ty, c * tx - s * ty)


def _ring(lay: Layout, cx, cy, rx, ry, rot, role, *, tangent: bool, skip=None, jitter: float = 1.0):
    """Walk once around an ellipse, placing pending nuclei shoulder to shoulder."""
    if rx < 4 or ry < 4:
        return
    perimeter = math.pi * (3 * (rx + ry) - math.sqrt((3 * rx + ry) * (rx + 3 * ry)))
    start = lay.rng.uniform(0, 2 * math.pi)
    t = 0.0
    while lay.left:
        r = lay.next_radius
        t += r * BOUND + GAP / 2
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
        t += r * BOUND + GAP / 2


def _inside(cx, cy, rx, ry, rot, x, y, scale=1.0) -> bool:
    c, s = math.cos(rot), math.sin(rot)
    dx, dy = x - cx, y - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / (rx * scale)) ** 2 + (v / (ry * scale)) ** 2 < 1.0


def _path(lay: Layout, x, y, angle, length, step):
    """Points along a gently curving random path."""
    pts = []
    bend = lay.rng.normal(0, 0.006)
    for _ in range(int(length / step)):
        pts.append((x, y, angle))
        angle += bend * step + lay.rng.normal(0, 0.06)
        x += step * math.cos(angle)
        y += step * math.sin(angle)
    return pts


def _hex_points(lay: Layout, cx, cy, radius, spacing):
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


def _pick_center(lay: Layout, r: float, gap: float, margin: float = 0.25, tries: int = 60):
    """A centre for a structure of radius ``r`` that may overhang the tile edge by ``margin * r``."""
    for _ in range(tries):
        x = lay.rng.uniform(-margin * r, lay.width + margin * r)
        y = lay.rng.uniform(-margin * r, lay.height + margin * r)
        if lay.reserve(x, y, r, gap):
            return x, y
    return None


def _spacing(lay: Layout) -> float:
    return 2 * BOUND * float(np.mean(lay.radius[lay.next : lay.stop] if lay.left else lay.radius)) + GAP


def _stroma_fields(lay: Layout, count: int, radius: tuple[float, float],
                   reference: float) -> list[tuple[float, float, float]]:
    """Reserve up to ``count`` discs where no structure goes: fields of stroma without tumour or glands,
    as a section has between groups of them. ``radius`` is for a tile whose shorter side is ``reference``
    px (the task's default) and scales with a smaller one. Returns them as ``(x, y, r)``."""
    fields = []
    scale = min(1.0, min(lay.width, lay.height) / reference)
    for _ in range(count):
        r = lay.rng.uniform(*radius) * scale
        centre = _pick_center(lay, r, gap=0.0, margin=0.5)
        if centre is not None:
            fields.append((*centre, r))
    return fields


def _outside(fields, x: float, y: float) -> bool:
    """Whether ``(x, y)`` lies in none of the :func:`_stroma_fields` ``fields``."""
    return all((x - fx) ** 2 + (y - fy) ** 2 >= fr * fr for fx, fy, fr in fields)


# breast ---------------------------------------------------------------------------------------


def _layout_insitu(lay: Layout) -> None:
    rng = lay.rng
    step = _spacing(lay) + 1
    max_r = 0.42 * min(lay.width, lay.height)
    shrink, failures = 1.0, 0
    while lay.left:
        rx = min(rng.uniform(170, 300) * shrink, max_r)
        ry = rx * rng.uniform(0.7, 1.0)
        rot = rng.uniform(0, math.pi)
        layers = int(rng.integers(3, 7))
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
            lay.add_lumen(cx, cy, lrx, lry, rot)
            for _ in range(int(rng.integers(0, 4))):
                u, v = rng.uniform(-0.6, 0.6, 2)
                x, y, _t = _ellipse_point(
                    cx, cy, lrx * math.hypot(u, v), lry * math.hypot(u, v), rot, math.atan2(v, u)
                )
                lay.place(x, y, "lumen")


def _layout_invasive(lay: Layout) -> None:
    rng = lay.rng
    step = _spacing(lay)
    # In-situ's large ducts leave open stroma in most tiles; invasive tumour spread over the whole tile
    # left little (share of stroma far from epithelium 0.38 against 0.085), so a field of stroma alone
    # meant in-situ. Invasive tiles now keep tumour-free fields of stroma too (bench/RESULTS.md, issue 18
    # stop 32).
    fields = _stroma_fields(lay, int(rng.choice(len(_INVASIVE_FIELDS), p=_INVASIVE_FIELDS)), _INVASIVE_FIELD_RADIUS,
                            reference=1536)

    def place(x, y, role, theta=math.nan) -> bool:
        return _outside(fields, x, y) and lay.place_near(x, y, role, theta)

    kinds = ("cord", "single_file", "cluster", "infiltrating")
    clearance = 70.0  # a new structure starts in stroma, so tumour spreads instead of piling up
    idle = 0
    while lay.left:
        before = lay.left
        if idle > 100:  # the tumour has no room left outside the fields: it may grow into them
            fields.clear()
        kind = kinds[int(rng.choice(4, p=[0.4, 0.15, 0.35, 0.1]))]
        for _ in range(30):
            x0, y0 = rng.uniform(0, lay.width), rng.uniform(0, lay.height)
            if _outside(fields, x0, y0) and not lay.crowded(x0, y0, clearance):
                break
        else:
            clearance *= 0.8
        if kind in ("cord", "single_file"):
            width = 1 if kind == "single_file" else int(rng.integers(2, 5))
            pts = _path(lay, x0, y0, rng.uniform(0, 2 * math.pi), rng.uniform(120, 400), step + 1)
            for px, py, ang in pts:
                if width == 1 and lay.crowded(px, py, step * 1.6):
                    continue  # a file that runs into other tumour stops
                for w in range(width):
                    off = (w - (width - 1) / 2) * (step + 1)
                    theta = ang + rng.normal(0, 0.25) if kind == "single_file" else math.nan
                    place(px - off * math.sin(ang), py + off * math.cos(ang), kind, theta)
        elif kind == "cluster":
            n = int(rng.integers(8, 25))
            placed = 0
            for px, py in _hex_points(lay, x0, y0, math.sqrt(n) * step * 0.6, step + 1):
                placed += place(px, py, "cluster")
                if placed >= n:
                    break
        else:
            for _ in range(int(rng.integers(1, 4))):
                place(x0 + rng.normal(0, 50), y0 + rng.normal(0, 50), "infiltrating")
        idle = idle + 1 if lay.left == before else 0


#: Tumour-free stroma fields of an invasive tile: how many (0-3, with these chances) and their radius (px),
#: chosen so that the share of stromal nuclei far from epithelium matches in-situ's per tile (0.37 and
#: 0.41 over tiles 1000-1009; ``test_open_stroma_is_alike_in_both_classes``).
_INVASIVE_FIELDS = (0.05, 0.25, 0.4, 0.3)
_INVASIVE_FIELD_RADIUS = (360.0, 540.0)


# prostate -------------------------------------------------------------------------------------


#: Gland-free stroma fields of a Gleason 3 tile: how many (0-3, with these chances) and their radius (px).
#: Chosen so that the share of stromal nuclei farther than a link (100 px) from any epithelium matches
#: Gleason 4's per tile (mean 0.17 and 0.18; ``test_open_stroma_is_alike_in_both_classes``).
_G3_FIELDS = (0.5, 0.25, 0.15, 0.1)
_G3_FIELD_RADIUS = (120.0, 300.0)


def _layout_gleason3(lay: Layout) -> None:
    rng = lay.rng
    step = _spacing(lay)
    # Gleason 4's large nests leave open stroma in most tiles; small glands spread evenly over a whole
    # tile left none (share of stroma far from epithelium 0.01 against 0.18), so a field of stroma alone
    # meant Gleason 4, and some models learnt that (bench/RESULTS.md, issue 18 stop 32). Gleason 3 tiles
    # now hold gland-free fields of stroma too.
    fields = _stroma_fields(lay, int(rng.choice(len(_G3_FIELDS), p=_G3_FIELDS)), _G3_FIELD_RADIUS, reference=1024)
    failures, shrink = 0, 1.0
    while lay.left:
        rx = rng.uniform(26, 55) * max(shrink, 0.6)
        ry = rx * rng.uniform(0.65, 1.0)
        rot = rng.uniform(0, math.pi)
        centre = _pick_center(lay, rx + step / 2, gap=rng.uniform(12, 40) * shrink, margin=0.1)
        if centre is None:
            # no room: smaller glands, closer together, fill what is left (random scatter only as the
            # last resort, and never into a stroma field)
            failures += 1
            shrink = max(0.1, shrink * 0.9)
            if failures > 60:
                lay.scatter("gland_boundary", ok=lambda x, y: _outside(fields, x, y))
            continue
        cx, cy = centre
        before = lay.left
        _ring(lay, cx, cy, rx, ry, rot, "gland_boundary", tangent=True)
        if lay.left < before:
            lay.add_lumen(cx, cy, rx - step * 0.5 - 7, ry - step * 0.5 - 7, rot)


def _layout_gleason4(lay: Layout) -> None:
    rng = lay.rng
    step = _spacing(lay)
    # Each tile has its own mix of the three patterns, often one predominant, as a tumour region does:
    # some tiles are mostly fused glands, some mostly cribriform, so each pattern alone must mean
    # Gleason 4 to a model that classifies every tile.
    mix = rng.dirichlet([0.7, 0.7, 0.7])
    failures = idle = 0
    while lay.left:
        kind = ("cribriform", "fused", "poorly_formed")[int(rng.choice(3, p=mix))]
        if kind == "cribriform" and _cribriform_gland(lay, step):
            continue
        if kind == "fused" and _fused_glands(lay, step):
            continue
        if kind != "poorly_formed":
            failures += 1
            if failures > 30:  # no room left for large glands: small ones fill the gaps between them
                mix = np.array([0.0, 0.0, 1.0])
            continue
        before = lay.left
        _poorly_formed(lay, step)
        idle = idle + 1 if lay.left == before else 0
        if idle > 200:
            lay.scatter("poorly_formed")


def _cribriform_gland(lay: Layout, step: float) -> bool:
    """A large nest with punched-out lumens; False when no room for it was found."""
    rng = lay.rng
    rx = min(rng.uniform(100, 170), 0.4 * min(lay.width, lay.height))
    ry = rx * rng.uniform(0.75, 1.0)
    rot = rng.uniform(0, math.pi)
    centre = _pick_center(lay, rx + step / 2, gap=rng.uniform(10, 30), margin=0.1)
    if centre is None:
        return False
    cx, cy = centre
    _ring(lay, cx, cy, rx, ry, rot, "cribriform", tangent=True)
    holes = _cribriform_holes(lay, cx, cy, rx, ry, rot, step)
    for hx, hy, hr in holes:
        lay.add_lumen(hx, hy, hr, hr, 0.0)
    for px, py in _hex_points(lay, cx, cy, max(rx, ry), step + 0.5):
        if not _inside(cx, cy, rx - step * 0.9, ry - step * 0.9, rot, px, py):
            continue
        if any((px - a) ** 2 + (py - b) ** 2 < (c + step * 0.55) ** 2 for a, b, c in holes):
            continue
        lay.place_near(px, py, "cribriform")
    return True


def _cribriform_holes(lay: Layout, cx, cy, rx, ry, rot, step: float) -> list[tuple[float, float, float]]:
    """Up to 10 round lumens (x, y, r) inside a cribriform nest, apart from each other by a nucleus."""
    rng = lay.rng
    holes: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(4, 11)) * 4):
        hr = rng.uniform(12, 24)
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
    return holes


def _fused_glands(lay: Layout, step: float) -> bool:
    """3-6 small glands fused back to back: no stroma between them, one shared wall between two lumens.

    In Gleason pattern 4 the glands of a fused group are no longer separated by stroma: neighbouring
    lumens are parted by a single wall of epithelium. Each gland here is a near-circular ring that
    skips the other glands' insides; where two glands meet, their common chord is lined by nuclei (the
    shared wall) and each lumen stops short of it. False when there was no room for the group.
    """
    rng = lay.rng
    parts: list[tuple[float, float, float, float, float]] = []
    n_parts = int(rng.integers(3, 7))
    x = y = 0.0  # the group is drawn around the origin, then moved to where it has room
    for _ in range(n_parts * 8):
        if len(parts) == n_parts:
            break
        r = rng.uniform(26, 46)
        if parts:  # attach to a gland of the group, overlapping it by a wall's width or so
            px, py, pr, _pry, _rot = parts[int(rng.integers(len(parts)))]
            ang = rng.uniform(0, 2 * math.pi)
            d = (pr + r) * rng.uniform(0.72, 0.85)
            x, y = px + d * math.cos(ang), py + d * math.sin(ang)
            # a third gland must not swallow the wall between two others
            if any(math.hypot(x - q[0], y - q[1]) < 0.7 * (r + q[2]) for q in parts):
                continue
        parts.append((x, y, r, r * rng.uniform(0.88, 1.0), rng.uniform(0, math.pi)))
    mx = float(np.mean([p[0] for p in parts]))
    my = float(np.mean([p[1] for p in parts]))
    br = max(math.hypot(p[0] - mx, p[1] - my) + p[2] for p in parts)
    centre = _pick_center(lay, br + step / 2, gap=rng.uniform(5, 20), margin=0.1)
    if centre is None:
        return False
    parts = [(px - mx + centre[0], py - my + centre[1], rx, ry, rot) for px, py, rx, ry, rot in parts]
    # the shared walls: the chord of each overlapping pair, clipped to what no third gland covers
    lumen_r = [min(p[2], p[3]) - step * 0.5 - 6 for p in parts]
    walls = []
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            (xi, yi, ri, *_), (xj, yj, rj, *_) = parts[i], parts[j]
            d = math.hypot(xj - xi, yj - yi)
            if d >= ri + rj or d <= abs(ri - rj):
                continue
            a = (d * d + ri * ri - rj * rj) / (2 * d)  # from gland i's centre to the chord
            h = math.sqrt(max(ri * ri - a * a, 0.0))
            ux, uy = (xj - xi) / d, (yj - yi) / d
            mx, my = xi + a * ux, yi + a * uy
            walls.append((mx - h * uy, my + h * ux, mx + h * uy, my - h * ux, i, j))
            lumen_r[i] = min(lumen_r[i], a - step * 0.5 - 6)
            lumen_r[j] = min(lumen_r[j], d - a - step * 0.5 - 6)
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
    for x0, y0, x1, y1, i, j in walls:
        length = math.hypot(x1 - x0, y1 - y0)
        tang = math.atan2(y1 - y0, x1 - x0)
        third = [q for k, q in enumerate(parts) if k not in (i, j)]
        t = step * 0.5
        while t < length - step * 0.5 and lay.left:
            wx, wy = x0 + (x1 - x0) * t / length, y0 + (y1 - y0) * t / length
            if not any(_inside(*q, wx, wy, scale=0.95) for q in third):
                lay.place_near(wx, wy, "fused", tang + rng.normal(0, 0.2), tries=3, spread=1.5)
            t += step + 1
    for (px, py, _rx, _ry, rot), lr in zip(parts, lumen_r, strict=True):
        if lr > 4:
            lay.add_lumen(px, py, lr, lr * rng.uniform(0.85, 1.0), rot)
    return True


def _poorly_formed(lay: Layout, step: float) -> None:
    """A short cord one or two nuclei wide, or a small solid nest, with no lumen."""
    rng = lay.rng
    x0, y0 = rng.uniform(0, lay.width), rng.uniform(0, lay.height)
    if rng.random() < 0.5:
        width = int(rng.integers(1, 3))
        for px, py, ang in _path(lay, x0, y0, rng.uniform(0, 2 * math.pi), rng.uniform(60, 200), step + 1):
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


LAYOUTS = {
    ("breast", "InSitu"): _layout_insitu,
    ("breast", "Invasive"): _layout_invasive,
    ("prostate", "Gleason3"): _layout_gleason3,
    ("prostate", "Gleason4"): _layout_gleason4,
}
