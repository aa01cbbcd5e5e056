"""Ingesting many images: detection in parallel worker processes, one writer to Neo4j.

Each image is processed independently; a bad file is recorded as failed (in the SQL ingest
records, with its error) and the batch goes on. Nothing is written for an image unless its whole
graph is written (see :func:`nucleograph.db.store.store_image_graph`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neo4j import exceptions as neo4j_exc

from nucleograph.config import Settings
from nucleograph.db import records as rec
from nucleograph.db import schema, store
from nucleograph.db.driver import translate_errors
from nucleograph.db.graphdb import GraphDB
from nucleograph.db.store import LabelConflict
from nucleograph.errors import DatabaseError, InputError, NucleographError
from nucleograph.ingest.cohort import ImageRecord, is_segmentation_file
from nucleograph.ingest.importers import ImportParams, find_nuclei_file
from nucleograph.ingest.pipeline import ImageGraph, IngestParams, content_hash, feature_names, process_image
from nucleograph.ingest.polygons import SegmentationParams
from nucleograph.progress import progress as progress_bar

_WORKER_UNET = None  # the U-Net of this worker process, loaded once by _init_worker


def _die_with_parent(parent: int) -> None:
    """Make a worker end when the ingest process that started it dies, even by kill -9.

    Linux delivers SIGKILL to the worker on its parent's death (prctl PR_SET_PDEATHSIG); elsewhere a
    daemon thread notices that the worker was re-parented. Without this, orphaned workers would
    outlive a killed ingest and keep its output pipes open.
    """
    with contextlib.suppress(OSError):  # not Linux: the watchdog below covers it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watchdog() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def _init_worker(detector: str, threads: int, parent: int | None = None) -> None:
    # torch and the U-Net (which imports torch) load here, not at the top: the ingest CLI and the
    # scheduler import this module, and a watershed ingest in one process never needs them
    import torch

    if parent is not None:
        _die_with_parent(parent)

    torch.set_num_threads(threads)
    global _WORKER_UNET
    if detector == "unet":
        from nucleograph.ingest.unet import load_unet

        _WORKER_UNET = load_unet()


def torch_threads() -> int:
    """The number of threads torch uses in this process (imports torch on first use).

    Returns
    -------
    int
    """
    import torch

    return torch.get_num_threads()


def _process(record: ImageRecord, params: IngestParams | ImportParams, image_id: str) -> ImageGraph:
    return process_image(record, params, unet=_WORKER_UNET, image_id=image_id)


@dataclass
class IngestSummary:
    """What one :func:`ingest_records` call did, in image counts (per-image outcomes are in SQL).

    Every image ends ``ok`` (then exactly one of ``stored``, ``replaced``, ``unchanged``, ``linked``
    or ``updated``, as :class:`nucleograph.db.store.StoreResult` reports it) or ``failed`` (with an entry
    in ``failures``). ``nuclei`` and ``edges`` count the ok images' graphs. An ok image without a
    single nucleus (blank glass, an all-white or all-black file) is stored with 0 nuclei, and also
    counted in ``no_nuclei`` with its path in ``no_nuclei_paths``, so that nobody mistakes it for data.
    """

    cohort: str
    images: int = 0
    ok: int = 0
    failed: int = 0
    stored: int = 0
    replaced: int = 0
    unchanged: int = 0
    linked: int = 0  # already stored with the same parameters, newly added to this cohort
    updated: int = 0  # in this cohort with these nuclei already; its label, patient or path changed
    nuclei: int = 0
    edges: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    no_nuclei: int = 0  # ok images stored with 0 nuclei (training and explanations skip them)
    no_nuclei_paths: list[str] = field(default_factory=list)  # their files
    # images whose nuclei came from a file in which objects were repaired, clipped or skipped:
    # {"path", "nuclei" (the file), and a count per reason, as ingest.importers.describe_notes names them}
    import_notes: list[dict[str, Any]] = field(default_factory=list)

    def count_ok(self, result: store.StoreResult, path: str) -> None:
        """Count the image at ``path`` whose graph is in Neo4j, by how it got there (``result.status``)."""
        self.ok += 1
        match result.status:
            case "stored":
                self.stored += 1
            case "replaced":
                self.replaced += 1
            case "unchanged":
                self.unchanged += 1
            case "linked":
                self.linked += 1
            case "updated":
                self.updated += 1
            case _:
                raise ValueError(
                    f"unknown store status {result.status!r}; expected stored, replaced, unchanged, linked or updated"
                )
        self.nuclei += result.nuclei
        self.edges += result.edges
        if result.nuclei == 0:
            self.no_nuclei += 1
            self.no_nuclei_paths.append(path)

    def count_failed(self, path: str, message: str) -> None:
        """Count an image that was not stored, with the error shown to the user."""
        self.failed += 1
        self.failures.append({"path": path, "error": message})

    def as_dict(self) -> dict[str, Any]:
        """The summary as the ``--json`` output prints it."""
        return dict(self.__dict__)


def _failure_message(record: ImageRecord, error: Exception) -> str:
    # our own errors already name the file and the fix; anything else gets the path and its type
    if isinstance(error, NucleographError):
        return str(error)
    return f"{record.path}: {type(error).__name__}: {error}"


class _BatchWriter:
    """Where each image of one :func:`ingest_records` call ends: its graph in Neo4j, its record in
    SQL, its counts in the summary and a tick on the progress bar."""

    def __init__(
        self, *, cohort: str, params: IngestParams, settings: Settings, db: GraphDB, task: str | None,
        engine, summary: IngestSummary, bar=None,
    ):
        self.cohort, self.params, self.settings, self.db, self.task = cohort, params, settings, db, task
        self.engine, self.summary, self.bar = engine, summary, bar
        self._params: dict[tuple[str, str], IngestParams | ImportParams] = {}

    def params_for(self, record: ImageRecord, image_id: str) -> IngestParams | ImportParams:
        """How ``record``'s nuclei are made: imported from its segmentation file (manifest ``nuclei``
        column or sidecar; the file's hash is part of the key), from the record's path itself when that
        is a segmentation without an image (whose hash is ``image_id``, not read again), else detected
        with the batch's parameters. Raises InputError (the image alone fails) when the named file is
        missing or ambiguous."""
        key = (str(record.path), str((record.meta or {}).get("nuclei")))
        if key not in self._params and is_segmentation_file(record.path):
            self._params[key] = SegmentationParams.for_record(self.params, record, sha=image_id)
        if key not in self._params:
            nuclei = find_nuclei_file(record)
            self._params[key] = self.params if nuclei is None else \
                ImportParams.of(self.params, nuclei, sha=content_hash(nuclei))
        return self._params[key]

    def _known_params(self, record: ImageRecord) -> IngestParams | ImportParams:
        return self._params.get((str(record.path), str((record.meta or {}).get("nuclei"))), self.params)

    def hash_all(self, records: list[ImageRecord]) -> tuple[list[tuple[ImageRecord, str]], list]:
        """Each readable record with its image id, the first row of any bytes first; then the later
        rows with the same bytes and label (ingested once, linked after). Unreadable files, and
        every row of bytes that rows label differently, are finished as failed here."""
        rows: dict[str, list[ImageRecord]] = {}
        for record in records:
            if not Path(record.path).exists():
                self.finish(record, None, InputError(
                    f"{record.path}: not found (a manifest row names it): copy the file there or remove the row"))
                continue
            try:
                rows.setdefault(content_hash(Path(record.path)), []).append(record)
            except NucleographError as exc:
                self.finish(record, None, exc)
        firsts, duplicates = [], []
        for image_id, same in rows.items():
            labels = {r.label for r in same}
            if len(labels) > 1:
                listing = "; ".join(f"{r.path} labelled {r.label!r}" for r in same)
                for r in same:
                    self.finish(r, None, LabelConflict(
                        f"{r.path}: the same image (bytes {image_id[:12]}) appears {len(same)} times with "
                        f"different labels ({listing}). Fix the label of the wrong row, or remove the duplicate "
                        "file; none of these rows was ingested"))
                continue
            firsts.append((same[0], image_id))
            duplicates.extend((r, image_id) for r in same[1:])
        return firsts, duplicates

    def needs_detection(self, record: ImageRecord, image_id: str) -> bool:
        """Whether ``record`` needs detection: False when it is finished already (stored with the
        same parameters: linked to this cohort now; or refused)."""
        try:
            params_key = self.params_for(record, image_id).key()
            with translate_errors(self.settings):
                result = self._if_current(record, image_id, params_key)
        except InputError as exc:  # a label conflict, or a missing or ambiguous nuclei file
            self.finish(record, None, exc)
            return False
        if result is None:
            return True
        self.finish(record, None, None, result)
        return False

    def finish_duplicate(self, record: ImageRecord, image_id: str, first: ImageRecord) -> None:
        """A second row with the same bytes and label: the first row's image, or its failure."""
        if self.needs_detection(record, image_id):
            self.finish(record, None, NucleographError(
                f"{record.path}: the same image as {first.path}, which was not stored (see its error)"))

    def finish(
        self, record: ImageRecord, graph: ImageGraph | None, error: Exception | None,
        result: store.StoreResult | None = None,
    ) -> None:
        """Store ``graph`` (unless ``error`` or a ``result`` already says how the image ended) and
        record the outcome."""
        started = time.perf_counter()
        if error is None and result is None:
            result, error = self._store(record, graph)
        params = self._known_params(record)
        entry = rec.IngestRecord(
            cohort=self.cohort, path=str(record.path), label=record.label, detector=params.detector,
            params_key=params.key(),
        )
        if error is None:
            self.summary.count_ok(result, str(record.path))
            if graph is not None and graph.notes:
                self.summary.import_notes.append({"path": str(record.path), "nuclei": params.nuclei, **graph.notes})
            entry.image_id, entry.status = result.image_id, result.status
            entry.nuclei, entry.edges = result.nuclei, result.edges
            timings = graph.timings if graph is not None else {}
            entry.timings = {**{k: round(v, 4) for k, v in timings.items()},
                             "store": round(time.perf_counter() - started, 4)}
            entry.seconds = sum(entry.timings.values())
        else:
            message = _failure_message(record, error)
            self.summary.count_failed(str(record.path), message)
            entry.status, entry.error = "failed", message
        rec.add_record(self.engine, entry)
        if self.bar is not None:
            self.bar.update(1)

    def _store(self, record: ImageRecord, graph: ImageGraph) -> tuple[store.StoreResult | None, Exception | None]:
        """The stored result, or the error that makes this image (alone) fail."""
        try:
            with translate_errors(self.settings):
                return self._store_with_retry(graph), None
        except (DatabaseError, neo4j_exc.ServiceUnavailable):
            raise  # the database is gone: stop the batch; nothing partial is visible (a large graph's
            # unfinished batches are deleted by the next store of its image)
        except neo4j_exc.ConstraintError:
            # another ingest (a scheduler, a second worker) stored the same image at the same
            # moment; our transaction was rolled back whole, so theirs is the stored graph
            result = self._if_current(record, graph.image_id, self._known_params(record).key())
            if result is None:
                return None, DatabaseError(f"{record.path}: stored concurrently with other parameters; ingest again")
            return result, None
        except neo4j_exc.Neo4jError as exc:
            return None, DatabaseError(f"{record.path}: Neo4j refused the graph: {exc}")
        except (LabelConflict, store.GraphBeingWritten) as exc:
            return None, exc

    def _store_with_retry(self, graph: ImageGraph, attempts: int = 3) -> store.StoreResult:
        # The connection can drop during COMMIT (Neo4j killed or restarted): the driver cannot know
        # whether the transaction committed and raises IncompleteCommit instead of retrying. Storing
        # again is safe: it first checks the stored state, so a committed graph is found unchanged.
        for _ in range(attempts - 1):
            with contextlib.suppress(neo4j_exc.IncompleteCommit):
                return self._store_once(graph)
        return self._store_once(graph)

    def _store_once(self, graph: ImageGraph) -> store.StoreResult:
        # only the features measured on its nuclei (no stain or texture without pixels: absent, not zero)
        try:
            return store.store_image_graph(
                self.db, graph, cohort=self.cohort, params=self._known_params(graph.record),
                feature_names=feature_names(graph.nuclei), task=self.task,
                progress=self._show_store if self.bar is not None else None)
        finally:
            if self.bar is not None:
                self.bar.set_postfix()

    def _show_store(self, stage: str, done: int, total: int) -> None:
        """A slide's graph goes in over minutes, batch by batch: show how far on the image bar."""
        self.bar.set_postfix(writing=f"{stage} {done:,}/{total:,}")
        if done >= total:
            self.bar.refresh()  # each stage's end, even within the bar's quiet interval
        else:
            self.bar.update(0)

    def _if_current(self, record: ImageRecord, image_id: str, params_key: str) -> store.StoreResult | None:
        return store.if_current(self.db, record, image_id, self.cohort, params_key, task=self.task)


def _detect_serially(writer: _BatchWriter, todo: list[tuple[ImageRecord, str]], params: IngestParams) -> None:
    if params.detector == "unet":
        _init_worker(params.detector, torch_threads())
    for record, image_id in todo:
        try:
            graph, error = _process(record, writer.params_for(record, image_id), image_id), None
        except Exception as exc:  # recorded per image; the batch goes on
            graph, error = None, exc
        writer.finish(record, graph, error)


def _detect_in_workers(
    writer: _BatchWriter, todo: list[tuple[ImageRecord, str]], params: IngestParams, workers: int
) -> None:
    ctx = mp.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(params.detector, 1, os.getpid())) as pool:
        pending: dict[Future, ImageRecord] = {}
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < 2 * workers:  # bounded: graphs wait in memory
                record, image_id = queue.pop(0)
                pending[pool.submit(_process, record, writer.params_for(record, image_id), image_id)] = record
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                record = pending.pop(fut)
                exc = fut.exception()
                writer.finish(record, None if exc else fut.result(), exc)


def ingest_records(
    records: list[ImageRecord], *, cohort: str, params: IngestParams, settings: Settings, db: GraphDB,
    workers: int = 1, progress: bool = False, task: str | None = None,
) -> IngestSummary:
    """Ingest ``records`` into ``cohort``; return the summary (per-image outcomes are in SQL).

    Parameters
    ----------
    records : list of ImageRecord
        The images (or slides) to ingest.
    cohort : str
        Cohort to add them to (created if missing).
    params : IngestParams
        Detector, edge threshold and the other options that define each graph.
    settings : Settings
        The SQL records URL, and the Neo4j URI that connection errors name.
    db : GraphDB
        Where the graphs are written (opened and closed by the caller).
    workers : int
        Detection processes; 1 detects in this process.
    progress : bool
        Show progress on standard error: a bar on a terminal, else a line every few seconds.
    task : str, optional
        The cohort's task (e.g. ``breast``), stored with it.

    Returns
    -------
    IngestSummary

    Raises
    ------
    DatabaseError
        Neo4j became unreachable; the images finished before are stored and recorded.
    """
    t0 = time.perf_counter()
    engine = rec.open_engine(settings)
    summary = IngestSummary(cohort=cohort, images=len(records))
    bar = progress_bar(total=len(records), desc=f"ingest {cohort}", unit="image") if progress else None
    writer = _BatchWriter(cohort=cohort, params=params, settings=settings, db=db, task=task, engine=engine,
                          summary=summary, bar=bar)
    try:
        if params.detector == "unet":
            # imported here, not at the top: unet imports torch, which watershed ingests never need
            from nucleograph.ingest.unet import load_unet

            load_unet()  # fail fast, before any worker starts, when the weights are missing or broken
        schema.require_current(db)
        firsts, duplicates = writer.hash_all(records)
        todo = [(r, image_id) for r, image_id in firsts if writer.needs_detection(r, image_id)]
        if workers <= 1:
            _detect_serially(writer, todo, params)
        else:
            _detect_in_workers(writer, todo, params, workers)
        first_of = {image_id: r for r, image_id in firsts}
        for record, image_id in duplicates:
            writer.finish_duplicate(record, image_id, first_of[image_id])
    finally:
        if bar is not None:
            bar.close()
        engine.dispose()
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary
