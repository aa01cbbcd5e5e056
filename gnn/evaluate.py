"""Evaluate a stored explanation: is it faithful to the model, and does it find the tissue structure?

Per image, from the model that explained it, its graph and the scores stored in Neo4j
(:mod:`nucleograph.gnn.faithfulness` holds each metric):

- **deletion** and **insertion** area under the curve of the probability of the class predicted on
  the whole graph, each against the mean curve of ``n_random`` random orders, as a ratio
  explanation / random (deletion: lower is better, a faithful ranking is < 1; insertion: higher is
  better, > 1);
- **sparsity** (share of the positive score held by the top 10% of nuclei) and **tie share**
  (fraction of nuclei whose score equals another's);
- **stability**: Spearman rank correlation with the scores the same explainer gives with a second
  model of the same cohort (another fold's model of a k-fold run, or a model of another run);
- with ground truth (a synthetic cohort folder, :func:`read_truth`): the AUROC with which the
  scores rank each structural role, and all of them together (``structure``), above stroma, and
  each role's enrichment among the top 10%; and, independent of the scores, which compartment the
  model reads: the probability of the predicted class with all stroma, or all structure, removed
  (``compartments``).

Images are grouped by the class the model predicts for them; every metric is reported as the mean
over the images where it is defined, with their number ``n``. :func:`evaluate_run` records the
summary on the ``(:Explanation)`` node and as a row of the SQL table ``explanation_evaluations``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nucleograph.config import Settings
from nucleograph.db import records as rec
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import InputError
from nucleograph.gnn import faithfulness as fa
from nucleograph.gnn.service import explain_graph, graph_from_arrays, load_run_models
from nucleograph.output import finite_or_null
from nucleograph.progress import progress as progress_bar

#: Fractions of nuclei removed (deletion) or kept (insertion): dense at the start, where a faithful
#: ranking acts, and up to every nucleus, where both curves reach the uniform prior.
EVAL_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TOP = 0.1  # the "top 10%" of sparsity and role enrichment
STROMA = "stroma"  # the synthetic cohorts' role that no structure carries
STRUCTURE = "structure"  # every role but stroma, pooled
MATCH_RADIUS_PX = 8.0
#: The per-image metrics, in the order tables show them.
METRICS = ("deletion_auc", "deletion_random_auc", "deletion_ratio", "insertion_auc", "insertion_random_auc",
           "insertion_ratio", "sparsity", "tie_share", "stability", "structure_auroc")

Explainer = Callable[[Any, Any, int], np.ndarray]  # (model, graph, target class) -> scores (N,)


def evaluate_image(model, graph, scores, *, n_random: int = 3, rng: np.random.Generator | None = None,
                   fractions=EVAL_FRACTIONS, roles: np.ndarray | None = None,
                   other_scores: np.ndarray | None = None, top: float = TOP) -> dict[str, Any]:
    """Every metric of one image's explanation.

    Parameters
    ----------
    model : GraphClassifier
        The model the scores explain.
    graph : dgl.DGLGraph
        The image's graph.
    scores : (N,) array of float
        Per-nucleus scores, aligned with the graph's nodes; higher = more important.
    n_random : int
        Random orders whose mean curve is the baseline of deletion and insertion.
    rng : numpy.random.Generator, optional
        Draws the random orders (default: seeded with 0).
    fractions : sequence of float
        Fractions of nuclei removed or kept, from 0 to 1 (:data:`EVAL_FRACTIONS`).
    roles : (N,) array of str or None, optional
        Ground-truth role per node (:func:`nucleograph.gnn.faithfulness.match_roles`).
    other_scores : (N,) array of float, optional
        The same explainer's scores from a second model (stability).
    top : float
        The top fraction of sparsity and role enrichment.

    Returns
    -------
    dict
        ``target`` (class index tracked: the one predicted on the whole graph), ``n_nuclei``, the
        :data:`METRICS` (NaN where undefined: stability without ``other_scores``, role AUROCs without
        roles), ``role_auroc`` and ``role_enrichment`` (role -> value), ``compartments``
        (:func:`~nucleograph.gnn.faithfulness.compartment_probas`; {} without roles).

    Raises
    ------
    InputError
        ``scores`` (or ``other_scores``) do not have one value per node, or ``n_random`` < 1.
    """
    s = np.asarray(scores, dtype=float)
    n = graph.num_nodes()
    if s.shape != (n,) or (other_scores is not None and np.shape(other_scores) != (n,)):
        raise InputError(f"scores must have one value per nucleus ({n}); got {s.shape}")
    if n_random < 1:
        raise InputError(f"n_random must be at least 1, got {n_random}")
    rng = np.random.default_rng(0) if rng is None else rng
    x = np.asarray(fractions, dtype=float)
    d_probs, c = fa.deletion_curve(model, graph, s, fractions=x)
    i_probs, _ = fa.insertion_curve(model, graph, s, fractions=x, target=c)
    orders = [rng.permutation(n) for _ in range(n_random)]
    d_rand = np.mean([fa.deletion_curve(model, graph, s, fractions=x, target=c, order=o)[0] for o in orders], axis=0)
    i_rand = np.mean([fa.insertion_curve(model, graph, s, fractions=x, target=c, order=o)[0] for o in orders], axis=0)
    out: dict[str, Any] = {"target": c, "n_nuclei": n}
    for name, probs, rand in (("deletion", d_probs, d_rand), ("insertion", i_probs, i_rand)):
        auc, rauc = fa.curve_area(x, probs), fa.curve_area(x, rand)
        out.update({f"{name}_auc": auc, f"{name}_random_auc": rauc, f"{name}_ratio": auc / rauc})
    out["sparsity"] = fa.sparsity(s, top=top)
    out["tie_share"] = fa.tie_share(s)
    out["stability"] = float("nan") if other_scores is None else fa.rank_stability(s, other_scores)
    out["structure_auroc"], out["role_auroc"], out["role_enrichment"], out["compartments"] = float("nan"), {}, {}, {}
    if roles is not None:
        roles = np.asarray(roles, dtype=object)
        pooled = np.array([r if r is None or r == STROMA else STRUCTURE for r in roles], dtype=object)
        out["structure_auroc"] = fa.role_auroc(pooled, s, reference=STROMA).get(STRUCTURE, float("nan"))
        out["role_auroc"] = fa.role_auroc(roles, s, reference=STROMA)
        out["role_enrichment"] = fa.role_enrichment(roles, s, top=top)
        out["compartments"] = fa.compartment_probas(model, graph, roles, c, reference=STROMA)
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and number of images of every metric, over all ``rows`` and per predicted class.

    Parameters
    ----------
    rows : list of dict
        :func:`evaluate_image` results, each with ``predicted`` (the class name).

    Returns
    -------
    dict
        ``overall`` and ``by_class`` (class -> the same), each ``{"images": n, metric: {"mean", "n"},
        "role_auroc": {role: {"mean", "n"}}, "role_enrichment": {role: {"mean", "n"}},
        "compartments": {kind: {"mean", "n"}}}``; ``mean`` is
        None where no image defines the metric.
    """
    by_class: dict[str, list] = defaultdict(list)
    for r in rows:
        by_class[r["predicted"]].append(r)
    return {"overall": _aggregate(rows), "by_class": {k: _aggregate(v) for k, v in sorted(by_class.items())}}


def _mean_n(values) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if v.size else None, "n": int(v.size)}


def _aggregate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"images": len(rows)}
    out.update({m: _mean_n(r.get(m) for r in rows) for m in METRICS})
    for field in ("role_auroc", "role_enrichment", "compartments"):
        roles = sorted({k for r in rows for k in r.get(field, {})})
        out[field] = {role: _mean_n(r[field].get(role) for r in rows if role in r.get(field, {})) for role in roles}
    return out


@dataclass(frozen=True)
class Truth:
    """A synthetic cohort's ground-truth nuclei (``nucleograph synth``'s ``nuclei/`` tables), by image.

    Attributes
    ----------
    folder : Path
    tables : dict
        Resolved image path -> its nuclei table (``centroid_x, centroid_y, role``).
    """

    folder: Path
    tables: dict[str, Path]

    def roles(self, image_path: str, centroids: np.ndarray, *, radius: float = MATCH_RADIUS_PX) -> np.ndarray | None:
        """Each nucleus's true role (nearest true centroid within ``radius`` px, else None); None when
        the image is not in the folder."""
        table = self.tables.get(str(Path(image_path).resolve())) if image_path else None
        if table is None:
            return None
        truth = pd.read_csv(table)
        return fa.match_roles(centroids, truth[["centroid_x", "centroid_y"]].to_numpy(), truth["role"], radius=radius)


def read_truth(folder) -> Truth:
    """The ground truth of a synthetic cohort folder (``manifest.csv`` with ``path`` and ``nuclei``).

    Parameters
    ----------
    folder : path-like
        As written by ``nucleograph synth --out``.

    Returns
    -------
    Truth

    Raises
    ------
    InputError
        No ``manifest.csv`` there, or it has no ``nuclei`` column (not a synthetic cohort).
    """
    folder = Path(folder)
    manifest = folder / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"{folder} has no manifest.csv: --truth takes a folder written by `nucleograph synth --out`")
    m = pd.read_csv(manifest)
    if not {"path", "nuclei"} <= set(m.columns):
        raise InputError(f"{manifest} has no path and nuclei columns: --truth takes a synthetic cohort folder "
                         "(`nucleograph synth --out`), whose nuclei/ tables hold each nucleus's role")
    tables = {str((folder / p).resolve()): folder / t for p, t in zip(m["path"], m["nuclei"], strict=True)
              if isinstance(t, str) and t}
    return Truth(folder, tables)


def select_images(images: list[dict[str, Any]], *, per_class: int | None = None,
                  limit: int | None = None) -> list[str]:
    """Image ids to evaluate: by label then id, at most ``per_class`` of each label, then at most ``limit``
    taken in turn from each label (so a limit keeps the classes balanced).

    Parameters
    ----------
    images : list of dict
        ``id`` and ``label`` per image.
    per_class, limit : int, optional

    Returns
    -------
    list of str
    """
    by_label: dict[str, list[str]] = defaultdict(list)
    for im in sorted(images, key=lambda r: (str(r["label"]), r["id"])):
        by_label[str(im["label"])].append(im["id"])
    queues = [ids[:per_class] if per_class else ids for _, ids in sorted(by_label.items())]
    chosen: list[str] = []
    while any(queues) and (limit is None or len(chosen) < limit):
        for q in queues:
            if q and (limit is None or len(chosen) < limit):
                chosen.append(q.pop(0))
    return chosen


def explainer_for(method: str, *, hops: int, output: str) -> Explainer:
    """The explainer that computes ``method``'s scores as :func:`~nucleograph.gnn.service.explain_run` does
    (the same function), for a model, a graph and a target class: stability reruns it with a second model.

    Raises
    ------
    InputError
        Unknown method.
    """
    if method not in db_runs.METHODS:
        raise InputError(f"unknown method {method!r}: choose one of {', '.join(db_runs.METHODS)}")
    return lambda model, graph, target: explain_graph(method, model, graph, hops=hops, target=target, output=output)


@dataclass
class _Setup:
    """What every image of one evaluation shares."""

    run: dict[str, Any]
    prop: str
    models: list
    fold_of: dict[str, int]
    second: Callable[[str, int], Any] | None  # (image id, its fold) -> the stability model
    explainer: Explainer | None
    truth: Truth | None
    rng: np.random.Generator
    n_random: int


def evaluate_run(
    db: GraphDB, settings: Settings, run_id: str, *, method: str = db_runs.DEFAULT_METHOD, hops: int = 1,
    output: str = "logodds", images: int | None = None, per_class: int | None = None, n_random: int = 3,
    truth=None, against: str | None = None, seed: int = 0, save: bool = True, progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the stored explanation ``(run, method, hops, output)`` and record the result.

    Each image is evaluated with the model that explained it (k-fold runs: the fold that held it out).
    Stability compares with the same explainer run on a second model, for the class the first model
    predicts: the run ``against`` (its model for the image, chosen the same way), else, for a k-fold
    run, the next fold's model; a single-split run without ``against`` has no stability.

    Parameters
    ----------
    db : GraphDB
    settings : Settings
    run_id : str
    method : str
        One of :data:`nucleograph.db.runs.METHODS`.
    hops : int
        Occlusion's neighbourhood size.
    output : str
        Occlusion's output (:data:`nucleograph.db.runs.OUTPUTS`).
    images : int, optional
        Evaluate at most this many explained images (balanced over labels).
    per_class : int, optional
        At most this many explained images per label.
    n_random : int
        Random orders of the deletion and insertion baselines.
    truth : path-like, optional
        A synthetic cohort folder (:func:`read_truth`): role AUROCs and enrichment.
    against : str, optional
        Another run on the same cohort, for stability.
    seed : int
        Seeds the random orders.
    save : bool
        Record the summary on the Explanation node and as a SQL row.
    progress : bool
        Show progress.

    Returns
    -------
    dict
        ``run_id, cohort, model, method, hops, output, key, n_images, n_random, fractions, top, truth,
        stability_from, overall, by_class, seconds, images`` (one row per image); with ``save`` also
        ``evaluation_id`` (the SQL row) and ``evaluated_at``. Non-finite values are None.

    Raises
    ------
    InputError
        The explanation has no scores (the message names the ``nucleograph explain`` command), the
        ``against`` run is of another cohort, or ``truth`` matches none of the images.
    """
    t0 = time.perf_counter()
    run, models = load_run_models(db, settings, run_id)
    hops_used = hops if method == "occlusion" else None
    output_used = output if method == "occlusion" else None
    key = db_runs.explanation_key(run_id, method, hops, output=output)
    cohort_images = store.cohort_images(db, run["cohort"])
    explained = set(db_runs.explained_images(db, key, [r["id"] for r in cohort_images]))
    if not explained:
        raise InputError(f"run {run_id} has no {db_runs.explanation_title(method, hops_used, output_used)} scores: "
                         f"compute them with `{_explain_command(run_id, method, hops_used, output_used)}`")
    chosen = select_images([r for r in cohort_images if r["id"] in explained], per_class=per_class, limit=images)
    second, stability_from = _second_models(db, settings, run, models, against, method)
    setup = _Setup(run=run, prop=db_runs.score_property(run_id, method, hops, output=output), models=models,
                   fold_of=_folds(db, run_id), second=second,
                   explainer=explainer_for(method, hops=hops, output=output) if second else None,
                   truth=read_truth(truth) if truth is not None else None, rng=np.random.default_rng(seed),
                   n_random=n_random)
    class_names = list(run.get("class_names") or [])
    rows = []
    with progress_bar(total=len(chosen), desc=f"evaluate {key}", unit="image", enabled=progress) as bar:
        for g in store.read_graphs(db, run["cohort"], chosen):
            bar.update(1)
            row = _evaluate_one(db, setup, g)
            row["predicted"] = class_names[row["target"]] if row["target"] < len(class_names) else str(row["target"])
            rows.append(row)
    if setup.truth is not None and not any(r["matched"] for r in rows):
        raise InputError(f"no image of run {run_id}'s cohort {run['cohort']!r} is in {setup.truth.folder}'s "
                         "manifest: --truth takes the synthetic cohort folder these images were ingested from")
    summary = {
        "run_id": run_id, "cohort": run["cohort"], "model": run.get("model"), "method": method, "hops": hops_used,
        "output": output_used, "key": key, "n_images": len(rows), "n_random": n_random,
        "fractions": list(EVAL_FRACTIONS), "top": TOP, "truth": str(setup.truth.folder) if setup.truth else None,
        "stability_from": stability_from, **summarize(rows), "seconds": round(time.perf_counter() - t0, 2),
    }
    summary = finite_or_null({**summary, "images": rows})
    if save:
        summary.update(save_evaluation(db, settings, summary))
    return summary


def _explain_command(run_id: str, method: str, hops: int | None, output: str | None) -> str:
    return (f"nucleograph explain --run {run_id} --method {method}" + (f" --hops {hops}" if hops is not None else "")
            + (f" --output {output}" if output is not None else ""))


def _folds(db: GraphDB, run_id: str) -> dict[str, int]:
    """The fold that held each image out (0 for a single-split run)."""
    return {p["image_id"]: int(p.get("fold") or 0) for p in db_runs.predictions(db, run_id)}


def _second_models(db: GraphDB, settings: Settings, run: dict[str, Any], models: list, against: str | None,
                   method: str) -> tuple[Callable[[str, int], Any] | None, str | None]:
    """The stability model per image (image id, its fold) -> model, and what it is; (None, None) without one."""
    if against is not None:
        run2, models2 = load_run_models(db, settings, against)
        if run2["cohort"] != run["cohort"]:
            raise InputError(f"run {against} was trained on cohort {run2['cohort']!r}, run {run['id']} on "
                             f"{run['cohort']!r}: --against takes another run of the same cohort (`nucleograph runs "
                             f"--cohort {run['cohort']}`)")
        if method == "attention" and run2.get("model") != "rsf-attention":
            raise InputError(f"run {against} is a {run2.get('model')} model: attention stability needs another "
                             "rsf-attention run")
        folds2 = _folds(db, against)
        return (lambda image_id, _fold: models2[min(folds2.get(image_id, 0), len(models2) - 1)]), f"run {against}"
    if len(models) > 1:
        return (lambda _image_id, fold: models[(fold + 1) % len(models)]), "the next fold's model"
    return None, None


def _evaluate_one(db: GraphDB, setup: _Setup, g: dict[str, Any]) -> dict[str, Any]:
    """One image's :func:`evaluate_image` row, with its id, label, fold and how many nuclei matched truth."""
    fold = setup.fold_of.get(g["id"], 0)
    model = setup.models[min(fold, len(setup.models) - 1)]
    graph = graph_from_arrays(g)
    by_nid = {int(r["nid"]): r["score"] for r in db_runs.image_scores(db, setup.run["cohort"], g["id"], setup.prop)}
    s = np.array([by_nid.get(int(n)) for n in g["nids"]], dtype=float)
    roles = setup.truth.roles(g["path"], g["centroids"]) if setup.truth is not None else None
    row = evaluate_image(model, graph, s, n_random=setup.n_random, rng=setup.rng, roles=roles)
    if setup.second is not None:
        other = setup.explainer(setup.second(g["id"], fold), graph, row["target"])
        row["stability"] = fa.rank_stability(s, np.asarray(other, dtype=float))
    row.update({"image_id": g["id"], "label": g["label"], "fold": fold,
                "matched": int(sum(r is not None for r in roles)) if roles is not None else 0})
    return row


def headline(summary: dict[str, Any]) -> dict[str, float | None]:
    """The overall mean of every :data:`METRICS` entry of a :func:`evaluate_run` summary."""
    return {m: summary["overall"][m]["mean"] for m in METRICS}


def save_evaluation(db: GraphDB, settings: Settings, summary: dict[str, Any]) -> dict[str, Any]:
    """Record an :func:`evaluate_run` summary: on its ``(:Explanation)`` (JSON text ``evaluation``, without
    the per-image rows, and ``evaluated_at``) and as a row of the SQL table ``explanation_evaluations``.

    Parameters
    ----------
    db : GraphDB
    settings : Settings
    summary : dict
        From :func:`evaluate_run` (non-finite values already None).

    Returns
    -------
    dict
        ``evaluation_id`` (the SQL row's id) and ``evaluated_at`` (ISO time).
    """
    stored = {k: v for k, v in summary.items() if k != "images"}
    db_runs.save_evaluation(db, summary["key"], json.dumps(stored, sort_keys=True))
    engine = rec.open_engine(settings)
    try:
        row = rec.add_evaluation(engine, run_id=summary["run_id"], cohort=summary["cohort"], method=summary["method"],
                                 hops=summary["hops"], output=summary["output"], explanation_key=summary["key"],
                                 n_images=summary["n_images"], summary=summary, **headline(summary))
    finally:
        engine.dispose()
    return {"evaluation_id": row["id"], "evaluated_at": row["created_at"]}


def _groups(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(class, aggregate) per predicted class, then ("all", the overall aggregate): the rows of every table."""
    return [*summary["by_class"].items(), ("all", summary["overall"])]


#: Columns of :func:`class_rows`: short names for the table, read in the module docstring.
TABLE_COLUMNS = ("class", "images", "deletion", "del_auc", "del_random", "insertion", "ins_auc", "ins_random",
                 "sparsity", "ties", "stability", "structure_auroc")


def class_rows(summary: dict[str, Any], *, digits: int = 3) -> list[dict[str, Any]]:
    """One row per predicted class and one for all images (``class`` "all"), rounded, for a table.

    ``deletion`` and ``insertion`` are the mean per-image ratios explanation / random order.

    Parameters
    ----------
    summary : dict
        From :func:`evaluate_run` (or the JSON stored on an Explanation).
    digits : int

    Returns
    -------
    list of dict
        Keyed by :data:`TABLE_COLUMNS`.
    """
    names = {"deletion": "deletion_ratio", "del_auc": "deletion_auc", "del_random": "deletion_random_auc",
             "insertion": "insertion_ratio", "ins_auc": "insertion_auc", "ins_random": "insertion_random_auc",
             "sparsity": "sparsity", "ties": "tie_share", "stability": "stability",
             "structure_auroc": "structure_auroc"}
    groups = _groups(summary)

    def rounded(v):
        return None if v is None else round(float(v), digits)

    return [{"class": cls, "images": agg["images"], **{col: rounded(agg[m]["mean"]) for col, m in names.items()}}
            for cls, agg in groups]


def role_rows(summary: dict[str, Any], *, digits: int = 2) -> list[dict[str, Any]]:
    """One row per (predicted class, role): the role's AUROC above stroma and its top-10% enrichment.

    Parameters
    ----------
    summary : dict
        From :func:`evaluate_run`.
    digits : int

    Returns
    -------
    list of dict
        ``class, role, auroc, enrichment, images`` (images where the role was found); [] without truth.
    """
    rows = []
    for cls, agg in _groups(summary):
        for role in sorted(set(agg["role_auroc"]) | set(agg["role_enrichment"])):
            auc = agg["role_auroc"].get(role, {}).get("mean")
            enr = agg["role_enrichment"].get(role, {})
            rows.append({"class": cls, "role": role, "auroc": None if auc is None else round(auc, digits),
                         "enrichment": None if enr.get("mean") is None else round(enr["mean"], digits),
                         "images": enr.get("n", 0)})
    return rows


#: Columns of :func:`compartment_rows`.
COMPARTMENT_COLUMNS = ("class", "images", "intact", "without_stroma", "without_structure")


def compartment_rows(summary: dict[str, Any], *, digits: int = 3) -> list[dict[str, Any]]:
    """One row per predicted class (and "all"): mean probability of the predicted class intact, without the
    stroma and without the structures; [] without truth.

    Parameters
    ----------
    summary : dict
        From :func:`evaluate_run`.
    digits : int

    Returns
    -------
    list of dict
        Keyed by :data:`COMPARTMENT_COLUMNS`.
    """
    rows = []
    for cls, agg in _groups(summary):
        comp = agg.get("compartments") or {}
        if not comp:
            continue
        means = {k: comp.get(k, {}).get("mean") for k in COMPARTMENT_COLUMNS[2:]}
        rows.append({"class": cls, "images": comp.get("intact", {}).get("n", 0),
                     **{k: None if v is None else round(v, digits) for k, v in means.items()}})
    return rows
