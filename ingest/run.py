"""Ingesting many images: detection in parallel worker processes, one writer to Neo4j; or, on a Dask
cluster, one task per image (and per slide tile) that builds and stores the image's graph.

Each image is processed independently; a bad file is recorded as failed (in the SQL ingest
records, with its error) and the batch goes on. Nothing is written for an image unless its whole
graph is written (see :func:`nucleograph.db.store.store_image_graph`). On a cluster, a task rerun
after its worker was lost finds the graph stored (then links it), or nothing of it, or a large graph's
unfinished write, which it deletes (the scheduler says that writer is gone) before writing again.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
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
from nucleograph.ingest.pipeline import (
    ImageGraph,
    IngestParams,
    content_hash,
    detect_tile,
    edge_threshold_px,
    feature_names,
    process_image,
    slide_graph,
    slide_tiles,
)
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


@dataclass
class _Storer:
    """Where an image's graph goes in Neo4j, and how a failure there ends: the image alone fails, or (the
    database gone) the batch stops. The ingest process has one; so has each Dask task that stores a graph.

    ``writer`` and ``alive`` name a Dask task's worker on a large graph's 'writing' segmentation and ask the
    scheduler about another worker's (:func:`nucleograph.db.store.store_image_graph`).
    """

    cohort: str
    settings: Settings
    db: GraphDB
    task: str | None
    writer: store.Writer | None = None
    alive: store.WorkerCheck | None = None

    def store(
        self, record: ImageRecord, graph: ImageGraph, params: IngestParams | ImportParams, progress=None
    ) -> tuple[store.StoreResult | None, Exception | None]:
        """The stored result, or the error that makes this image (alone) fail."""
        try:
            with translate_errors(self.settings):
                return self._store_with_retry(graph, params, progress), None
        except (DatabaseError, neo4j_exc.ServiceUnavailable):
            raise  # the database is gone: stop the batch; nothing partial is visible (a large graph's
            # unfinished batches are deleted by the next store of its image)
        except neo4j_exc.ConstraintError:
            # another ingest (a scheduler, a second worker) stored the same image at the same
            # moment; our transaction was rolled back whole, so theirs is the stored graph
            result = self.if_current(record, graph.image_id, params.key())
            if result is None:
                return None, DatabaseError(f"{record.path}: stored concurrently with other parameters; ingest again")
            return result, None
        except neo4j_exc.Neo4jError as exc:
            return None, DatabaseError(f"{record.path}: Neo4j refused the graph: {exc}")
        except (LabelConflict, store.GraphBeingWritten) as exc:
            return None, exc

    def _store_with_retry(self, graph: ImageGraph, params, progress, attempts: int = 3) -> store.StoreResult:
        # The connection can drop during COMMIT (Neo4j killed or restarted): the driver cannot know
        # whether the transaction committed and raises IncompleteCommit instead of retrying. Storing
        # again is safe: it first checks the stored state, so a committed graph is found unchanged.
        for _ in range(attempts - 1):
            with contextlib.suppress(neo4j_exc.IncompleteCommit):
                return self._store_once(graph, params, progress)
        return self._store_once(graph, params, progress)

    def _store_once(self, graph: ImageGraph, params, progress) -> store.StoreResult:
        # only the features measured on its nuclei (no stain or texture without pixels: absent, not zero)
        return store.store_image_graph(
            self.db, graph, cohort=self.cohort, params=params, feature_names=feature_names(graph.nuclei),
            task=self.task, progress=progress, writer=self.writer, alive=self.alive)

    def if_current(self, record: ImageRecord, image_id: str, params_key: str) -> store.StoreResult | None:
        """:func:`nucleograph.db.store.if_current` for this ingest's cohort."""
        return store.if_current(self.db, record, image_id, self.cohort, params_key, task=self.task, alive=self.alive)


class _BatchWriter:
    """Where each image of one :func:`ingest_records` call ends: its graph in Neo4j (stored here, or by the
    Dask task that detected it), its record in SQL, its counts in the summary and a tick on the progress bar."""

    def __init__(
        self, *, storer: _Storer, params: IngestParams, engine, summary: IngestSummary, bar=None,
    ):
        self.storer, self.params, self.engine, self.summary, self.bar = storer, params, engine, summary, bar
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

    def hash_all(
        self, records: list[ImageRecord], hashes: dict[str, str | NucleographError] | None = None,
    ) -> tuple[list[tuple[ImageRecord, str]], list]:
        """Each readable record with its image id, the first row of any bytes first; then the later
        rows with the same bytes and label (ingested once, linked after). Unreadable files, and
        every row of bytes that rows label differently, are finished as failed here. ``hashes`` (by
        path: the id, or the error reading the file) were computed elsewhere, e.g. by Dask workers."""
        rows: dict[str, list[ImageRecord]] = {}
        for record in records:
            if not Path(record.path).exists():
                self.finish(record, None, InputError(
                    f"{record.path}: not found (a manifest row names it): copy the file there or remove the row"))
                continue
            try:
                image_id = content_hash(Path(record.path)) if hashes is None else hashes[str(record.path)]
                if isinstance(image_id, NucleographError):
                    raise image_id
                rows.setdefault(image_id, []).append(record)
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
            with translate_errors(self.storer.settings):
                result = self.storer.if_current(record, image_id, params_key)
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
        self.record(record, _Outcome(
            result=result, error=None if error is None else _failure_message(record, error),
            timings=graph.timings if graph is not None else {}, notes=graph.notes if graph is not None else {},
            store_s=time.perf_counter() - started))

    def record(self, record: ImageRecord, outcome: _Outcome) -> None:
        """Count and record how ``record`` ended (in SQL, the summary and the bar)."""
        params = self._known_params(record)
        entry = rec.IngestRecord(
            cohort=self.storer.cohort, path=str(record.path), label=record.label, detector=params.detector,
            params_key=params.key(),
        )
        if outcome.error is None:
            result = outcome.result
            self.summary.count_ok(result, str(record.path))
            if outcome.notes:
                self.summary.import_notes.append({"path": str(record.path), "nuclei": params.nuclei, **outcome.notes})
            entry.image_id, entry.status = result.image_id, result.status
            entry.nuclei, entry.edges = result.nuclei, result.edges
            entry.timings = {**{k: round(v, 4) for k, v in outcome.timings.items()},
                             "store": round(outcome.store_s, 4)}
            entry.seconds = sum(entry.timings.values())
        else:
            self.summary.count_failed(str(record.path), outcome.error)
            entry.status, entry.error = "failed", outcome.error
        rec.add_record(self.engine, entry)
        if self.bar is not None:
            self.bar.update(1)

    def _store(self, record: ImageRecord, graph: ImageGraph) -> tuple[store.StoreResult | None, Exception | None]:
        try:
            return self.storer.store(record, graph, self._known_params(record),
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


@dataclass
class _Outcome:
    """How one image ended, as a Dask task reports it back: the stored result, or the error message shown
    to the user; the stage timings and import notes of its graph; the seconds its store took."""

    result: store.StoreResult | None = None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    store_s: float = 0.0


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


# --- on a Dask cluster -----------------------------------------------------------------------------
# distributed is imported inside these functions, not at the top: ingests without --cluster (the scheduler's
# jobs, every test) never need it, and it adds most of a second to every start.


def _worker_unet():
    """The U-Net of a Dask worker, loaded once (torch at one thread: one task per worker thread)."""
    import torch

    from nucleograph.ingest.unet import load_unet

    torch.set_num_threads(1)
    return load_unet()


@dataclass(frozen=True)
class _ClusterJob:
    """What every Dask task of one ingest needs besides its image: the name of the workers' resources (the
    Neo4j driver, the U-Net), the scheduler's id (a large graph's writer names its worker with it), the cohort,
    its task and the settings."""

    resources: str
    scheduler: str
    cohort: str
    task: str | None
    settings: Settings

    def objects(self) -> dict[str, Any]:
        from nucleograph import cluster

        return cluster.resources(self.resources)

    def storer(self) -> _Storer:
        from nucleograph import cluster

        return _Storer(self.cohort, self.settings, self.objects()["db"], self.task,
                       writer=store.Writer.this_process(cluster.worker_tag(self.scheduler)),
                       alive=cluster.worker_alive())


def _hash_task(path: str) -> str | NucleographError:
    """A file's :func:`content_hash` on a worker (the error, when it cannot be read, for the ingest to record)."""
    try:
        return content_hash(Path(path))
    except NucleographError as exc:
        return exc


def _image_task(job: _ClusterJob, record: ImageRecord, params: IngestParams | ImportParams, image_id: str) -> _Outcome:
    """One image on a worker: its graph built and stored by this task, in its own transactions."""
    try:
        graph = process_image(record, params, unet=job.objects().get("unet"), image_id=image_id)
    except Exception as exc:  # recorded per image; the batch goes on
        return _Outcome(error=_failure_message(record, exc))
    return _store_task(job, record, params, graph)


def _tile_task(job: _ClusterJob, record: ImageRecord, params: IngestParams, tile: tuple[int, int, int, int]):
    """One tile of a slide on a worker: ``(nuclei or None for glass, seconds, error message or None)``."""
    t = time.perf_counter()
    try:
        part, error = detect_tile(record, params, tile, unet=job.objects().get("unet")), None
    except Exception as exc:  # the slide alone fails (its task reports it), not the batch
        part, error = None, _failure_message(record, exc)
    return part, time.perf_counter() - t, error


def _slide_task(
    job: _ClusterJob, record: ImageRecord, params: IngestParams, image_id: str, tiles: list,
) -> _Outcome:
    """A slide whose tiles other tasks detected: joined, linked and stored by this task."""
    error = next((e for _, _, e in tiles if e is not None), None)
    if error is not None:
        return _Outcome(error=error)
    try:
        graph = slide_graph(record, params, [part for part, _, _ in tiles], image_id=image_id,
                            timings={"detect+features": sum(seconds for _, seconds, _ in tiles)})
    except Exception as exc:  # recorded per image; the batch goes on
        return _Outcome(error=_failure_message(record, exc))
    return _store_task(job, record, params, graph)


def _store_task(job: _ClusterJob, record: ImageRecord, params, graph: ImageGraph) -> _Outcome:
    t = time.perf_counter()
    result, error = job.storer().store(record, graph, params)
    return _Outcome(result=result, error=None if error is None else _failure_message(record, error),
                    timings=graph.timings, notes=graph.notes, store_s=time.perf_counter() - t)


def _cluster_resources(settings: Settings, params: IngestParams) -> dict[str, Any]:
    """What each worker makes once: a driver (the password resolved here, where the local password file
    is) and, for the U-Net detector, the network."""
    factories: dict[str, Any] = {"db": GraphDB.opener(settings)}
    if params.detector == "unet":
        factories["unet"] = _worker_unet
    return factories


def _hash_on_cluster(client, records: list[ImageRecord]) -> dict[str, str | NucleographError]:
    """Every file's content hash, read by the workers (a cohort of slides is terabytes: not one reader)."""
    paths = sorted({str(r.path) for r in records if Path(r.path).exists()})
    futures = client.map(_hash_task, paths, key=[f"hash-file-{uuid.uuid4().hex}" for _ in paths])
    try:
        return dict(zip(paths, client.gather(futures), strict=True))
    finally:
        client.cancel(futures)


def _ingest_on_cluster(writer: _BatchWriter, todo: list[tuple[ImageRecord, str]], params: IngestParams, client) -> None:
    """:func:`_detect_on_cluster` with each worker's driver (and U-Net) open for the duration."""
    from nucleograph import cluster

    if not todo:
        return
    storer = writer.storer
    with cluster.worker_resources(client, _cluster_resources(storer.settings, params)) as name:
        job = _ClusterJob(name, cluster.scheduler_id(client), storer.cohort, storer.task, storer.settings)
        _detect_on_cluster(writer, todo, job, client)


def _detect_on_cluster(writer: _BatchWriter, todo: list[tuple[ImageRecord, str]], job: _ClusterJob, client) -> None:
    """Each image a task that builds and stores its graph; a slide's tiles tasks of their own, joined by the
    task that stores the slide. The tasks of a lost worker are rerun elsewhere by Dask; this process only
    records what each image's task reports."""
    from distributed import KilledWorker, as_completed

    run = uuid.uuid4().hex[:8]
    images: dict[Any, ImageRecord] = {}
    tiles: list[Any] = []
    for n, (record, image_id) in enumerate(todo):
        params = writer.params_for(record, image_id)
        try:
            grid = slide_tiles(record, params)
            if grid is not None:
                edge_threshold_px(record, params)  # a threshold in microns without mpp fails now, not after detection
        except Exception as exc:  # recorded per image; the batch goes on
            writer.finish(record, None, exc)
            continue
        if grid is None:
            images[client.submit(_image_task, job, record, params, image_id, key=f"ingest-image-{run}-{n}")] = record
            continue
        parts = [client.submit(_tile_task, job, record, params, tile, key=f"detect-tile-{run}-{n}-{i}")
                 for i, tile in enumerate(grid)]
        tiles.extend(parts)
        images[client.submit(_slide_task, job, record, params, image_id, parts, key=f"ingest-slide-{run}-{n}")] = record
    done_tiles, n_tiles = 0, len(tiles)
    finished = as_completed([*images, *tiles])
    # from here only `finished` holds a tile until it is done, then only its slide's task: a tile's nuclei
    # leave the cluster's memory once the slide is stored, not at the end of the ingest
    tiles.clear()
    try:
        for future in finished:
            if future not in images:
                done_tiles += 1
                if writer.bar is not None:
                    writer.bar.set_postfix(tiles=f"{done_tiles:,}/{n_tiles:,}")
                    writer.bar.update(0)
                continue
            record = images.pop(future)
            try:
                outcome = future.result()  # a task's DatabaseError (Neo4j gone) stops the batch here
            except KilledWorker as exc:
                outcome = _Outcome(error=f"{record.path}: every worker that ran it died ({exc}); if they ran out of "
                                         "memory, give the workers more (dask worker --memory-limit) or fewer "
                                         "threads each")
            writer.record(record, outcome)
    finally:
        finished.clear()
        client.cancel(list(images))


def ingest_records(
    records: list[ImageRecord], *, cohort: str, params: IngestParams, settings: Settings, db: GraphDB,
    workers: int = 1, progress: bool = False, task: str | None = None, client=None,
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
    client : distributed.Client, optional
        A Dask cluster's client (:func:`nucleograph.cluster.connect`): every image is a task that builds
        and stores its graph, a whole slide's tiles tasks of their own; ``workers`` is then ignored. The
        workers must see the files at the same paths and reach Neo4j at ``settings.neo4j_uri``.

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
    storer = _Storer(cohort, settings, db, task)
    writer = _BatchWriter(storer=storer, params=params, engine=engine, summary=summary, bar=bar)
    try:
        if params.detector == "unet":
            # imported here, not at the top: unet imports torch, which watershed ingests never need
            from nucleograph.ingest.unet import load_unet

            load_unet()  # fail fast, before any worker starts, when the weights are missing or broken
        schema.require_current(db)
        if client is not None:
            from nucleograph import cluster  # see "on a Dask cluster" above

            storer.alive = cluster.worker_alive(client)  # a lost worker's unfinished write, found here
        firsts, duplicates = writer.hash_all(records, None if client is None else _hash_on_cluster(client, records))
        todo = [(r, image_id) for r, image_id in firsts if writer.needs_detection(r, image_id)]
        if client is not None:
            _ingest_on_cluster(writer, todo, params, client)
        elif workers <= 1:
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
