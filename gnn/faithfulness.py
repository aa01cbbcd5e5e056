"""How faithful a per-nucleus explanation is, and whether it finds the tissue structure.

- Deletion (Petsiuk et al. 2018, RISE): remove the nuclei in order of importance and track the
  model's probability of the class it predicted on the whole graph; a faithful ranking makes it
  drop fastest, i.e. a smaller area under the curve than a random order.
- Insertion: start from no nuclei (the uniform prior) and add them most important first; a faithful
  ranking makes the probability rise fastest, i.e. a larger area than a random order.
- Sparsity, ties and stability describe the scores themselves: how concentrated they are, how many
  nuclei share a score (rounding noise ranks them arbitrarily), and whether another model of the
  same data ranks the nuclei alike (Spearman).
- Role enrichment and role AUROC: with ground truth (the synthetic cohorts' per-nucleus roles), how
  much more often a role occurs among the top-ranked nuclei than among all nuclei (1 = no
  enrichment), and how well the scores rank each structural role above stroma (0.5 = chance).
"""

from __future__ import annotations

import dgl
import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.stats import mannwhitneyu, spearmanr

from nucleograph.gnn.occlusion.reference import EvalMode, proba, without

DEFAULT_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)


def deletion_curve(model, graph, scores, *, fractions=DEFAULT_FRACTIONS, target: int | None = None,
                   order: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Probability of ``target`` after removing the top ``fraction`` of nuclei by ``scores``.

    Parameters
    ----------
    model : GraphClassifier
        Run in eval mode (restored afterwards).
    graph : dgl.DGLGraph
        One image's graph.
    scores : (N,) array
        Higher = more important (ignored when ``order`` is given).
    fractions : sequence of float
        Increasing fractions of nuclei removed, starting at 0 (``round(fraction * N)`` nuclei).
    target : int, optional
        Class to track; default the class predicted on the whole graph.
    order : (N,) array of int, optional
        Node indices, most important first (e.g. a random permutation).

    Returns
    -------
    (np.ndarray of shape (len(fractions),), int)
        The probabilities and the class tracked. Removing every nucleus gives the uniform prior.
    """
    return _curve(model, graph, scores, fractions=fractions, target=target, order=order, insert=False)


def insertion_curve(model, graph, scores, *, fractions=DEFAULT_FRACTIONS, target: int | None = None,
                    order: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Probability of ``target`` when only the top ``fraction`` of nuclei by ``scores`` are kept.

    The curve starts from no nuclei, the uniform prior ``1 / C``, and adds nuclei most important first.

    Parameters
    ----------
    model, graph, scores, fractions, target, order
        As for :func:`deletion_curve`; ``fractions`` are the fractions of nuclei kept.

    Returns
    -------
    (np.ndarray of shape (len(fractions),), int)
        The probabilities and the class tracked (default: predicted on the whole graph).
    """
    return _curve(model, graph, scores, fractions=fractions, target=target, order=order, insert=True)


def _curve(model, graph, scores, *, fractions, target, order, insert: bool) -> tuple[np.ndarray, int]:
    n = graph.num_nodes()
    ranked = np.argsort(-np.asarray(scores, dtype=float), kind="stable") if order is None else np.asarray(order)
    counts = [int(round(f * n)) for f in fractions]
    removed = [ranked[k:] if insert else ranked[:k] for k in counts]
    with EvalMode(model):
        p0 = proba(model, graph)
        c = int(p0.argmax()) if target is None else int(target)
        return probas_without(model, graph, removed, c), c


def probas_without(model, graph, removed: list, target: int, *, batch_size: int = 16) -> np.ndarray:
    """Probability of class ``target`` of ``graph`` without each of the node sets ``removed``, batched.

    Parameters
    ----------
    model : GraphClassifier
        In eval mode.
    graph : dgl.DGLGraph
        One image's graph.
    removed : list of array_like of int
        Node indices to remove with their edges, one set per output.
    target : int
        Class index.
    batch_size : int
        Reduced graphs run through the model together.

    Returns
    -------
    np.ndarray, shape (len(removed),)
        The uniform prior ``1 / C`` where no nucleus is left (as
        :func:`~nucleograph.gnn.occlusion.reference.proba_without`).
    """
    out = np.full(len(removed), 1.0 / model.n_classes)
    parts, idx = [], []
    for j, r in enumerate(removed):
        g = without(graph, r)
        if g.num_nodes() == 0:
            continue
        parts.append(g)
        idx.append(j)
    with torch.no_grad():
        for start in range(0, len(parts), batch_size):
            logits = model(dgl.batch(parts[start:start + batch_size]))
            out[idx[start:start + batch_size]] = torch.softmax(logits.double(), 1)[:, target].cpu().numpy()
    return out


def compartment_probas(model, graph, roles, target: int, *, reference: str = "stroma") -> dict[str, float]:
    """Probability of class ``target`` with a whole tissue compartment removed: which one the model reads.

    The ``reference`` role (stroma) is one compartment, every other matched role (the structures)
    the other; unmatched nuclei (None) stay in both. A model that reads the structure loses its class
    without them and keeps it without the stroma, whatever a per-nucleus score says.

    Parameters
    ----------
    model : GraphClassifier
        In eval mode.
    graph : dgl.DGLGraph
    roles : (N,) array of str or None
        Ground-truth role per node (:func:`match_roles`).
    target : int
        Class index.
    reference : str
        The role that carries no structure.

    Returns
    -------
    dict
        ``intact``, ``without_stroma`` and ``without_structure``; NaN for a compartment with no nucleus.
    """
    roles = np.asarray(roles, dtype=object)
    matched = np.array([r is not None for r in roles])
    stroma = np.flatnonzero(matched & (roles == reference))
    structure = np.flatnonzero(matched & (roles != reference))
    p = probas_without(model, graph, [[], stroma, structure], target)
    return {"intact": float(p[0]), "without_stroma": float(p[1]) if stroma.size else float("nan"),
            "without_structure": float(p[2]) if structure.size else float("nan")}


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


def role_auroc(roles: np.ndarray, scores: np.ndarray, *, reference: str = "stroma") -> dict[str, float]:
    """For each role other than ``reference``: the AUROC with which ``scores`` rank it above ``reference``.

    The probability that a nucleus of the role drawn at random scores higher than a ``reference``
    nucleus drawn at random, ties counted half (Mann-Whitney ``U / (n_role * n_reference)``):
    1 ranks every nucleus of the role above all of ``reference``, 0.5 is chance.

    Parameters
    ----------
    roles : (N,) array of str or None
        From :func:`match_roles`; unmatched nuclei (None) are left out.
    scores : (N,) array of float
    reference : str
        The role ranked against (the synthetic cohorts' ``stroma``).

    Returns
    -------
    dict
        Role -> AUROC, for the roles present beside ``reference``; {} without ``reference`` nuclei.
    """
    roles = np.asarray(roles, dtype=object)
    s = np.asarray(scores, dtype=float)
    ref = s[roles == reference]
    if ref.size == 0:
        return {}
    out = {}
    for role in sorted({r for r in roles.tolist() if r is not None and r != reference}):
        pos = s[roles == role]
        u = mannwhitneyu(pos, ref, alternative="two-sided").statistic
        out[role] = float(u / (pos.size * ref.size))
    return out


def sparsity(scores: np.ndarray, *, top: float = 0.1) -> float:
    """Share of the total positive score held by the top ``top`` fraction of nuclei.

    With :math:`s^+_i = \\max(s_i, 0)` and :math:`k = \\max(1, \\lceil \\mathrm{top} \\cdot N \\rceil)`:

    .. math:: \\mathrm{sparsity} = \\frac{\\sum_{i \\in \\mathrm{top}\\,k} s^+_i}{\\sum_i s^+_i}

    Negative scores (nuclei whose removal raises the class probability) count as 0, so the value
    lies in ``[0, 1]``: 1 when the top ``k`` hold all the positive evidence (a one-hot score),
    ``k / N`` (about ``top``) when every nucleus scores the same.

    Parameters
    ----------
    scores : (N,) array of float
    top : float
        Fraction of nuclei, in (0, 1].

    Returns
    -------
    float
        NaN when no score is positive (or there are no scores).
    """
    s = np.clip(np.asarray(scores, dtype=float), 0.0, None)
    total = float(s.sum())
    if s.size == 0 or total <= 0.0:
        return float("nan")
    k = max(1, int(np.ceil(top * s.size)))
    return float(np.sort(s)[::-1][:k].sum() / total)


def tie_share(scores: np.ndarray) -> float:
    """Fraction of nuclei whose score exactly equals another nucleus's score (1 for a constant score).

    Tied nuclei have no order of their own: a ranking, deletion curve or top-k of them is decided by
    their storage order. Scores at the limit of float resolution tie often.

    Parameters
    ----------
    scores : (N,) array of float

    Returns
    -------
    float
        In ``[0, 1]``; NaN for an empty array.
    """
    s = np.asarray(scores, dtype=float)
    if s.size == 0:
        return float("nan")
    _, counts = np.unique(s, return_counts=True)
    return float(counts[counts > 1].sum() / s.size)


def rank_stability(scores_a: np.ndarray, scores_b: np.ndarray) -> float:
    """Spearman rank correlation of two explanations of the same nuclei (e.g. by two models).

    Parameters
    ----------
    scores_a, scores_b : (N,) arrays of float, aligned by nucleus

    Returns
    -------
    float
        In ``[-1, 1]``; NaN when either is constant or there are fewer than 2 nuclei (no ranking).

    Raises
    ------
    ValueError
        The arrays differ in length.
    """
    a, b = np.asarray(scores_a, dtype=float), np.asarray(scores_b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"scores of {a.size} and {b.size} nuclei: pass two explanations of the same nuclei")
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
