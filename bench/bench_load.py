"""Load: 4 concurrent ingest processes plus dashboard queries for a fixed time, on one local Neo4j.

Four `nucleograph ingest` processes run at once (two pairs share half their images, so the same
image is written concurrently too) while 4 threads issue the dashboard's queries (cohort list, image
list, one image's graph, one nucleus and its neighbours) in a loop. Prints the dashboard latency
percentiles, the error counts, and a consistency check: no partial image, every image once, and the
stored counts equal the ingest summaries.

    ./.venv/bin/python bench/bench_load.py [--seconds 120] [--images 240] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from nucleograph.config import Settings
from nucleograph.db import local, schema, store
from nucleograph.db import queries as q
from nucleograph.db.graphdb import GraphDB
from nucleograph.ingest.synth import synthesize_cohort

PARTIAL = (
    "MATCH (s:Segmentation) WITH s, COUNT { (s)-[:HAS_NUCLEUS]->() } AS n, "
    "COUNT { (s)-[:HAS_NUCLEUS]->()-[:NEAR]->() } AS e "
    "WHERE n <> s.n_nuclei OR e <> s.n_edges RETURN count(s) AS c"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--images", type=int, default=240, help="synthetic 384x384 prostate images in all")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    with local.temporary_server(launcher_from=Path(".nucleograph/test/launcher"), heap="1g") as (settings, env):
        out = run(args, work, settings, env)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>26}: {v}")


def run(args, work: Path, settings: Settings, env: dict[str, str]) -> dict:
    db = GraphDB.open(settings)
    schema.migrate(db)

    synthesize_cohort("prostate", n_per_class=args.images // 2, out_dir=work / "synth", seed=99, size=(384, 384))
    images = sorted((work / "synth" / "images").rglob("*.png"))
    quarter = len(images) // 4
    folders = []
    for k in range(4):  # worker k gets its own quarter plus half of its partner's: shared images race
        own = images[k * quarter : (k + 1) * quarter]
        partner = images[(k ^ 1) * quarter : (k ^ 1) * quarter + quarter // 2]
        folder = work / f"w{k}"
        for p in own + partner:
            dest = folder / p.parent.name / p.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, dest)
        folders.append(folder)
    # something for the dashboard to read from the start
    subprocess.run([sys.executable, "-m", "nucleograph.cli", "ingest", str(folders[0]), "--cohort", "load-0"],
                   env={**os.environ, **env}, check=True, capture_output=True)

    latencies: dict[str, list[float]] = {k: [] for k in ("cohorts", "images", "graph", "nucleus", "neighbours")}
    errors: list[str] = []
    stop = threading.Event()

    def dashboard_user(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            try:
                t = time.perf_counter()
                db.read(q.DASH_COHORTS)
                latencies["cohorts"].append(time.perf_counter() - t)
                cohort = f"load-{rng.randrange(4)}"
                t = time.perf_counter()
                rows = db.read(q.DASH_COHORT_IMAGES, cohort=cohort)
                latencies["images"].append(time.perf_counter() - t)
                if not rows:
                    continue
                image = rng.choice(rows)["id"]
                t = time.perf_counter()
                g = db.read(q.DASH_IMAGE_GRAPH, cohort=cohort, image_id=image, property=None)
                latencies["graph"].append(time.perf_counter() - t)
                if not g or not g[0]["nuclei"]:
                    continue
                uid = f"{g[0]['segmentation']}:{rng.choice(g[0]['nuclei'])[0]}"
                t = time.perf_counter()
                db.read(q.DASH_NUCLEUS, uid=uid, property=None)
                latencies["nucleus"].append(time.perf_counter() - t)
                t = time.perf_counter()
                db.read(q.DASH_NEIGHBOURS, uid=uid, property=None)
                latencies["neighbours"].append(time.perf_counter() - t)
            except Exception as exc:  # counted and reported: the point of a load test
                errors.append(f"{type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    users = [threading.Thread(target=dashboard_user, args=(k,), daemon=True) for k in range(4)]
    for u in users:
        u.start()
    procs = [subprocess.Popen([sys.executable, "-m", "nucleograph.cli", "ingest", str(f), "--cohort", f"load-{k}",
                               "--json"], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for k, f in enumerate(folders)]
    summaries, ingest_errors = [], []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            ingest_errors.append(err[-500:])
        else:
            summaries.append(json.loads(out))
    ingest_seconds = time.perf_counter() - t0
    time.sleep(max(0.0, args.seconds - ingest_seconds))
    stop.set()
    for u in users:
        u.join()
    partial = db.read(PARTIAL)[0]["c"]
    stored = [store.cohort_counts(db, f"load-{k}") for k in range(4)]
    distinct = db.read("MATCH (i:Image) RETURN count(i) AS c")[0]["c"]
    db.close()

    def pct(values: list[float]) -> dict[str, float]:
        a = np.asarray(values) * 1000
        return {"n": len(values), "p50_ms": round(float(np.percentile(a, 50)), 1),
                "p95_ms": round(float(np.percentile(a, 95)), 1), "p99_ms": round(float(np.percentile(a, 99)), 1),
                "max_ms": round(float(a.max()), 1)} if len(values) else {"n": 0}

    out = {
        "seconds": round(time.perf_counter() - t0, 1),
        "ingest_seconds": round(ingest_seconds, 1),
        "ingest_processes": 4,
        "images_per_process": [s["images"] for s in summaries],
        "ingest_failed_images": sum(s["failed"] for s in summaries),
        "ingest_process_errors": ingest_errors,
        "dashboard_query_errors": len(errors),
        "dashboard_error_samples": errors[:3],
        "latency": {k: pct(v) for k, v in latencies.items()},
        "partial_images": partial,
        "distinct_images_stored": distinct,
        "distinct_images_expected": len(images),
        "stored_equals_summaries": [
            {"images": s["ok"], "nuclei": s["nuclei"], "edges": s["edges"]} == c for s, c in zip(summaries, stored, strict=False)
        ],
    }
    return out


if __name__ == "__main__":
    main()
