"""Per-class statistics of the synthetic cohorts, and whether only the arrangement separates them.

For each task, draws ``--n`` default-size tiles per class (same seeds as ``synthesize_cohort``) and
prints per class: nucleus count, mean nuclear area, eccentricity and haematoxylin OD (the
graph-free features), mean degree and fraction of crowded nuclei in the 100 px neighbour graph
(edge weight 1 - d/100), and seconds per tile. It then scores two leave-one-out nearest-centroid
classifiers on standardised per-image features: graph-free (count + mean morphology/intensity)
and spatial (degree statistics). Expect the first near chance and the second near 1.0.

    ./.venv/bin/python bench/synth_sanity.py --n 10 [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy.spatial import cKDTree
from skimage.color import rgb2hed
from skimage.measure import regionprops_table

from nucleograph.ingest.synth import TASKS, image_seed, synthesize_image

GRAPH_FREE = ("count", "area", "eccentricity", "h_od")
SPATIAL = ("degree", "degree_sd", "crowded", "weighted_degree")


def tile_features(tile) -> dict[str, float]:
    haem = rgb2hed(tile.image)[..., 0]
    props = regionprops_table(
        tile.mask, intensity_image=haem, properties=("area", "eccentricity", "intensity_mean")
    )
    pts = tile.nuclei[["centroid_x", "centroid_y"]].to_numpy()
    tree = cKDTree(pts)
    pairs = tree.query_pairs(100.0, output_type="ndarray")
    d = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
    n = len(pts)
    degree = np.bincount(pairs.ravel(), minlength=n)
    weighted = np.bincount(pairs.ravel(), weights=np.repeat(1 - d / 100.0, 2), minlength=n)
    return {
        "count": float(n),
        "area": float(props["area"].mean()),
        "eccentricity": float(props["eccentricity"].mean()),
        "h_od": float(props["intensity_mean"].mean()),
        "degree": float(degree.mean()),
        "degree_sd": float(degree.std()),
        "crowded": float((degree >= 25).mean()),
        "weighted_degree": float(weighted.mean()),
    }


def loo_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out accuracy of a nearest-centroid classifier on standardised features."""
    hits = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        mu, sd = x[keep].mean(0), x[keep].std(0) + 1e-9
        z = (x - mu) / sd
        centroids = [z[keep & (y == c)].mean(0) for c in (0, 1)]
        pred = int(np.argmin([np.linalg.norm(z[i] - c) for c in centroids]))
        hits += pred == y[i]
    return hits / len(y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="tiles per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=sorted(TASKS), action="append")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    report = {}
    for task in args.task or sorted(TASKS):
        rows, labels, per_class = [], [], {}
        for c, label in enumerate(TASKS[task]):
            feats, seconds = [], []
            for k in range(args.n):
                t0 = time.perf_counter()
                tile = synthesize_image(
                    task, label, rng=np.random.default_rng(image_seed(args.seed, task, label, k))
                )
                seconds.append(time.perf_counter() - t0)
                feats.append(tile_features(tile))
            rows += feats
            labels += [c] * len(feats)
            per_class[label] = {key: float(np.mean([f[key] for f in feats])) for key in feats[0]}
            per_class[label]["count_sd"] = float(np.std([f["count"] for f in feats]))
            per_class[label]["seconds_per_tile"] = float(np.mean(seconds))
        y = np.array(labels)
        x_free = np.array([[r[k] for k in GRAPH_FREE] for r in rows])
        x_spatial = np.array([[r[k] for k in SPATIAL] for r in rows])
        report[task] = {
            "classes": per_class,
            "loo_accuracy_graph_free": loo_accuracy(x_free, y),
            "loo_accuracy_spatial": loo_accuracy(x_spatial, y),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for task, rep in report.items():
        print(f"== {task}")
        keys = ["count", "count_sd", *GRAPH_FREE[1:], *SPATIAL, "seconds_per_tile"]
        print(f"{'':10s}" + "".join(f"{k:>16s}" for k in keys))
        for label, stats in rep["classes"].items():
            print(f"{label:10s}" + "".join(f"{stats[k]:16.3f}" for k in keys))
        print(
            f"LOO nearest-centroid accuracy: graph-free {rep['loo_accuracy_graph_free']:.2f}, "
            f"spatial {rep['loo_accuracy_spatial']:.2f}"
        )


if __name__ == "__main__":
    main()
