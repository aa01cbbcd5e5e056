"""Training, checkpoints and prediction for the graph classifiers.

``train_model`` fits one model with early stopping on the validation loss, writes a checkpoint after
every epoch and resumes from it after a crash; ``kfold`` repeats it over stratified folds. What to
train and how (model, Adam's lr 0.003, 50 epochs, batch size, patience, seed, ...) is one
:class:`TrainConfig`. Everything is seeded (torch, dgl, and a numpy generator per epoch), so a
resumed run gives the same result as an uninterrupted one.

A run's steps, in the order they draw random numbers: :func:`_start_run`, :func:`_resume`, per epoch
:func:`_train_epoch` and :func:`_validate`, then :func:`_finish`. Files: :mod:`nucleograph.gnn.checkpoints`.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import dgl
import numpy as np
import torch
from torch.nn import functional as F

from nucleograph.errors import InputError, ModelError
from nucleograph.progress import progress as progress_bar

from .checkpoints import (
    CHECKPOINT_NAME,
    MODEL_FILE_NAME,
    data_fingerprint,
    resume_state,
    save_atomic,
    save_epoch,
    save_model_file,
)
from .data import FeatureScaler, check_labels, class_targets, graph_dims, stratified_kfold, stratified_split
from .metrics import classification_metrics
from .models import DEFAULT_MODEL, MODEL_NAMES, GraphClassifier, SeedEnsemble, build_model, count_parameters
from .occlusion.reference import without

#: Adam's learning rate in Sureka et al. 2020 (and what ``nucleograph experiment table2`` trains with).
PAPER_LR = 0.01


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how: the settings of one :func:`train_model` run.

    Attributes
    ----------
    model_name : str
        A key of :data:`nucleograph.gnn.models.MODELS`.
    model_kwargs : dict
        Passed to :func:`nucleograph.gnn.models.build_model`.
    epochs : int
        Epochs to run (a resumed run continues up to this many).
    lr, weight_decay : float
        Adam with ``lr``: 0.003 by default, not the paper's 0.01 (:data:`PAPER_LR`), at which the FC head
        of the RSF models dies. On the demo-sized prostate cohort one RSF run of three fell to chance
        (FC2: 1 of 64 units ever on) and the RSF+Edge runs kept 2-14 units; at 0.003 they keep 17-41, and
        the default explainer meets its targets on 17 of 18 runs (bench/RESULTS.md, issue 18, stops 33-34).
        ``nucleograph experiment table2`` trains at the paper's rate.
    batch_size : int
        Graphs per step, shuffled every epoch.
    seed : int
        Seeds the model's initialisation, the batches' order and (without an explicit split) the split.
    patience : int or None
        Stop after this many epochs without a lower validation loss (None: never).
    clip_norm : float or None
        Clip the gradient norm of each step to this (None: off). Without it, lr 0.01 on undegree-
        normalised RSF sums (a nucleus has ~15-20 neighbours) sometimes killed a run in its first
        epochs (a fold stuck at chance with a constant loss of ln 2).
    final_lr_fraction, lr_horizon : float, int
        Cosine decay of the learning rate from ``lr`` to ``lr * final_lr_fraction`` over ``lr_horizon``
        epochs (the paper's ~50), then flat (:meth:`lr_at`). It depends on the epoch number only, so a
        run resumed from a checkpoint, or extended with more epochs, follows the same schedule. 1
        keeps it flat.
    val_fraction, test_fraction : float
        Used without an explicit split: :func:`nucleograph.gnn.data.stratified_split`; :func:`kfold`
        uses ``val_fraction`` for each fold's validation part.
    drop_nodes : float
        Augmentation: at every step each training graph loses a random share, drawn uniformly from
        ``[0, drop_nodes]``, of its nuclei with their edges (:func:`thin_graph`). A model trained so has
        seen thinned graphs, which occlusion and deletion curves show it; 0 (the default) is off.
    ensemble : int
        Members of a seed ensemble (:class:`nucleograph.gnn.models.SeedEnsemble`): this many models trained
        on the same split, member ``m`` seeded by :func:`member_seed` (member 0 by ``seed`` itself, so it is
        the single model of that seed); 1 (the default) trains one model.
    """

    model_name: str = DEFAULT_MODEL
    model_kwargs: dict = field(default_factory=dict)
    epochs: int = 50
    lr: float = 0.003
    batch_size: int = 8
    seed: int = 0
    patience: int | None = 10
    weight_decay: float = 0.0
    clip_norm: float | None = 1.0
    final_lr_fraction: float = 0.05
    lr_horizon: int = 50
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    drop_nodes: float = 0.0
    ensemble: int = 1

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (0-based) on the cosine schedule."""
        phase = min(epoch, self.lr_horizon) / max(1, self.lr_horizon)
        final = self.final_lr_fraction
        return self.lr * (final + (1 - final) * 0.5 * (1 + np.cos(np.pi * phase)))


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`.

    Attributes
    ----------
    model : GraphClassifier
        Best model (lowest validation loss; last epoch when there is no validation set), in eval mode.
    scaler : FeatureScaler
        Fitted on the training graphs; also stored inside ``model``.
    metrics : dict
        Test-set metrics (:func:`nucleograph.gnn.metrics.classification_metrics`); empty without a test set.
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``lr``, ``val_loss``, ``val_accuracy``.
    split : dict
        ``train``, ``val``, ``test`` index arrays into ``graphs``.
    proba : np.ndarray, shape (n_graphs, C)
        Class probabilities of every graph from the returned model.
    predictions : np.ndarray, shape (n_graphs,)
    checkpoint_path : Path or None
        The final ``model.pt`` (loadable with :func:`nucleograph.gnn.checkpoints.load_checkpoint`).
    n_parameters : int
    best_epoch : int
    config : dict
        What identifies the run in its checkpoints (model, dimensions, optimiser settings, data).
    """

    model: GraphClassifier
    scaler: FeatureScaler
    metrics: dict
    history: list
    split: dict
    proba: np.ndarray
    predictions: np.ndarray
    checkpoint_path: Path | None
    n_parameters: int
    best_epoch: int
    config: dict = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy's legacy generator, torch and DGL."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    dgl.seed(seed)


def _resolve_split(
    y: np.ndarray, split, groups, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if split is None:
        split = stratified_split(y, groups, val=cfg.val_fraction, test=cfg.test_fraction, seed=cfg.seed)
    train_idx, val_idx, test_idx = (np.asarray(s, dtype=np.int64).reshape(-1) for s in split)
    if train_idx.size == 0:
        raise InputError("the training split is empty")
    if np.unique(y[train_idx]).size < 2:
        raise InputError("the training split holds only one class; use more images or a different split/seed")
    return train_idx, val_idx, test_idx


def predict_proba(model: GraphClassifier, graphs, *, batch_size: int = 16) -> np.ndarray:
    """Class probabilities ``(len(graphs), C)`` in eval mode (the model's mode is restored after)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for start in range(0, len(graphs), batch_size):
                bg = dgl.batch(list(graphs[start : start + batch_size]))
                out.append(torch.softmax(model(bg).double(), 1).cpu().numpy())
    finally:
        model.train(was_training)
    n_classes = getattr(model, "n_classes", 2)
    return np.concatenate(out, 0) if out else np.zeros((0, n_classes))


#: The TrainConfig fields a run's checkpoints must agree on to resume it (not ``epochs`` or
#: ``patience``: a run may be extended; not the split fractions: ``data`` fingerprints the split).
_IDENTIFYING = ("lr", "clip_norm", "final_lr_fraction", "lr_horizon", "batch_size", "seed", "weight_decay")


def _new_best() -> dict:
    # a plain dict, because checkpoints store it as one
    return {"loss": float("inf"), "state": None, "epoch": -1, "bad": 0, "stopped": False}


@dataclass
class RunState:
    """The state of one training run: what its epoch checkpoint saves and :func:`_resume` restores."""

    cfg: TrainConfig
    config: dict  # the run's identity, stored in its checkpoints
    model: GraphClassifier
    scaler: FeatureScaler
    optimizer: torch.optim.Optimizer
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    history: list = field(default_factory=list)
    best: dict = field(default_factory=_new_best)
    start_epoch: int = 0

    def split(self) -> dict:
        """``train``, ``val``, ``test`` index arrays."""
        return {"train": self.train_idx, "val": self.val_idx, "test": self.test_idx}


def _start_run(graphs, y: np.ndarray, split, cfg: TrainConfig, *, dims: tuple[int, int, int]) -> RunState:
    """Seed, build the model with the training graphs' scaler, and make the optimiser.

    ``dims``: ``(in_feats, edge_channels, n_classes)``.
    """
    in_feats, edge_channels, n_classes = dims
    train_idx, val_idx, test_idx = split
    model_kwargs = dict(cfg.model_kwargs)
    config = {
        "model_name": cfg.model_name,
        "in_feats": in_feats,
        "edge_channels": edge_channels,
        "n_classes": n_classes,
        "model_kwargs": model_kwargs,
        **{key: getattr(cfg, key) for key in _IDENTIFYING},
        "data": data_fingerprint(y, split),
    }
    # the seed comes first: it fixes the model's initial weights
    seed_everything(cfg.seed)
    model = build_model(
        cfg.model_name, in_feats=in_feats, edge_channels=edge_channels, n_classes=n_classes, **model_kwargs
    )
    scaler = FeatureScaler.fit([graphs[i] for i in train_idx])
    model.set_scaler(scaler)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return RunState(cfg, config, model, scaler, optimizer, train_idx, val_idx, test_idx)


def _resume(run: RunState, ckpt_path: Path) -> None:
    """Continue ``run`` from ``ckpt_path`` (written by the same model, data and settings)."""
    ckpt = resume_state(ckpt_path, run.config)
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.history = ckpt["history"]
    run.best = ckpt["best"]
    run.start_epoch = ckpt["epoch"] + 1


def _train_epoch(run: RunState, graphs, y: np.ndarray, epoch: int) -> dict:
    """One pass over the shuffled training graphs; returns the epoch's history record so far."""
    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    lr_now = cfg.lr_at(epoch)
    for group in optimizer.param_groups:
        group["lr"] = lr_now
    # seeded by epoch number, so a resumed run draws what the uninterrupted one would have
    torch.manual_seed(cfg.seed * 100003 + epoch)
    model.train()
    order = np.random.default_rng([cfg.seed, epoch]).permutation(run.train_idx)
    thin_rng = np.random.default_rng([cfg.seed, epoch, 1])
    total, count = 0.0, 0
    for start in range(0, order.size, cfg.batch_size):
        chunk = order[start : start + cfg.batch_size]
        parts = [graphs[i] for i in chunk]
        if cfg.drop_nodes > 0:
            parts = [thin_graph(g, thin_rng.uniform(0.0, cfg.drop_nodes), thin_rng) for g in parts]
        bg = dgl.batch(parts)
        target = torch.from_numpy(y[chunk])
        loss = F.cross_entropy(model(bg), target)
        optimizer.zero_grad()
        loss.backward()
        if cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        total += float(loss) * chunk.size
        count += chunk.size
    return {
        "epoch": epoch,
        "train_loss": total / count,
        "lr": lr_now,
        "val_loss": float("nan"),
        "val_accuracy": float("nan"),
    }


def thin_graph(graph, share: float, rng: np.random.Generator):
    """``graph`` without a random ``share`` of its nuclei and their edges (at least one nucleus is kept).

    Parameters
    ----------
    graph : dgl.DGLGraph
        One image's graph.
    share : float
        Each nucleus is removed with this probability, in ``[0, 1)``.
    rng : numpy.random.Generator

    Returns
    -------
    dgl.DGLGraph
        The graph itself when nothing is removed, else a node subgraph with the same feature schemes.
    """
    n = graph.num_nodes()
    keep = rng.random(n) >= share
    if keep.all() or n == 0:
        return graph
    if not keep.any():
        keep[rng.integers(n)] = True
    return without(graph, np.flatnonzero(~keep))


def _validate(run: RunState, val_graphs, y_val: np.ndarray, record: dict) -> None:
    """Fill ``record``'s validation loss and accuracy; keep the best state and count toward patience."""
    p = predict_proba(run.model, val_graphs)
    record["val_loss"] = float(-np.mean(np.log(np.clip(p[np.arange(y_val.size), y_val], 1e-12, None))))
    record["val_accuracy"] = float(np.mean(p.argmax(1) == y_val))
    best = run.best
    if record["val_loss"] < best["loss"] - 1e-6:
        best.update(
            loss=record["val_loss"], state=copy.deepcopy(run.model.state_dict()), epoch=record["epoch"], bad=0
        )
    else:
        best["bad"] += 1
        if run.cfg.patience is not None and best["bad"] >= run.cfg.patience:
            best["stopped"] = True


def _finish(run: RunState, graphs, y: np.ndarray, ckpt_dir: Path | None) -> TrainResult:
    """Load the best state, predict every graph, score the test split and write ``model.pt``."""
    model, best, history = run.model, run.best, run.history
    if best["state"] is not None:
        model.load_state_dict(best["state"])
        best_epoch = best["epoch"]
    else:
        best_epoch = history[-1]["epoch"] if history else -1
    model.eval()
    proba = predict_proba(model, graphs)
    test_idx = run.test_idx
    metrics = classification_metrics(y[test_idx], proba[test_idx]) if test_idx.size else {}
    model_path = None
    if ckpt_dir:
        model_path = ckpt_dir / MODEL_FILE_NAME
        save_model_file(model_path, run, metrics=metrics, best_epoch=best_epoch)
    return TrainResult(
        model=model,
        scaler=run.scaler,
        metrics=metrics,
        history=history,
        split=run.split(),
        proba=proba,
        predictions=proba.argmax(1),
        checkpoint_path=model_path,
        n_parameters=count_parameters(model),
        best_epoch=best_epoch,
        config=run.config,
    )


def train_model(
    graphs,
    labels,
    config: TrainConfig | None = None,
    *,
    split=None,
    groups=None,
    n_classes: int | None = None,
    checkpoint_dir=None,
    resume: bool = True,
    progress: bool = False,
) -> TrainResult:
    """Train one graph classifier.

    Parameters
    ----------
    graphs : sequence of dgl.DGLGraph
        One graph per image, from :func:`nucleograph.gnn.data.to_dgl` (raw features).
    labels : array_like of int, shape (n,)
        Classes ``0 .. C-1``; at least two must occur.
    config : TrainConfig, optional
        Model and training settings; default ``TrainConfig()`` (RSF, Adam lr 0.003, 50 epochs).
    split : (train, val, test) index arrays, optional
        Explicit split; ``val`` or ``test`` may be empty. Default: ``config``'s fractions, stratified
        by class (and by ``groups`` if given).
    groups : array_like, optional
        A group (patient) per graph: a group's graphs stay in one part of the split.
    n_classes : int, optional
        Default ``max(labels) + 1``.
    checkpoint_dir : path, optional
        ``checkpoint.pt`` is rewritten after every epoch; with ``resume`` a run restarts from it.
        ``model.pt`` holds the final model.
    resume : bool
        Continue from ``checkpoint_dir``'s ``checkpoint.pt`` when there is one.
    progress : bool
        Show a progress bar over epochs.

    Returns
    -------
    TrainResult

    Raises
    ------
    ModelError
        If the model is unknown, or the checkpoint to resume was written by another run.
    InputError
        If graphs, labels or split cannot be trained on (the message names the fix).
    """
    cfg = config or TrainConfig()
    if cfg.model_name not in MODEL_NAMES:
        raise ModelError(f"unknown model {cfg.model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if cfg.ensemble < 1:
        raise InputError(f"an ensemble has at least one member, got {cfg.ensemble}")
    y, n_classes = class_targets(labels, len(graphs), n_classes)
    in_feats, edge_channels = graph_dims(graphs)
    split = _resolve_split(y, split, groups, cfg)
    if cfg.ensemble > 1:
        return _train_ensemble(graphs, y, split, cfg, n_classes=n_classes, checkpoint_dir=checkpoint_dir,
                               resume=resume, progress=progress)
    run = _start_run(graphs, y, split, cfg, dims=(in_feats, edge_channels, n_classes))

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt_path = ckpt_dir / CHECKPOINT_NAME if ckpt_dir else None
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path.exists():
            _resume(run, ckpt_path)

    val_graphs, y_val = [graphs[i] for i in run.val_idx], y[run.val_idx]
    epochs = progress_bar(range(run.start_epoch, cfg.epochs), total=cfg.epochs, initial=run.start_epoch,
                          desc=f"train {cfg.model_name}", unit="epoch", enabled=progress)
    for epoch in epochs:
        if run.best["stopped"]:
            break
        record = _train_epoch(run, graphs, y, epoch)
        if run.val_idx.size:
            _validate(run, val_graphs, y_val, record)
        run.history.append(record)
        if progress:
            epochs.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_accuracy']:.3f}")
        if ckpt_path:
            save_epoch(ckpt_path, run, epoch)
    return _finish(run, graphs, y, ckpt_dir)


def member_seed(seed: int, member: int) -> int:
    """The seed of ensemble member ``member``: ``seed`` itself for member 0, else a number drawn from
    ``(seed, member)`` (so the members of two ensembles with nearby seeds share no initialisation)."""
    if member == 0:
        return seed
    return int(np.random.SeedSequence([seed % 2**32, member]).generate_state(1)[0]) >> 1  # DGL's seed is an int32


def _train_ensemble(graphs, y: np.ndarray, split, cfg: TrainConfig, *, n_classes: int, checkpoint_dir, resume: bool,
                    progress: bool) -> TrainResult:
    """``cfg.ensemble`` members on ``split``, each with its checkpoints in ``checkpoint_dir/member{m}`` (a
    resumed ensemble reuses the finished members), combined into a :class:`SeedEnsemble` saved as
    ``checkpoint_dir/model.pt``."""
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    seeds = [member_seed(cfg.seed, m) for m in range(cfg.ensemble)]
    results = []
    for m, seed in enumerate(seeds):
        member_cfg = replace(cfg, seed=seed, ensemble=1)
        member_dir = None if ckpt_dir is None else ckpt_dir / f"member{m}"
        results.append(train_model(graphs, y, member_cfg, split=split, n_classes=n_classes,
                                   checkpoint_dir=member_dir, resume=resume, progress=progress))
    model = SeedEnsemble([r.model for r in results]).eval()
    proba = predict_proba(model, graphs)
    test_idx = results[0].split["test"]
    metrics = classification_metrics(y[test_idx], proba[test_idx]) if test_idx.size else {}
    config = {**results[0].config, "seed": cfg.seed, "ensemble": cfg.ensemble, "member_seeds": seeds}
    model_path = None
    if ckpt_dir is not None:
        model_path = ckpt_dir / MODEL_FILE_NAME
        save_atomic({"config": config, "model": model.state_dict(), "scaler": results[0].scaler.to_dict(),
                     "history": results[0].history, "metrics": metrics,
                     "member_metrics": [r.metrics for r in results],
                     "best_epoch": results[0].best_epoch, "split": results[0].split}, model_path)
    return TrainResult(model=model, scaler=results[0].scaler, metrics=metrics, history=results[0].history,
                       split=results[0].split, proba=proba, predictions=proba.argmax(1), checkpoint_path=model_path,
                       n_parameters=count_parameters(model), best_epoch=results[0].best_epoch, config=config)


def kfold(
    graphs,
    labels,
    config: TrainConfig | None = None,
    *,
    k: int = 5,
    groups=None,
    checkpoint_dir=None,
    **train_kwargs,
) -> list[TrainResult]:
    """Stratified (and, with ``groups``, patient-grouped) K-fold cross-validation.

    Each fold tests on its held-out part; a validation part of ``config.val_fraction`` is split off
    the rest for early stopping. Checkpoints go to ``checkpoint_dir/fold{i}``.

    Parameters
    ----------
    graphs, labels, config
        As for :func:`train_model`; ``config.seed`` also seeds the folds.
    k : int
        Number of folds.
    groups : array_like, optional
        A group (patient) per graph, kept within one fold.
    checkpoint_dir : path, optional
    **train_kwargs
        Other keywords of :func:`train_model` (``n_classes``, ``resume``, ``progress``).

    Returns
    -------
    list of TrainResult
        One per fold (``metrics`` are that fold's test metrics).
    """
    cfg = config or TrainConfig()
    y = check_labels(labels)
    g = None if groups is None else np.asarray(groups)
    results = []
    for i, (rest, test_idx) in enumerate(stratified_kfold(y, k, g, seed=cfg.seed)):
        tr, va, _ = stratified_split(
            y[rest], None if g is None else g[rest], val=cfg.val_fraction, test=0.0, seed=cfg.seed + i
        )
        split = (rest[tr], rest[va], test_idx)
        fold_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"fold{i}"
        results.append(train_model(graphs, y, cfg, split=split, checkpoint_dir=fold_dir, **train_kwargs))
    return results
