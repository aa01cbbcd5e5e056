"""Classification metrics in plain numpy (no scikit-learn)."""

from __future__ import annotations

import numpy as np

from nucleograph.errors import InputError


def _labels(y_true, y_pred=None):
    t = np.asarray(y_true).astype(np.int64).reshape(-1)
    if y_pred is None:
        return t
    p = np.asarray(y_pred).astype(np.int64).reshape(-1)
    if t.shape != p.shape:
        raise InputError(f"y_true has {t.size} labels, y_pred {p.size}")
    return t, p


def confusion_matrix(y_true, y_pred, *, n_classes: int | None = None) -> np.ndarray:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    t, p = _labels(y_true, y_pred)
    c = n_classes or int(max(t.max(initial=0), p.max(initial=0)) + 1)
    cm = np.zeros((c, c), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def accuracy(y_true, y_pred) -> float:
    """Fraction of ``y_pred`` equal to ``y_true`` (NaN when empty)."""
    t, p = _labels(y_true, y_pred)
    return float(np.mean(t == p)) if t.size else float("nan")


def balanced_accuracy(y_true, y_pred, *, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true``."""
    cm = confusion_matrix(y_true, y_pred, n_classes=n_classes)
    support = cm.sum(1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(cm)[present] / support[present]))


def f1_score(y_true, y_pred, *, n_classes: int | None = None, positive: int = 1) -> float:
    """F1 of class ``positive`` for two classes, macro F1 otherwise."""
    cm = confusion_matrix(y_true, y_pred, n_classes=n_classes)

    def f1(k):
        tp = cm[k, k]
        denom = 2 * tp + (cm[:, k].sum() - tp) + (cm[k, :].sum() - tp)
        return 2 * tp / denom if denom else 0.0

    if cm.shape[0] == 2:
        return float(f1(positive))
    return float(np.mean([f1(k) for k in range(cm.shape[0])]))


def _binary_auc(pos_scores: np.ndarray, is_pos: np.ndarray) -> float:
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties
    order = np.argsort(pos_scores, kind="mergesort")
    s = pos_scores[order]
    ranks = np.empty(s.size, dtype=np.float64)
    i = 0
    while i < s.size:
        j = i
        while j + 1 < s.size and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2.0 + 1.0
        i = j + 1
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[is_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true, proba) -> float:
    """ROC AUC from class probabilities ``(n, C)``: binary, or macro one-vs-rest for ``C > 2``.

    NaN when a class needed for the AUC is absent from ``y_true``.
    """
    t = _labels(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim == 1:
        p = np.stack([1 - p, p], 1)
    if p.shape[0] != t.size:
        raise InputError(f"proba has {p.shape[0]} rows, y_true {t.size} labels")
    if p.shape[1] == 2:
        return _binary_auc(p[:, 1], t == 1)
    aucs = [_binary_auc(p[:, k], t == k) for k in range(p.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_metrics(y_true, proba) -> dict:
    """All metrics from true labels and probabilities ``(n, C)``; predictions are the argmax."""
    p = np.asarray(proba, dtype=np.float64)
    c = p.shape[1]
    pred = p.argmax(1)
    return {
        "n": int(p.shape[0]),
        "accuracy": accuracy(y_true, pred),
        "balanced_accuracy": balanced_accuracy(y_true, pred, n_classes=c),
        "roc_auc": roc_auc(y_true, p),
        "f1": f1_score(y_true, pred, n_classes=c),
        "confusion_matrix": confusion_matrix(y_true, pred, n_classes=c).tolist(),
    }


#: A run that answers at least this share of its cohort's images with one output is flagged (train's warning,
#: the Models page). A working model gives every image its own output, bit for bit: 0.
CONSTANT_OUTPUT_WARN = 0.1


def constant_output_share(proba) -> float:
    """The share of images that get one and the same output, bit for bit, as the most common one; 0 when no
    two images share an output.

    A model answers every image with the same output only where the input no longer reaches its last
    layer: the units before it are all inactive for those images (ReLUs that died in training, most
    often at a high learning rate), so it answers with its bias. Such a model can still score well on
    the images it does see, and every explanation of the others is a tie.

    Parameters
    ----------
    proba : array-like, shape (N, C)
        Class probabilities (or logits) per image.

    Returns
    -------
    float
        In [0, 1].
    """
    p = np.ascontiguousarray(np.asarray(proba))
    if p.ndim != 2 or p.shape[0] == 0:
        return 0.0
    _, counts = np.unique(p, axis=0, return_counts=True)
    top = int(counts.max())
    return top / p.shape[0] if top > 1 else 0.0


def constant_output_note(share: float) -> str:
    """What a :func:`constant_output_share` of ``share`` means, to follow "run R" or "this model" (train's
    warning, the Models page)."""
    return (f"gives one and the same output, bit for bit, to {share:.0%} of the cohort's images: the input no "
            "longer reaches its last layer for them (its units died in training), so it answers them with its bias, "
            "and their explanations are all ties")
