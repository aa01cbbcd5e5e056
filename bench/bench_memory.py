"""Peak memory of one ingest worker per image size, and of `nucleograph ingest --workers 2` as a whole.

Usage::

    ./.venv/bin/python bench/bench_memory.py [--mpx 2 4 8 16] [--detectors watershed unet]
        [--limit-mpx 67.1] [--end-to-end] [--skip-per-worker] [--json]

1. Per worker: each image size runs in a fresh process that first does what an ingest worker does at
   start (:func:`nucleograph.ingest.run._init_worker`: torch, and the U-Net for ``unet``), then
   processes one image (:func:`nucleograph.ingest.pipeline.process_image`: read, detect, features,
   edges). The image is a synthetic 2048x1536 breast tile (about 1,500 nuclei) repeated to the size,
   saved as an uncompressed TIFF, so nucleus density is that of real tissue. Peak RSS is the
   process's ``ru_maxrss``; the per-megapixel slope is a least-squares line through the sizes.
2. ``--end-to-end``: ``nucleograph ingest`` of two images at ``--limit-mpx`` with ``--workers 2``
   into a throwaway local Neo4j, sampling the summed RSS of the ingest process and its workers every
   0.1 s (Neo4j's own memory is not counted: it is a separate server with a fixed heap).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MB = 1024 * 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def child(path: str, detector: str) -> dict:
    """Run in a fresh process: a worker's start, then one image; peak RSS before and after."""
    from nucleograph.ingest.cohort import ImageRecord
    from nucleograph.ingest.pipeline import IngestParams
    from nucleograph.ingest.run import _init_worker, _process

    _init_worker(detector, 1)
    base = _peak_mb()
    params = IngestParams(detector=detector)
    t = time.perf_counter()
    graph = _process(ImageRecord(path=Path(path), label=None), params, "bench")
    return {"baseline_mb": round(base, 1), "peak_mb": round(_peak_mb(), 1),
            "seconds": round(time.perf_counter() - t, 1), "nuclei": graph.n_nuclei, "edges": graph.n_edges}


def make_image(base: np.ndarray, mpx: float, out: Path) -> tuple[Path, int, int]:
    """``base`` repeated to about ``mpx`` megapixels (4:3), as an uncompressed TIFF."""
    import tifffile

    width = int(round((mpx * 1e6 * 4 / 3) ** 0.5))
    height = int(mpx * 1e6 // width)  # never over: an image at the limit must be accepted
    reps = (-(-height // base.shape[0]), -(-width // base.shape[1]), 1)
    image = np.tile(base, reps)[:height, :width]
    path = out / f"img_{width}x{height}.tif"
    tifffile.imwrite(path, image)
    return path, width, height


def base_tile(work: Path) -> np.ndarray:
    from nucleograph.ingest.cohort import discover
    from nucleograph.ingest.readers import read_image
    from nucleograph.ingest.synth import synthesize_cohort

    synthesize_cohort("breast", n_per_class=1, out_dir=work / "synth", seed=7, size=(2048, 1536))
    return read_image(discover([work / "synth"])[0].path)


def per_worker(sizes: list[float], detectors: list[str], work: Path, base: np.ndarray) -> list[dict]:
    rows = []
    for mpx in sizes:
        path, w, h = make_image(base, mpx, work)
        for detector in detectors:
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--detector", detector],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{detector} at {mpx} Mpx failed:\n{out.stderr[-3000:]}")
            row = {"detector": detector, "width": w, "height": h, "mpx": round(w * h / 1e6, 2),
                   **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        path.unlink()
    return rows


def fit(rows: list[dict]) -> dict:
    """Least-squares ``peak_mb = intercept + slope * mpx`` per detector."""
    out = {}
    for detector in sorted({r["detector"] for r in rows}):
        pts = [(r["mpx"], r["peak_mb"]) for r in rows if r["detector"] == detector]
        x, y = np.array(pts).T
        slope, intercept = np.polyfit(x, y, 1) if len(pts) > 1 else (y[0] / x[0], 0.0)
        out[detector] = {"mb_per_mpx": round(float(slope), 1), "intercept_mb": round(float(intercept), 1),
                         "baseline_mb": max(r["baseline_mb"] for r in rows if r["detector"] == detector)}
    return out


def _tree_rss(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / MB


def end_to_end(limit_mpx: float, detector: str, work: Path, base: np.ndarray) -> dict:
    """``nucleograph ingest --workers 2`` of two images at the limit; peak summed RSS of the tree."""
    from nucleograph.db import local, schema
    from nucleograph.db.graphdb import GraphDB

    folder = work / "e2e"
    folder.mkdir()
    first, w, h = make_image(base, limit_mpx, folder)
    second = folder / "img_b.tif"
    import tifffile

    tifffile.imwrite(second, np.ascontiguousarray(tifffile.imread(first)[:, ::-1]))  # other content, same size
    exe = shutil.which("nucleograph", path=str(Path(sys.executable).parent)) or "nucleograph"
    with local.temporary_server(launcher_from=Path(".nucleograph/test/launcher"), heap="1g") as (settings, env):
        with GraphDB.open(settings) as db:
            schema.migrate(db)  # the uniqueness constraints that the edge writes MATCH on
        full_env = {**os.environ, **env}
        full_env.pop("NEO4J_PASSWORD", None)
        t = time.perf_counter()
        proc = subprocess.Popen([exe, "ingest", str(folder), "--cohort", "bench-memory", "--workers", "2",
                                 "--detector", detector, "--json"], env=full_env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        peak = parent_peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            try:
                import psutil

                parent_peak = max(parent_peak, psutil.Process(proc.pid).memory_info().rss / MB)
            except Exception:  # the process ended between the poll and the read
                pass
            time.sleep(0.1)
        summary = json.loads(proc.stdout.read())
    return {"detector": detector, "width": w, "height": h, "mpx": round(w * h / 1e6, 2),
            "peak_total_mb": round(peak, 1), "parent_peak_mb": round(parent_peak, 1),
            "seconds": round(time.perf_counter() - t, 1), "ok": summary["ok"], "failed": summary["failed"],
            "nuclei": summary["nuclei"], "errors": [f["error"] for f in summary["failures"]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mpx", type=float, nargs="*", default=[2, 8, 16, 32], help="image sizes, megapixels")
    ap.add_argument("--detectors", nargs="+", default=["watershed", "unet"])
    ap.add_argument("--limit-mpx", type=float, default=None,
                    help="also measure one worker at this size (default: ingest.readers.DEFAULT_MAX_PIXELS)")
    ap.add_argument("--end-to-end", action="store_true",
                    help="ingest two images at --limit-mpx with 2 workers (the first of --detectors)")
    ap.add_argument("--skip-per-worker", action="store_true", help="only the --end-to-end run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--detector", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.detector)))
        return
    from nucleograph.ingest.readers import DEFAULT_MAX_PIXELS

    args.limit_mpx = args.limit_mpx or DEFAULT_MAX_PIXELS / 1e6
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        base = base_tile(work)
        sizes = sorted(set(args.mpx) | {args.limit_mpx})
        rows = [] if args.skip_per_worker else per_worker(sizes, args.detectors, work, base)
        out = {"machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}",
               "default_max_pixels": DEFAULT_MAX_PIXELS, "per_worker": rows, "fit": fit(rows) if rows else {}}
        if args.end_to_end:
            out["end_to_end"] = end_to_end(args.limit_mpx, args.detectors[0], work, base)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'detector':>10} {'Mpx':>6} {'base MB':>8} {'peak MB':>8} {'s':>6} {'nuclei':>7}")
    for r in rows:
        print(f"{r['detector']:>10} {r['mpx']:>6} {r['baseline_mb']:>8} {r['peak_mb']:>8} {r['seconds']:>6} {r['nuclei']:>7}")
    for detector, f in out["fit"].items():
        print(f"{detector}: {f['mb_per_mpx']} MB per Mpx + {f['intercept_mb']} MB")
    if "end_to_end" in out:
        print(f"end to end (--workers 2): {out['end_to_end']}")


if __name__ == "__main__":
    main()
