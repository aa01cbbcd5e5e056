"""Training, checkpoints and prediction for the graph classifiers.

``train_model`` fits one model (Adam, lr 0.01, cross-entropy) with early stopping on the validation
loss, writes a checkpoint after every epoch and resumes from it after a crash; ``kfold`` repeats it
over stratified folds. Everything is seeded (torch, dgl, and a numpy generator per epoch), so a
resumed run gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import dgl
import numpy as np
import torch
from torch.nn import functional as F

from nucleograph.errors import InputError, ModelError

from .data import FeatureScaler, _check_labels, stratified_kfold, stratified_split
from .keys import EFEAT, FEAT
from .metrics import classification_metrics
from .models import MODEL_NAMES, GraphClassifier, build_model, count_parameters

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_FILE_NAME = "model.pt"


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
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_accuracy``.
    split : dict
        ``train``, ``val``, ``test`` index arrays into ``graphs``.
    proba : np.ndarray, shape (n_graphs, C)
        Class probabilities of every graph from the returned model.
    predictions : np.ndarray, shape (n_graphs,)
    checkpoint_path : Path or None
        The final ``model.pt`` (loadable with :func:`load_checkpoint`).
    n_parameters : int
    best_epoch : int
    config : dict
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


def _check_graphs(graphs) -> tuple[int, int]:
    if len(graphs) == 0:
        raise InputError("no graphs given: the cohort is empty")
    in_feats = edge_channels = None
    for k, g in enumerate(graphs):
        if g.num_nodes() == 0:
            raise InputError(f"graph {k} has no nuclei; drop images without nuclei before training")
        if FEAT not in g.ndata or EFEAT not in g.edata:
            raise InputError(
                f"graph {k} lacks ndata[{FEAT!r}] or edata[{EFEAT!r}]; build graphs with gnn.data.to_dgl"
            )
        f, e = g.ndata[FEAT].shape[1], (g.edata[EFEAT].shape[1] if g.edata[EFEAT].dim() == 2 else 1)
        if in_feats is None:
            in_feats, edge_channels = f, e
        elif (f, e) != (in_feats, edge_channels):
            raise InputError(
                f"graph {k} has {f} node features and {e} edge channels, graph 0 has {in_feats} and {edge_channels}; "
                "all graphs must share one feature set"
            )
    return in_feats, edge_channels


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


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _fingerprint(labels: np.ndarray, split) -> str:
    h = hashlib.sha1(np.asarray(labels, dtype=np.int64).tobytes())
    for part in split:
        h.update(np.asarray(part, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def load_checkpoint(path) -> tuple[GraphClassifier, FeatureScaler, dict]:
    """Load a ``model.pt`` or an epoch ``checkpoint.pt`` written by :func:`train_model`.

    Returns the model in eval mode (best state when the checkpoint has one), its scaler and the
    training config.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"no checkpoint at {path}; train a model first (gnn.train.train_model)")
    try:
        ckpt = torch.load(path, map_location="cpu")
        config = ckpt["config"]
    except Exception as exc:  # a truncated or foreign file
        raise ModelError(
            f"{path} is not a nucleograph checkpoint ({exc}); retrain or pass the right file"
        ) from exc
    model = build_model(
        config["model_name"],
        in_feats=config["in_feats"],
        edge_channels=config["edge_channels"],
        n_classes=config["n_classes"],
        **config.get("model_kwargs", {}),
    )
    state = ckpt.get("best_state") or ckpt["model"]
    model.load_state_dict(state)
    model.eval()
    return model, model.scaler(), config


def train_model(
    graphs,
    labels,
    *,
    model_name: str,
    epochs: int = 50,
    lr: float = 0.01,
    batch_size: int = 8,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    split=None,
    patience: int | None = 10,
    checkpoint_dir=None,
    resume: bool = True,
    groups=None,
    progress: bool = False,
    n_classes: int | None = None,
    model_kwargs: dict | None = None,
    weight_decay: float = 0.0,
    clip_norm: float | None = 1.0,
    final_lr_fraction: float = 0.05,
    lr_horizon: int = 50,
) -> TrainResult:
    """Train one graph classifier.

    Parameters
    ----------
    graphs : sequence of dgl.DGLGraph
        One graph per image, from :func:`nucleograph.gnn.data.to_dgl` (raw features).
    labels : array_like of int, shape (n,)
        Classes ``0 .. C-1``; at least two must occur.
    model_name : {"rsf", "rsf-edge", "rsf-attention", "mlp"}
    epochs, lr, batch_size, seed, weight_decay
        Adam with ``lr`` (0.01 as in the paper) over shuffled batches of ``batch_size`` graphs.
    clip_norm : float or None
        Clip the gradient norm of each step to this (None: off). Without it, lr 0.01 on undegree-
        normalised RSF sums (a nucleus has ~15-20 neighbours) sometimes killed a run in its first
        epochs (a fold stuck at chance with a constant loss of ln 2).
    final_lr_fraction, lr_horizon : float, int
        Cosine decay of the learning rate from ``lr`` to ``lr * final_lr_fraction`` over ``lr_horizon``
        epochs (the paper's ~50), then flat. It depends on the epoch number only, so a run resumed
        from a checkpoint, or extended with more epochs, follows the same schedule. 1 keeps it flat.
    val_fraction, test_fraction : float
        Used when ``split`` is None: :func:`nucleograph.gnn.data.stratified_split` (by ``groups`` if given).
    split : (train, val, test) index arrays, optional
        Explicit split; ``val`` or ``test`` may be empty.
    patience : int or None
        Stop after this many epochs without a lower validation loss (None: never).
    checkpoint_dir : path, optional
        ``checkpoint.pt`` is rewritten after every epoch; with ``resume`` a run restarts from it.
        ``model.pt`` holds the final model.
    progress : bool
        Show a progress bar over epochs.
    n_classes : int, optional
        Default ``max(labels) + 1``.
    model_kwargs : dict, optional
        Passed to :func:`nucleograph.gnn.models.build_model`.

    Returns
    -------
    TrainResult
    """
    if model_name not in MODEL_NAMES:
        raise ModelError(f"unknown model {model_name!r}; choose one of {', '.join(MODEL_NAMES)}")
    y = _check_labels(labels)
    if len(graphs) != y.size:
        raise InputError(f"{len(graphs)} graphs but {y.size} labels")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InputError("labels must be integers 0 .. C-1; map class names to integers first")
    y = y.astype(np.int64)
    n_classes = n_classes or int(y.max()) + 1
    if y.max() >= n_classes:
        raise InputError(f"label {y.max()} is out of range for n_classes={n_classes}")
    in_feats, edge_channels = _check_graphs(graphs)
    if split is None:
        split = stratified_split(y, groups, val=val_fraction, test=test_fraction, seed=seed)
    train_idx, val_idx, test_idx = (np.asarray(s, dtype=np.int64).reshape(-1) for s in split)
    if train_idx.size == 0:
        raise InputError("the training split is empty")
    if np.unique(y[train_idx]).size < 2:
        raise InputError("the training split holds only one class; use more images or a different split/seed")
    model_kwargs = dict(model_kwargs or {})
    config = {
        "model_name": model_name,
        "in_feats": in_feats,
        "edge_channels": edge_channels,
        "n_classes": n_classes,
        "model_kwargs": model_kwargs,
        "lr": lr,
        "clip_norm": clip_norm,
        "final_lr_fraction": final_lr_fraction,
        "lr_horizon": lr_horizon,
        "batch_size": batch_size,
        "seed": seed,
        "weight_decay": weight_decay,
        "data": _fingerprint(y, (train_idx, val_idx, test_idx)),
    }

    seed_everything(seed)
    model = build_model(
        model_name, in_feats=in_feats, edge_channels=edge_channels, n_classes=n_classes, **model_kwargs
    )
    scaler = FeatureScaler.fit([graphs[i] for i in train_idx])
    model.set_scaler(scaler)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history: list[dict] = []
    best = {"loss": float("inf"), "state": None, "epoch": -1, "bad": 0, "stopped": False}
    start_epoch = 0

    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    ckpt_path = ckpt_dir / CHECKPOINT_NAME if ckpt_dir else None
    if ckpt_dir:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume and ckpt_path.exists():
            ckpt = torch.load(ckpt_path, map_location="cpu")
            if ckpt.get("config") != config:
                raise ModelError(
                    f"{ckpt_path} was written by a run with another model, data or settings; "
                    "pass resume=False to overwrite it or use another checkpoint_dir"
                )
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            history = ckpt["history"]
            best = ckpt["best"]
            start_epoch = ckpt["epoch"] + 1

    val_graphs = [graphs[i] for i in val_idx]
    epoch_iter = range(start_epoch, epochs)
    if progress:
        from tqdm.auto import tqdm

        epoch_iter = tqdm(
            epoch_iter, total=epochs, initial=start_epoch, desc=f"train {model_name}", unit="epoch"
        )
    for epoch in epoch_iter:
        if best["stopped"]:
            break
        phase = min(epoch, lr_horizon) / max(1, lr_horizon)
        lr_now = lr * (final_lr_fraction + (1 - final_lr_fraction) * 0.5 * (1 + np.cos(np.pi * phase)))
        for group in optimizer.param_groups:
            group["lr"] = lr_now
        torch.manual_seed(seed * 100003 + epoch)
        model.train()
        order = np.random.default_rng([seed, epoch]).permutation(train_idx)
        total, count = 0.0, 0
        for start in range(0, order.size, batch_size):
            chunk = order[start : start + batch_size]
            bg = dgl.batch([graphs[i] for i in chunk])
            target = torch.from_numpy(y[chunk])
            loss = F.cross_entropy(model(bg), target)
            optimizer.zero_grad()
            loss.backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            total += float(loss) * chunk.size
            count += chunk.size
        record = {
            "epoch": epoch,
            "train_loss": total / count,
            "lr": lr_now,
            "val_loss": float("nan"),
            "val_accuracy": float("nan"),
        }
        if val_idx.size:
            p = predict_proba(model, val_graphs)
            yv = y[val_idx]
            record["val_loss"] = float(-np.mean(np.log(np.clip(p[np.arange(yv.size), yv], 1e-12, None))))
            record["val_accuracy"] = float(np.mean(p.argmax(1) == yv))
            if record["val_loss"] < best["loss"] - 1e-6:
                best.update(
                    loss=record["val_loss"], state=copy.deepcopy(model.state_dict()), epoch=epoch, bad=0
                )
            else:
                best["bad"] += 1
                if patience is not None and best["bad"] >= patience:
                    best["stopped"] = True
        history.append(record)
        if progress:
            epoch_iter.set_postfix(
                loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_accuracy']:.3f}"
            )
        if ckpt_path:
            _save_atomic(
                {
                    "config": config,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.to_dict(),
                    "history": history,
                    "best": best,
                    "best_state": best["state"],
                    "split": {"train": train_idx, "val": val_idx, "test": test_idx},
                },
                ckpt_path,
            )

    if best["state"] is not None:
        model.load_state_dict(best["state"])
        best_epoch = best["epoch"]
    else:
        best_epoch = history[-1]["epoch"] if history else -1
    model.eval()
    proba = predict_proba(model, graphs)
    metrics = classification_metrics(y[test_idx], proba[test_idx]) if test_idx.size else {}
    model_path = None
    if ckpt_dir:
        model_path = ckpt_dir / MODEL_FILE_NAME
        _save_atomic(
            {
                "config": config,
                "model": model.state_dict(),
                "scaler": scaler.to_dict(),
                "history": history,
                "metrics": metrics,
                "best_epoch": best_epoch,
                "split": {"train": train_idx, "val": val_idx, "test": test_idx},
            },
            model_path,
        )
    return TrainResult(
        model=model,
        scaler=scaler,
        metrics=metrics,
        history=history,
        split={"train": train_idx, "val": val_idx, "test": test_idx},
        proba=proba,
        predictions=proba.argmax(1),
        checkpoint_path=model_path,
        n_parameters=count_parameters(model),
        best_epoch=best_epoch,
        config=config,
    )


def kfold(
    graphs,
    labels,
    *,
    k: int = 5,
    groups=None,
    seed: int = 0,
    val_fraction: float = 0.15,
    checkpoint_dir=None,
    **train_kwargs,
) -> list[TrainResult]:
    """Stratified (and, with ``groups``, patient-grouped) K-fold cross-validation.

    Each fold tests on its held-out part; a validation part of ``val_fraction`` is split off the rest
    for early stopping. Checkpoints go to ``checkpoint_dir/fold{i}``. Other keywords go to
    :func:`train_model`.

    Returns
    -------
    list of TrainResult, one per fold (``metrics`` are that fold's test metrics).
    """
    y = _check_labels(labels)
    g = None if groups is None else np.asarray(groups)
    results = []
    for i, (rest, test_idx) in enumerate(stratified_kfold(y, k, g, seed=seed)):
        tr, va, _ = stratified_split(
            y[rest], None if g is None else g[rest], val=val_fraction, test=0.0, seed=seed + i
        )
        split = (rest[tr], rest[va], test_idx)
        fold_dir = None if checkpoint_dir is None else Path(checkpoint_dir) / f"fold{i}"
        results.append(
            train_model(graphs, y, split=split, seed=seed, checkpoint_dir=fold_dir, **train_kwargs)
        )
    return results
