"""Writing nucleus graphs to Neo4j and reading them back in bulk.

An image's graph is a segmentation (one per detector and parameters), written in ONE managed write
transaction (batched ``UNWIND`` statements inside it) together with the cohort membership that names
it: it is stored completely or not at all, and a dropped connection is retried by the driver. The
data model is described in :mod:`nucleograph.db.queries`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import neo4j
import numpy as np

from nucleograph.db import queries as q
from nucleograph.db.graphdb import GraphDB, chunks
from nucleograph.errors import InputError


class LabelConflict(InputError):
    """The same bytes reached one cohort under two paths with two labels."""


#: Images per read transaction in :func:`read_graphs` (each returns its whole graph as lists).
READ_BATCH = 16


@dataclass(frozen=True)
class StoreResult:
    """How one image ended in Neo4j (``status``) and how many nuclei and edges it has there."""

    image_id: str
    status: str  # stored | replaced | unchanged | linked | updated
    nuclei: int
    edges: int


def segmentation_key(image_id: str, params_key: str) -> str:
    """The key of an image's segmentation made with the ingest parameters ``params_key``.

    Parameters
    ----------
    image_id : str
        The image's content hash.
    params_key : str
        :meth:`IngestParams.key` (detector, its parameters, edge threshold, pipeline version).

    Returns
    -------
    str
        ``image_id:params_key``; nucleus uids are ``segmentation_key:nid``.
    """
    return f"{image_id}:{params_key}"


@dataclass(frozen=True)
class Membership:
    """What a cohort says about one of its images: its label, patient, path and file metadata."""

    label: str | None
    patient: str | None
    path: str
    meta: str = "{}"

    @classmethod
    def of(cls, record) -> Membership:
        """The membership an :class:`~nucleograph.ingest.cohort.ImageRecord` asks for."""
        meta = {k: (str(v) if v is not None else None) for k, v in (record.meta or {}).items()}
        return cls(record.label, record.patient, str(record.path), json.dumps(meta, sort_keys=True))

    def props(self) -> dict[str, Any]:
        """The IN_COHORT relationship's properties."""
        return {"label": self.label, "patient": self.patient, "path": self.path, "meta": self.meta}


def _clean(value: Any) -> Any:
    """numpy scalars as Python values; NaN/inf (undefined measurements) as null."""
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def nucleus_rows(
    segmentation: str, image_id: str, nuclei: dict[str, np.ndarray], feature_names: list[str]
) -> list[dict[str, Any]]:
    """One property map per nucleus: every measured column plus ``features`` (the model vector).

    Parameters
    ----------
    segmentation : str
        :func:`segmentation_key` of the graph.
    image_id : str
    nuclei : dict of str to ndarray
        Column per measurement (``nucleus_id`` included), one row per nucleus.
    feature_names : list of str
        The columns stacked into ``features`` (non-finite values as 0).

    Returns
    -------
    list of dict
        Rows for ``CREATE_NUCLEI``; NaN/inf measurements become null.
    """
    n = len(nuclei["nucleus_id"])
    columns = {k: np.asarray(v) for k, v in nuclei.items()}
    feats = np.stack([np.asarray(nuclei[c], dtype=np.float64) for c in feature_names], axis=1) if n else np.zeros((0, 0))
    feats = np.nan_to_num(feats, nan=0.0, posinf=0.0, neginf=0.0)
    rows = []
    for i in range(n):
        nid = int(columns["nucleus_id"][i])
        row = {k: _clean(v[i]) for k, v in columns.items() if k != "nucleus_id"}
        row.update(uid=f"{segmentation}:{nid}", segmentation=segmentation, image_id=image_id, nid=nid,
                   features=feats[i].tolist())
        rows.append(row)
    return rows


def edge_rows(segmentation: str, nuclei: dict[str, np.ndarray], edges: dict[str, np.ndarray]) -> list[list[Any]]:
    """``[uid_a, uid_b, weight, dist]`` per unordered pair (src/dst are row indices into ``nuclei``).

    Parameters
    ----------
    segmentation : str
        :func:`segmentation_key` of the graph.
    nuclei : dict of str to ndarray
        Needs ``nucleus_id``.
    edges : dict of str to ndarray
        ``src, dst, weight, dist``.

    Returns
    -------
    list of list
        Rows for ``CREATE_NEAR``.
    """
    ids = np.asarray(nuclei["nucleus_id"])
    src, dst = np.asarray(edges["src"]), np.asarray(edges["dst"])
    w, d = np.asarray(edges["weight"], dtype=float), np.asarray(edges["dist"], dtype=float)
    return [
        [f"{segmentation}:{int(ids[a])}", f"{segmentation}:{int(ids[b])}", float(wi), float(di)]
        for a, b, wi, di in zip(src, dst, w, d, strict=True)
    ]


def segmentation_props(graph, *, params, feature_names: list[str], task: str | None) -> dict[str, Any]:
    """The Segmentation node's properties: ingest parameters (with ``threshold_px``) and counts.

    Parameters
    ----------
    graph : ImageGraph
    params : IngestParams or ImportParams
        Anything with ``detector``, ``key()`` and JSON-able fields (an import names its file and hash).
    feature_names : list of str
    task : str or None

    Returns
    -------
    dict
    """
    return {
        "detector": params.detector,
        "params_key": params.key(),
        "params": json.dumps({**params.__dict__, "threshold_px": graph.threshold_px}, sort_keys=True),
        "n_nuclei": graph.n_nuclei,
        "n_edges": graph.n_edges,
        "feature_names": feature_names,
        "task": task,
        # imported nuclei: how many objects of the file were repaired, clipped or skipped (null: none)
        "import_notes": json.dumps(graph.notes, sort_keys=True) if graph.notes else None,
    }


def image_state(db: GraphDB, image_id: str, cohort: str, segmentation: str) -> dict[str, Any]:
    """What is stored for ``image_id``: the segmentation ``segmentation`` (and its counts) and the
    image's membership of ``cohort`` (the segmentation it names, its label and path).

    Parameters
    ----------
    db : GraphDB
    image_id : str
        The image's content hash.
    cohort : str
    segmentation : str
        :func:`segmentation_key` of the wanted graph.

    Returns
    -------
    dict
        ``has_segmentation, n_nuclei, n_edges, in_cohort, cohort_segmentation, label, path, patient``.
    """
    return db.read(q.IMAGE_STATE, image_id=image_id, cohort=cohort, segmentation=segmentation)[0]


def _known(state: dict[str, Any], member: Membership) -> Membership:
    """``member`` with the stored label and patient where the record does not know them (a file
    ingested alone, without a manifest or class folder, never erases what the cohort knows)."""
    if not state["in_cohort"]:
        return member
    return replace(member, label=member.label if member.label is not None else state["label"],
                   patient=member.patient if member.patient is not None else state["patient"])


def _where(db: GraphDB, record, image_id: str, cohort: str, params_key: str) -> tuple[str, dict, Membership]:
    """The segmentation key, what is stored, and the membership ``record`` asks for (checked)."""
    key = segmentation_key(image_id, params_key)
    state = image_state(db, image_id, cohort, key)
    member = _known(state, Membership.of(record))
    _check_label(state, image_id, cohort, member)
    return key, state, member


def _check_label(state: dict[str, Any], image_id: str, cohort: str, member: Membership) -> None:
    """Refuse a second path to the same bytes in one cohort with another label."""
    if not state["in_cohort"] or state["path"] == member.path or state["label"] == member.label:
        return
    raise LabelConflict(
        f"{member.path}: its bytes (image {image_id[:12]}) are already in cohort {cohort!r} as {state['path']} "
        f"labelled {state['label']!r}, but this row labels them {member.label!r}. One image cannot have two "
        f"labels in a cohort: fix the label of one of the two rows, or remove the duplicate file"
    )


def store_image_graph(
    db: GraphDB, graph, *, cohort: str, params, feature_names: list[str], task: str | None = None,
    batch: int | None = None,
) -> StoreResult:
    """Store ``graph`` (an :class:`nucleograph.ingest.pipeline.ImageGraph`) in ``cohort``, atomically.

    The graph is stored as the image's segmentation for ``params`` (kept beside segmentations made
    with other parameters), and the cohort's membership names it and carries the record's label,
    patient and path. Nothing another cohort uses is changed: a segmentation is deleted only when no
    cohort uses it any more, and the explanations that scored replaced nuclei are marked stale.

    Parameters
    ----------
    db : GraphDB
    graph : ImageGraph
    cohort : str
        Created if missing.
    params : IngestParams
        Their ``key()`` names the segmentation.
    feature_names : list of str
        The columns that make up each nucleus's ``features`` vector.
    task : str, optional
        The cohort's task.
    batch : int, optional
        Rows per ``UNWIND`` statement inside the transaction (default ``db.batch_size``).

    Returns
    -------
    StoreResult
        ``stored`` (new in this cohort), ``replaced`` (the cohort used other nuclei of this image
        before), or, when the segmentation existed, as :func:`if_current` reports it.

    Raises
    ------
    LabelConflict
        The cohort holds these bytes under another path with another label.
    """
    key, state, member = _where(db, graph.record, graph.image_id, cohort, params.key())
    if state["has_segmentation"]:
        return _link(db, state, graph.image_id, cohort, key, member, task=task)
    nodes = nucleus_rows(key, graph.image_id, graph.nuclei, feature_names)
    rels = edge_rows(key, graph.nuclei, graph.edges)
    props = segmentation_props(graph, params=params, feature_names=feature_names, task=task)
    image = {"width": graph.width, "height": graph.height, "mpp": graph.record.mpp}
    size = batch or db.batch_size
    # Cohort first, in its own transaction: MERGE on a constrained key is safe under concurrency.
    db.write(q.MERGE_COHORT, cohort=cohort, task=task)

    def work(tx: neo4j.ManagedTransaction) -> None:
        tx.run(q.MERGE_IMAGE, image_id=graph.image_id, props=image).consume()
        tx.run(q.CREATE_SEGMENTATION, image_id=graph.image_id, segmentation=key, props=props).consume()
        for chunk in chunks(nodes, size):
            tx.run(q.CREATE_NUCLEI, segmentation=key, rows=chunk).consume()
        for chunk in chunks(rels, size):
            tx.run(q.CREATE_NEAR, rows=chunk).consume()
        _set_membership(tx, state, graph.image_id, cohort, key, member)

    db.write_transaction(work)
    old = state["cohort_segmentation"]
    status = "replaced" if old is not None and old != key else "stored"
    return StoreResult(graph.image_id, status, graph.n_nuclei, graph.n_edges)


def _set_membership(tx, state, image_id: str, cohort: str, key: str, member: Membership) -> None:
    """Point the cohort's membership at segmentation ``key``; retire the one it used before."""
    tx.run(q.SET_MEMBERSHIP, image_id=image_id, cohort=cohort, segmentation=key, props=member.props()).consume()
    old = state["cohort_segmentation"]
    if old is not None and old != key:
        tx.run(q.MARK_STALE_FOR_COHORT, image_id=image_id, cohort=cohort, old=old).consume()
        tx.run(q.DELETE_UNUSED_SEGMENTATION, image_id=image_id, old=old).consume()
        tx.run(q.UNSTALE_FOR_COHORT, image_id=image_id, cohort=cohort, segmentation=key).consume()


def if_current(
    db: GraphDB, record, image_id: str, cohort: str, params_key: str, *, task: str | None = None
) -> StoreResult | None:
    """The stored result when ``image_id`` already has a segmentation for ``params_key`` (making it
    the cohort's, with ``record``'s label, patient and path), else None: lets a re-run skip detection.

    Parameters
    ----------
    db : GraphDB
    record : ImageRecord
        The file as this ingest sees it (path, label, patient).
    image_id : str
    cohort : str
    params_key : str
        :meth:`IngestParams.key` of the parameters the caller would store with.
    task : str, optional
        The cohort's task, if the cohort has to be created.

    Returns
    -------
    StoreResult or None

    Raises
    ------
    LabelConflict
        The cohort holds these bytes under another path with another label.
    """
    key, state, member = _where(db, record, image_id, cohort, params_key)
    if not state["has_segmentation"]:
        return None
    return _link(db, state, image_id, cohort, key, member, task=task)


def _link(db: GraphDB, state, image_id, cohort, key, member: Membership, *, task) -> StoreResult:
    """Make the stored segmentation ``key`` the cohort's: ``unchanged``, ``updated`` (new label,
    patient or path), ``linked`` (new in the cohort) or ``replaced`` (the cohort used other nuclei)."""
    n, e = int(state["n_nuclei"] or 0), int(state["n_edges"] or 0)
    if state["in_cohort"] and state["path"] != member.path and Path(state["path"] or "").is_file():
        # a second copy of bytes the cohort holds, with the same label: one image, its first path kept
        member = replace(member, path=state["path"])
    same = (state["label"], state["patient"], state["path"]) == (member.label, member.patient, member.path)
    if state["in_cohort"] and state["cohort_segmentation"] == key and same:
        return StoreResult(image_id, "unchanged", n, e)
    db.write(q.MERGE_COHORT, cohort=cohort, task=task)
    db.write_transaction(lambda tx: _set_membership(tx, state, image_id, cohort, key, member))
    if not state["in_cohort"]:
        status = "linked"
    elif state["cohort_segmentation"] != key:
        status = "replaced"
    else:
        status = "updated"
    return StoreResult(image_id, status, n, e)


# --- reading ----------------------------------------------------------------------------------------
def cohort_images(db: GraphDB, cohort: str) -> list[dict[str, Any]]:
    """The cohort's images (``id, label, patient, path, ...`` per image).

    Parameters
    ----------
    db : GraphDB
    cohort : str

    Returns
    -------
    list of dict
    """
    return db.read(q.COHORT_IMAGES, cohort=cohort)


def cohort_names(db: GraphDB) -> list[str]:
    """The names of every cohort.

    Parameters
    ----------
    db : GraphDB

    Returns
    -------
    list of str
    """
    return [r["name"] for r in db.read(q.COHORT_NAMES)]


def cohort_counts(db: GraphDB, cohort: str) -> dict[str, int]:
    """Images, nuclei and NEAR edges actually stored for ``cohort`` (counted, not read from summaries).

    Parameters
    ----------
    db : GraphDB
    cohort : str

    Returns
    -------
    dict
        ``{"images", "nuclei", "edges"}``.
    """
    r = db.read(q.COHORT_COUNTS_STORED, cohort=cohort)[0]
    return {"images": int(r["images"]), "nuclei": int(r["nuclei"] or 0), "edges": int(r["edges"] or 0)}


def cohort_fingerprint(db: GraphDB, cohort: str) -> str:
    """A hash of the cohort's images, the segmentations it uses, labels and patients: the data version.

    Parameters
    ----------
    db : GraphDB
    cohort : str

    Returns
    -------
    str
        16 hex digits.
    """
    keys = db.read(q.COHORT_FINGERPRINT, cohort=cohort)[0]["keys"]
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def read_graphs(
    db: GraphDB, cohort: str, image_ids: Iterable[str], *, batch: int = READ_BATCH
) -> Iterator[dict[str, Any]]:
    """Yield each image's graph in ``cohort`` (the segmentation the cohort uses, with the cohort's
    label, patient and path) as arrays, one query per batch of images (lists, not a row per edge).

    Parameters
    ----------
    db : GraphDB
    cohort : str
    image_ids : iterable of str
        Images to read; ids not stored are skipped.
    batch : int
        Images per read transaction.

    Yields
    ------
    dict
        ``id, label, patient, path, segmentation, threshold_px, feature_names, nids (N,), features (N, F),
        centroids (N, 2), src, dst (E,) as row indices, weight, dist (E,)``.
    """
    for chunk in chunks(list(image_ids), batch):
        records = db.read_transaction(lambda tx, c=chunk: list(tx.run(q.READ_GRAPHS, cohort=cohort, ids=c)))
        by_id = {r["id"]: r for r in records}
        for image_id in chunk:
            if image_id in by_id:
                yield _as_arrays(by_id[image_id])


def _as_arrays(r) -> dict[str, Any]:
    nids = np.asarray(r["nids"], dtype=np.int64)
    n_feat = len(r["feature_names"] or [])
    features = np.asarray(r["features"], dtype=np.float32).reshape(len(nids), n_feat)
    index = {int(nid): i for i, nid in enumerate(nids)}
    src = np.fromiter((index[int(a)] for a in r["src"]), dtype=np.int64, count=len(r["src"]))
    dst = np.fromiter((index[int(b)] for b in r["dst"]), dtype=np.int64, count=len(r["dst"]))
    return {
        "id": r["id"], "label": r["label"], "patient": r["patient"], "path": r["path"],
        "segmentation": r["segmentation"],
        # no default: image_props stores threshold_px with every Image (since the first ingest), and a
        # fallback here would be a second home of ingest's 100 px default
        "threshold_px": float(json.loads(r["params"])["threshold_px"]),
        "feature_names": list(r["feature_names"] or []), "nids": nids, "features": features,
        "centroids": np.stack([np.asarray(r["xs"], dtype=np.float32), np.asarray(r["ys"], dtype=np.float32)], axis=1)
        if len(nids) else np.zeros((0, 2), np.float32),
        "src": src, "dst": dst,
        "weight": np.asarray(r["weight"], dtype=np.float32), "dist": np.asarray(r["dist"], dtype=np.float32),
    }


def nucleus_areas(db: GraphDB, cohort: str, image_id: str) -> np.ndarray:
    """Areas of an image's nuclei, in nucleus-id order (as :func:`read_graphs` returns them).

    Parameters
    ----------
    db : GraphDB
    cohort : str
    image_id : str

    Returns
    -------
    numpy.ndarray
        ``(N,)`` areas in pixels (0 where unmeasured).
    """
    rows = db.read(q.NUCLEUS_AREAS, cohort=cohort, image_id=image_id)
    return np.asarray([r["area"] or 0.0 for r in rows], dtype=float)
