"""Writing nucleus graphs to Neo4j and reading them back in bulk.

An image is written in ONE managed write transaction (batched ``UNWIND`` statements inside it):
it is stored completely or not at all, and a dropped connection is retried by the driver.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import neo4j
import numpy as np

from nucleograph.db import queries as q
from nucleograph.db.graphdb import GraphDB, chunks

#: Images per read transaction in :func:`read_graphs` (each returns its whole graph as lists).
READ_BATCH = 16


@dataclass(frozen=True)
class StoreResult:
    """How one image ended in Neo4j (``status``) and how many nuclei and edges it has there."""

    image_id: str
    status: str  # stored | replaced | unchanged | linked
    nuclei: int
    edges: int


def _clean(value: Any) -> Any:
    """numpy scalars as Python values; NaN/inf (undefined measurements) as null."""
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def nucleus_rows(image_id: str, nuclei: dict[str, np.ndarray], feature_names: list[str]) -> list[dict[str, Any]]:
    """One property map per nucleus: every measured column plus ``features`` (the model vector).

    Parameters
    ----------
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
        row.update(uid=f"{image_id}:{nid}", image_id=image_id, nid=nid, features=feats[i].tolist())
        rows.append(row)
    return rows


def edge_rows(image_id: str, nuclei: dict[str, np.ndarray], edges: dict[str, np.ndarray]) -> list[list[Any]]:
    """``[uid_a, uid_b, weight, dist]`` per unordered pair (src/dst are row indices into ``nuclei``).

    Parameters
    ----------
    image_id : str
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
        [f"{image_id}:{int(ids[a])}", f"{image_id}:{int(ids[b])}", float(wi), float(di)]
        for a, b, wi, di in zip(src, dst, w, d, strict=True)
    ]


def image_props(graph, *, params, feature_names: list[str], task: str | None) -> dict[str, Any]:
    """The Image node's properties: source, size, ingest parameters (with ``threshold_px``) and counts.

    Parameters
    ----------
    graph : ImageGraph
    params : IngestParams
    feature_names : list of str
    task : str or None

    Returns
    -------
    dict
    """
    record = graph.record
    meta = {k: (str(v) if v is not None else None) for k, v in (record.meta or {}).items()}
    return {
        "path": str(record.path),
        "label": record.label,
        "patient": record.patient,
        "mpp": record.mpp,
        "width": graph.width,
        "height": graph.height,
        "detector": params.detector,
        "params_key": params.key(),
        "params": json.dumps({**params.__dict__, "threshold_px": graph.threshold_px}, sort_keys=True),
        "n_nuclei": graph.n_nuclei,
        "n_edges": graph.n_edges,
        "feature_names": feature_names,
        "meta": json.dumps(meta, sort_keys=True),
        "task": task,
    }


def image_state(db: GraphDB, image_id: str, cohort: str) -> dict[str, Any]:
    """What is stored for ``image_id``: its ``params_key`` (None if absent), counts and cohort link.

    Parameters
    ----------
    db : GraphDB
    image_id : str
        The image's content hash.
    cohort : str

    Returns
    -------
    dict
        ``params_key, in_cohort, n_nuclei, n_edges``.
    """
    return db.read(q.IMAGE_STATE, image_id=image_id, cohort=cohort)[0]


def store_image_graph(
    db: GraphDB, graph, *, cohort: str, params, feature_names: list[str], task: str | None = None,
    batch: int | None = None,
) -> StoreResult:
    """Store ``graph`` (an :class:`nucleograph.ingest.pipeline.ImageGraph`) in ``cohort``, atomically.

    Same file and same parameters already stored: nothing changes (``unchanged``, or ``linked`` when
    only the cohort membership was new). Same file with new parameters: the old nuclei are deleted
    and the new ones written in the same transaction (``replaced``).

    Parameters
    ----------
    db : GraphDB
    graph : ImageGraph
    cohort : str
        Created if missing.
    params : IngestParams
        Their ``key()`` decides whether the stored graph is current.
    feature_names : list of str
        The columns that make up each nucleus's ``features`` vector.
    task : str, optional
        The cohort's task.
    batch : int, optional
        Rows per ``UNWIND`` statement inside the transaction (default ``db.batch_size``).

    Returns
    -------
    StoreResult
    """
    state = image_state(db, graph.image_id, cohort)
    current = _if_current(db, state, graph.image_id, cohort, params.key(), task=task)
    if current is not None:
        return current
    replace = state["params_key"] is not None
    nodes = nucleus_rows(graph.image_id, graph.nuclei, feature_names)
    rels = edge_rows(graph.image_id, graph.nuclei, graph.edges)
    props = image_props(graph, params=params, feature_names=feature_names, task=task)
    size = batch or db.batch_size
    # Cohort first, in its own transaction: MERGE on a constrained key is safe under concurrency.
    db.write(q.MERGE_COHORT, cohort=cohort, task=task)

    def work(tx: neo4j.ManagedTransaction) -> None:
        if replace:
            tx.run(q.DELETE_IMAGE_NUCLEI_TX, image_id=graph.image_id).consume()
        tx.run(q.UPSERT_IMAGE, image_id=graph.image_id, props=props, cohort=cohort).consume()
        for chunk in chunks(nodes, size):
            tx.run(q.CREATE_NUCLEI, image_id=graph.image_id, rows=chunk).consume()
        for chunk in chunks(rels, size):
            tx.run(q.CREATE_NEAR, rows=chunk).consume()

    db.write_transaction(work)
    return StoreResult(graph.image_id, "replaced" if replace else "stored", graph.n_nuclei, graph.n_edges)


def if_current(
    db: GraphDB, image_id: str, cohort: str, params_key: str, *, task: str | None = None
) -> StoreResult | None:
    """The stored result when ``image_id`` is already stored with ``params_key`` (linking it to
    ``cohort`` if needed), else None: lets a re-run skip detection for unchanged images.

    Parameters
    ----------
    db : GraphDB
    image_id : str
    cohort : str
    params_key : str
        :meth:`IngestParams.key` of the parameters the caller would store with.
    task : str, optional
        The cohort's task, if the cohort has to be created.

    Returns
    -------
    StoreResult or None
    """
    state = image_state(db, image_id, cohort)
    return _if_current(db, state, image_id, cohort, params_key, task=task)


def _if_current(db: GraphDB, state, image_id, cohort, params_key, *, task) -> StoreResult | None:
    if state["params_key"] != params_key:
        return None
    if not state["in_cohort"]:
        db.write(q.MERGE_COHORT, cohort=cohort, task=task)
        db.write(q.LINK_IMAGE_COHORT, image_id=image_id, cohort=cohort)
        return StoreResult(image_id, "linked", state["n_nuclei"], state["n_edges"])
    return StoreResult(image_id, "unchanged", state["n_nuclei"], state["n_edges"])


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
    """A hash of the cohort's images, their ingest parameters and labels: the data version.

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


def read_graphs(db: GraphDB, image_ids: Iterable[str], *, batch: int = READ_BATCH) -> Iterator[dict[str, Any]]:
    """Yield each image's graph as arrays, one query per batch of images (lists, not a row per edge).

    Parameters
    ----------
    db : GraphDB
    image_ids : iterable of str
        Images to read; ids not stored are skipped.
    batch : int
        Images per read transaction.

    Yields
    ------
    dict
        ``id, label, patient, path, threshold_px, feature_names, nids (N,), features (N, F),
        centroids (N, 2), src, dst (E,) as row indices, weight, dist (E,)``.
    """
    for chunk in chunks(list(image_ids), batch):
        records = db.read_transaction(lambda tx, c=chunk: list(tx.run(q.READ_GRAPHS, ids=c)))
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
        # no default: image_props stores threshold_px with every Image (since the first ingest), and a
        # fallback here would be a second home of ingest's 100 px default
        "threshold_px": float(json.loads(r["params"])["threshold_px"]),
        "feature_names": list(r["feature_names"] or []), "nids": nids, "features": features,
        "centroids": np.stack([np.asarray(r["xs"], dtype=np.float32), np.asarray(r["ys"], dtype=np.float32)], axis=1)
        if len(nids) else np.zeros((0, 2), np.float32),
        "src": src, "dst": dst,
        "weight": np.asarray(r["weight"], dtype=np.float32), "dist": np.asarray(r["dist"], dtype=np.float32),
    }


def nucleus_areas(db: GraphDB, image_id: str) -> np.ndarray:
    """Areas of an image's nuclei, in nucleus-id order (as :func:`read_graphs` returns them).

    Parameters
    ----------
    db : GraphDB
    image_id : str

    Returns
    -------
    numpy.ndarray
        ``(N,)`` areas in pixels (0 where unmeasured).
    """
    rows = db.read(q.NUCLEUS_AREAS, image_id=image_id)
    return np.asarray([r["area"] or 0.0 for r in rows], dtype=float)
