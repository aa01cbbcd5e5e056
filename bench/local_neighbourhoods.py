"""Issue 18 experiment: how large a neighbourhood local evidence should see (bench/RESULTS.md, "Local
evidence: each neighbourhood alone").

Each nucleus is scored by the model's log-odds of the image's predicted class on the nuclei around it
alone: its ``--hops``-hop ball, or the nuclei within ``--radius`` px of it (the graph's link distance,
100 px, gives the linked neighbourhood that ``explain --method local`` uses). Prints, per image and per
class, the AUROC with which each size ranks the synthetic cohort's structural roles above stroma (k = 1
occlusion beside them), and the per-role AUROCs of the first radius.

    NUCLEOGRAPH_HOME=... ./.venv/bin/python bench/local_neighbourhoods.py --run RUN --truth SYNTH_DIR \\
        [--per-class 5] [--hops 0 1 2 3] [--radius 40 60 80 100 150 200 300]
"""

from __future__ import annotations

import argparse
import json

import dgl
import numpy as np
import pandas as pd
import torch
from coalitions import first_per_class, structure_auroc
from scipy.spatial import cKDTree

from nucleograph.config import Settings
from nucleograph.db import store
from nucleograph.db.graphdb import GraphDB
from nucleograph.gnn import faithfulness as fa
from nucleograph.gnn.attribution import log_odds
from nucleograph.gnn.data import graph_from_arrays
from nucleograph.gnn.evaluate import read_truth
from nucleograph.gnn.explain import occlusion
from nucleograph.gnn.occlusion.reference import EvalMode, hop_ball
from nucleograph.gnn.service import load_run_models


def neighbourhood_scores(model, graph, target: int, members, batch: int = 128) -> np.ndarray:
    """Log-odds of ``target`` on each member set's induced subgraph (``dgl.node_subgraph``, batched)."""
    values = []
    with torch.no_grad():
        for s in range(0, len(members), batch):
            subs = [dgl.node_subgraph(graph, torch.as_tensor(np.asarray(m, dtype=np.int64))) for m in members[s:s + batch]]
            values.append(log_odds(model(dgl.batch(subs)).double(), target).numpy())
    return np.concatenate(values)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--truth", required=True, help="the synthetic cohort folder the run's images came from")
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--hops", type=int, nargs="*", default=[0, 1, 2, 3])
    ap.add_argument("--radius", type=float, nargs="*", default=[40, 60, 80, 100, 150, 200, 300])
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    db = GraphDB.open(settings)
    run, models = load_run_models(db, settings, args.run)
    model, truth = models[0], read_truth(args.truth)
    rows = []
    for g in store.read_graphs(db, run["cohort"], first_per_class(db, run["cohort"], args.per_class)):
        graph, n = graph_from_arrays(g), len(g["nids"])
        roles = truth.roles(g["path"], g["centroids"])
        row = {"image": g["id"], "label": g["label"], "nuclei": n}
        with EvalMode(model):
            target = int(model(graph).argmax())
            row["occlusion k=1"] = structure_auroc(roles, occlusion(model, graph, hops=1, target=target))
            for h in args.hops:
                members = [hop_ball(graph, i, h) for i in range(n)]
                row[f"{h} hops"] = structure_auroc(roles, neighbourhood_scores(model, graph, target, members))
            tree = cKDTree(g["centroids"])
            for k, radius in enumerate(args.radius):
                scores = neighbourhood_scores(model, graph, target, tree.query_ball_point(g["centroids"], radius))
                row[f"{radius:g} px"] = structure_auroc(roles, scores)
                if k == 0:
                    row["roles"] = {r: round(v, 3) for r, v in
                                    fa.role_auroc(np.array(roles, dtype=object), scores).items()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = pd.DataFrame(rows).drop(columns=["image", "roles"]).groupby("label").mean().round(3)
    print(table.to_string())
    db.close()
    return table


if __name__ == "__main__":
    main()
