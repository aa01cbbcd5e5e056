"""The paper's Table II: test accuracy (mean +/- std over folds) of each model on each cohort."""

from __future__ import annotations

import time
from typing import Any

from nucleograph.config import Settings
from nucleograph.db.graphdb import GraphDB
from nucleograph.gnn.service import train_cohort
from nucleograph.gnn.train import PAPER_LR, TrainConfig

PAPER_TABLE2 = {  # Sureka et al. 2020, Table II (accuracy)
    "breast": {"rsf": 0.94, "rsf-edge": 0.92, "rsf-attention": 0.90},
    "prostate": {"rsf": 0.97, "rsf-edge": 0.97, "rsf-attention": 0.97},
}


def table2(
    db: GraphDB, settings: Settings, cohorts: list[str], *, models: list[str], folds: int = 5,
    epochs: int = TrainConfig.epochs, seed: int = TrainConfig.seed, lr: float = PAPER_LR, progress: bool = False,
) -> dict[str, Any]:
    """Train every model on every cohort with ``folds``-fold CV; return rows and a Markdown table.

    Parameters
    ----------
    db : GraphDB
        Where the cohorts are stored and the runs are recorded.
    settings : Settings
    cohorts : list of str
    models : list of str
        Names from :data:`nucleograph.gnn.models.MODEL_NAMES`.
    folds, epochs, seed : int
        As :func:`nucleograph.gnn.service.train_cohort` takes them.
    lr : float
        Adam's learning rate: the paper's (:data:`nucleograph.gnn.train.PAPER_LR`), not ``train``'s default.
    progress : bool
        Show progress bars.

    Returns
    -------
    dict
        ``rows`` (one per cohort and model), ``folds``, ``epochs``, ``seconds`` and ``markdown``.
    """
    rows = []
    t0 = time.perf_counter()
    for cohort in cohorts:
        for model in models:
            out = train_cohort(db, settings, cohort, model=model, epochs=epochs, folds=folds, seed=seed, lr=lr,
                               progress=progress)
            m = out["metrics"]
            rows.append({"cohort": cohort, "model": model, "run_id": out["run_id"], "n_parameters": out["n_parameters"],
                         "accuracy": m.get("accuracy"), "accuracy_std": m.get("accuracy_std", 0.0),
                         "roc_auc": m.get("roc_auc"), "seconds": out["seconds"], "n_images": out["n_images"]})
    lines = ["| cohort | model | parameters | accuracy (mean ± std over folds) | ROC AUC | images | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        auc = "" if r["roc_auc"] is None else f"{r['roc_auc']:.3f}"
        lines.append(f"| {r['cohort']} | {r['model']} | {r['n_parameters']:,} | {r['accuracy']:.3f} ± "
                     f"{r['accuracy_std']:.3f} | {auc} | {r['n_images']} | {r['seconds']:.0f} |")
    return {"rows": rows, "folds": folds, "epochs": epochs, "lr": lr, "seconds": round(time.perf_counter() - t0, 1),
            "markdown": "\n".join(lines)}
