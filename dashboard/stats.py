"""The numbers behind the dashboard's charts: pure pandas/numpy functions, no Streamlit, no database.

Pages read through :mod:`nucleograph.dashboard.data` (cached), compute here and draw with
:mod:`nucleograph.dashboard.plots`; everything here takes DataFrames or plain values and returns them,
so it is tested without a server.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from nucleograph.db.runs import METHOD_NOTES, explanation_title
from nucleograph.gnn.metrics import CONSTANT_OUTPUT_WARN, constant_output_note
from nucleograph.gnn.render import rank_importance, relative_importance

SHAPE_FEATURES = {
    "area": "area (px²)",
    "circularity": "circularity",
    "eccentricity": "eccentricity",
    "solidity": "solidity",
    "hematoxylin": "hematoxylin OD",
    "degree": "degree",
    "density": "local density (Σ NEAR weight)",
}


def method_title(e: dict[str, Any]) -> str:
    """What an explanation's scores are: method, hops and output, e.g. ``"occlusion k=1, log-odds drop"``.

    Parameters
    ----------
    e : dict
        One row of :func:`nucleograph.dashboard.data.explanations`.

    Returns
    -------
    str
    """
    return explanation_title(e["method"], e.get("hops"), e.get("output"))


def explanation_label(e: dict[str, Any]) -> str:
    """How an explanation is named in the pickers: run, model, method (with hops and output) and images
    scored.

    Parameters
    ----------
    e : dict
        One row of :func:`nucleograph.dashboard.data.explanations`.

    Returns
    -------
    str
        e.g. ``"ab12 · rsf-attention · occlusion k=1, log-odds drop (8 images)"``.
    """
    return f"{e['run_id']} · {model_title(e)} · {method_title(e)} ({e['images']} images)"


def model_title(run: dict[str, Any]) -> str:
    """A run's model as the pages name it: ``"rsf-edge"``, or ``"rsf-edge ×3"`` for a seed ensemble of three
    (``train --ensemble 3``).

    Parameters
    ----------
    run : dict
        A run (or an explanation row) with ``model`` and, for an ensemble, ``ensemble``.

    Returns
    -------
    str
    """
    size = int(run.get("ensemble") or 1)
    return f"{run.get('model') or '?'}" + (f" ×{size}" if size > 1 else "")


# --- models -----------------------------------------------------------------------------------------
def confusion(run: dict[str, Any], preds: pd.DataFrame, *, split: str) -> tuple[np.ndarray, list[str]] | None:
    """The run's confusion matrix (rows true, columns predicted) and class names.

    Parameters
    ----------
    run : dict
        The run as :func:`nucleograph.dashboard.data.runs` returns it (``class_names``, ``metrics``).
    preds : DataFrame
        Its stored predictions (``label``, ``pred``, ``split`` columns).
    split : str
        ``"test"`` sums the held-out matrices the run recorded per fold; any other split counts the
        stored predictions of that split (``"all"``: every image).

    Returns
    -------
    (ndarray, list of str) or None
        The matrix and the class names, or None when the split has no predictions.
    """
    names = list(run.get("class_names") or sorted(set(preds["label"].dropna()) | set(preds["pred"].dropna())))
    if split == "test":
        folds = (run.get("metrics") or {}).get("folds") or []
        mats = [np.asarray(f["confusion_matrix"]) for f in folds if f.get("confusion_matrix")]
        if mats and all(m.shape == (len(names), len(names)) for m in mats):
            return np.sum(mats, axis=0), names
    sub = preds if split == "all" else preds[preds["split"] == split]
    if sub.empty or not names:
        return None
    index = {n: i for i, n in enumerate(names)}
    cm = np.zeros((len(names), len(names)), dtype=int)
    for t, p in zip(sub["label"], sub["pred"], strict=True):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm, names


def epochs_run(run: dict[str, Any]) -> int | None:
    """How many epochs the run trained (its first fold), not how many it was allowed.

    Early stopping (``patience``) ends a fold before ``epochs``; the run stores the first fold's
    history, one record per epoch trained.

    Parameters
    ----------
    run : dict
        The run as :func:`nucleograph.dashboard.data.runs` returns it (``history`` decoded).

    Returns
    -------
    int or None
        The number of history records, or the ``epochs`` setting when the run recorded no history.
    """
    history = run.get("history")
    if isinstance(history, list) and history:
        return len(history)
    return run.get("epochs")


def chance_rate(run: dict[str, Any], preds: pd.DataFrame | None = None) -> tuple[float, int, str | None] | None:
    """The accuracy of always predicting the majority class of the run's test images.

    A classifier whose test accuracy is at or below this rate has learned nothing usable (it may be
    predicting one class for every image).

    Parameters
    ----------
    run : dict
        The run (``metrics.folds[*].confusion_matrix``: rows are the true classes of each fold's test
        images; ``class_names``).
    preds : DataFrame, optional
        Its stored predictions (``label``, ``split``), used when the run holds no confusion matrices.

    Returns
    -------
    (float, int, str or None) or None
        The majority class's share of the test images, their number and the class's name; None when
        the run has no test images.
    """
    folds = (run.get("metrics") or {}).get("folds") or []
    mats = [np.asarray(f["confusion_matrix"]) for f in folds if isinstance(f, dict) and f.get("confusion_matrix")]
    names = list(run.get("class_names") or [])
    if mats and len({m.shape for m in mats}) == 1:
        counts = np.sum(mats, axis=0).sum(axis=1)
        total = int(counts.sum())
        if total:
            i = int(np.argmax(counts))
            return float(counts[i] / total), total, names[i] if i < len(names) else None
    if preds is not None and not preds.empty:
        test = preds.loc[preds["split"] == "test", "label"]
        if len(test):
            counts = test.value_counts()
            return float(counts.iloc[0] / len(test)), int(len(test)), str(counts.index[0])
    return None


def at_or_below_chance(run: dict[str, Any], preds: pd.DataFrame | None = None) -> str | None:
    """A warning naming the figures when the run's test accuracy is at or below chance, else None.

    Parameters
    ----------
    run : dict
        The run (``accuracy``, and what :func:`chance_rate` reads).
    preds : DataFrame, optional
        Its stored predictions, for :func:`chance_rate`.

    Returns
    -------
    str or None
        e.g. ``"Test accuracy 0.333 is at or below chance: 0.333, ..."``; None when accuracy beats chance
        or either figure is unknown.
    """
    acc = run.get("accuracy")
    chance = chance_rate(run, preds)
    if acc is None or chance is None or (isinstance(acc, float) and math.isnan(acc)):
        return None
    rate, n, name = chance
    # a tolerance, so an accuracy equal to the rate up to float rounding counts as "at"
    if acc > rate + 1e-9:
        return None
    majority = f" ({name})" if name else ""
    return (f"Test accuracy {acc:.3f} is at or below chance: {rate:.3f}, the share of the majority class"
            f"{majority} among the {n} test images, which a model predicting that class for every image "
            "reaches. This model has learned nothing usable; its predictions and explanations are not "
            "evidence. Train longer or on more images.")


def constant_output(run: dict[str, Any]) -> str | None:
    """A warning naming the share when the run answers many of its cohort's images with one and the same
    output (``constant_output_share`` at or above :data:`nucleograph.gnn.metrics.CONSTANT_OUTPUT_WARN`),
    else None (runs trained before the metric existed have none)."""
    share = run.get("constant_output_share")
    if share is None or not share >= CONSTANT_OUTPUT_WARN:
        return None
    return f"This model {constant_output_note(share)}. Retrain with another seed or a lower learning rate."


# --- image explorer ---------------------------------------------------------------------------------
#: Issue 18's targets for a map of the class-defining structure: the structure ranked above the stroma
#: with this AUROC at least, and deletion at this ratio to a random order at most (bench/RESULTS.md).
STRUCTURE_AUROC_TARGET = 0.85
DELETION_RATIO_TARGET = 0.5


def map_trust(evaluation: str | dict[str, Any] | None, predicted: str) -> tuple[str, str] | None:
    """What ``nucleograph evaluate`` measured for this explanation's maps of the images the run predicts as
    ``predicted``, as ``(level, text)``; None when the explanation has no evaluation of that class.

    ``level`` is ``"meets"`` when the deletion ratio is at most :data:`DELETION_RATIO_TARGET` and the
    structure AUROC (with ``--truth`` only) at least :data:`STRUCTURE_AUROC_TARGET`; ``"poor"`` when the
    structure ranks below the stroma (AUROC < 0.5) or the map's order removes the prediction no faster
    than a random order (deletion ratio >= 0.9): such a map shows what the model reads, not where the
    class's structure is; else ``"partial"``.

    Parameters
    ----------
    evaluation : str or dict or None
        The Explanation node's ``evaluation`` (JSON text) or its parsed summary.
    predicted : str
        The class the run predicts for the image shown (the class its map explains).
    """
    if not evaluation:
        return None
    summary = json.loads(evaluation) if isinstance(evaluation, str) else evaluation
    group = (summary.get("by_class") or {}).get(predicted)
    deletion = ((group or {}).get("deletion_ratio") or {}).get("mean")
    if deletion is None:
        return None
    auroc = (group.get("structure_auroc") or {}).get("mean")
    measured = f"deletion ratio {deletion:.2f} (a random order: 1; lower: more faithful)"
    if auroc is not None:
        measured += f", structure AUROC {auroc:.2f} (the class's structure above the stroma; chance: 0.5)"
    text = f"`evaluate` on {group.get('images', 0)} images this run predicts {predicted}: {measured}."
    if (auroc is not None and auroc < 0.5) or deletion >= 0.9:
        return "poor", f"For images predicted {predicted}, this map does not show where the class's structure is. {text}"
    if deletion <= DELETION_RATIO_TARGET and (auroc is None or auroc >= STRUCTURE_AUROC_TARGET):
        targets = f"deletion ratio <= {DELETION_RATIO_TARGET}" + (
            f", structure AUROC >= {STRUCTURE_AUROC_TARGET}" if auroc is not None else "")
        return "meets", f"{text} This meets the targets for a faithful map ({targets})."
    return "partial", text


SCALINGS = {
    "relative": "relative (÷ 99th percentile of |score|, as `render`)",
    "log": "log (signed, for scores spanning orders of magnitude)",
    "linear": "linear (raw scores)",
    "rank": "rank in the image (lowest -1, highest +1; for maps read by their order: contribution, local)",
}


def colour_values(values: pd.Series | np.ndarray, scaling: str = "relative", *,
                  percentile: float = 99.0) -> tuple[np.ndarray, dict[str, float]]:
    """Importance scores mapped for a colour scale, with the scale's limits.

    ``relative`` is :func:`nucleograph.gnn.render.relative_importance`, the scale of ``nucleograph
    render``: scores divided by the ``percentile`` of their absolute values and clipped to [-1, 1], 0
    in the middle, so a few extreme nuclei do not wash the others out (occlusion maps look binary on
    a linear scale). ``log`` is a signed log, ``sign(s) log10(1 + |s| / t)`` with ``t`` the 5th
    percentile of the non-zero ``|s|``, centred on 0. ``linear`` keeps the scores and Plotly's limits.
    ``rank`` maps each score to its rank among the image's scores, from -1 (lowest) to +1 (highest),
    ties at their mean rank: the median nucleus is white whatever the sign, so a map whose scores are
    nearly all negative (local evidence on these cohorts) shows its order rather than one colour.

    Parameters
    ----------
    values : Series or ndarray
        Scores (NaN for nuclei without one).
    scaling : {"relative", "log", "linear", "rank"}
        The mapping.
    percentile : float
        The percentile of ``|score|`` that maps to 1 under ``relative``.

    Returns
    -------
    (ndarray, dict)
        The mapped values (NaN stays NaN) and the marker's ``cmin``/``cmax``/``cmid`` (empty for
        ``linear``).

    Raises
    ------
    ValueError
        For an unknown ``scaling``; the message lists the known ones.
    """
    s = np.asarray(values, dtype=float)
    finite = np.isfinite(s)
    if scaling == "linear" or not finite.any():
        return s, {}
    if scaling == "relative":
        out = np.full(s.shape, np.nan)
        out[finite] = relative_importance(s[finite], percentile=percentile)
        return out, {"cmin": -1.0, "cmax": 1.0, "cmid": 0.0}
    if scaling == "log":
        mag = np.abs(s[finite])
        nonzero = mag[mag > 0]
        t = float(np.percentile(nonzero, 5)) if nonzero.size else 1.0
        out = np.sign(s) * np.log10(1.0 + np.abs(s) / t)
        lim = float(np.nanmax(np.abs(out))) or 1.0
        return out, {"cmin": -lim, "cmax": lim, "cmid": 0.0}
    if scaling == "rank":
        return rank_importance(s), {"cmin": -1.0, "cmax": 1.0, "cmid": 0.0}
    raise ValueError(f"unknown colour scaling {scaling!r}: use one of {', '.join(SCALINGS)}")


def feature_table(props: dict[str, Any], *, skip: tuple[str, ...] = ("uid", "image_id", "segmentation", "features",
                                                                    "outline"),
                  digits: int = 4) -> pd.DataFrame:
    """A nucleus's properties as ``feature, value`` rows, numbers rounded to ``digits`` significant digits.

    Parameters
    ----------
    props : dict
        The nucleus's stored properties.
    skip : tuple of str
        Properties left out (identifiers, the packed feature vector, the outline polygon).
    digits : int
        Significant digits kept of a non-integer number.

    Returns
    -------
    DataFrame
        One row per property, sorted by name; values as text (a column mixes numbers and words).
    """
    def fmt(v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            return str(v)
        if isinstance(v, (int, np.integer)) or float(v).is_integer():
            return str(int(v))
        return f"{float(v):.{digits}g}"

    items = [(k, fmt(v)) for k, v in sorted(props.items()) if k not in skip]
    return pd.DataFrame(items, columns=["feature", "value"])


def split_counts(preds: pd.DataFrame) -> dict[str, int]:
    """How many of a run's predicted images were in each split (``train``, ``val``, ``test``)."""
    if preds is None or preds.empty:
        return {}
    return {str(k): int(v) for k, v in preds["split"].value_counts().items()}


# --- cohort patterns --------------------------------------------------------------------------------
def top_vs_all(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Rows for "top-k" (rank < k) and "all" (the sample), with a ``group`` column.

    Parameters
    ----------
    df : DataFrame
        Ranked nuclei as :func:`nucleograph.dashboard.data.patterns` returns them.
    k : int
        How many top-ranked nuclei per image form the top group.

    Returns
    -------
    DataFrame
        The sampled rows (group ``"all nuclei"``) followed by the top-k rows (group ``"top {k}"``).
    """
    top = df[df["rank"] < k].assign(group=f"top {k}")
    rest = df[df["sample"]].assign(group="all nuclei")
    return pd.concat([rest, top], ignore_index=True)


def box_stats(df: pd.DataFrame, feature: str, by: list[str]) -> pd.DataFrame:
    """Quartiles and 1.5 IQR whiskers per group, so box plots ship five numbers, not every nucleus.

    Parameters
    ----------
    df : DataFrame
        One row per nucleus with the ``by`` columns and ``feature``.
    feature : str
        The column summarised.
    by : list of str
        The grouping columns.

    Returns
    -------
    DataFrame
        Per group: ``q1, median, q3``, ``lowerfence``/``upperfence`` (the most extreme values within
        1.5 IQR of the box) and ``n``.
    """
    g = df.groupby(by, sort=True)[feature]
    stats = g.quantile([0.25, 0.5, 0.75]).unstack()
    stats.columns = ["q1", "median", "q3"]
    iqr = stats["q3"] - stats["q1"]
    lo, hi = stats["q1"] - 1.5 * iqr, stats["q3"] + 1.5 * iqr
    values = df[[*by, feature]].set_index(by)[feature]
    joined = values.to_frame("v").join(lo.rename("lo")).join(hi.rename("hi"))
    inside = joined[(joined["v"] >= joined["lo"]) & (joined["v"] <= joined["hi"])]["v"]
    stats["lowerfence"] = inside.groupby(level=by).min()
    stats["upperfence"] = inside.groupby(level=by).max()
    stats["n"] = g.size()
    return stats.reset_index()


def effect_sizes(df: pd.DataFrame, k: int, features: list[str]) -> pd.DataFrame:
    """Standardised mean difference (top-k minus all, in units of all nuclei's SD) per class and feature.

    Parameters
    ----------
    df : DataFrame
        Ranked nuclei with ``label``, ``rank``, ``sample`` and the ``features`` columns.
    k : int
        How many top-ranked nuclei per image form the top group.
    features : list of str
        The columns compared.

    Returns
    -------
    DataFrame
        One row per class and feature: ``d`` (NaN when all nuclei's SD is 0 or undefined), the two
        medians and the two group sizes.
    """
    out = []
    for label, sub in df.groupby("label", sort=True):
        top = sub[sub["rank"] < k]
        base = sub[sub["sample"]]
        for f in features:
            sd = base[f].std()
            d = (top[f].mean() - base[f].mean()) / sd if sd and not math.isnan(sd) else np.nan
            out.append({"label": label, "feature": f, "d": d, "top_median": top[f].median(),
                        "all_median": base[f].median(), "n_top": len(top), "n_all": len(base)})
    return pd.DataFrame(out)


def position_bins(sample: pd.DataFrame) -> pd.DataFrame:
    """The sample with its graph position binned: ``degree_bin``, ``density_bin`` and ``border``.

    Parameters
    ----------
    sample : DataFrame
        Sampled nuclei with ``degree``, ``density`` and image-relative ``fx``/``fy``.

    Returns
    -------
    DataFrame
        ``sample`` plus the degree rounded (capped at its 98th percentile, so a few hubs do not
        stretch the axis), the density to the nearest 0.5, and the distance to the nearest image
        border as a fraction of the image.
    """
    return sample.assign(
        degree_bin=sample["degree"].clip(upper=sample["degree"].quantile(0.98)).round().astype(int),
        density_bin=(sample["density"] * 2).round() / 2,
        border=(0.5 - (sample[["fx", "fy"]] - 0.5).abs().max(axis=1)).clip(lower=0),
    )


def importance_by(binned: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean importance percentile and nucleus count per class and value of ``column``.

    Parameters
    ----------
    binned : DataFrame
        Nuclei with ``label``, ``percentile`` and ``column`` (e.g. from :func:`position_bins`).
    column : str
        The binned position column.

    Returns
    -------
    DataFrame
        Columns ``label``, ``column``, ``importance`` and ``nuclei``.
    """
    return binned.groupby(["label", column]).agg(
        importance=("percentile", "mean"), nuclei=("percentile", "size")).reset_index()


def topk_overlap(a: pd.DataFrame, b: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per image shared by two explanations: the Jaccard overlap of their top-k nuclei.

    Parameters
    ----------
    a, b : DataFrame
        Ranked nuclei (``image_id``, ``label``, ``rank``, ``nid``) of the two explanations.
    k : int
        How many top-ranked nuclei per image are compared.

    Returns
    -------
    DataFrame
        ``image_id``, ``label`` and ``jaccard`` for every image both explain.
    """
    ta = a[a["rank"] < k].groupby("image_id")["nid"].apply(set)
    tb = b[b["rank"] < k].groupby("image_id")["nid"].apply(set)
    labels = a.drop_duplicates("image_id").set_index("image_id")["label"]
    rows = [
        {"image_id": i, "label": labels.get(i), "jaccard": len(ta[i] & tb[i]) / max(1, len(ta[i] | tb[i]))}
        for i in ta.index.intersection(tb.index)
    ]
    return pd.DataFrame(rows, columns=["image_id", "label", "jaccard"])


# --- console ----------------------------------------------------------------------------------------
def nucleus_points(columns: list[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Nuclei found in console results, to draw over their image.

    Parameters
    ----------
    columns : list of str
        The result's column names.
    rows : list of dict
        The result rows (nodes as dicts with ``_labels``, as the console returns them).

    Returns
    -------
    DataFrame
        ``image_id, nid, x, y`` from rows with ``image_id`` and ``x``/``y`` (or ``centroid_x/_y``)
        columns, or from Nucleus nodes anywhere in a row; empty when the results hold no positions.
    """
    xk = "x" if "x" in columns else "centroid_x" if "centroid_x" in columns else None
    yk = "y" if "y" in columns else "centroid_y" if "centroid_y" in columns else None
    if "image_id" in columns and xk and yk:
        pts = [{"image_id": r["image_id"], "nid": r.get("nid"), "x": r[xk], "y": r[yk]} for r in rows
               if isinstance(r.get(xk), (int, float)) and isinstance(r.get(yk), (int, float))]
    else:
        pts = [{"image_id": node.get("image_id"), "nid": node.get("nid"), "x": node["centroid_x"],
                "y": node["centroid_y"]} for node in _nucleus_nodes(rows)]
    return pd.DataFrame(pts, columns=["image_id", "nid", "x", "y"])


def _nucleus_nodes(rows: list[dict[str, Any]]):
    """Nucleus nodes with a centroid, in row order, whether a value is one node or a list of them."""
    for r in rows:
        for v in r.values():
            for node in v if isinstance(v, list) else [v]:
                if isinstance(node, dict) and "Nucleus" in node.get("_labels", []) and "centroid_x" in node:
                    yield node


def methods_help() -> str:
    """The pickers' help: what a nucleus's score means for each explanation method (markdown list).

    Returns
    -------
    str
    """
    return "\n".join(f"- **{m}**: {note}" for m, note in METHOD_NOTES.items())
