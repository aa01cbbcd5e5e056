"""KD-tree edges (ingest.graph.build_edges) against the chunked brute force, side by side.

Usage::

    python bench/bench_graph.py [--sizes 1500 50000] [--threshold 100] [--repeat 3] [--json]

Points are uniform in a square whose side keeps the density of a BACH-like tile
(about 1500 nuclei per 2048 x 1536 pixels), so the edge count per node stays realistic as N grows.
Both methods must return identical edges; the script checks it before printing.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX, brute_force_edges, build_edges

DENSITY = 1500 / (2048 * 1536)  # nuclei per pixel


def _best_time(fn, repeat: int) -> tuple[float, dict]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def run(sizes, threshold: float, repeat: int, seed: int = 0) -> list[dict]:
    rows = []
    for n in sizes:
        side = float(np.sqrt(n / DENSITY))
        pts = np.random.default_rng(seed).uniform(0, side, size=(n, 2))
        t_kd, kd = _best_time(lambda pts=pts: build_edges(pts, threshold=threshold), repeat)
        t_bf, bf = _best_time(
            lambda pts=pts: brute_force_edges(pts, threshold=threshold), 1 if n > 10_000 else repeat
        )
        same = all(np.array_equal(kd[k], bf[k]) for k in kd)
        if not same:
            raise SystemExit(f"N={n}: KD-tree and brute-force edges differ")
        rows.append(
            {
                "n": n,
                "edges": int(len(kd["src"])),
                "mean_degree": 2 * len(kd["src"]) / n,
                "kdtree_s": t_kd,
                "brute_force_s": t_bf,
                "speedup": t_bf / t_kd,
                "identical": same,
            }
        )
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1500, 50_000])
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_PX, help="edge threshold in pixels")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (brute force at N>10k: 1)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)
    rows = run(args.sizes, args.threshold, args.repeat)
    meta = {
        "threshold_px": args.threshold,
        "machine": platform.processor() or platform.machine(),
        "numpy": np.__version__,
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(f"threshold {args.threshold:g} px, density {DENSITY * 1e6:.0f} nuclei/Mpx, best of {args.repeat}")
    print(f"{'N':>8} {'edges':>10} {'deg':>6} {'kd-tree s':>10} {'brute s':>10} {'brute/kd':>9}  identical")
    for r in rows:
        print(
            f"{r['n']:>8} {r['edges']:>10} {r['mean_degree']:>6.1f} {r['kdtree_s']:>10.4f} "
            f"{r['brute_force_s']:>10.4f} {r['speedup']:>8.1f}x  {r['identical']}"
        )


if __name__ == "__main__":
    main()
