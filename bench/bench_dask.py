"""Ingest on Dask (issue 19): 1 vs 2 workers, the Dask path against today's ``--workers`` pool, and a worked
estimate of a 1,000-slide cohort's wall time from measured per-tile costs.

On one throw-away Neo4j and one synthetic cohort (breast images, watershed), in one process:

- ``pool 2``: :func:`ingest_records` with ``workers=2`` (today's process pool, started by each call);
- ``dask 2`` and ``dask 1``: the same on a warm ``LocalCluster`` of 2 and of 1 worker processes (one thread
  each), started once before the rounds (their start is timed apart, as ``--cluster local:2`` pays it);

in ``--rounds`` rounds, the order rotated each round, every run a fresh graph (its own edge threshold,
100 px + k * 1e-9: a new parameters key, so every image is detected and stored, the edges the same). On a
machine shared with other jobs only figures taken side by side mean anything: the ratios are per round,
and their medians are reported; each round also times 8 pure-CPU tasks on 1 and on 2 workers, the most a
second worker can add on the machine as loaded at that moment.

Then a synthetic whole slide is ingested on the 2-worker cluster with its tiles as tasks; the task stream
gives each tile's cost (tissue and glass tiles apart) and the slide task's (join, edges, store), and two
tissue tiles are timed with the U-Net as well. From those, the wall time of 1,000 slides of
``SLIDE_SIZE`` on N workers.

    ./.venv/bin/python bench/bench_dask.py [--images 12] [--size 1024x1024] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from distributed import get_task_stream

from nucleograph.cluster import ClusterSpec, connect
from nucleograph.db import local, schema
from nucleograph.db import records as rec
from nucleograph.db.graphdb import GraphDB
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.detect import SLIDE_OVERLAP
from nucleograph.ingest.pipeline import IngestParams, detect_tile, slide_tiles
from nucleograph.ingest.readers import slide_tile_grid
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort
from nucleograph.ingest.synth.slide import SLIDE_SIZE, synthesize_slide
from nucleograph.ingest.unet import load_unet

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402

MODES = ("pool 2", "dask 2", "dask 1")


def _run(mode: str, records, k: int, *, settings, db, clients) -> tuple[float, float]:
    """Wall seconds of one ingest, and its steady rate: images per second between the first image finished
    and the last (from the SQL records' times), which leaves out what the run pays before its first image
    (the pool's process start, the first tasks' imports)."""
    params = IngestParams(threshold=100.0 + k * 1e-9)  # a new key: detected and stored again, same edges
    cohort = f"bench-{k}"
    t = time.perf_counter()
    if mode == "pool 2":
        s = ingest_records(records, cohort=cohort, params=params, settings=settings, db=db, workers=2)
    else:
        s = ingest_records(records, cohort=cohort, params=params, settings=settings, db=db, client=clients[mode])
    seconds = time.perf_counter() - t
    assert (s.ok, s.stored) == (len(records), len(records)), s.failures
    engine = rec.open_engine(settings)
    try:
        done = sorted(dt.datetime.fromisoformat(r["created_at"]) for r in rec.ingest_records(engine, cohort=cohort))
    finally:
        engine.dispose()
    return seconds, (len(done) - 1) / (done[-1] - done[0]).total_seconds()


def _burn(n: int) -> int:
    """Pure-Python CPU work: what two worker processes can do at most on this machine right now."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def _ceiling(clients) -> float:
    """Wall time of 8 pure-CPU tasks on 1 worker over that on 2: the scaling the machine allows this round."""
    seconds = {}
    for mode in ("dask 1", "dask 2"):
        t = time.perf_counter()
        clients[mode].gather(clients[mode].map(_burn, [2_000_000] * 8, pure=False))
        seconds[mode] = time.perf_counter() - t
    return seconds["dask 1"] / seconds["dask 2"]


def _tasks(stream, prefix: str) -> list[float]:
    """Seconds of computing each task whose key starts with ``prefix`` (transfers and waits left out)."""
    return [sum(p["stop"] - p["start"] for p in t["startstops"] if p["action"] == "compute")
            for t in stream.data if str(t["key"]).startswith(prefix)]


def _slide(work: Path, settings, db, client) -> dict:
    """A synthetic 4096 x 4096 slide ingested with its tiles as tasks: per-tile and per-slide costs."""
    path = work / "slide.tif"
    synthesize_slide("breast", "Invasive", path, nuclei_path=work / "slide_nuclei.csv",
                     truth_path=work / "slide_truth.json", rng=np.random.default_rng(19), size=(4096, 4096))
    (record,) = discover([path])
    params = IngestParams()
    grid = slide_tiles(record, params)
    with get_task_stream(client) as stream:
        t = time.perf_counter()
        s = ingest_records([record], cohort="bench-slide", params=params, settings=settings, db=db, client=client)
        wall = time.perf_counter() - t
    assert s.ok == 1, s.failures
    tiles = _tasks(stream, "detect-tile-")
    slide_task = _tasks(stream, "ingest-slide-")
    glass = [x for x in tiles if x < 0.1 * max(tiles)]  # a glass tile is read and skipped
    tissue = [x for x in tiles if x not in glass]
    unet = load_unet()
    unet_s = []
    for tile in grid[:2]:
        t = time.perf_counter()
        detect_tile(record, IngestParams(detector="unet"), tile, unet=unet)
        unet_s.append(time.perf_counter() - t)
    return {"tiles": len(grid), "tissue_tiles": len(tissue), "glass_tiles": len(glass), "wall_s": round(wall, 2),
            "tile_tissue_s": round(statistics.median(tissue), 2), "tile_glass_s": round(statistics.median(glass), 3)
            if glass else None, "tile_unet_s": round(statistics.median(unet_s), 2),
            "slide_task_s": round(slide_task[0], 2), "nuclei": s.nuclei, "edges": s.edges}


def estimate(slide: dict, workers: list[int], *, slides: int = 1000) -> dict:
    """Wall time of ``slides`` slides of ``SLIDE_SIZE`` on N single-thread workers, from ``slide``'s costs.

    Tiles per slide from the tile grid; tissue share as measured on the synthetic slide; each worker runs one
    task at a time. The join-and-store task scales with the slide's nuclei (per tissue tile). All workers write
    to one Neo4j: its write rate (rows/s of the measured slide task, a generous upper bound since that task
    also joined and linked) caps the whole cohort however many workers there are.
    """
    width, height = SLIDE_SIZE
    n_tiles = len(slide_tile_grid(width, height, tile=IngestParams().slide_tile, overlap=SLIDE_OVERLAP))
    share = slide["tissue_tiles"] / slide["tiles"]
    tissue, glass = n_tiles * share, n_tiles * (1 - share)
    scale = tissue / max(slide["tissue_tiles"], 1)
    per_slide = {
        "watershed": tissue * slide["tile_tissue_s"] + glass * (slide["tile_glass_s"] or 0.0),
        "unet": tissue * slide["tile_unet_s"] + glass * (slide["tile_glass_s"] or 0.0),
    }
    store_s = slide["slide_task_s"] * scale  # one slide's join + edges + store
    rows_per_s = (slide["nuclei"] + slide["edges"]) / slide["slide_task_s"]
    out = {"slide_size": [width, height], "tiles_per_slide": n_tiles, "tissue_share": round(share, 2),
           "store_s_per_slide": round(store_s, 1), "neo4j_rows_per_s": round(rows_per_s),
           "neo4j_floor_h": round(slides * store_s / 3600, 1), "hours": {}}
    for detector, detect_s in per_slide.items():
        out["hours"][detector] = {
            str(n): round(max(slides * (detect_s + store_s) / n, slides * store_s) / 3600, 1) for n in workers}
        out[f"detect_s_per_slide_{detector}"] = round(detect_s, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=12, help="images (half per class)")
    ap.add_argument("--size", default="1024x1024", help="WIDTHxHEIGHT of each image")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    facts = machine.describe()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    synthesize_cohort("breast", n_per_class=max(1, args.images // 2), out_dir=work / "synth", seed=19, size=size)
    records = discover([work / "synth"])
    times: dict[str, list[float]] = {m: [] for m in MODES}
    rates: dict[str, list[float]] = {m: [] for m in MODES}
    with local.temporary_server(launcher_from=Path(".nucleograph/test/launcher"), heap="1g", pagecache="256m") as (
            settings, _env), GraphDB.open(settings) as db:
        schema.migrate(db)
        t = time.perf_counter()
        with connect(ClusterSpec(None, 2)) as two:
            start_s = time.perf_counter() - t
            with connect(ClusterSpec(None, 1)) as one:
                clients = {"dask 2": two, "dask 1": one}
                _run("dask 2", records[:2], 0, settings=settings, db=db, clients=clients)  # workers import once
                _run("dask 1", records[:2], 1, settings=settings, db=db, clients=clients)
                k = 2
                ceiling = []
                for r in range(args.rounds):
                    ceiling.append(_ceiling(clients))
                    for mode in MODES[r % 3:] + MODES[: r % 3]:
                        wall, rate = _run(mode, records, k, settings=settings, db=db, clients=clients)
                        times[mode].append(wall)
                        rates[mode].append(rate)
                        k += 1
            slide = _slide(work, settings, db, two)
    load_after = os.getloadavg()
    ratios = {
        "pure-CPU tasks, 2 / 1 workers (the machine's ceiling)": ceiling,
        "steady throughput, dask 2 / dask 1 workers": [a / b for a, b in zip(rates["dask 2"], rates["dask 1"],
                                                                              strict=True)],
        "steady throughput, dask 2 / pool 2": [a / b for a, b in zip(rates["dask 2"], rates["pool 2"], strict=True)],
        "wall time, dask 2 (warm) / pool 2": [a / b for a, b in zip(times["dask 2"], times["pool 2"], strict=True)],
        "wall time, dask 2 cold (+ cluster start) / pool 2": [
            (a + start_s) / b for a, b in zip(times["dask 2"], times["pool 2"], strict=True)],
    }
    out = {
        "machine": {k: (str(v) if k != "gemm_macs_per_s" else v) for k, v in facts.items()},
        "cores": len(os.sched_getaffinity(0)), "load_before": load_before, "load_after": load_after,
        "images": len(records), "size": list(size), "local_cluster_start_s": round(start_s, 2),
        "seconds": {m: [round(x, 2) for x in v] for m, v in times.items()},
        "steady_images_per_s": {m: [round(x, 3) for x in v] for m, v in rates.items()},
        "ratios": {k: {"per_round": [round(x, 3) for x in v], "median": round(statistics.median(v), 3)}
                   for k, v in ratios.items()},
        "slide": slide, "estimate_1000_slides": estimate(slide, [1, 2, 8, 32, 128]),
    }
    if args.json:
        json.dump(out, sys.stdout, indent=2)
        print()
        return
    print(machine.header(facts))
    print(f"{out['cores']} cores; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"{len(records)} images {size[0]}x{size[1]}, watershed; local:2 cluster start {start_s:.1f} s")
    for m, v in times.items():
        print(f"  {m}: wall {', '.join(f'{x:.1f}' for x in v)} s; steady "
              f"{', '.join(f'{x:.2f}' for x in rates[m])} images/s")
    for k, v in out["ratios"].items():
        print(f"  {k}: {', '.join(f'{x:.2f}' for x in v['per_round'])} (median {v['median']:.2f})")
    print(f"slide: {json.dumps(slide)}")
    print(f"1,000 slides: {json.dumps(out['estimate_1000_slides'])}")


if __name__ == "__main__":
    main()
