"""Writing nucleus graphs to Neo4j and reading them back in bulk.

An image's graph is a segmentation (one per detector and parameters), written in ONE managed write
transaction (batched ``UNWIND`` statements inside it) together with the cohort membership that names
it: it is stored completely or not at all, and a dropped connection is retried by the driver.

A graph of more than :data:`ATOMIC_ROWS` nuclei plus edges (a whole slide) would outgrow the server's
transaction memory pool and timeout in one transaction. It goes in over many bounded ones instead: its
segmentation is created with ``status: 'writing'``, the nuclei and then the edges follow a batch per
transaction, and one last transaction marks it ``complete`` and sets the membership. Readers reach
nuclei only through a membership, so they never see it before it is whole. Whatever stops a write half
way (kill -9, a lost server) leaves a 'writing' segmentation that the next store of the image finds,
deletes and writes again (a clean restart, not a resume: a batch is never half committed, but which
batches were is not worth tracking). A segmentation no cohort uses any more is deleted in batches too.
The data model is described in :mod:`nucleograph.db.queries`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from collections.abc import Callable, Iterable, Iterator
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


class GraphBeingWritten(InputError):
    """Another ingest, still alive, is writing the same segmentation (or took over this one)."""


#: Images per read transaction in :func:`read_graphs` (each returns its whole graph as lists).
READ_BATCH = 16
#: Nuclei plus edges up to which an image's graph is written in ONE transaction (every tile-sized
#: image: 1,500 nuclei make ~12k rows); above it, one transaction per batch (see the module's docstring).
#: 50k rows stay well inside a 1 GB heap's transaction memory pool (~700 MB).
ATOMIC_ROWS = 50_000
#: Seconds without a heartbeat (one per committed batch) after which a 'writing' segmentation counts as
#: abandoned, whoever wrote it; one written from this host is abandoned as soon as its process is gone.
STALE_AFTER_S = 600

#: ``progress(stage, done, total)`` after each committed batch: stage ``nuclei``, ``edges`` or ``delete``.
Progress = Callable[[str, int, int], None]
#: ``alive(worker, pid)``: whether the Dask worker ``worker`` (as :attr:`Writer.worker` names it) is still
#: in its cluster with process ``pid``; None when it cannot tell (another cluster's worker).
WorkerCheck = Callable[[str, int], bool | None]


@dataclass(frozen=True)
class Writer:
    """Who writes a large graph, recorded on its 'writing' segmentation so that another ingest can tell when
    the write is abandoned.

    ``host:pid`` alone tells only a process of the same host that the writer is gone. A graph written by a
    Dask task also names its worker (``SCHEDULER-ID/ADDRESS``): the task rerun on another machine after that
    worker was lost asks the scheduler, instead of waiting :data:`STALE_AFTER_S` for the heartbeat to age.

    Parameters
    ----------
    host : str
        ``socket.gethostname()`` of the writing process.
    pid : int
        Its process id.
    worker : str, optional
        The Dask worker it runs in: the scheduler's id and the worker's address.
    """

    host: str
    pid: int
    worker: str | None = None

    @classmethod
    def this_process(cls, worker: str | None = None) -> Writer:
        """The writer this process is (inside the Dask worker ``worker``, if given)."""
        return cls(socket.gethostname(), os.getpid(), worker)

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}" + (f" {self.worker}" if self.worker else "")

    @classmethod
    def parse(cls, text: str | None) -> Writer | None:
        """The writer a segmentation's ``writer`` property names (None when it names none)."""
        head, _, worker = (text or "").partition(" ")
        host, _, pid = head.rpartition(":")
        if not host or not pid.isdigit():
            return None
        return cls(host, int(pid), worker or None)


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
    batch: int | None = None, atomic_rows: int = ATOMIC_ROWS, progress: Progress | None = None,
    writer: Writer | None = None, alive: WorkerCheck | None = None,
) -> StoreResult:
    """Store ``graph`` (an :class:`nucleograph.ingest.pipeline.ImageGraph`) in ``cohort``, atomically.

    The graph is stored as the image's segmentation for ``params`` (kept beside segmentations made
    with other parameters), and the cohort's membership names it and carries the record's label,
    patient and path. Nothing another cohort uses is changed: a segmentation is deleted only when no
    cohort uses it any more, and the explanations that scored replaced nuclei are marked stale.
    A graph of more than ``atomic_rows`` nuclei plus edges is written over many transactions and
    made visible by the last (see the module's docstring); a leftover of an interrupted write of this
    image is deleted first.

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
        Rows per ``UNWIND`` statement (default ``db.batch_size``); in a large graph, rows per transaction.
    atomic_rows : int, optional
        Nuclei plus edges up to which one transaction writes the whole graph.
    progress : callable, optional
        ``progress(stage, done, total)`` after each committed batch of a large graph or a deletion.
    writer : Writer, optional
        Who writes a large graph (default :meth:`Writer.this_process`; a Dask task names its worker).
    alive : callable, optional
        :data:`WorkerCheck`: asks a Dask scheduler whether the worker of an unfinished write still runs.

    Returns
    -------
    StoreResult
        ``stored`` (new in this cohort), ``replaced`` (the cohort used other nuclei of this image
        before), or, when the segmentation existed, as :func:`if_current` reports it.

    Raises
    ------
    LabelConflict
        The cohort holds these bytes under another path with another label.
    GraphBeingWritten
        Another live ingest is writing this segmentation, or took over this write.
    """
    key, state, member = _where(db, graph.record, graph.image_id, cohort, params.key())
    size = batch or db.batch_size
    _clear_unfinished(db, state, key, size=size, progress=progress, alive=alive)
    if state["has_segmentation"]:
        return _link(db, state, graph.image_id, cohort, key, member, task=task)
    props = segmentation_props(graph, params=params, feature_names=feature_names, task=task)
    image = {"width": graph.width, "height": graph.height, "mpp": graph.record.mpp}
    # Cohort first, in its own transaction: MERGE on a constrained key is safe under concurrency.
    db.write(q.MERGE_COHORT, cohort=cohort, task=task)
    if graph.n_nuclei + graph.n_edges > atomic_rows:
        retired = _store_in_batches(db, graph, state, cohort, key, member, props=props, image=image,
                                    feature_names=feature_names, size=size, progress=progress,
                                    writer=str(writer or Writer.this_process()))
    else:
        nodes = nucleus_rows(key, graph.image_id, graph.nuclei, feature_names)
        rels = edge_rows(key, graph.nuclei, graph.edges)

        def work(tx: neo4j.ManagedTransaction) -> list[dict[str, Any]]:
            tx.run(q.MERGE_IMAGE, image_id=graph.image_id, props=image).consume()
            tx.run(q.CREATE_SEGMENTATION, image_id=graph.image_id, segmentation=key,
                   props={**props, "status": "complete"}).consume()
            for chunk in chunks(nodes, size):
                tx.run(q.CREATE_NUCLEI, segmentation=key, rows=chunk).consume()
            for chunk in chunks(rels, size):
                tx.run(q.CREATE_NEAR, rows=chunk).consume()
            return _set_membership(tx, state, graph.image_id, cohort, key, member)

        retired = db.write_transaction(work)
    _delete_retired(db, retired, size=size, progress=progress)
    old = state["cohort_segmentation"]
    status = "replaced" if old is not None and old != key else "stored"
    return StoreResult(graph.image_id, status, graph.n_nuclei, graph.n_edges)


def _rows_slice(columns: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {k: v[start:stop] for k, v in columns.items()}


def _store_in_batches(
    db: GraphDB, graph, state, cohort: str, key: str, member: Membership, *, props: dict, image: dict,
    feature_names: list[str], size: int, progress: Progress | None, writer: str,
) -> list[dict[str, Any]]:
    """Write a large graph a batch per transaction (rows built per batch: memory stays bounded), then
    complete it and set the membership in one transaction; return the segmentations it retired."""

    def start(tx: neo4j.ManagedTransaction) -> None:
        tx.run(q.MERGE_IMAGE, image_id=graph.image_id, props=image).consume()
        tx.run(q.CREATE_SEGMENTATION, image_id=graph.image_id, segmentation=key,
               props={**props, "status": "writing", "writer": writer}).consume()
        _still_writing(tx, key, writer)

    def batch(query: str, **params: Any) -> None:
        def work(tx: neo4j.ManagedTransaction) -> None:
            _still_writing(tx, key, writer)
            tx.run(query, **params).consume()

        db.write_transaction(work)

    db.write_transaction(start)
    n, e = graph.n_nuclei, graph.n_edges
    for lo in range(0, n, size):
        batch(q.CREATE_NUCLEI, segmentation=key,
              rows=nucleus_rows(key, graph.image_id, _rows_slice(graph.nuclei, lo, lo + size), feature_names))
        if progress is not None:
            progress("nuclei", min(lo + size, n), n)
    for lo in range(0, e, size):
        batch(q.CREATE_NEAR, rows=edge_rows(key, graph.nuclei, _rows_slice(graph.edges, lo, lo + size)))
        if progress is not None:
            progress("edges", min(lo + size, e), e)

    def finish(tx: neo4j.ManagedTransaction) -> list[dict[str, Any]]:
        if tx.run(q.COMPLETE_SEGMENTATION, segmentation=key, writer=writer).single()["n"] != 1:
            raise _taken_over(key)
        return _set_membership(tx, state, graph.image_id, cohort, key, member)

    return db.write_transaction(finish)


def _still_writing(tx: neo4j.ManagedTransaction, key: str, writer: str) -> None:
    """Refuse to write on when another ingest has taken this write over (and record a heartbeat)."""
    if tx.run(q.TOUCH_SEGMENTATION, segmentation=key, writer=writer).single()["n"] != 1:
        raise _taken_over(key)


def _taken_over(key: str) -> GraphBeingWritten:
    return GraphBeingWritten(
        f"segmentation {key}: another ingest found this write abandoned (no heartbeat for {STALE_AFTER_S} s, "
        "or its process gone) and deleted it; nothing of it is visible. Ingest the image again")


def _set_membership(tx, state, image_id: str, cohort: str, key: str, member: Membership) -> list[dict[str, Any]]:
    """Point the cohort's membership at segmentation ``key``; retire the one it used before (made
    'deleting' here, deleted in batches by :func:`_delete_retired` once this transaction commits)."""
    tx.run(q.SET_MEMBERSHIP, image_id=image_id, cohort=cohort, segmentation=key, props=member.props()).consume()
    old = state["cohort_segmentation"]
    if old is None or old == key:
        return []
    tx.run(q.MARK_STALE_FOR_COHORT, image_id=image_id, cohort=cohort, old=old).consume()
    retired = [dict(r) for r in tx.run(q.RETIRE_UNUSED_SEGMENTATION, image_id=image_id, old=old)]
    tx.run(q.UNSTALE_FOR_COHORT, image_id=image_id, cohort=cohort, segmentation=key).consume()
    return retired


def _delete_retired(db: GraphDB, retired: list[dict[str, Any]], *, size: int, progress: Progress | None) -> None:
    """Delete 'deleting' segmentations (``{key, n_nuclei}``): ``size`` nuclei (with their edges) per
    transaction, then the segmentation node."""
    for seg in retired:
        done, total = 0, int(seg.get("n_nuclei") or 0)
        while deleted := db.write(q.DELETE_SEGMENTATION_NUCLEI, segmentation=seg["key"], limit=size)[0]["deleted"]:
            done += deleted
            if progress is not None:
                progress("delete", done, max(total, done))
        db.write(q.DELETE_SEGMENTATION_NODE, segmentation=seg["key"])


def _clear_unfinished(
    db: GraphDB, state, key: str, *, size: int, progress: Progress | None, alive: WorkerCheck | None = None,
) -> None:
    """Delete the image's segmentations left 'deleting', and those left 'writing' by a writer that is
    gone; refuse when a live one is writing ``key``."""
    for seg in state["unfinished"] or []:
        if seg["status"] == "writing":
            if not _abandoned(seg, alive):
                if seg["key"] == key:
                    raise GraphBeingWritten(
                        f"segmentation {key} is being written by {seg['writer']} (last batch {seg['idle_s']} s ago): "
                        f"wait for that ingest to finish, or, if it is stuck, stop it (it is abandoned "
                        f"{STALE_AFTER_S} s after its last batch) and ingest again")
                continue  # another live write of this image, with other parameters: not ours to touch
            taken = db.write(q.ABANDON_SEGMENTATION, segmentation=seg["key"], writer=seg["writer"])
            if not taken:
                continue  # its writer finished (or another ingest took it over) meanwhile
            seg = taken[0]
        _delete_retired(db, [seg], size=size, progress=progress)


def _abandoned(seg: dict[str, Any], alive: WorkerCheck | None = None) -> bool:
    """Whether a 'writing' segmentation's writer is gone: it is this process (whose earlier store raised),
    its Dask worker left the cluster (when ``alive`` can ask that cluster's scheduler), its process is gone
    from this host, or it has committed no batch for :data:`STALE_AFTER_S`."""
    if seg["idle_s"] is None or seg["idle_s"] > STALE_AFTER_S:
        return True
    writer = Writer.parse(seg["writer"])
    if writer is None:
        return False
    here = writer.host == socket.gethostname()
    if here and writer.pid == os.getpid():
        return True
    if writer.worker is not None and alive is not None:
        # the scheduler's word next: a worker it dropped has had its tasks rerun elsewhere, even if its
        # process lingers (that process finds the write taken over at its next batch and stops)
        verdict = alive(writer.worker, writer.pid)
        if verdict is not None:
            return not verdict
    if not here:
        return False
    try:
        os.kill(writer.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def if_current(
    db: GraphDB, record, image_id: str, cohort: str, params_key: str, *, task: str | None = None,
    alive: WorkerCheck | None = None,
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
    alive : callable, optional
        :data:`WorkerCheck` for unfinished writes by Dask workers (see :func:`store_image_graph`).

    Returns
    -------
    StoreResult or None

    Raises
    ------
    LabelConflict
        The cohort holds these bytes under another path with another label.
    GraphBeingWritten
        Another live ingest is writing this segmentation (detecting again would be wasted).
    """
    key, state, member = _where(db, record, image_id, cohort, params_key)
    # leftovers of interrupted writes or deletions of this image go first (a 'writing' one with this
    # key is never taken for a stored graph: IMAGE_STATE counts only complete segmentations)
    _clear_unfinished(db, state, key, size=db.batch_size, progress=None, alive=alive)
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
    retired = db.write_transaction(lambda tx: _set_membership(tx, state, image_id, cohort, key, member))
    _delete_retired(db, retired, size=db.batch_size, progress=None)
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
        del records
        for image_id in chunk:
            if image_id in by_id:
                # popped: a record's lists (a slide's: a gigabyte of Python objects) are not kept alive
                # while the caller works on its arrays
                yield _as_arrays(by_id.pop(image_id))


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


def window_nuclei(
    db: GraphDB, cohort: str, image_id: str, x0: float, y0: float, x1: float, y1: float, *,
    score_property: str | None = None,
) -> dict[str, Any] | None:
    """The nuclei whose centroids lie in a window of an image (the segmentation ``cohort`` uses), and
    the edges between them, in one query on the point index.

    Parameters
    ----------
    db : GraphDB
    cohort : str
    image_id : str
    x0, y0, x1, y1 : float
        The window's corners in full-resolution pixels (inclusive; ``x0 <= x1``, ``y0 <= y1``).
    score_property : str, optional
        An explanation's score property (an ``Explanation.property`` read from the store, never user
        text) to return per nucleus.

    Returns
    -------
    dict or None
        None when the image is not in the cohort; else ``segmentation, feature_names, nids (N,),
        centroids (N, 2), features (N, F), scores (N,)`` (NaN where unscored or no property), and
        ``src, dst`` (row indices), ``weight, dist`` for the NEAR edges with both ends inside.

    Raises
    ------
    InputError
        An empty window (a corner beyond the opposite one).

    Examples
    --------
    >>> roi = window_nuclei(db, "ovary", image_id, 0, 0, 2048, 1536)  # doctest: +SKIP
    >>> roi["centroids"].shape  # doctest: +SKIP
    (1874, 2)
    """
    if not (x0 <= x1 and y0 <= y1):
        raise InputError(f"the window ({x0}, {y0})-({x1}, {y1}) is empty: give its top-left corner first "
                         "(x0 <= x1 and y0 <= y1)")
    r = db.read_one(q.WINDOW_NUCLEI, cohort=cohort, image_id=image_id, x0=float(x0), y0=float(y0),
                    x1=float(x1), y1=float(y1), property=score_property)
    if r is None:
        return None
    nuclei = r["nuclei"]
    nids = np.asarray([v[0] for v in nuclei], dtype=np.int64)
    index = {int(nid): i for i, nid in enumerate(nids)}
    n_feat = len(r["feature_names"] or [])
    return {
        "segmentation": r["segmentation"], "feature_names": list(r["feature_names"] or []), "nids": nids,
        "centroids": np.asarray([v[1:3] for v in nuclei], dtype=np.float32).reshape(len(nids), 2),
        "features": np.asarray(r["features"], dtype=np.float32).reshape(len(nids), n_feat),
        "scores": np.asarray([np.nan if v[3] is None else v[3] for v in nuclei], dtype=np.float32),
        "src": np.asarray([index[int(a)] for a in r["src"]], dtype=np.int64),
        "dst": np.asarray([index[int(b)] for b in r["dst"]], dtype=np.int64),
        "weight": np.asarray(r["weight"], dtype=np.float32), "dist": np.asarray(r["dist"], dtype=np.float32),
    }


def nucleus_density(db: GraphDB, cohort: str, image_id: str, *, cell: int) -> dict[str, Any] | None:
    """How many nuclei of an image (the segmentation ``cohort`` uses) lie in each square cell of a grid:
    where its tissue is, read in one query without reading the graph.

    Parameters
    ----------
    db : GraphDB
    cohort : str
    image_id : str
    cell : int
        The cells' side in full-resolution pixels; cell ``(i, j)`` holds ``i * cell <= x < (i + 1) * cell``
        and ``j * cell <= y < (j + 1) * cell``.

    Returns
    -------
    dict or None
        None when the image is not in the cohort; else ``width, height`` (pixels), ``threshold_px`` (the
        segmentation's edge threshold) and ``counts``, an int64 array of shape ``(ceil(height / cell),
        ceil(width / cell))``.

    Raises
    ------
    InputError
        ``cell`` is not a positive integer.
    """
    _check_cell(cell, "the density grid's")
    r = db.read_one(q.NUCLEUS_DENSITY, cohort=cohort, image_id=image_id, cell=int(cell))
    if r is None:
        return None
    return {"width": int(r["width"]), "height": int(r["height"]),
            "threshold_px": float(json.loads(r["params"])["threshold_px"]),
            "counts": _cell_grids(r, cell, counts=np.int64)["counts"]}


def _check_cell(cell, what: str) -> None:
    if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or cell < 1:
        raise InputError(f"{what} cell must be a positive number of pixels, not {cell!r}")


def _cell_grids(r, cell: int, **dtypes) -> dict[str, np.ndarray]:
    """The per-cell lists ``r[key]`` (over non-empty cells ``r["xs"], r["ys"]``) as arrays of shape
    ``(ceil(height / cell), ceil(width / cell))``, one per ``key=dtype``."""
    shape = (-(-int(r["height"]) // cell), -(-int(r["width"]) // cell))
    xs = np.clip(np.asarray(r["xs"], np.int64), 0, shape[1] - 1)
    ys = np.clip(np.asarray(r["ys"], np.int64), 0, shape[0] - 1)
    out = {}
    for key, dtype in dtypes.items():
        grid = np.zeros(shape, dtype)
        np.add.at(grid, (ys, xs), np.asarray(r[key], dtype))
        out[key] = grid
    return out


def nucleus_grid(
    db: GraphDB, cohort: str, image_id: str, *, cell: int, score_property: str | None = None,
) -> dict[str, Any] | None:
    """An image's nuclei (the segmentation ``cohort`` uses) counted per square cell, with the count and
    sum of their scores: the slide viewer's aggregated layer, read once per image in one query.

    Parameters
    ----------
    db : GraphDB
    cohort : str
    image_id : str
    cell : int
        The cells' side in full-resolution pixels, as for :func:`nucleus_density`.
    score_property : str, optional
        An explanation's score property (read from the store, never user text).

    Returns
    -------
    dict or None
        None when the image is not in the cohort; else ``width, height, path, n_nuclei, cell`` and three
        arrays of shape ``(ceil(height / cell), ceil(width / cell))``: ``counts`` (int64), ``scored``
        (int64, nuclei with a score) and ``totals`` (float64, the sum of their scores).

    Raises
    ------
    InputError
        ``cell`` is not a positive integer.
    """
    _check_cell(cell, "the nucleus grid's")
    r = db.read_one(q.NUCLEUS_GRID, cohort=cohort, image_id=image_id, cell=int(cell), property=score_property)
    if r is None:
        return None
    return {"width": int(r["width"]), "height": int(r["height"]), "path": r["path"], "n_nuclei": r["n_nuclei"],
            "cell": int(cell), **_cell_grids(r, cell, counts=np.int64, scored=np.int64, totals=np.float64)}


def score_scale(db: GraphDB, cohort: str, image_id: str, score_property: str) -> float | None:
    """The 99th percentile of ``|score|`` over an image's nuclei (its maximum if that is 0), or None
    when none is scored: one scale for every viewport of a slide, as ``nucleograph render`` scales one
    image (:func:`nucleograph.gnn.render.relative_importance`)."""
    r = db.read_one(q.SCORE_SCALE, cohort=cohort, image_id=image_id, property=score_property)
    if r is None or not r["scored"]:
        return None
    p99, top = float(r["p99"] or 0.0), float(r["top"] or 0.0)
    return p99 if p99 > 0 else (top if top > 0 else None)


def score_quantiles(db: GraphDB, cohort: str, image_id: str, score_property: str, *,
                    steps: int = 1000) -> np.ndarray | None:
    """``steps + 1`` evenly spaced order statistics of an image's scores, lowest first, or None when none
    is scored: one rank scale for every viewport of a slide (a score's rank is where it falls among
    them, as :func:`nucleograph.gnn.render.rank_importance` ranks one image's scores)."""
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    r = db.read_one(q.SCORE_QUANTILES, cohort=cohort, image_id=image_id, property=score_property, q=int(steps))
    if r is None or not r["scored"]:
        return None
    return np.asarray(r["quantiles"], dtype=float)


def viewport_nuclei(
    db: GraphDB, cohort: str, image_id: str, x0: float, y0: float, x1: float, y1: float, *,
    score_property: str | None = None, limit: int,
) -> dict[str, np.ndarray]:
    """At most ``limit`` nuclei whose centroids lie in a viewport of an image, from the point index,
    without their features or edges (what the slide viewer draws).

    Parameters
    ----------
    db : GraphDB
    cohort : str
    image_id : str
    x0, y0, x1, y1 : float
        The viewport's corners in full-resolution pixels (inclusive).
    score_property : str, optional
        An explanation's score property (read from the store, never user text).
    limit : int
        The most nuclei returned; ask for one more than you draw to know whether the viewport held more.

    Returns
    -------
    dict
        ``nid`` (int64), ``x``, ``y``, ``area``, ``score`` (float64; NaN where missing), all ``(N,)``
        with ``N <= limit``; empty when the image is not in the cohort.

    Raises
    ------
    InputError
        An empty viewport or a ``limit`` below 1.
    """
    if not (x0 <= x1 and y0 <= y1):
        raise InputError(f"the viewport ({x0}, {y0})-({x1}, {y1}) is empty: give its top-left corner first "
                         "(x0 <= x1 and y0 <= y1)")
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise InputError(f"the viewport's nucleus limit must be a positive integer, not {limit!r}")
    r = db.read_one(q.VIEWPORT_NUCLEI, cohort=cohort, image_id=image_id, x0=float(x0), y0=float(y0),
                    x1=float(x1), y1=float(y1), property=score_property, limit=int(limit))
    rows = r["nuclei"] if r is not None else []
    table = np.asarray([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64).reshape(-1, 5)
    return {"nid": table[:, 0].astype(np.int64), "x": table[:, 1], "y": table[:, 2], "area": table[:, 3],
            "score": table[:, 4]}
