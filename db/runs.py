"""Model runs, predictions and per-nucleus explanation scores in Neo4j."""

from __future__ import annotations

import json
import re
from typing import Any

import neo4j

from nucleograph.db import queries as q
from nucleograph.db.graphdb import GraphDB, chunks
from nucleograph.errors import InputError

METHODS = ("attention", "occlusion")
_RUN_ID = re.compile(r"^r[0-9a-f]{6,32}$")


def score_property(run_id: str, method: str, hops: int | None = None) -> str:
    """The Nucleus property holding a run's scores for a method, e.g. ``imp_r1a2b3c4_occlusion_k1``.

    Built only from a generated run id and an allow-listed method, so it is safe as a property key.

    Parameters
    ----------
    run_id : str
        ``r`` and hex digits, as :func:`nucleograph.gnn.service.new_run_id` makes them.
    method : str
        One of :data:`METHODS`.
    hops : int, optional
        Occlusion's neighbourhood size (part of the name for occlusion only).

    Returns
    -------
    str

    Raises
    ------
    InputError
        ``run_id`` is not a run id, or ``method`` is unknown.
    """
    if not _RUN_ID.match(run_id):
        raise InputError(f"{run_id!r} is not a run id (r followed by hex digits, as `nucleograph train` prints)")
    if method not in METHODS:
        raise InputError(f"unknown explanation method {method!r}: choose one of {', '.join(METHODS)}")
    suffix = f"_k{int(hops)}" if method == "occlusion" else ""
    return f"imp_{run_id}_{method}{suffix}"


def explanation_key(run_id: str, method: str, hops: int | None = None) -> str:
    """The key of a run's explanation (the score property without ``imp_``), e.g. ``r1a2b3c4_occlusion_k1``."""
    return score_property(run_id, method, hops).removeprefix("imp_")


def save_run(db: GraphDB, *, run_id: str, cohort: str, props: dict[str, Any]) -> None:
    """Create the ``(:ModelRun)`` of ``cohort`` with ``props`` (nested values stored as JSON text).

    Parameters
    ----------
    db : GraphDB
    run_id : str
    cohort : str
    props : dict
        Flat lists of scalars are stored as lists; other lists and dicts as JSON.
    """
    clean = {k: (json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) and not _is_flat_list(v)
                 else v) for k, v in props.items()}
    db.write(q.CREATE_MODEL_RUN, run_id=run_id, cohort=cohort, props={**clean, "cohort": cohort})


def _is_flat_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float, str, bool)) for x in v)


def save_predictions(db: GraphDB, run_id: str, rows: list[dict[str, Any]]) -> None:
    """Write a run's predictions, ``db.batch_size`` images per transaction.

    Parameters
    ----------
    db : GraphDB
    run_id : str
    rows : list of dict
        ``{"image_id", "props": {"pred", "prob", "probs", "split"}}`` per image.
    """
    db.write_batches(q.WRITE_PREDICTIONS, rows, run_id=run_id)


def get_run(db: GraphDB, run_id: str) -> dict[str, Any] | None:
    """The run's properties, or None when there is no such run.

    Parameters
    ----------
    db : GraphDB
    run_id : str

    Returns
    -------
    dict or None
    """
    row = db.read_one(q.MODEL_RUN, run_id=run_id)
    return dict(row["run"]) if row else None


def list_runs(db: GraphDB, *, cohort: str | None = None) -> list[dict[str, Any]]:
    """Every run's properties (of ``cohort`` only, when given).

    Parameters
    ----------
    db : GraphDB
    cohort : str, optional

    Returns
    -------
    list of dict
    """
    return [dict(r["run"]) for r in db.read(q.MODEL_RUNS, cohort=cohort)]


def predictions(db: GraphDB, run_id: str) -> list[dict[str, Any]]:
    """The run's stored prediction per image.

    Parameters
    ----------
    db : GraphDB
    run_id : str

    Returns
    -------
    list of dict
    """
    return db.read(q.RUN_PREDICTIONS, run_id=run_id)


def save_scores(
    db: GraphDB, *, run_id: str, method: str, hops: int | None, segmentation: str, nids, scores
) -> str:
    """Write one image's per-nucleus scores (one transaction) and record its segmentation under the
    explanation (``EXPLAINS``; the image leaves the explanation's stale list).

    Other runs' and methods' properties are never touched.

    Parameters
    ----------
    db : GraphDB
    run_id, method : str
        Together with ``hops``, they name the score property (:func:`score_property`).
    hops : int or None
        Occlusion's neighbourhood size (ignored for attention).
    segmentation : str
        The key of the scored nuclei's segmentation (``read_graphs``'s ``segmentation``).
    nids : array_like of int
        Nucleus ids, aligned with ``scores``.
    scores : array_like of float

    Returns
    -------
    str
        The property name.
    """
    prop = score_property(run_id, method, hops)
    key = explanation_key(run_id, method, hops)
    rows = [[f"{segmentation}:{int(n)}", float(s)] for n, s in zip(nids, scores, strict=True)]
    db.write(q.MERGE_EXPLANATION, run_id=run_id, key=key, method=method,
             hops=hops if method == "occlusion" else None, property=prop)

    def work(tx: neo4j.ManagedTransaction) -> None:
        for chunk in chunks(rows, db.batch_size):
            tx.run(q.WRITE_SCORES, rows=chunk, property=prop).consume()
        tx.run(q.MARK_EXPLAINED, key=key, segmentation=segmentation).consume()

    db.write_transaction(work)
    return prop


def explained_images(db: GraphDB, key: str, image_ids: list[str]) -> list[str]:
    """The images of ``image_ids`` whose nuclei, in the segmentation the run's cohort uses now, all
    hold finite scores of the explanation ``key``.

    Parameters
    ----------
    db : GraphDB
    key : str
        From :func:`explanation_key`.
    image_ids : list of str

    Returns
    -------
    list of str
    """
    row = db.read_one(q.EXPLAINED_IMAGES, key=key, image_ids=list(image_ids))
    return list(row["image_ids"]) if row else []


def list_explanations(db: GraphDB, *, run_id: str | None = None) -> list[dict[str, Any]]:
    """The explanations written (of ``run_id`` only, when given).

    Parameters
    ----------
    db : GraphDB
    run_id : str, optional

    Returns
    -------
    list of dict
    """
    return db.read(q.EXPLANATIONS, run_id=run_id)


def image_scores(db: GraphDB, cohort: str, image_id: str, prop: str) -> list[dict[str, Any]]:
    """One image's nuclei in ``cohort`` with their score under ``prop`` (null where unscored).

    Parameters
    ----------
    db : GraphDB
    cohort : str
    image_id : str
    prop : str
        A score property from :func:`score_property` (never user text).

    Returns
    -------
    list of dict
    """
    return db.read(q.IMAGE_SCORES, cohort=cohort, image_id=image_id, property=prop)


def export_scores(db: GraphDB, key: str, *, image_ids: list[str] | None) -> list[dict[str, Any]]:
    """The scores of the explanation ``key``, one row per nucleus (of ``image_ids`` only, when given),
    on the nuclei they were computed on; ``current`` is False for images whose nuclei the run's
    cohort has replaced since (stale scores).

    Parameters
    ----------
    db : GraphDB
    key : str
        From :func:`explanation_key`.
    image_ids : list of str or None

    Returns
    -------
    list of dict
    """
    return db.read(q.SCORES_EXPORT, key=key, image_ids=image_ids)


def export_images(db: GraphDB, key: str, *, image_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """The images the explanation ``key`` scored, with the segmentation it scored, the image's size,
    path and label in the run's cohort; ``current`` is False where the cohort has moved to other nuclei.

    Parameters
    ----------
    db : GraphDB
    key : str
        From :func:`explanation_key`.
    image_ids : list of str, optional
        Only these images.

    Returns
    -------
    list of dict
        ``image_id, path, label, width, height, segmentation, detector, feature_names, property, current``.
    """
    return db.read(q.EXPORT_IMAGES, key=key, image_ids=image_ids)


def export_nuclei(db: GraphDB, key: str, segmentation: str) -> list[list[Any]]:
    """The nuclei of ``segmentation`` with the explanation's score, one list per nucleus, by nucleus id.

    Parameters
    ----------
    db : GraphDB
    key : str
        From :func:`explanation_key`.
    segmentation : str
        A segmentation the explanation scored (:func:`export_images`).

    Returns
    -------
    list of list
        ``[nid, centroid_x, centroid_y, type, outline, features, score, source_id]``.
    """
    row = db.read_one(q.EXPORT_NUCLEI, key=key, segmentation=segmentation)
    return list(row["nuclei"]) if row else []
