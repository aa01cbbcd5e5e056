"""How faithful a per-nucleus explanation is: deletion curves and ground-truth role enrichment.

- Deletion (Petsiuk et al. 2018, RISE): remove the nuclei in order of importance and track the
  model's probability of the class it predicted on the whole graph; a faithful ranking makes it
  drop fastest, i.e. a smaller area under the curve than a random order.
- Role enrichment: with ground truth (the synthetic cohorts' per-nucleus roles), how much more
  often a role occurs among the top-ranked nuclei than among all nuclei (1 = no enrichment).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from nucleograph.gnn.occlusion.reference import proba_without

DEFAULT_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)


def deletion_curve(model, graph, scores, *, fractions=DEFAULT_FRACTIONS, target: int | None = None,
                   order: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Probability of ``target`` after removing the top ``fraction`` of nuclei by ``scores``.

    Parameters
    ----------
    model : GraphClassifier (eval mode)
    graph : dgl.DGLGraph, one image
    scores : (N,) array, higher = more important (ignored when ``order`` is given)
    fractions : increasing fractions of nuclei removed, starting at 0
    target : class to track; default the class predicted on the whole graph
    order : (N,) node indices, most important first (e.g. a random permutation)

    Returns
    -------
    (probabilities (len(fractions),), target)
    """
    model.eval()
    n = graph.num_nodes()
    ranked = np.argsort(-np.asarray(scores, dtype=float), kind="stable") if order is None else np.asarray(order)
    with torch.no_grad():
        p0 = torch.softmax(model(graph).double(), 1)[0]
        c = int(p0.argmax()) if target is None else int(target)
        probs = [float(proba_without(model, graph, ranked[: int(round(f * n))])[c]) for f in fractions]
    return np.asarray(probs), c


def curve_area(fractions, probs) -> float:
    """Area under a deletion curve (trapezoids over the removed fraction)."""
    return float(np.trapz(probs, fractions))


def match_roles(centroids: np.ndarray, truth_xy: np.ndarray, truth_roles, *, radius: float = 8.0) -> np.ndarray:
    """The ground-truth role of each detected nucleus (nearest true centroid within ``radius``), else None."""
    roles = np.full(len(centroids), None, dtype=object)
    if len(centroids) == 0 or len(truth_xy) == 0:
        return roles
    d, j = cKDTree(truth_xy).query(centroids, distance_upper_bound=radius)
    hit = np.isfinite(d)
    roles[hit] = np.asarray(truth_roles, dtype=object)[j[hit]]
    return roles


def role_enrichment(roles: np.ndarray, scores: np.ndarray, *, top: float = 0.1) -> dict[str, float]:
    """For each role: (share among the top ``top`` fraction by score) / (share among all matched nuclei)."""
    matched = np.array([r is not None for r in roles])
    if not matched.any():
        return {}
    r, s = roles[matched], np.asarray(scores, dtype=float)[matched]
    k = max(1, int(round(top * len(s))))
    top_roles = r[np.argsort(-s, kind="stable")[:k]]
    out = {}
    for role in sorted(set(r.tolist())):
        base = float(np.mean(r == role))
        out[role] = float(np.mean(top_roles == role)) / base if base > 0 else float("nan")
    return out
