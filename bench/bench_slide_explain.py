"""Explaining slides (issue 15 item 4): exact occlusion and attention per nucleus against graph size.

The graphs are square windows of the real slide segmentation shipped in the ``histolytics`` wheel
(``hgsc_nuclei_wsi.parquet``, 592k nuclei; ``bench_slide_store.slide_graph``: the product's importer,
morphology features and 100 px edges), the ``--nuclei`` nearest a point of typical density, up to the
whole slide. The model is an RSF (and an RSF+Attention for the attention figure) with the paper's widths,
its feature scaler fitted to the slide and batch-norm statistics from a few windows; ``--sharpen S``
multiplies Pool1's assignment weights by S (peaked assignments, as trained models have, which make
occlusions take the float64 and afresh pooling tiers: ``docs/occlusion.md``).

Each size runs in a fresh process, so its peak RSS (``ru_maxrss``: the graph, model and explanation
together) is its own. Printed per size: seconds for the occlusion of every nucleus
(``gnn.explain.occlusion``: the float64 pass, windows, batches), milliseconds per nucleus, the ratio
of that to the smallest size's, the precision tiers taken, and the peak RSS.

    ./.venv/bin/python bench/bench_slide_explain.py [--nuclei 1500,10000,50000,592347] [--hops 1]
        [--sharpen 1] [--threads 2] [--cache /tmp/hgsc.npz] [--neo4j] [--json]

``--neo4j`` then runs ``nucleograph explain``'s code end to end on the whole slide: stored in a throw-away
Neo4j (default heap), a run recorded for the model, and ``gnn.service.explain_run`` reading the slide's
graph, scoring it window by window and writing each window's scores in its own transaction.

``--cache FILE`` keeps the slide's arrays (centroids, features, edges) in an ``.npz`` after the first
run: importing the slide's polygons and measuring them takes about 4 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402


def slide_arrays(cache: Path | None) -> dict[str, np.ndarray]:
    """The whole slide's centroids, morphology features and edges (from ``cache`` when it exists)."""
    if cache is not None and cache.exists():
        with np.load(cache) as f:
            return dict(f)
    from bench_slide_store import GEOMETRIC, slide_file, slide_graph

    graph, _params, _timings = slide_graph(slide_file(), None)
    arrays = {"centroids": np.stack([graph.nuclei["centroid_x"], graph.nuclei["centroid_y"]], 1),
              "features": np.stack([np.asarray(graph.nuclei[c], dtype=np.float32) for c in GEOMETRIC], 1),
              "src": graph.edges["src"], "dst": graph.edges["dst"], "dist": graph.edges["dist"]}
    if cache is not None:
        np.savez(cache, **arrays)
    return arrays


def typical_centre(arrays: dict[str, np.ndarray], cell: float = 2048.0) -> np.ndarray:
    """The centre of the 2048-px cell (of those holding 1,000 nuclei or more) whose nuclei's mean degree
    is nearest the slide's: windows grown from there have the slide's density from the smallest size on
    (the slide's middle is sparser)."""
    pts = arrays["centroids"]
    degree = np.bincount(arrays["src"], minlength=len(pts)) + np.bincount(arrays["dst"], minlength=len(pts))
    cells = (pts // cell).astype(np.int64)
    key = cells[:, 0] * (cells[:, 1].max() + 1) + cells[:, 1]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    mean = np.bincount(inverse, weights=degree) / counts
    score = np.where(counts >= 1000, np.abs(mean - degree.mean()), np.inf)
    return (cells[np.flatnonzero(inverse == np.argmin(score))[0]] + 0.5) * cell


def window_graph(arrays: dict[str, np.ndarray], n: int):
    """The ``n`` nuclei nearest :func:`typical_centre` (a square window; all for ``n >= N``) as a DGL graph."""
    from nucleograph.gnn.data import edge_channels, to_dgl

    pts = arrays["centroids"]
    if n < len(pts):
        chebyshev = np.abs(pts - typical_centre(arrays)).max(axis=1)
        keep = np.sort(np.argpartition(chebyshev, n)[:n])
    else:
        keep = np.arange(len(pts))
    index = np.full(len(pts), -1)
    index[keep] = np.arange(keep.size)
    src, dst = index[arrays["src"]], index[arrays["dst"]]
    both = (src >= 0) & (dst >= 0)
    return to_dgl(arrays["features"][keep], src[both], dst[both], edge_channels(arrays["dist"][both], max_distance=100.0),
                  centroids=pts[keep])


def slide_model(name: str, arrays: dict[str, np.ndarray], sharpen: float):
    """An RSF model with the paper's widths, the slide's feature scaler and batch-norm statistics from
    three windows of the slide (3,000 to 9,000 nuclei)."""
    import dgl
    import torch

    from nucleograph.gnn.data import FeatureScaler
    from nucleograph.gnn.models import build_model

    torch.manual_seed(0)
    model = build_model(name, in_feats=arrays["features"].shape[1], edge_channels=2)
    feats = arrays["features"].astype(np.float64)
    model.set_scaler(FeatureScaler(feats.mean(0), feats.std(0)))
    model.train()
    with torch.no_grad():
        batch = dgl.batch([window_graph(arrays, 3000 * (i + 1)) for i in range(3)])
        for _ in range(5):
            model(batch)
        model.pool1.embed.weight.mul_(sharpen)
    return model.eval()


def one_size(args) -> dict:
    """Time occlusion (and attention) on one window of the slide; in its own process."""
    import torch

    from nucleograph.allocator import retain_freed_memory
    from nucleograph.gnn.explain import Precision, attention_scores, occlusion

    retain_freed_memory()
    torch.set_num_threads(args.threads)
    arrays = slide_arrays(args.cache)
    g = window_graph(arrays, args.one)
    model = slide_model("rsf", arrays, args.sharpen)
    n_pre = int(min(args.one, 1500))  # the compiled kernels load once per process: not timed
    occlusion(model, window_graph(arrays, n_pre), hops=args.hops)
    del arrays
    tiers = {"float64": 0, "afresh": 0}

    class Counted(Precision):
        def tiers(self, state):
            heavy, afresh = super().tiers(state)
            tiers["float64"] += int(heavy.any(1).sum())
            tiers["afresh"] += int(afresh.any(1).sum())
            return heavy, afresh

    t = time.perf_counter()
    scores = occlusion(model, g, hops=args.hops, precision=Counted(), threads=args.threads)
    seconds = time.perf_counter() - t
    rss_occlusion = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    attention = slide_model("rsf-attention", slide_arrays(args.cache), args.sharpen) if args.attention else None
    t = time.perf_counter()
    if attention is not None:
        attention_scores(attention, g)
    return {"nuclei": g.num_nodes(), "edges": g.num_edges(), "hops": args.hops, "sharpen": args.sharpen,
            "threads": args.threads, "occlusion_s": seconds, "ms_per_nucleus": 1e3 * seconds / g.num_nodes(),
            "finite": bool(np.isfinite(scores).all()), "tiers": tiers,
            "attention_s": time.perf_counter() - t if attention is not None else None,
            "peak_rss_gb_occlusion": rss_occlusion,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "loadavg": os.getloadavg()[0]}


def end_to_end(args) -> dict:
    """``nucleograph explain --run RUN`` on the whole slide stored in a throw-away Neo4j (default heap and
    page cache, as ``bench_slide_store.py``), a run recorded for the model: the read, the windows and the
    batched write-back together, the command in its own process (its peak RSS is its own)."""
    import uuid

    import torch
    from bench_slide_store import ROOT, THRESHOLD_PX, server_hwm_mb, slide_file

    from nucleograph.allocator import retain_freed_memory
    from nucleograph.db import local, schema, store
    from nucleograph.db import runs as db_runs
    from nucleograph.db.graphdb import GraphDB
    from nucleograph.ingest.cohort import ImageRecord
    from nucleograph.ingest.features import MORPHOLOGY_COLUMNS
    from nucleograph.ingest.graph import edge_weight
    from nucleograph.ingest.importers import ImportParams
    from nucleograph.ingest.pipeline import ImageGraph, IngestParams, content_hash

    retain_freed_memory()
    torch.set_num_threads(args.threads)
    arrays = slide_arrays(args.cache)
    model = slide_model("rsf", arrays, args.sharpen)
    path = slide_file()
    n = len(arrays["centroids"])
    nuclei = {"nucleus_id": np.arange(1, n + 1), "centroid_x": arrays["centroids"][:, 0],
              "centroid_y": arrays["centroids"][:, 1],
              **{c: arrays["features"][:, i] for i, c in enumerate(MORPHOLOGY_COLUMNS)}}
    edges = {"src": arrays["src"], "dst": arrays["dst"], "dist": arrays["dist"],
             "weight": edge_weight(arrays["dist"], THRESHOLD_PX)}
    size = np.ceil(arrays["centroids"].max(0)).astype(int) + 1
    graph = ImageGraph(content_hash(path), ImageRecord(path, "slide"), int(size[0]), int(size[1]), nuclei, edges,
                       THRESHOLD_PX)
    del arrays
    params = ImportParams.of(IngestParams(threshold=THRESHOLD_PX), path, sha=graph.image_id)
    with local.temporary_server(launcher_from=ROOT / ".nucleograph" / "test" / "launcher", heap="1g",
                                pagecache="512m") as (settings, env), GraphDB.open(settings) as db:
        schema.migrate(db)
        t = time.perf_counter()
        store.store_image_graph(db, graph, cohort="slide", params=params, feature_names=list(MORPHOLOGY_COLUMNS))
        stored = time.perf_counter() - t
        image_id = graph.image_id
        del graph, nuclei, edges
        run_id = "r" + uuid.uuid4().hex[:10]
        checkpoint = settings.home / "bench-model.pt"
        torch.save({"config": {"model_name": "rsf", "in_feats": model.in_feats, "edge_channels": 2, "n_classes": 2},
                    "model": model.state_dict()}, checkpoint)
        db_runs.save_run(db, run_id=run_id, cohort="slide", props={"model": "rsf", "checkpoints": [str(checkpoint)],
                                                                   "status": "finished"})
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "nucleograph.cli", "explain", "--run", run_id, "--json"],
                              env={**os.environ, **env},
                              capture_output=True, text=True)
        seconds = time.perf_counter() - t
        if done.returncode:
            raise SystemExit(f"nucleograph explain failed:\n{done.stderr[-3000:]}")
        out = json.loads(done.stdout)
        written = sum(r["score"] is not None for r in db_runs.image_scores(db, "slide", image_id, out["property"]))
        hwm = server_hwm_mb(settings)
    return {"nuclei": n, "store_s": stored, "explain_s": seconds, "images": out["images"], "scores_written": written,
            "explain_peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6,
            "neo4j_peak_rss_gb": hwm / 1024 if hwm else None, "loadavg": os.getloadavg()[0],
            "progress": done.stderr.strip().splitlines()[-4:]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nuclei", default="1500,10000,50000,592347", help="window sizes, comma-separated")
    ap.add_argument("--hops", type=int, default=1)
    ap.add_argument("--sharpen", type=float, default=1.0, help="multiply Pool1's assignment weights (peaked)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="an .npz keeping the slide's arrays between runs")
    ap.add_argument("--no-attention", dest="attention", action="store_false", help="skip the attention figure")
    ap.add_argument("--neo4j", action="store_true",
                    help="also explain the whole slide end to end: stored in a throw-away Neo4j, read, scored "
                         "and written back window by window by gnn.service.explain_run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # a child process: one size
    ap.add_argument("--end-to-end", action="store_true", help=argparse.SUPPRESS)  # a child process: --neo4j
    args = ap.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one_size(args)))
        return
    if args.end_to_end:
        print(json.dumps(end_to_end(args)))
        return
    facts = machine.describe()
    if not args.json:
        print(machine.header(facts))
    slide_arrays(args.cache)  # build the cache once, before the children read it
    rows = []
    for n in (int(v) for v in args.nuclei.split(",")):
        cmd = [sys.executable, __file__, "--one", str(n), "--hops", str(args.hops), "--sharpen", str(args.sharpen),
               "--threads", str(args.threads)] + (["--cache", str(args.cache)] if args.cache else []) + (
               [] if args.attention else ["--no-attention"])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["ratio_to_smallest"] = row["ms_per_nucleus"] / (rows[0]["ms_per_nucleus"] if rows else row["ms_per_nucleus"])
        rows.append(row)
        if not args.json:
            att = f", attention {row['attention_s']:.1f} s" if row["attention_s"] is not None else ""
            print(f"{row['nuclei']:>7} nuclei ({row['edges']:,} edges), k={row['hops']}, sharpen {row['sharpen']:g}: "
                  f"occlusion {row['occlusion_s']:.1f} s = {row['ms_per_nucleus']:.3f} ms/nucleus "
                  f"({row['ratio_to_smallest']:.2f}x the smallest){att}; tiers {row['tiers']}; peak RSS "
                  f"{row['peak_rss_gb_occlusion']:.2f} GB ({row['peak_rss_gb']:.2f} GB with attention); "
                  f"load {row['loadavg']:.1f}", flush=True)
    whole = None
    if args.neo4j:
        cmd = [sys.executable, __file__, "--end-to-end", "--sharpen", str(args.sharpen), "--threads",
               str(args.threads)] + (["--cache", str(args.cache)] if args.cache else [])
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        whole = json.loads(done.stdout.strip().splitlines()[-1])
        if not args.json:
            print(f"end to end (`nucleograph explain --run RUN` on the slide stored in Neo4j): {whole['nuclei']} nuclei "
                  f"(stored in {whole['store_s']:.0f} s) read, scored and written back in {whole['explain_s']:.1f} s "
                  f"({whole['scores_written']} scores); peak RSS of the command {whole['explain_peak_rss_gb']:.2f} GB, "
                  f"Neo4j {whole['neo4j_peak_rss_gb'] or float('nan'):.2f} GB; load {whole['loadavg']:.1f}")
            print("its last progress lines:", *whole["progress"], sep="\n  ")
    if args.json:
        print(json.dumps({"machine": facts, "sizes": rows, "end_to_end": whole}))


if __name__ == "__main__":
    main()
