"""Issue 18 experiment: coalition attributions over structures against occlusion (bench/RESULTS.md,
"Coalitions of structures, tried").

Nuclei are grouped into structures (connected components of centroids closer than ``--radius`` px);
``--masks`` random coalitions keep each group with a probability drawn from U(``--keep``) per mask (the
rest removed with their edges); a group's score is the mean log-odds of the predicted class with it kept
minus removed (``rise``) or its ridge coefficient (``regression``), and each nucleus gets its group's
score. Prints, per image and per class, the AUROC with which each method ranks the synthetic cohort's
structural roles above stroma (k = 1 occlusion beside them).

    NUCLEOGRAPH_HOME=... ./.venv/bin/python bench/coalitions.py --run RUN --truth SYNTH_DIR \
        [--per-class 5] [--radius 30] [--masks 400] [--keep 0 0.3] [--residual]
"""

from __future__ import annotations

import argparse
import json

import dgl
import numpy as np
import pandas as pd
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from nucleograph.config import Settings
from nucleograph.db import store
from nucleograph.db.graphdb import GraphDB
from nucleograph.gnn import faithfulness as fa
from nucleograph.gnn.attribution import log_odds
from nucleograph.gnn.data import graph_from_arrays
from nucleograph.gnn.evaluate import read_truth
from nucleograph.gnn.explain import occlusion
from nucleograph.gnn.occlusion.reference import EvalMode, without
from nucleograph.gnn.service import load_run_models


def structure_groups(centroids: np.ndarray, radius: float) -> tuple[int, np.ndarray]:
    """Connected components of the centroids closer than ``radius``: (count, group of each nucleus)."""
    n = len(centroids)
    pairs = cKDTree(centroids).query_pairs(radius, output_type="ndarray")
    adjacency = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(adjacency, directed=False)


def coalition_scores(model, graph, target: int, groups: np.ndarray, n_groups: int, *, masks: int,
                     keep: tuple[float, float], rng, residual: bool = False, ridge: float = 1.0,
                     batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-nucleus (rise, regression) scores from ``masks`` random coalitions of groups."""
    kept = np.zeros((masks, n_groups), dtype=bool)
    values = []
    graphs = []
    for m in range(masks):
        kept[m] = rng.random(n_groups) < rng.uniform(*keep)
        kept[m, rng.integers(n_groups)] = True  # never an empty graph
        graphs.append(without(graph, np.flatnonzero(~kept[m][groups])))
    with torch.no_grad():
        for s in range(0, masks, batch):
            values.append(log_odds(model(dgl.batch(graphs[s:s + batch])).double(), target).numpy())
    f = np.concatenate(values)
    if residual:  # what the share of nuclei kept explains, taken out
        v = np.vander(kept[:, groups].mean(1), 4)
        f = f - v @ np.linalg.lstsq(v, f, rcond=None)[0]
    k = kept.astype(float)
    n_kept = k.sum(0)
    rise = np.where((n_kept > 0) & (n_kept < masks),
                    (k.T @ f) / np.maximum(n_kept, 1) - ((1 - k).T @ f) / np.maximum(masks - n_kept, 1), 0.0)
    x = np.c_[k, np.ones(masks)]
    coef = np.linalg.solve(x.T @ x + ridge * np.eye(n_groups + 1), x.T @ f)[:n_groups]
    return rise[groups], coef[groups]


def first_per_class(db: GraphDB, cohort: str, per_class: int) -> list[str]:
    """The ids of the cohort's first ``per_class`` images of each label."""
    chosen: dict[str, list[str]] = {}
    for r in store.cohort_images(db, cohort):
        if len(chosen.setdefault(r["label"], [])) < per_class:
            chosen[r["label"]].append(r["id"])
    return [i for ids in chosen.values() for i in ids]


def structure_auroc(roles: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC of every structural role together above stroma (None without both)."""
    structure = np.array([r is not None and r != "stroma" for r in roles])
    stroma = np.array([r == "stroma" for r in roles])
    if not structure.any() or not stroma.any():
        return None
    return round(fa.role_auroc(np.where(structure, "structure", roles), scores)["structure"], 3)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--truth", required=True, help="the synthetic cohort folder the run's images came from")
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--radius", type=float, default=30.0)
    ap.add_argument("--masks", type=int, default=400)
    ap.add_argument("--keep", type=float, nargs=2, default=(0.0, 0.3))
    ap.add_argument("--residual", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    settings = Settings.from_env()
    db = GraphDB.open(settings)
    run, models = load_run_models(db, settings, args.run)
    model, truth, rng = models[0], read_truth(args.truth), np.random.default_rng(args.seed)
    rows = []
    for g in store.read_graphs(db, run["cohort"], first_per_class(db, run["cohort"], args.per_class)):
        graph = graph_from_arrays(g)
        roles = truth.roles(g["path"], g["centroids"])
        n_groups, groups = structure_groups(g["centroids"], args.radius)
        with EvalMode(model):
            target = int(model(graph).argmax())
            occ = occlusion(model, graph, hops=1, target=target)
            rise, reg = coalition_scores(model, graph, target, groups, n_groups, masks=args.masks,
                                         keep=tuple(args.keep), rng=rng, residual=args.residual)
        row = {"image": g["id"], "label": g["label"], "nuclei": graph.num_nodes(), "groups": n_groups,
               "occlusion": structure_auroc(roles, occ), "rise": structure_auroc(roles, rise),
               "regression": structure_auroc(roles, reg)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = pd.DataFrame(rows).groupby("label")[["occlusion", "rise", "regression"]].mean().round(3)
    print(table.to_string())
    db.close()
    return table


if __name__ == "__main__":
    main()
