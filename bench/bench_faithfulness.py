"""Faithfulness of the explanations, per model and method, on a synthetic cohort in Neo4j.

For a sample of images of a cohort that a run was trained on (k-fold runs: each image is explained
with the fold model that held it out), it computes the explanation (written back to Neo4j as usual),
then evaluates it with :func:`nucleograph.gnn.evaluate.evaluate_run` (what `nucleograph evaluate`
runs, recorded in SQL and on the Explanation the same way):
- deletion and insertion curves of the explanation's ranking against the mean of 3 random orders
  (ratio of the areas: deletion lower = more faithful, insertion higher);
- sparsity, tie share, stability (k-fold runs: against the next fold's model);
- the AUROC of each ground-truth role above stroma and its enrichment among the top 10% nuclei,
  per predicted class (the synthetic generator's per-nucleus roles, matched within 8 px);
- heat maps of a few images (``--figures DIR``).

    ./.venv/bin/python bench/bench_faithfulness.py --run RUN [--run RUN2] --synth DIR --per-class 10 --json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from nucleograph.config import Settings
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.db.graphdb import GraphDB
from nucleograph.gnn.evaluate import class_rows, evaluate_run, role_rows, select_images
from nucleograph.gnn.service import explain_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--synth", required=True, help="the synthetic cohort folder (manifest.csv, nuclei/)")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--hops", type=int, default=1)
    ap.add_argument("--output", choices=list(db_runs.OUTPUTS), default=db_runs.OUTPUTS[0])
    ap.add_argument("--random", type=int, default=3)
    ap.add_argument("--figures", default=None, help="write a few heat maps here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = Settings.from_env()
    db = GraphDB.open(settings)
    rows, role_table = [], []
    for run_id in args.run:
        run = db_runs.get_run(db, run_id)
        sample = select_images(store.cohort_images(db, run["cohort"]), per_class=args.per_class)
        methods = ["occlusion"] + (["attention"] if run["model"] == "rsf-attention" else [])
        for method in methods:
            t = time.perf_counter()
            explain_run(db, settings, run_id, method=method, hops=args.hops, image_ids=sample, output=args.output)
            explain_s = time.perf_counter() - t
            out = evaluate_run(db, settings, run_id, method=method, hops=args.hops, output=args.output,
                               per_class=args.per_class, n_random=args.random, truth=args.synth, seed=args.seed)
            head = {"cohort": run["cohort"], "run": run_id, "model": run["model"],
                    "method": db_runs.explanation_title(method, out["hops"], out["output"])}
            rows += [{**head, **r, "explain_s_per_image": round(explain_s / len(sample), 2)} for r in class_rows(out)]
            role_table += [{**head, **r} for r in role_rows(out)]
            if args.figures:
                _figures(db, run, out, Path(args.figures))
    db.close()
    if args.json:
        print(json.dumps({"faithfulness": rows, "roles": role_table}, indent=1))
    else:
        print(_markdown(pd.DataFrame(rows)))
        print()
        pivot = pd.DataFrame(role_table).pivot_table(index=["cohort", "model", "method", "class"], columns="role",
                                                     values="auroc").round(2).reset_index()
        print(_markdown(pivot))


def _figures(db: GraphDB, run: dict, out: dict, folder: Path) -> None:
    """One heat map per true class: the first evaluated image of that class."""
    from nucleograph.gnn.render import render_importance
    from nucleograph.ingest.readers import read_image

    prop = db_runs.score_property(out["run_id"], out["method"], out["hops"] or 1, output=out["output"] or "logodds")
    drawn: set[str] = set()
    for im in out["images"]:
        if im["label"] in drawn:
            continue
        g = next(store.read_graphs(db, run["cohort"], [im["image_id"]]))
        s = np.array([r["score"] for r in db_runs.image_scores(db, run["cohort"], g["id"], prop)], dtype=float)
        areas = store.nucleus_areas(db, run["cohort"], g["id"])
        path = folder / f"{run['cohort']}_{run['model']}_{out['method']}_{g['label']}.jpg"
        render_importance(read_image(g["path"]), g["centroids"], np.sqrt(np.maximum(areas, 1) / np.pi), s, path,
                          title=f"{g['label']} | {run['model']} | {out['method']}", max_side=900, dpi=80)
        drawn.add(im["label"])


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
