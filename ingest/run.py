"""Ingesting many images: detection in parallel worker processes, one writer to Neo4j.

Each image is processed independently; a bad file is recorded as failed (in the SQL ingest
records, with its error) and the batch goes on. Nothing is written for an image unless its whole
graph is written (see :func:`nucleograph.db.store.store_image_graph`).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import neo4j
from neo4j import exceptions as neo4j_exc

from nucleograph.config import Settings
from nucleograph.db import records as rec
from nucleograph.db import store
from nucleograph.db.driver import translate_errors
from nucleograph.errors import DatabaseError, NucleographError
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.pipeline import ImageGraph, IngestParams, content_hash, feature_names, process_image

_WORKER_UNET = None


def _die_with_parent(parent: int) -> None:
    """Make a worker end when the ingest process that started it dies, even by kill -9.

    Linux delivers SIGKILL to the worker on its parent's death (prctl PR_SET_PDEATHSIG); elsewhere a
    daemon thread notices that the worker was re-parented. Without this, orphaned workers would
    outlive a killed ingest and keep its output pipes open.
    """
    import ctypes
    import signal
    import threading

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
    import torch

    if parent is not None:
        _die_with_parent(parent)

    torch.set_num_threads(threads)
    global _WORKER_UNET  # one model per worker process, loaded once
    if detector == "unet":
        from nucleograph.ingest.unet import load_unet

        _WORKER_UNET = load_unet()


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _process(record: ImageRecord, params: IngestParams, image_id: str) -> ImageGraph:
    return process_image(record, params, unet=_WORKER_UNET, image_id=image_id)


@dataclass
class IngestSummary:
    cohort: str
    images: int = 0
    ok: int = 0
    failed: int = 0
    stored: int = 0
    replaced: int = 0
    unchanged: int = 0
    linked: int = 0  # already stored with the same parameters, newly added to this cohort
    nuclei: int = 0
    edges: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def ingest_records(
    records: list[ImageRecord], *, cohort: str, params: IngestParams, settings: Settings, driver: neo4j.Driver,
    workers: int = 1, progress: bool = False, task: str | None = None,
) -> IngestSummary:
    """Ingest ``records`` into ``cohort``; return the summary (per-image outcomes are in SQL)."""
    t0 = time.perf_counter()
    engine = rec.open_engine(settings)
    summary = IngestSummary(cohort=cohort, images=len(records))
    names = feature_names()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"ingest {cohort}", unit="image")

    def _store_with_retry(graph: ImageGraph, attempts: int = 3) -> store.StoreResult:
        # The connection can drop during COMMIT (Neo4j killed or restarted): the driver cannot know
        # whether the transaction committed and raises IncompleteCommit instead of retrying. Storing
        # again is safe: it first checks the stored state, so a committed graph is found unchanged.
        def once() -> store.StoreResult:
            return store.store_image_graph(driver, graph, cohort=cohort, params=params, feature_names=names,
                                           database=settings.neo4j_database, task=task)

        for _ in range(attempts - 1):
            with contextlib.suppress(neo4j_exc.IncompleteCommit):
                return once()
        return once()

    def finish(record: ImageRecord, graph: ImageGraph | None, error: Exception | None,
               result: store.StoreResult | None = None) -> None:
        started = time.perf_counter()
        entry = rec.IngestRecord(
            cohort=cohort, path=str(record.path), label=record.label, detector=params.detector,
            params_key=params.key(),
        )
        if error is None and result is None:
            try:
                with translate_errors(settings):
                    result = _store_with_retry(graph)
            except (DatabaseError, neo4j_exc.ServiceUnavailable):
                raise  # the database is gone: stop the batch; nothing partial was written
            except neo4j_exc.ConstraintError:
                # another ingest (a scheduler, a second worker) stored the same image at the same
                # moment; our transaction was rolled back whole, so theirs is the stored graph
                result = store.if_current(driver, graph.image_id, cohort, params.key(),
                                          database=settings.neo4j_database, task=task)
                if result is None:
                    error = DatabaseError(f"{record.path}: stored concurrently with other parameters; ingest again")
            except neo4j_exc.Neo4jError as exc:
                error = DatabaseError(f"{record.path}: Neo4j refused the graph: {exc}")
        if error is None:
            summary.ok += 1
            setattr(summary, result.status, getattr(summary, result.status) + 1)
            summary.nuclei += result.nuclei
            summary.edges += result.edges
            entry.image_id, entry.status = result.image_id, result.status
            entry.nuclei, entry.edges = result.nuclei, result.edges
            timings = graph.timings if graph is not None else {}
            entry.timings = {**{k: round(v, 4) for k, v in timings.items()},
                             "store": round(time.perf_counter() - started, 4)}
            entry.seconds = sum(entry.timings.values())
        else:
            summary.failed += 1
            message = str(error) if isinstance(error, NucleographError) else f"{record.path}: {type(error).__name__}: {error}"
            summary.failures.append({"path": str(record.path), "error": message})
            entry.status, entry.error = "failed", message
        rec.add_record(engine, entry)
        if bar is not None:
            bar.update(1)

    def to_process(record: ImageRecord) -> str | None:
        """The image id when ``record`` needs detection; None when it is finished already (stored
        with the same parameters, or unreadable)."""
        try:
            image_id = content_hash(Path(record.path))
        except NucleographError as exc:
            finish(record, None, exc)
            return None
        with translate_errors(settings):
            result = store.if_current(driver, image_id, cohort, params.key(), database=settings.neo4j_database,
                                      task=task)
        if result is None:
            return image_id
        finish(record, None, None, result)
        return None

    if params.detector == "unet":
        from nucleograph.ingest.unet import load_unet

        load_unet()  # fail fast, before any worker starts, when the weights are missing or broken
    todo = [(r, image_id) for r in records if (image_id := to_process(r)) is not None]
    try:
        if workers <= 1:
            if params.detector == "unet":
                _init_worker(params.detector, torch_threads())
            for record, image_id in todo:
                try:
                    graph, error = _process(record, params, image_id), None
                except Exception as exc:  # recorded per image; the batch goes on
                    graph, error = None, exc
                finish(record, graph, error)
        else:
            ctx = mp.get_context("spawn")  # torch and fork do not mix
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(params.detector, 1, os.getpid())) as pool:
                pending: dict[Future, ImageRecord] = {}
                queue = list(todo)
                while queue or pending:
                    while queue and len(pending) < 2 * workers:  # bounded: graphs wait in memory
                        record, image_id = queue.pop(0)
                        pending[pool.submit(_process, record, params, image_id)] = record
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        record = pending.pop(fut)
                        exc = fut.exception()
                        finish(record, None if exc else fut.result(), exc)
    finally:
        if bar is not None:
            bar.close()
        engine.dispose()
    summary.seconds = round(time.perf_counter() - t0, 2)
    return summary
