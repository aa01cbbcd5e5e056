"""Watched folders: find the settled images of a folder and ingest each new one exactly once.

A watched folder has one sub-folder per class (label = folder name) and/or a ``manifest.csv`` with
``path,label[,patient,mpp]``, read by :func:`nucleograph.ingest.cohort.read_manifest` exactly as
``nucleograph ingest`` reads it (rows may name files that have not arrived yet); files directly in the
folder get label None. A file is claimed in the ledger (:mod:`nucleograph.db.ledger`) by its content
hash before it is ingested, so it is ingested once even with several schedulers and across restarts.

A file's attempts count only its own failures: when Neo4j or the SQL database is unreachable the file
is given back ``pending`` (no attempt spent) and the run fails, to be retried like any failed run.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nucleograph.db import ledger
from nucleograph.errors import InputError
from nucleograph.ingest.cohort import MASK_DIRS, ImageRecord, is_image_file, read_manifest
from nucleograph.ingest.pipeline import content_hash
from nucleograph.ingest.run import ingest_records
from nucleograph.jobs.runtime import JobItemsFailed, Runtime, is_outage
from nucleograph.jobs.specs import WatchSpec

__all__ = ["WatchedImage", "run_watch", "scan_watch_folder"]

log = logging.getLogger("nucleograph.scheduler")


@dataclass(frozen=True)
class WatchedImage:
    """A settled image of a watched folder, with what the folder says about it.

    Attributes
    ----------
    path : Path
        Resolved path.
    label, patient : str or None
        From its ``manifest.csv`` row, else (label only) the first sub-folder's name.
    mpp : float or None
        Microns per pixel from the manifest.
    size, mtime_ns : int
        What :func:`os.stat` said when it was scanned (a changed file is looked at again).
    """

    path: Path
    label: str | None
    patient: str | None
    mpp: float | None
    size: int
    mtime_ns: int


def _manifest(root: Path) -> dict[Path, ImageRecord]:
    """The records of ``root/manifest.csv`` by resolved path (none without a manifest)."""
    path = root / "manifest.csv"
    if not path.is_file():
        return {}
    return {r.path: r for r in read_manifest(path, missing_ok=True)}


def scan_watch_folder(root: str | Path, *, settle: float, now: float | None = None) -> list[WatchedImage]:
    """The images under ``root`` that have not changed for ``settle`` seconds, with their labels.

    Labels: the ``manifest.csv`` row's label, else the first sub-folder's name (``root/InSitu/x.png``
    is ``InSitu``), else None. Hidden files and folders, mask folders and empty files are skipped.

    Parameters
    ----------
    root : str or Path
        The watched folder.
    settle : float
        Seconds a file must be unmodified (it may still be being copied).
    now : float, optional
        The time to measure ``settle`` from (``time.time()``).

    Returns
    -------
    images : list of WatchedImage
        In folder-walk order, sorted by name within each folder.

    Raises
    ------
    nucleograph.errors.InputError
        ``root`` is not a folder, or its ``manifest.csv`` is unreadable or has a bad row (e.g. an mpp
        that is not a positive number): the message names the line to fix.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"watch folder {root} does not exist or is not a folder; create it or fix --watch")
    manifest = _manifest(root)
    now = time.time() if now is None else now
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in MASK_DIRS)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not is_image_file(p):
                continue
            try:
                st = p.stat()
            except OSError:  # removed while scanning
                continue
            if st.st_size == 0 or now - st.st_mtime < settle:
                continue
            p = p.resolve()
            rel = p.relative_to(root.resolve()).parts
            row = manifest.get(p)
            label = (row.label if row else None) or (rel[0] if len(rel) > 1 else None)
            found.append(WatchedImage(p, label, row.patient if row else None, row.mpp if row else None,
                                      st.st_size, st.st_mtime_ns))
    return found


def run_watch(rt: Runtime, job_id: str, spec: WatchSpec) -> dict[str, Any]:
    """One pass over the watch folder: claim each new file in the ledger and ingest it.

    Parameters
    ----------
    rt : Runtime
    job_id : str
        The stored job's id (for the log).
    spec : WatchSpec

    Returns
    -------
    result : dict
        ``candidates`` (new settled files), ``ingested``, ``skipped`` (done, held by another scheduler,
        or waiting for its backoff), ``outcomes`` (counts by ingest outcome), and no failures.

    Raises
    ------
    JobItemsFailed
        Some files failed (each is retried on its own backoff); carries the result.
    Exception
        Neo4j or SQL is unreachable (:func:`~nucleograph.jobs.runtime.is_outage`): the file in hand is
        given back ``pending`` without spending an attempt. Any other error of the run spends one.
    """
    opts = rt.options
    rt.retry_deferred(("file", spec.watch))  # ledger writes an SQL outage held up
    ledger.abandon_expired(rt.engine, max_attempts=opts.max_attempts)
    settled = ledger.settled_stats(rt.engine, spec.watch)
    images = [im for im in scan_watch_folder(spec.watch, settle=opts.settle)
              if (str(im.path), im.size, im.mtime_ns) not in settled]
    params = spec.ingest_params()
    out: dict[str, Any] = {"cohort": spec.cohort, "watch": spec.watch, "candidates": len(images), "ingested": 0,
                           "skipped": 0, "failed": 0, "abandoned": 0, "outcomes": {}, "failures": []}
    if images:
        rt.db()  # Neo4j down: fail the run before any file is claimed
    for im in images:
        try:
            digest = content_hash(im.path)
        except InputError:
            continue  # removed or unreadable while scanning: looked at again next pass
        claimed = ledger.claim_file(
            rt.engine, watch=spec.watch, content_hash=digest, cohort=spec.cohort, path=str(im.path), size=im.size,
            mtime_ns=im.mtime_ns, label=im.label, owner=rt.owner, lease=opts.lease, max_attempts=opts.max_attempts,
        )
        if not claimed:
            out["skipped"] += 1  # done, held by another scheduler, or waiting for its backoff
            continue
        record = ImageRecord(path=im.path, label=im.label, patient=im.patient, mpp=im.mpp)
        try:
            summary = ingest_records([record], cohort=spec.cohort, params=params, settings=rt.settings,
                                     db=rt.db(), workers=1, progress=False)
        except Exception as exc:  # fail the run (retried); an outage spends none of the file's attempts
            if is_outage(exc):
                _release_file(rt, spec, digest, f"{type(exc).__name__}: {exc}")
            else:
                _fail_file(rt, spec, digest, f"{type(exc).__name__}: {exc}", out)
            raise
        if summary.failed:
            _fail_file(rt, spec, digest, summary.failures[0]["error"], out)
            continue
        outcome = next(s for s in ("stored", "replaced", "linked", "updated", "unchanged") if getattr(summary, s))
        finish = functools.partial(ledger.finish_file, rt.engine, watch=spec.watch, content_hash=digest,
                                   owner=rt.owner, image_id=digest, outcome=outcome)
        if _write_or_defer(rt, ("file", spec.watch, digest), finish):
            out["ingested"] += 1
            out["outcomes"][outcome] = out["outcomes"].get(outcome, 0) + 1
            log.info("%s: %s %s (%s)", job_id, outcome, im.path, im.label)
        else:
            log.warning("%s: lost the claim on %s while ingesting it (lease %.0f s too short?)",
                        job_id, im.path, opts.lease)
    if out["failed"] or out["abandoned"]:
        raise JobItemsFailed(f"{out['failed'] + out['abandoned']} file(s) failed: "
                             + "; ".join(f["error"] for f in out["failures"][:3]), out)
    return out


def _write_or_defer(rt: Runtime, key: tuple[str, ...], write: Callable[[], Any]) -> Any:
    """``write()`` to the ledger; when SQL is unreachable, leave it to the next run of the job (else
    the claim would stay this live process's, its lease renewed by the heartbeat) and raise."""
    try:
        return write()
    except Exception as exc:
        if is_outage(exc):
            log.warning("the ledger is unreachable (%s); the next run records %s", exc, key[-1])
            rt.defer_write(key, write)
        raise


def _release_file(rt: Runtime, spec: WatchSpec, digest: str, error: str) -> None:
    """Give the claimed file back ``pending``, spending no attempt (the caller raises the outage)."""
    release = functools.partial(ledger.release_file, rt.engine, watch=spec.watch, content_hash=digest,
                                owner=rt.owner, reason=f"waiting for the database: {error}", wait=rt.options.backoff)
    try:
        _write_or_defer(rt, ("file", spec.watch, digest), release)
    except Exception as exc:  # SQL is down too (the write is deferred); the caller raises the outage
        log.warning("could not give %s back now: %s", digest, exc)
    else:
        log.warning("gave %s back without spending an attempt: %s", digest, error)


def _fail_file(rt: Runtime, spec: WatchSpec, digest: str, error: str, out: dict[str, Any]) -> None:
    opts = rt.options
    fail = functools.partial(ledger.fail_file, rt.engine, watch=spec.watch, content_hash=digest, owner=rt.owner,
                             error=error, max_attempts=opts.max_attempts, backoff=opts.backoff,
                             backoff_max=opts.backoff_max)
    status = _write_or_defer(rt, ("file", spec.watch, digest), fail)
    if status == ledger.ABANDONED:
        out["abandoned"] += 1
        log.error("gave up on %s after %d attempts: %s", digest, opts.max_attempts, error)
    else:
        out["failed"] += 1
    out["failures"].append({"content_hash": digest, "status": status, "error": error})
