"""Learning on whole slides (issue 15 item 3): slide-level accuracy of Table I models trained on ROIs.

1. ``nucleograph synth TASK --slide`` writes ``--per-class`` synthetic slides per class (default prostate,
   8 per class, 8000 x 6000 px: small slides, so that detection-heavy ingest stays within minutes; the
   folder is kept and reused by the next run with the same arguments);
2. ``nucleograph ingest --workers 2`` puts them into a throw-away Neo4j (default heap), detecting the
   nuclei tile by tile (a separate process, so its memory is not counted below);
3. each model trains with ``nucleograph.gnn.service.train_cohort`` on ROIs (``--roi``, ``--roi-per-slide``
   per slide, tissue-weighted, read by window from the point index), k-fold cross-validated by slide, no
   early stopping (every fold runs every epoch, so seconds / (folds x epochs) is the time per epoch);
   a slide's prediction is the mean of its ROIs' log-odds.

Prints per model: the held-out slides predicted correctly (each slide is tested by the fold that held it
out), slide-level accuracy and AUROC (mean over folds), the ROIs' own test accuracy, seconds per epoch,
the largest graph a batch held against the smallest slide, and the peak RSS of this process (training
only: ``ru_maxrss``); and, from the same fold models, the held-out slides a majority vote of the ROIs
or their most confident one would get right, beside the mean of log-odds.

    ./.venv/bin/python bench/bench_slide_train.py [--models rsf,rsf-edge,rsf-attention] [--json]
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

from nucleograph.db import local, schema, store
from nucleograph.db import runs as db_runs
from nucleograph.db.graphdb import GraphDB
from nucleograph.gnn.checkpoints import load_checkpoint
from nucleograph.gnn.service import train_cohort
from nucleograph.gnn.slides import RoiParams, load_rois
from nucleograph.gnn.train import predict_proba

ROOT = Path(__file__).resolve().parents[1]
NUCLEOGRAPH = [str(Path(sys.executable).parent / "nucleograph")]


def run(cmd: list[str], env: dict[str, str]) -> dict:
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def other_aggregations(out: dict, preds: list[dict], rois, labels: dict[str, str]) -> dict[str, str]:
    """Held-out slides predicted correctly by the same fold models under other aggregations of the ROIs:
    the mean of log-odds (the run's own, recomputed), a majority vote, and the most confident ROI (a slide is
    high when any ROI is)."""
    high = rois.class_names[-1]
    correct = {"mean_logodds": 0, "vote": 0, "max": 0}
    for fold, path in enumerate(out["checkpoints"]):
        model, _, _ = load_checkpoint(path)
        for slide in [p["image_id"] for p in preds if p.get("fold", 0) == fold]:
            graphs = [g for g, s in zip(rois.graphs, rois.image_ids, strict=True) if s == slide]
            p_high = np.clip(predict_proba(model, graphs)[:, -1], 1e-12, 1 - 1e-12)
            truth = labels[slide] == high
            correct["mean_logodds"] += (np.mean(np.log(p_high / (1 - p_high))) > 0) == truth
            correct["vote"] += (np.mean(p_high > 0.5) > 0.5) == truth
            correct["max"] += (p_high.max() > 0.5) == truth
    return {k: f"{v}/{len(preds)}" for k, v in correct.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="prostate")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--size", default="8000x6000")
    ap.add_argument("--seed", type=int, default=0, help="the cohort's seed")
    ap.add_argument("--data", default=None, help="slide folder (default: /tmp/nucleograph-bench-slides/...)")
    ap.add_argument("--roi", default="2048x1536")
    ap.add_argument("--roi-per-slide", type=int, default=8)
    ap.add_argument("--models", default="rsf")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--folds", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else print
    data = Path(args.data or f"/tmp/nucleograph-bench-slides/{args.task}-{args.per_class}-{args.size}-{args.seed}")
    result: dict = {"task": args.task, "slides_per_class": args.per_class, "size": args.size}
    t = time.perf_counter()
    if not (data / "manifest.csv").exists():
        run([*NUCLEOGRAPH, "synth", args.task, "--slide", "--n", str(args.per_class), "--size", args.size,
             "--seed", str(args.seed), "--out", str(data), "--json"], {})
        result["synth_s"] = round(time.perf_counter() - t, 1)
        say(f"synthesized {2 * args.per_class} slides in {result['synth_s']} s")
    width, height = (int(v) for v in args.roi.split("x"))
    roi = RoiParams(width=width, height=height, per_slide=args.roi_per_slide)
    with local.temporary_server(launcher_from=ROOT / ".nucleograph" / "test" / "launcher", heap="1g",
                                pagecache="512m") as (settings, env), GraphDB.open(settings) as db:
        schema.migrate(db)
        t = time.perf_counter()
        ingest = run([*NUCLEOGRAPH, "ingest", str(data), "--cohort", "slides", "--workers", "2", "--json"], env)
        result["ingest_s"] = round(time.perf_counter() - t, 1)
        images = store.cohort_images(db, "slides")
        result["nuclei_per_slide"] = [int(min(r["n_nuclei"] for r in images)), int(max(r["n_nuclei"] for r in images))]
        say(f"ingested {ingest['ok']} slides in {result['ingest_s']} s: {ingest['nuclei']} nuclei, "
            f"{result['nuclei_per_slide']} per slide")
        t = time.perf_counter()
        rois = load_rois(db, settings, "slides", roi)
        result["read_rois_s"] = round(time.perf_counter() - t, 1)
        sizes = [g.num_nodes() for g in rois.graphs]
        result["rois"] = {"n": len(sizes), "nuclei_min_median_max": [min(sizes), int(np.median(sizes)), max(sizes)]}
        say(f"{len(sizes)} ROIs read in {result['read_rois_s']} s, nuclei per ROI {result['rois']['nuclei_min_median_max']}")
        labels = {r["id"]: r["label"] for r in images}
        result["models"] = {}
        for model in args.models.split(","):
            t = time.perf_counter()
            out = train_cohort(db, settings, "slides", model=model, epochs=args.epochs, folds=args.folds,
                               patience=None, roi=roi)
            m = out["metrics"]
            preds = db_runs.predictions(db, out["run_id"])
            correct = sum(p["pred"] == labels[p["image_id"]] for p in preds)
            row = {
                "held_out_correct": f"{correct}/{len(preds)}", "slide_accuracy": round(m["accuracy"], 3),
                "slide_roc_auc": round(m["roc_auc"], 3), "roi_accuracy": round(m["roi_accuracy"], 3),
                "chance": round(m["chance_accuracy"], 3), "seconds": round(time.perf_counter() - t, 1),
                "s_per_epoch": round(out["seconds"] / (args.folds * args.epochs), 2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "largest_batch_graph": max(sizes), "smallest_slide": result["nuclei_per_slide"][0],
            }
            row["held_out_correct_by_aggregation"] = other_aggregations(out, preds, rois, labels)
            result["models"][model] = row
            say(f"{model}: {row}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
