"""Training and explaining on cohorts stored in Neo4j: the glue between db/ and the gnn models.

``load_cohort`` reads a cohort's graphs in bulk and caches them on disk, keyed by the cohort's
content (image ids, ingest parameters and labels), so a second run skips the database.
``train_cohort`` records each run in SQL and as a ``(:ModelRun)`` in Neo4j with every image's
prediction; ``explain_run`` writes per-nucleus scores back to the nuclei.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dgl
import numpy as np
import torch

from nucleograph.config import Settings
from nucleograph.db import records as rec
from nucleograph.db import runs as db_runs
from nucleograph.db import schema, store
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.checkpoints import load_checkpoint
from nucleograph.gnn.data import check_one_feature_set, check_test_split, graph_from_arrays
from nucleograph.gnn.graph_cache import read_cache, write_cache
from nucleograph.gnn.interrupt import Terminated, TrainingInterrupted
from nucleograph.gnn.metrics import constant_output_share
from nucleograph.gnn.models import DEFAULT_MODEL, RSFNet, architecture
from nucleograph.gnn.occlusion.windows import WINDOW_NUCLEI
from nucleograph.gnn.run_record import record_finish, record_start, record_stop, resumed_params
from nucleograph.gnn.slides import AUTO, RoiParams, load_rois, resolve_roi, to_slides
from nucleograph.gnn.train import TrainConfig, TrainResult, kfold, train_model
from nucleograph.progress import progress as progress_bar


@dataclass
class CohortData:
    """A cohort's labelled graphs as :func:`load_cohort` reads them, with what identifies them."""

    cohort: str
    graphs: list[dgl.DGLGraph]
    labels: np.ndarray  # class index per graph
    class_names: list[str]
    image_ids: list[str]
    groups: list[str | None]
    data_version: str
    skipped: list[str]  # image ids without nuclei (no graph to classify)
    from_cache: bool = False


def load_cohort(db: GraphDB, settings: Settings, cohort: str, *, cache: bool = True, progress: bool = False) -> CohortData:
    """Read every labelled graph of ``cohort`` (cached on disk by the cohort's content hash).

    Parameters
    ----------
    db : GraphDB
    settings : Settings
        ``home`` holds the disk cache.
    cohort : str
    cache : bool
        Read from and write to the disk cache.
    progress : bool
        Show a progress bar.

    Returns
    -------
    CohortData

    Raises
    ------
    InputError
        The cohort has no images, or its nuclei carry different feature sets (:func:`check_one_feature_set`).

    Warns
    -----
    CacheWarning
        The disk cache is corrupt: it is deleted, and the graphs are read from Neo4j and cached again.
    """
    schema.require_current(db)
    images = [r for r in store.cohort_images(db, cohort)]
    if not images:
        raise InputError(f"cohort {cohort!r} has no images in Neo4j: ingest some with "
                         f"`nucleograph ingest PATH --cohort {cohort}`")
    check_one_feature_set(cohort, [r for r in images if r["label"] is not None])
    version = store.cohort_fingerprint(db, cohort)
    cached = read_cache(settings.home, version) if cache else None  # None, with a warning, when corrupt
    if cached is not None:
        graphs, meta = cached
        return CohortData(cohort, graphs, np.asarray(meta["labels"], dtype=np.int64), meta["class_names"],
                          meta["image_ids"], meta["groups"], version, meta["skipped"], from_cache=True)
    labelled = [r for r in images if r["label"] is not None]
    class_names = sorted({r["label"] for r in labelled})
    graphs, labels, ids, groups, skipped = [], [], [], [], []
    with progress_bar(total=len(labelled), desc=f"read {cohort}", unit="graph", enabled=progress) as bar:
        for g in store.read_graphs(db, cohort, [r["id"] for r in labelled]):
            bar.update(1)
            if len(g["nids"]) == 0:
                skipped.append(g["id"])
                continue
            graphs.append(graph_from_arrays(g))
            labels.append(class_names.index(g["label"]))
            ids.append(g["id"])
            groups.append(g["patient"])
    data = CohortData(cohort, graphs, np.asarray(labels, dtype=np.int64), class_names, ids, groups, version, skipped)
    if cache and graphs:
        write_cache(settings.home, version, graphs, {"labels": data.labels.tolist(), "class_names": class_names,
                                                     "image_ids": ids, "groups": groups, "skipped": skipped})
    return data


SPLIT_BY = ("patient", "image")


def new_run_id() -> str:
    """A fresh model-run id: ``r`` and 10 hex digits.

    Returns
    -------
    str
    """
    return "r" + uuid.uuid4().hex[:10]


def _summary_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _train_config(params: dict[str, Any]) -> TrainConfig:
    """A run's TrainConfig from its recorded params; the settings params do not record keep their defaults."""
    return TrainConfig(model_name=params["model"], model_kwargs=params["model_kwargs"] or {}, epochs=params["epochs"],
                       lr=params["lr"], seed=params["seed"], batch_size=params["batch_size"],
                       patience=params["patience"], drop_nodes=params.get("drop_nodes", 0.0),
                       ensemble=params.get("ensemble", 1))


def _pooled_metrics(results: list[TrainResult]) -> dict[str, Any]:
    """Test metrics averaged over folds (with ``_std`` when there are several) and each fold's own."""
    fold_metrics = [_summary_metrics(r.metrics) for r in results]
    keys = sorted(set().union(*fold_metrics)) if fold_metrics else []
    metrics: dict[str, Any] = {k: float(np.mean([m[k] for m in fold_metrics if k in m])) for k in keys}
    if len(results) > 1:
        metrics.update({f"{k}_std": float(np.std([m[k] for m in fold_metrics if k in m])) for k in keys})
    metrics["folds"] = [r.metrics for r in results]
    return metrics


def _chance_flag(labels: np.ndarray, results: list[TrainResult], accuracy: float | None) -> dict[str, Any]:
    """``chance_accuracy`` (the majority class's share of the test images, what predicting that class
    for every image scores) and ``at_or_below_chance`` (test accuracy does not beat it); {} without
    test images."""
    test = np.concatenate([np.asarray(r.split["test"], dtype=np.int64) for r in results])
    if test.size == 0 or accuracy is None:
        return {}
    chance = float(np.bincount(labels[test]).max() / test.size)
    # a tolerance, so an accuracy equal to the rate up to float rounding counts as "at"
    return {"chance_accuracy": chance, "at_or_below_chance": bool(accuracy <= chance + 1e-9)}


def _constant_output(results: list[TrainResult]) -> dict[str, float]:
    """``constant_output_share``: the largest share of the cohort's images that one model of the run (a
    fold's) answers with one and the same output (:func:`nucleograph.gnn.metrics.constant_output_share`)."""
    return {"constant_output_share": max(constant_output_share(r.proba) for r in results)}


def _prediction_rows(data: CohortData, results: list[TrainResult]) -> list[dict[str, Any]]:
    """One prediction per image: from the fold that held it out (single split: the one model, all images)."""
    rows = []
    for f, r in enumerate(results):
        test_idx = set(np.asarray(r.split["test"]).tolist()) if len(results) > 1 else None
        split_name = {int(i): s for s in ("train", "val", "test") for i in np.asarray(r.split[s]).tolist()}
        for i, image_id in enumerate(data.image_ids):
            if test_idx is not None and i not in test_idx:
                continue
            probs = r.proba[i].astype(float).tolist()
            rows.append({"image_id": image_id, "props": {
                "pred": data.class_names[int(r.predictions[i])], "prob": float(max(probs)), "probs": probs,
                "split": split_name.get(i, "train"), "fold": f}})
    return rows


def train_cohort(
    db: GraphDB, settings: Settings, cohort: str, *, model: str = DEFAULT_MODEL, epochs: int = TrainConfig.epochs,
    lr: float = TrainConfig.lr, folds: int = 1, seed: int = TrainConfig.seed, batch_size: int = TrainConfig.batch_size,
    patience: int | None = TrainConfig.patience, resume_run: str | None = None, progress: bool = False,
    model_kwargs: dict | None = None, split_by: str = "patient", drop_nodes: float = TrainConfig.drop_nodes,
    roi: RoiParams | str | None = AUTO, ensemble: int = TrainConfig.ensemble,
) -> dict[str, Any]:
    """Train ``model`` on ``cohort`` and record the run; returns the run id, metrics and paths.

    A cohort of whole slides trains on regions of interest (:mod:`nucleograph.gnn.slides`): ROI subgraphs
    read by window, labelled by their slide, split by slide, and aggregated per slide into the run's
    predictions and metrics (``roi_*`` metrics are the ROIs' own).

    With ``folds > 1``, stratified k-fold cross-validation (grouped by patient when known): the test
    metrics are averaged over folds and each image's prediction comes from the fold that held it out.
    ``resume_run`` continues a crashed or interrupted run from its last checkpoint (same id and
    settings). The other settings are :class:`nucleograph.gnn.train.TrainConfig`'s defaults.

    The SQL record says ``running`` (with this process's pid and host) while it trains, then
    ``finished``, ``failed`` (an error) or ``interrupted`` (Ctrl-C, or SIGTERM inside
    :func:`nucleograph.gnn.interrupt.sigterm_interrupts`); a run killed with -9 is marked
    ``interrupted`` when :func:`nucleograph.db.records.mark_dead_runs` next looks.

    Parameters
    ----------
    db : GraphDB
        Where the cohort is read and the run and its predictions are written.
    settings : Settings
        The SQL run records and ``home`` (checkpoints, graph cache).
    cohort : str
    model : str
        A name from :data:`nucleograph.gnn.models.MODEL_NAMES`.
    epochs, lr, seed, batch_size, patience, model_kwargs
        As :class:`nucleograph.gnn.train.TrainConfig` takes them.
    folds : int
        1 for a single split, k for k-fold cross-validation.
    resume_run : str, optional
        The id of a crashed or interrupted run to continue.
    progress : bool
        Show progress bars.
    split_by : {"patient", "image"}
        ``patient`` keeps each patient's images in one part of the split (when every image has a
        patient); ``image`` splits images independently.
    drop_nodes : float
        Node-drop augmentation (:attr:`TrainConfig.drop_nodes`): each training graph loses up to this
        share of its nuclei at every step; 0 is off.
    roi : RoiParams, "auto" or None
        Train on ROIs drawn so; ``"auto"``: on the default ROIs when an image is larger than
        :data:`nucleograph.gnn.slides.SLIDE_PIXELS` (a slide), else on whole images; None: whole images.
        A resumed run keeps its own.
    ensemble : int
        Train a seed ensemble of this many members per split (:attr:`TrainConfig.ensemble`); the run's
        model, predictions and explanations are the ensemble's. 1: one model.

    Returns
    -------
    dict
        ``run_id, cohort, model, n_parameters, n_images, skipped_empty, data_version, from_cache,
        seconds, metrics, checkpoints``; trained on ROIs also ``roi`` (its :class:`RoiParams` as a dict)
        and ``n_rois``, and ``n_images`` counts slides.

    Raises
    ------
    InputError
        Fewer than two classes, a split without test images (too few patients or images; the
        message names the fixes), or no run of this cohort to resume.
    TrainingInterrupted
        Ctrl-C or SIGTERM stopped training; the run is recorded ``interrupted``.
    """
    if not 0.0 <= drop_nodes < 1.0:
        raise InputError(f"drop_nodes is the largest share of nuclei dropped per step, in [0, 1), not {drop_nodes}")
    if ensemble < 1:
        raise InputError(f"an ensemble has at least one member, got {ensemble}")
    if split_by not in SPLIT_BY:
        raise InputError(f"split_by must be one of {', '.join(SPLIT_BY)}, not {split_by!r}")
    engine = rec.open_engine(settings)
    params = {"model": model, "epochs": epochs, "lr": lr, "folds": folds, "seed": seed, "batch_size": batch_size,
              "patience": patience, "model_kwargs": model_kwargs or {}, "split_by": split_by, "drop_nodes": drop_nodes,
              "ensemble": ensemble}
    if resume_run is not None:
        params = resumed_params(engine, resume_run, cohort)
    else:
        chosen = resolve_roi(store.cohort_images(db, cohort), roi)
        params["roi"] = chosen.to_dict() if chosen else None
    # runs recorded before ROIs existed trained on whole images
    rois = RoiParams.from_dict(params["roi"]) if params.get("roi") else None
    data = load_cohort(db, settings, cohort, progress=progress) if rois is None else load_rois(
        db, settings, cohort, rois, progress=progress)
    if len(set(data.labels.tolist())) < 2:
        raise InputError(f"cohort {cohort!r} has only the class(es) {data.class_names}: training needs two; "
                         "ingest images of the other class or use a cohort that has both")
    run_id = resume_run or new_run_id()
    run_dir = settings.home / "runs" / run_id
    # runs recorded before split_by existed split by patient
    by_patient = params.get("split_by", "patient") == "patient" and all(g is not None for g in data.groups)
    # a slide's ROIs are never on both sides of a split: grouped by patient, or else by slide
    groups = data.groups if by_patient else (data.image_ids if rois else None)
    config = _train_config(params)
    # before training: a split without test images would store a run without test metrics
    try:
        check_test_split(data.labels, groups, folds=params["folds"], val=config.val_fraction,
                         test=config.test_fraction, seed=config.seed, name=f"cohort {cohort!r}")
    except InputError as exc:
        if resume_run:  # a recorded run (e.g. one the retrain job made) must not stay "running"
            record_stop(engine, run_id, rec.FAILED, f"InputError: {exc}")
        raise
    record_start(engine, run_id, new=None if resume_run else {
        "cohort": cohort, "model": model, "params": params, "data_version": data.data_version})
    t0 = time.perf_counter()
    try:
        if params["folds"] > 1:
            results = kfold(data.graphs, data.labels, config, k=params["folds"], groups=groups, checkpoint_dir=run_dir,
                            progress=progress)
        else:
            results = [train_model(data.graphs, data.labels, config, groups=groups, checkpoint_dir=run_dir / "fold0",
                                   progress=progress)]
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM within sigterm_interrupts()
        why = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
        record_stop(engine, run_id, rec.INTERRUPTED, f"interrupted by {why}")
        raise TrainingInterrupted(run_id, cohort, why) from exc
    except Exception as exc:
        record_stop(engine, run_id, rec.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    seconds = time.perf_counter() - t0
    extra = {}
    if rois is not None:  # the run's predictions and metrics are the slides'
        data, results = to_slides(data, results)
        extra = {"roi": params["roi"], "n_rois": data.n_rois}

    metrics = _pooled_metrics(results)
    metrics.update(_chance_flag(data.labels, results, metrics.get("accuracy")))
    metrics.update(_constant_output(results))
    rows = _prediction_rows(data, results)
    checkpoints = [str(r.checkpoint_path) for r in results]
    history = results[0].history
    props = {
        "model": params["model"], "epochs": params["epochs"], "lr": params["lr"], "seed": params["seed"],
        "folds": params["folds"], "ensemble": params.get("ensemble", 1), "n_parameters": results[0].n_parameters, "data_version": data.data_version,
        "class_names": data.class_names, "checkpoints": checkpoints, "n_images": len(data.image_ids),
        "seconds": round(seconds, 2), "status": "finished", "metrics": metrics, "history": history, **extra,
        **{k: v for k, v in metrics.items() if isinstance(v, float)},
    }
    db_runs.save_run(db, run_id=run_id, cohort=cohort, props=props)
    db_runs.save_predictions(db, run_id, rows)
    record_finish(engine, run_id, metrics=metrics, history=history, checkpoints=checkpoints)
    engine.dispose()
    return {"run_id": run_id, "cohort": cohort, "model": params["model"], "n_parameters": results[0].n_parameters,
            "n_images": len(data.image_ids), "skipped_empty": data.skipped, "data_version": data.data_version,
            "from_cache": data.from_cache, "seconds": round(seconds, 2), "metrics": metrics,
            "checkpoints": checkpoints, **extra}


def load_run_models(db: GraphDB, settings: Settings, run_id: str) -> tuple[dict[str, Any], list]:
    """The run's record and its fold models (eval mode); clear errors when either is gone.

    Parameters
    ----------
    db : GraphDB
    settings : Settings
    run_id : str

    Returns
    -------
    (dict, list of torch.nn.Module)

    Raises
    ------
    InputError
        No such run.
    ModelError
        A checkpoint file is gone, or the run has none.
    """
    run = db_runs.get_run(db, run_id)
    if run is None:
        raise InputError(f"no model run {run_id!r} in Neo4j: `nucleograph runs` lists them")
    models = []
    for path in run.get("checkpoints") or []:
        if not Path(path).exists():
            raise ModelError(f"run {run_id}'s checkpoint {path} is gone: retrain with "
                             f"`nucleograph train --cohort {run.get('cohort')} --model {run.get('model')}`")
        model, _scaler, _config = load_checkpoint(path)
        model.eval()
        models.append(model)
    if not models:
        raise ModelError(f"run {run_id} has no checkpoint (status {run.get('status')}); retrain it")
    return run, models


def explain_run(
    db: GraphDB, settings: Settings, run_id: str, *, method: str = db_runs.DEFAULT_METHOD, hops: int = 1,
    image_ids: list[str] | None = None, target: int | None = None, force: bool = False, progress: bool = False,
    output: str = "logodds", client=None, window: int = WINDOW_NUCLEI,
) -> dict[str, Any]:
    """Score every nucleus of the run's images (or ``image_ids``) and write the scores to Neo4j.

    Images whose nuclei already hold finite scores of this run, method, hops and output are not recomputed
    (reported as ``reused``) unless ``force`` or an explicit ``target`` is given. A score that is
    not finite is never written: the run stops with a :class:`ModelError` at the first such image.

    Parameters
    ----------
    db : GraphDB
    settings : Settings
    run_id : str
    method : str
        ``occlusion``, ``gradxinput``, ``ig`` or ``local`` (any model), ``gnnexplainer`` (RSF models) or
        ``attention`` (rsf-attention runs); :mod:`nucleograph.gnn.attribution` holds the gradient
        methods and GNNExplainer (their defaults: 32 path steps, 100 epochs, seed 0),
        :mod:`nucleograph.gnn.local` the local evidence.
    hops : int
        Occlusion's neighbourhood size.
    image_ids : list of str, optional
        Images of the run's cohort (default: all of them).
    target : int, optional
        Class index to explain (default: the predicted class); recomputes every image.
    force : bool
        Recompute images that already have scores.
    progress : bool
        Show progress on standard error (a bar on a terminal, else a line every few seconds).
    output : {"logodds", "prob"}
        What occlusion scores measure (:func:`nucleograph.gnn.explain.occlusion`): the drop of the
        explained class's log-odds (default) or of its probability; each has its own property
        (:func:`nucleograph.db.runs.score_property`). Ignored by the other methods.
    client : distributed.Client, optional
        A Dask cluster's client (:func:`nucleograph.cluster.connect`): each image is a task that reads its
        graph, scores it and writes its scores (a rerun after a lost worker writes the same scores again).
        The run's models travel to the workers with the task's resources: no shared checkpoint folder.
    window : int
        Nuclei per window of occlusion and local evidence: an image with more (a slide) is scored and its scores written
        window by window, each window in its own transaction, the image marked explained after the last
        (:func:`nucleograph.gnn.explain.occlusion_windows`, :class:`nucleograph.db.runs.ScoreWriter`).

    Returns
    -------
    dict
        ``run_id, method, hops, output, property, images, reused, skipped, seconds``: ``images`` counts
        the images scored now, ``reused`` those whose stored scores were kept; ``hops`` and ``output``
        are None for methods other than occlusion.

    Raises
    ------
    InputError
        Unknown method or output, attention on a model without it, or images outside the cohort.
    ModelError
        The model gave a non-finite score (named: run, image, how many nuclei).
    """
    if method not in db_runs.METHODS:
        raise InputError(f"unknown method {method!r}: choose one of {', '.join(db_runs.METHODS)}")
    if method == "occlusion" and output not in db_runs.OUTPUTS:
        raise InputError(f"unknown occlusion output {output!r}: choose one of {', '.join(db_runs.OUTPUTS)}")
    run, models = load_run_models(db, settings, run_id)
    if method == "attention" and run.get("model") != "rsf-attention":
        raise InputError(f"run {run_id} is a {run.get('model')} model: attention scores need an rsf-attention run "
                         "(use --method occlusion for any model)")
    if method in ("gradxinput", "ig") and not models[0].reads_node_features:
        raise InputError(f"run {run_id} is a {run.get('model')} model, which reads no node features: {method} would "
                         "score every nucleus 0 (use --method occlusion)")
    if method == "gnnexplainer" and not isinstance(architecture(models[0]), RSFNet):
        raise InputError(f"run {run_id} is a {run.get('model')} model: GNNExplainer masks the edges of an RSF model "
                         "(use --method ig or occlusion for any model)")
    todo = _images_to_explain(db, run, image_ids)
    key = db_runs.explanation_key(run_id, method, hops, output=output)
    reused = [] if force or target is not None else db_runs.explained_images(db, key, todo)
    todo = [i for i in todo if i not in set(reused)]
    fold_of = {p["image_id"]: p.get("fold", 0) for p in db_runs.predictions(db, run_id)}
    done, skipped = [], []
    t0 = time.perf_counter()
    job = _ExplainJob("", run["cohort"], run_id, method, hops, target, output, window)
    with progress_bar(total=len(todo), desc=f"explain {run_id} {method}", unit="image", enabled=progress) as bar:
        if client is not None:
            _explain_on_cluster(client, settings, job, models, todo, fold_of, bar, done, skipped)
        else:
            for g in store.read_graphs(db, run["cohort"], todo):
                _count(g["id"], job.explain(db, g, models, fold_of, bar), done, skipped)
                bar.update(1)
    occ = method == "occlusion"
    return {"run_id": run_id, "method": method, "hops": hops if occ else None, "output": output if occ else None,
            "property": db_runs.score_property(run_id, method, hops, output=output), "images": len(done),
            "reused": len(reused), "skipped": skipped, "seconds": round(time.perf_counter() - t0, 2)}


@dataclass(frozen=True)
class _ExplainJob:
    """One :func:`explain_run`'s choices, as each image (in this process, or a Dask task) needs them;
    ``resources`` names the workers' driver and models on a cluster."""

    resources: str
    cohort: str
    run_id: str
    method: str
    hops: int
    target: int | None
    output: str
    window: int = WINDOW_NUCLEI

    def explain(self, db: GraphDB, g: dict[str, Any], models: list, fold_of: dict[str, int],
                bar=None) -> dict[str, str] | None:
        """Score one image's graph (``read_graphs`` arrays) with its fold's model and write the scores;
        the reason when it is skipped. An image of several windows (a slide) is scored and written window
        by window (:func:`explain_windows`, :class:`nucleograph.db.runs.ScoreWriter`), its nuclei counted on
        ``bar``'s postfix."""
        if len(g["nids"]) == 0:
            return {"image_id": g["id"], "reason": "no nuclei"}
        model = models[min(int(fold_of.get(g["id"], 0) or 0), len(models) - 1)]
        parts = explain_windows(self.method, model, graph_from_arrays(g), hops=self.hops, target=self.target,
                                output=self.output, window=self.window)
        nodes, scores = next(parts)
        if nodes.size == len(g["nids"]):  # one window: one transaction, as always
            scores = _finite_scores(scores[np.argsort(nodes)], run_id=self.run_id, method=self.method,
                                    image_id=g["id"])
            db_runs.save_scores(db, run_id=self.run_id, method=self.method, hops=self.hops,
                                segmentation=g["segmentation"], nids=g["nids"], scores=scores, output=self.output)
            return None
        writer = db_runs.ScoreWriter(db, run_id=self.run_id, method=self.method, hops=self.hops,
                                     segmentation=g["segmentation"], output=self.output)
        done = 0
        while nodes is not None:
            writer.write(g["nids"][nodes], _finite_scores(scores, run_id=self.run_id, method=self.method,
                                                          image_id=g["id"]))
            done += nodes.size
            if bar is not None:
                bar.set_postfix(nuclei=f"{done}/{len(g['nids'])} of {g['id']}")
                bar.refresh()
            nodes, scores = next(parts, (None, None))
        writer.finish()
        return None


def _count(image_id: str, skip: dict[str, str] | None, done: list[str], skipped: list[dict[str, str]]) -> None:
    if skip is None:
        done.append(image_id)
    else:
        skipped.append(skip)


def _worker_models(models: list) -> list:
    """The run's models on a Dask worker, torch at one thread (one task per worker thread)."""
    torch.set_num_threads(1)
    return models


#: How many times a failed explain task is run again on a cluster (see :func:`_explain_on_cluster`).
TASK_RETRIES = 1


def _explain_task(job: _ExplainJob, image_id: str, fold_of: dict[str, int]) -> tuple[str, dict[str, str] | None] | None:
    """One image on a Dask worker: ``(image_id, skip reason or None)``; None when it is not stored (any more)."""
    from nucleograph import cluster  # see _explain_on_cluster

    objects = cluster.resources(job.resources)
    for g in store.read_graphs(objects["db"], job.cohort, [image_id]):
        return image_id, job.explain(objects["db"], g, objects["models"], fold_of)
    return None


def _explain_on_cluster(
    client, settings: Settings, job: _ExplainJob, models: list, todo: list[str], fold_of: dict[str, int], bar,
    done: list[str], skipped: list[dict[str, str]],
) -> None:
    """:func:`explain_run`'s images as Dask tasks; a task's error (a non-finite score) stops the run."""
    # imported here, not at the top: distributed adds most of a second to every start, and only --cluster needs it
    from distributed import as_completed

    from nucleograph import cluster

    token = uuid.uuid4().hex[:8]
    factories = {"db": GraphDB.opener(settings), "models": functools.partial(_worker_models, models)}
    with cluster.worker_resources(client, factories) as name:
        job = dataclasses.replace(job, resources=name)
        # retries: a task whose read or write fails (a connection of the worker's driver broken mid-read:
        # seen once in CI as the driver's BufferError on a loaded machine) runs once more, on whichever
        # worker is free; a task is idempotent (scores set, then the image marked). An error of the
        # model's (a non-finite score) fails twice and stops the run below.
        futures = [client.submit(_explain_task, job, image_id, {image_id: fold_of.get(image_id, 0)},
                                 key=f"explain-image-{token}-{n}", retries=TASK_RETRIES)
                   for n, image_id in enumerate(todo)]
        try:
            for future in as_completed(futures):
                out = future.result()
                bar.update(1)
                if out is not None:
                    _count(*out, done, skipped)
        finally:
            client.cancel(futures)


def explain_graph(method: str, model, graph, *, hops: int, target: int | None, output: str) -> np.ndarray:
    """One image's per-nucleus scores by ``method``, as :func:`explain_run` computes them.

    Parameters
    ----------
    method : str
        One of :data:`nucleograph.db.runs.METHODS` (checked by the caller).
    model : GraphClassifier
    graph : dgl.DGLGraph
        One image's graph.
    hops, target, output
        As for :func:`explain_run` (``hops`` and ``output`` used by occlusion only).

    Returns
    -------
    np.ndarray, shape (N,)
    """
    # imported here: explain loads numba's compiled kernels (~1 s), which training runs do not need
    from nucleograph.gnn import attribution
    from nucleograph.gnn.contribution import local_contribution
    from nucleograph.gnn.explain import attention_scores, occlusion
    from nucleograph.gnn.local import local_evidence

    # the gradient methods need autograd: each switches it on for itself, and none writes a parameter's grad
    if method == "gradxinput":
        return attribution.gradient_x_input(model, graph, target=target)
    if method == "ig":
        return attribution.integrated_gradients(model, graph, target=target)
    if method == "gnnexplainer":
        return attribution.gnnexplainer_scores(model, graph, target=target)
    if method == "local":
        return local_evidence(model, graph, target=target)
    if method == "contribution":
        return local_contribution(model, graph, target=target)
    with torch.no_grad():
        if method == "attention":
            return attention_scores(model, graph)
        return occlusion(model, graph, hops=hops, target=target, output=output)


def explain_windows(method: str, model, graph, *, hops: int, target: int | None, output: str,
                    window: int = WINDOW_NUCLEI) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """:func:`explain_graph` window by window: ``(nodes, scores)`` per window of ``window`` nuclei, so that
    a slide's scores are written back while the rest are computed. Occlusion goes window by window
    (:func:`nucleograph.gnn.explain.occlusion_windows`), and so do local evidence
    (:func:`nucleograph.gnn.local.local_evidence_windows`) and local contribution
    (:func:`nucleograph.gnn.contribution.local_contribution_windows`); the other methods give one window, every nucleus
    (attention is computed window by window inside, the gradient methods need the whole graph)."""
    from nucleograph.gnn.contribution import local_contribution_windows
    from nucleograph.gnn.explain import occlusion_windows  # see explain_graph
    from nucleograph.gnn.local import local_evidence_windows

    if method == "occlusion":
        yield from occlusion_windows(model, graph, hops=hops, target=target, output=output, window=window)
        return
    if method == "local":
        yield from local_evidence_windows(model, graph, target=target, window=window)
        return
    if method == "contribution":
        yield from local_contribution_windows(model, graph, target=target, window=window)
        return
    yield np.arange(graph.num_nodes()), explain_graph(method, model, graph, hops=hops, target=target, output=output)


def _images_to_explain(db: GraphDB, run: dict[str, Any], image_ids: list[str] | None) -> list[str]:
    """``image_ids`` (checked to be in the run's cohort), or every image of the cohort."""
    cohort_ids = [r["id"] for r in store.cohort_images(db, run["cohort"])]
    if not image_ids:
        return cohort_ids
    outside = sorted(set(image_ids) - set(cohort_ids))
    if outside:
        raise InputError(f"image(s) {', '.join(outside)} are not in the run's cohort {run['cohort']!r}")
    return list(image_ids)


def _finite_scores(scores, *, run_id: str, method: str, image_id: str) -> np.ndarray:
    """``scores`` as float64, or a ModelError when any is NaN or infinite (a NaN would rank first in Neo4j)."""
    scores = np.asarray(scores, dtype=float)
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise ModelError(f"run {run_id}'s {method} scores of image {image_id} are not finite for {bad} of "
                         f"{scores.size} nuclei (NaN or infinite); nothing was written for that image (images "
                         "explained before it keep their scores). This is a bug in the model or the explainer: "
                         "report it with the run id and image id")
    return scores
