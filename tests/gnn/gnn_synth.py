"""Synthetic nucleus graphs for the gnn tests: the class is in the arrangement, not in the features."""

import dgl
import numpy as np
import torch
from scipy.spatial import cKDTree

from nucleograph.gnn.data import edge_channels, to_dgl
from nucleograph.gnn.models import build_model

#: The registry's models without graph convolutions.
BASELINES = ("mlp", "graphstats")
#: Narrow RSF widths for fast explainer tests.
SMALL = dict(conv_feats=(16, 16, 16), pool_sizes=(8, 4), fc_feats=(32, 16))


def make_graph(n, *, clustered, rng, n_feats=4, radius=60.0, side=None):
    """``n`` points in a square; clustered ones sit in a few tight blobs. Features are pure noise."""
    side = side or 100.0 * np.sqrt(n)
    if clustered:
        centers = rng.uniform(0.15 * side, 0.85 * side, size=(3, 2))
        pts = centers[rng.integers(0, 3, n)] + rng.normal(scale=0.08 * side, size=(n, 2))
    else:
        pts = rng.uniform(0, side, size=(n, 2))
    pairs = cKDTree(pts).query_pairs(radius, output_type="ndarray").reshape(-1, 2)
    d = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
    feats = rng.normal(size=(n, n_feats))
    return to_dgl(
        feats, pairs[:, 0], pairs[:, 1], edge_channels(d), centroids=pts, nucleus_ids=np.arange(n) + 1000
    )


def make_cohort(n_per_class=30, n_nodes=40, *, seed=0, n_feats=4):
    rng = np.random.default_rng(seed)
    graphs, labels = [], []
    for k in range(2 * n_per_class):
        label = k % 2
        graphs.append(make_graph(n_nodes, clustered=bool(label), rng=rng, n_feats=n_feats))
        labels.append(label)
    return graphs, np.array(labels)


def small_model(name, rng, n_classes=2):
    """A small model of the registry (4 features, 2 edge channels) in eval mode, its batch norm given
    non-trivial running statistics by three training-mode passes."""
    torch.manual_seed(0)
    m = build_model(name, in_feats=4, edge_channels=2, n_classes=n_classes,
                    **(SMALL if name not in BASELINES else {}))
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(dgl.batch([make_graph(30, clustered=True, rng=rng), make_graph(30, clustered=False, rng=rng)]))
    return m.eval()
