"""The checkpoint files of a training run (:func:`nucleograph.gnn.train.train_model`).

A run directory holds ``checkpoint.pt``, rewritten after every epoch (model and optimiser state,
history, best state so far, split) so a killed run resumes where it stopped, and ``model.pt``, the
final model. Both carry the run's ``config``: the model and its dimensions, the optimiser settings
and a fingerprint of the labels and split, so a checkpoint is never resumed by another run and
:func:`load_checkpoint` can rebuild the model from the file alone. Files are replaced atomically, so
a crash mid-write leaves the previous epoch's file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from nucleograph.errors import ModelError

from .data import FeatureScaler
from .models import GraphClassifier, SeedEnsemble, build_model

if TYPE_CHECKING:  # for annotations only: train imports this module
    from .train import RunState

CHECKPOINT_NAME = "checkpoint.pt"
MODEL_FILE_NAME = "model.pt"


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename it over ``path``."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def data_fingerprint(labels: np.ndarray, split) -> str:
    """SHA-1 of the labels and the ``(train, val, test)`` indices: the data part of a run's config."""
    h = hashlib.sha1(np.asarray(labels, dtype=np.int64).tobytes())
    for part in split:
        h.update(np.asarray(part, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def save_epoch(path: Path, run: RunState, epoch: int) -> None:
    """Write ``checkpoint.pt``: everything :func:`resume_state` needs to continue after ``epoch``."""
    save_atomic(
        {
            "config": run.config,
            "epoch": epoch,
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.to_dict(),
            "history": run.history,
            "best": run.best,
            "best_state": run.best["state"],
            "split": run.split(),
        },
        path,
    )


def save_model_file(path: Path, run: RunState, *, metrics: dict, best_epoch: int) -> None:
    """Write ``model.pt``: the final model (``run.model``'s current state) with its test metrics."""
    save_atomic(
        {
            "config": run.config,
            "model": run.model.state_dict(),
            "scaler": run.scaler.to_dict(),
            "history": run.history,
            "metrics": metrics,
            "best_epoch": best_epoch,
            "split": run.split(),
        },
        path,
    )


def resume_state(path: Path, config: dict) -> dict:
    """The epoch checkpoint at ``path``, checked to belong to the run identified by ``config``.

    Raises
    ------
    ModelError
        If another model, data or settings wrote it.
    """
    ckpt = torch.load(path, map_location="cpu")
    if ckpt.get("config") != config:
        raise ModelError(
            f"{path} was written by a run with another model, data or settings; "
            "pass resume=False to overwrite it or use another checkpoint_dir"
        )
    return ckpt


def load_checkpoint(path) -> tuple[GraphClassifier, FeatureScaler, dict]:
    """Load a ``model.pt`` or an epoch ``checkpoint.pt`` written by :func:`nucleograph.gnn.train.train_model`.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    model : GraphClassifier
        In eval mode, with the best state when the checkpoint has one.
    scaler : FeatureScaler
    config : dict
        The run's config (:attr:`nucleograph.gnn.train.TrainResult.config`).

    Raises
    ------
    ModelError
        If there is no file at ``path`` or it is not a nucleograph checkpoint.
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
    def build():
        return build_model(config["model_name"], in_feats=config["in_feats"], edge_channels=config["edge_channels"],
                           n_classes=config["n_classes"], **config.get("model_kwargs", {}))

    size = int(config.get("ensemble", 1))
    model = SeedEnsemble([build() for _ in range(size)]) if size > 1 else build()
    state = ckpt.get("best_state") or ckpt["model"]
    model.load_state_dict(state)
    model.eval()
    return model, model.scaler(), config
