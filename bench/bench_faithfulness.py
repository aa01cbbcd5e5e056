"""Faithfulness of the explanations, per model and method, on a synthetic cohort in Neo4j.

For a sample of images of a cohort that a run was trained on (k-fold runs: each image is explained
with the fold model that held it out), it computes the explanation (written back to Neo4j as usual),
then:
- the deletion curve of the explanation's ranking against the mean of 3 random orders (area under
  the curve: lower = more faithful);
- the enrichment of every ground-truth role among the top 10% nuclei, per class (the synthetic
  generator's per-nucleus roles, matched to detected nuclei within 8 px);
- heat maps of a few images (``--figures DIR``).

    ./.venv/bin/python bench/bench_faithfulness.py --run RUN [--run RUN2] --synth DIR --per-class 10 --json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from nucleograph.config import Settings
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.db.graphdb import GraphDB
from nucleograph.gnn import faithfulness as fa
from nucleograph.gnn.service import explain_run, graph_from_arrays, load_run_models


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--synth", required=True, help="the synthetic cohort folder (manifest.csv, nuclei/)")
    ap.add_argument("--per-class", type=int, default=10)
    ap.add_argument("--hops", type=int, default=1)
    ap.add_argument("--figures", default=None, help="write a few heat maps here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    settings = Settings.from_env()
    db = GraphDB.open(settings)
    synth = Path(args.synth)
    manifest = pd.read_csv(synth / "manifest.csv")
    truth_by_path = {str((synth / p).resolve()): synth / n for p, n in zip(manifest["path"], manifest["nuclei"], strict=True)}
    rng = np.random.default_rng(args.seed)
    rows, enrich_rows = [], []
    for run_id in args.run:
        run, models = load_run_models(db, settings, run_id)
        images = store.cohort_images(db, run["cohort"])
        by_label = defaultdict(list)
        for im in images:
            by_label[im["label"]].append(im["id"])
        sample = [i for lab in sorted(by_label) for i in sorted(by_label[lab])[: args.per_class]]
        methods = ["occlusion"] + (["attention"] if run["model"] == "rsf-attention" else [])
        fold_of = {p["image_id"]: int(p.get("fold") or 0) for p in db_runs.predictions(db, run_id)}
        for method in methods:
            t = time.perf_counter()
            explain_run(db, settings, run_id, method=method, hops=args.hops, image_ids=sample)
            explain_s = time.perf_counter() - t
            prop = db_runs.score_property(run_id, method, args.hops)
            aucs, raucs = defaultdict(list), defaultdict(list)
            enrich = defaultdict(lambda: defaultdict(list))
            drawn: set[str] = set()  # one heat map per class
            for g in store.read_graphs(db, run["cohort"], sample):
                if len(g["nids"]) == 0:
                    continue
                model = models[min(fold_of.get(g["id"], 0), len(models) - 1)]
                graph = graph_from_arrays(g)
                s = np.array([r["score"] for r in db_runs.image_scores(db, run["cohort"], g["id"], prop)], dtype=float)
                probs, _ = fa.deletion_curve(model, graph, s)
                rand = np.mean([fa.deletion_curve(model, graph, s, order=rng.permutation(len(s)))[0]
                                for _ in range(3)], axis=0)
                aucs[g["label"]].append(fa.curve_area(fa.DEFAULT_FRACTIONS, probs))
                raucs[g["label"]].append(fa.curve_area(fa.DEFAULT_FRACTIONS, rand))
                truth = pd.read_csv(truth_by_path[str(Path(g["path"]).resolve())])
                roles = fa.match_roles(g["centroids"], truth[["centroid_x", "centroid_y"]].to_numpy(), truth["role"])
                for role, e in fa.role_enrichment(roles, s).items():
                    enrich[g["label"]][role].append(e)
                if args.figures and g["label"] not in drawn:
                    from nucleograph.gnn.render import render_importance
                    from nucleograph.ingest.readers import read_image

                    areas = store.nucleus_areas(db, run["cohort"], g["id"])
                    out = Path(args.figures) / f"{run['cohort']}_{run['model']}_{method}_{g['label']}.jpg"
                    render_importance(read_image(g["path"]), g["centroids"], np.sqrt(np.maximum(areas, 1) / np.pi), s,
                                      out, title=f"{g['label']} | {run['model']} | {method}", max_side=900, dpi=80)
                    drawn.add(g["label"])
            for label in sorted(aucs):
                rows.append({"cohort": run["cohort"], "run": run_id, "model": run["model"], "method": method,
                             "class": label, "images": len(aucs[label]),
                             "deletion_auc": round(float(np.mean(aucs[label])), 4),
                             "random_auc": round(float(np.mean(raucs[label])), 4),
                             "explain_s_per_image": round(explain_s / len(sample), 2)})
                for role, vals in sorted(enrich[label].items()):
                    enrich_rows.append({"cohort": run["cohort"], "model": run["model"], "method": method,
                                        "class": label, "role": role,
                                        "enrichment_top10": round(float(np.nanmean(vals)), 2)})
    db.close()
    out = {"deletion": rows, "enrichment": enrich_rows}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(_markdown(pd.DataFrame(rows)))
        print()
        pivot = pd.DataFrame(enrich_rows).pivot_table(index=["cohort", "model", "method", "class"], columns="role",
                                                      values="enrichment_top10").round(2).reset_index()
        print(_markdown(pivot))


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
