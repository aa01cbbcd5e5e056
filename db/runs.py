"""Model runs, predictions and per-nucleus explanation scores in Neo4j."""

from __future__ import annotations

import json
import re
from typing import Any

import neo4j

from nucleograph.db import queries as q
from nucleograph.db.graphdb import GraphDB, chunks
from nucleograph.errors import InputError

METHODS = ("attention", "occlusion", "gradxinput", "ig", "gnnexplainer", "local", "contribution")
#: What `explain`, `scores`, `render`, `evaluate` and the scheduler's retraining use when no method is
#: given: local contribution, the method that ranks the class-defining structure above stroma (AUROC >= 0.85)
#: with a faithful order (deletion <= 0.5x random order) and no ties, for in-situ and Gleason 4, on 17 of 18
#: runs at lr 0.003 (RSF+Edge on four cohorts, RSF and RSF+Attention on one), where local evidence did on 8
#: of 18 (bench/RESULTS.md, issue 18, stops 33-34); local evidence (`local`, about a ninth of the cost) and
#: occlusion, the seed paper's method, stay one `--method` away.
DEFAULT_METHOD = "contribution"
#: What a nucleus's score means, per method (help texts and pickers; README "Explanations").
METHOD_NOTES = {
    "attention": "the rsf-attention gate of the nucleus, in (0, 1)",
    "occlusion": "drop of the class's score when the nucleus and its k-hop neighbourhood are removed",
    "gradxinput": "gradient x input, a first-order estimate of how much the class's log-odds would fall if "
                  "the nucleus's features went to the cohort mean (signed)",
    "ig": "integrated gradients, the nucleus's share of the class's log-odds over the same graph with every "
          "nucleus at the cohort mean (signed; the shares sum to that difference)",
    "gnnexplainer": "GNNExplainer's learnt edge mask averaged over the nucleus's edges, in [0, 1]: high where "
                    "they are needed to keep the class's log-odds",
    "local": "local evidence: the class's log-odds when the model sees only the nucleus and the nuclei linked to "
             "it (above the uniform prior's; signed): what that neighbourhood alone says",
    "contribution": "local contribution: how much the class's log-odds of each neighbourhood the nucleus lies in "
                    "(its own and those of the nuclei linked to it, each seen alone) falls without it, averaged "
                    "(signed): what the nucleus adds to its fields",
}
_RUN_ID = re.compile(r"^r[0-9a-f]{6,32}$")
#: What an occlusion score measures: the drop of the explained class's log-odds (the default; it does
#: not saturate) or of its probability (what every occlusion stored before outputs existed measures).
OUTPUTS = ("logodds", "prob")
OUTPUT_LABELS = {"logodds": "log-odds drop", "prob": "probability drop"}
#: The ``output`` of an occlusion explanation stored before outputs existed (no ``output`` on its node).
LEGACY_OUTPUT = q.LEGACY_OUTPUT


def explanation_title(method: str, hops: int | None = None, output: str | None = None) -> str:
    """How readers name an explanation, e.g. ``"occlusion k=1, log-odds drop"`` or ``"attention"``.

    Parameters
    ----------
    method : str
    hops : int, optional
        Shown as ``k=hops`` when given.
    output : str, optional
        One of :data:`OUTPUTS` (occlusion only); an occlusion without one is a legacy probability drop.

    Returns
    -------
    str
    """
    title = method + (f" k={int(hops)}" if hops is not None else "")
    if method == "occlusion":
        title += ", " + OUTPUT_LABELS.get(output or LEGACY_OUTPUT, str(output))
    return title


def score_property(run_id: str, method: str, hops: int | None = None, *, output: str = "logodds") -> str:
    """The Nucleus property holding a run's scores for a method, e.g. ``imp_r1a2b3c4_occlusion_k1_logodds``.

    Built only from a generated run id and allow-listed names, so it is safe as a property key.
    Occlusion's log-odds drops end in ``_logodds``; its probability drops keep the name that every
    occlusion score had before outputs existed (``imp_<run>_occlusion_k<hops>``), so scores stored by
    older versions keep their meaning and both outputs of one run and hops live side by side.

    Parameters
    ----------
    run_id : str
        ``r`` and hex digits, as :func:`nucleograph.gnn.service.new_run_id` makes them.
    method : str
        One of :data:`METHODS`.
    hops : int, optional
        Occlusion's neighbourhood size (part of the name for occlusion only).
    output : {"logodds", "prob"}
        What the occlusion scores measure (:data:`OUTPUTS`); ignored for the other methods.

    Returns
    -------
    str

    Raises
    ------
    InputError
        ``run_id`` is not a run id, or ``method`` or ``output`` is unknown.
    """
    if not _RUN_ID.match(run_id):
        raise InputError(f"{run_id!r} is not a run id (r followed by hex digits, as `nucleograph train` prints)")
    if method not in METHODS:
        raise InputError(f"unknown explanation method {method!r}: choose one of {', '.join(METHODS)}")
    suffix = ""
    if method == "occlusion":
        if output not in OUTPUTS:
            raise InputError(f"unknown occlusion output {output!r}: choose one of {', '.join(OUTPUTS)}")
        suffix = f"_k{int(hops)}" + ("_logodds" if output == "logodds" else "")
    return f"imp_{run_id}_{method}{suffix}"


def explanation_key(run_id: str, method: str, hops: int | None = None, *, output: str = "logodds") -> str:
    """The key of a run's explanation (the score property without ``imp_``), e.g. ``r1a2b3c4_occlusion_k1_logodds``."""
    return score_property(run_id, method, hops, output=output).removeprefix("imp_")


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
    db: GraphDB, *, run_id: str, method: str, hops: int | None, segmentation: str, nids, scores,
    output: str = "logodds",
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
    output : {"logodds", "prob"}
        What occlusion scores measure (:data:`OUTPUTS`), recorded as the explanation's ``output``;
        ignored (stored as null) for the other methods.

    Returns
    -------
    str
        The property name.
    """
    prop = score_property(run_id, method, hops, output=output)
    key = explanation_key(run_id, method, hops, output=output)
    rows = [[f"{segmentation}:{int(n)}", float(s)] for n, s in zip(nids, scores, strict=True)]
    occ = method == "occlusion"
    db.write(q.MERGE_EXPLANATION, run_id=run_id, key=key, method=method, hops=hops if occ else None,
             output=output if occ else None, property=prop)

    def work(tx: neo4j.ManagedTransaction) -> None:
        for chunk in chunks(rows, db.batch_size):
            tx.run(q.WRITE_SCORES, rows=chunk, property=prop).consume()
        tx.run(q.MARK_EXPLAINED, key=key, segmentation=segmentation).consume()

    db.write_transaction(work)
    return prop


class ScoreWriter:
    """Write one image's per-nucleus scores in several transactions, as a slide's windows are scored.

    Opening records the explanation (as :func:`save_scores`) and takes the image's segmentation off its
    explained list; :meth:`write` writes a window's scores in one transaction (``UNWIND`` batches of
    ``db.batch_size``); :meth:`finish` marks the segmentation explained. A run stopped before
    :meth:`finish` leaves the image unexplained, so the next ``explain`` scores it again.

    Parameters
    ----------
    db : GraphDB
    run_id, method, hops, segmentation, output
        As for :func:`save_scores`.

    Examples
    --------
    >>> writer = ScoreWriter(db, run_id=run, method="occlusion", hops=1, segmentation=seg)  # doctest: +SKIP
    >>> for nodes, scores in windows:  # doctest: +SKIP
    ...     writer.write(nids[nodes], scores)
    >>> writer.finish()  # doctest: +SKIP
    """

    def __init__(self, db: GraphDB, *, run_id: str, method: str, hops: int | None, segmentation: str,
                 output: str = "logodds") -> None:
        self.db, self.segmentation = db, segmentation
        self.property = score_property(run_id, method, hops, output=output)
        self.key = explanation_key(run_id, method, hops, output=output)
        occ = method == "occlusion"
        db.write(q.MERGE_EXPLANATION, run_id=run_id, key=self.key, method=method, hops=hops if occ else None,
                 output=output if occ else None, property=self.property)
        db.write(q.UNMARK_EXPLAINED, key=self.key, segmentation=segmentation)

    def write(self, nids, scores) -> None:
        """Write the scores of the nuclei ``nids`` (aligned) in one transaction."""
        rows = [[f"{self.segmentation}:{int(n)}", float(v)] for n, v in zip(nids, scores, strict=True)]

        def work(tx: neo4j.ManagedTransaction) -> None:
            for chunk in chunks(rows, self.db.batch_size):
                tx.run(q.WRITE_SCORES, rows=chunk, property=self.property).consume()

        self.db.write_transaction(work)

    def finish(self) -> str:
        """Mark the segmentation explained; returns the property name."""
        self.db.write(q.MARK_EXPLAINED, key=self.key, segmentation=self.segmentation)
        return self.property


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


def save_evaluation(db: GraphDB, key: str, evaluation: str) -> None:
    """Store an evaluation's summary on the explanation ``key`` (``evaluation``, with ``evaluated_at``).

    Parameters
    ----------
    db : GraphDB
    key : str
        From :func:`explanation_key`.
    evaluation : str
        The summary as JSON text (``nucleograph evaluate``).

    Raises
    ------
    InputError
        No explanation ``key`` is stored.
    """
    if not db.write(q.SET_EVALUATION, key=key, evaluation=evaluation):
        raise InputError(f"no explanation {key!r} in Neo4j: `nucleograph explain` writes it")
