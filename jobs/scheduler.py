"""Scheduled ingestion and retraining: a persistent APScheduler whose jobs live in SQL.

Jobs are kept by APScheduler's SQLAlchemy job store (table ``apscheduler_jobs``) in the database of
the run records (``NUCLEOGRAPH_SQL_URL``, SQLite by default), so they survive restarts and several
schedulers (or ``nucleograph jobs`` commands) share them. Two kinds of job:

``watch``
    Scans a folder (one sub-folder per class, label = folder name; or ``manifest.csv`` with
    ``path,label[,patient,mpp]``; files directly in the folder get label None) and ingests each new
    file into a cohort. A file is claimed in the ledger (:mod:`nucleograph.db.ledger`) by its content hash before
    it is ingested, so it is ingested once even with several schedulers and across restarts.
``retrain``
    Trains the cohort when ``min_new`` labelled images arrived since the last training (checked every
    ``interval`` seconds) or at the times of a ``cron`` expression, then explains the new run. Each
    reason to train is a trigger row keyed by ``(cohort, trigger id)``: it trains once.

Work in progress is held under a lease that a heartbeat thread renews; a scheduler killed with
SIGKILL stops renewing, and after the lease expires another (or the restarted) scheduler takes the
work over. Failed items are retried with exponential backoff and abandoned after ``max_attempts``;
every job run is in the job history with its status, duration and error.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.engine import Engine

from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.db import records as rec
from nucleograph.errors import ConfigError, InputError, NucleographError
from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX

log = logging.getLogger("nucleograph.scheduler")

JOB_TABLE = "apscheduler_jobs"
KINDS = ("watch", "retrain")
_MASK_DIRS = frozenset({"masks", "mask", "labels", "annotations", "maps"})


class JobItemsFailed(NucleographError):
    """Some items of a job run (files, triggers) failed; each is retried on its own backoff."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


# --- settings ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SchedulerOptions:
    """How the scheduler runs its jobs (one process; passed explicitly).

    Parameters
    ----------
    poll : float
        Seconds between looks at the job store for jobs added or changed by other processes.
    lease : float
        Seconds a claim (file, trigger, lock) stays valid without a heartbeat; a killed scheduler's
        claims are taken over this long after it stopped. Renewed every ``lease / 3`` seconds.
    max_attempts : int
        Attempts per file or trigger before it is abandoned (and reported).
    backoff, backoff_max : float
        Retry delay after the n-th failure: ``backoff * 2**(n-1)`` seconds, at most ``backoff_max``.
    job_retries : int
        In-process retries of a whole job run that raised (e.g. Neo4j unreachable), with the same backoff.
    settle : float
        A file is ingested only when unmodified for this many seconds (it may still be being copied).
    workers : int
        Jobs that may run at the same time in this process.
    """

    poll: float = 2.0
    lease: float = 60.0
    max_attempts: int = 5
    backoff: float = 10.0
    backoff_max: float = 900.0
    job_retries: int = 2
    settle: float = 2.0
    workers: int = 4

    def __post_init__(self):
        for name in ("poll", "lease", "settle", "backoff", "backoff_max"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"scheduler option {name} must be >= 0, got {getattr(self, name)}")
        if self.lease < 1:
            raise ConfigError(f"--lease must be at least 1 second, got {self.lease}")
        if self.max_attempts < 1 or self.workers < 1 or self.job_retries < 0:
            raise ConfigError("--max-attempts and --workers must be >= 1 and --job-retries >= 0")


@dataclass(frozen=True)
class WatchSpec:
    """A watch-folder ingestion job."""

    watch: str
    cohort: str
    interval: float = 10.0
    detector: str = "watershed"
    threshold: float = DEFAULT_THRESHOLD_PX
    threshold_unit: str = "px"

    def __post_init__(self):
        if not self.cohort:
            raise InputError("a watch job needs --cohort")
        if not self.interval > 0:
            raise InputError(f"--interval must be positive, got {self.interval}")
        object.__setattr__(self, "watch", str(Path(self.watch).expanduser().resolve()))
        self.ingest_params()  # validates detector and threshold

    def ingest_params(self):
        from nucleograph.ingest.pipeline import IngestParams

        return IngestParams(detector=self.detector, threshold=self.threshold, threshold_unit=self.threshold_unit)

    def trigger(self):
        return IntervalTrigger(seconds=self.interval, timezone=dt.UTC)


@dataclass(frozen=True)
class RetrainSpec:
    """A retraining job: on ``min_new`` new labelled images (checked every ``interval`` s) or on ``cron``."""

    cohort: str
    min_new: int | None = None
    cron: str | None = None
    interval: float = 60.0
    model: str = "rsf"
    epochs: int = 50
    lr: float = 0.01
    folds: int = 1
    seed: int = 0
    batch_size: int = 8
    patience: int | None = 10
    explain: str | None = "occlusion"  # None: no explanation after training
    hops: int = 1

    def __post_init__(self):
        if not self.cohort:
            raise InputError("a retrain job needs --cohort")
        if (self.min_new is None) == (self.cron is None):
            raise InputError("a retrain job needs exactly one of --min-new N (new labelled images) or --cron EXPR")
        if self.min_new is not None and self.min_new < 1:
            raise InputError(f"--min-new must be at least 1, got {self.min_new}")
        if not self.interval > 0 or self.epochs < 1:
            raise InputError("--interval must be positive and --epochs at least 1")
        if self.cron is not None:
            self.trigger()  # validates the expression
        if self.explain is not None:
            from nucleograph.db.runs import METHODS

            if self.explain not in METHODS:
                raise InputError(f"--explain {self.explain!r}: choose one of {', '.join(METHODS)} or none")

    def trigger(self):
        if self.cron is None:
            return IntervalTrigger(seconds=self.interval, timezone=dt.UTC)
        try:
            return CronTrigger.from_crontab(self.cron, timezone=dt.UTC)
        except ValueError as exc:
            raise InputError(f"--cron {self.cron!r} is not a crontab expression (e.g. '0 2 * * *'): {exc}") from exc

    def train_params(self) -> dict[str, Any]:
        """The run parameters exactly as :func:`nucleograph.gnn.service.train_cohort` records them."""
        return {"model": self.model, "epochs": self.epochs, "lr": self.lr, "folds": self.folds, "seed": self.seed,
                "batch_size": self.batch_size, "patience": self.patience, "model_kwargs": {}}


SPECS = {"watch": WatchSpec, "retrain": RetrainSpec}


def spec_from_dict(kind: str, values: dict[str, Any]) -> WatchSpec | RetrainSpec:
    if kind not in SPECS:
        raise InputError(f"unknown job kind {kind!r}: choose one of {', '.join(KINDS)}")
    cls = SPECS[kind]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


# --- the runtime a job runs with ---------------------------------------------------------------------
@dataclass
class Runtime:
    """What a running job needs: settings, options, the SQL engine, this process's owner id and a
    Neo4j driver opened on first use (so a Neo4j outage fails jobs, which retry, not the scheduler)."""

    settings: Settings
    options: SchedulerOptions
    engine: Engine
    owner: str
    _driver: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def driver(self):
        with self._lock:
            if self._driver is None:
                from nucleograph.db.driver import open_driver

                self._driver = open_driver(self.settings)
            return self._driver

    def close(self) -> None:
        with self._lock:
            if self._driver is not None:
                self._driver.close()
                self._driver = None
        self.engine.dispose()


def new_owner() -> str:
    """This process's id in claims and history: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def open_engine(settings: Settings) -> Engine:
    """The run-records engine with the scheduler's tables created."""
    engine = rec.open_engine(settings)
    # APScheduler's job store would create its table on start() with the same check-then-create race
    # as create_all: make it here, under the schema lock, so start() finds it.
    ledger.create_tables(engine, SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE).jobs_t.metadata)
    return engine


@contextlib.contextmanager
def open_runtime(settings: Settings, options: SchedulerOptions) -> Iterator[Runtime]:
    rt = Runtime(settings=settings, options=options, engine=open_engine(settings), owner=new_owner())
    try:
        yield rt
    finally:
        rt.close()


# --- watch folders -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WatchedImage:
    path: Path
    label: str | None
    patient: str | None
    mpp: float | None
    size: int
    mtime_ns: int


def _manifest(root: Path) -> dict[Path, dict[str, str]]:
    """Rows of ``root/manifest.csv`` by resolved path; rows naming files not there yet are kept."""
    path = root / "manifest.csv"
    if not path.is_file():
        return {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in csv.DictReader(fh)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the manifest ({exc}); save it as UTF-8 CSV with path,label") from exc
    return {(root / r["path"]).resolve(): r for r in rows if r.get("path")}


def scan_watch_folder(root: str | Path, *, settle: float, now: float | None = None) -> list[WatchedImage]:
    """The images under ``root`` that have not changed for ``settle`` seconds, with their labels.

    Labels: the ``manifest.csv`` row's label, else the first sub-folder's name (``root/InSitu/x.png``
    is ``InSitu``), else None. Hidden files and folders and mask folders are skipped.
    """
    from nucleograph.ingest.readers import IMAGE_EXTENSIONS, SLIDE_EXTENSIONS

    root = Path(root)
    if not root.is_dir():
        raise InputError(f"watch folder {root} does not exist or is not a folder; create it or fix --watch")
    manifest = _manifest(root)
    now = time.time() if now is None else now
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d.lower() not in _MASK_DIRS)
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS | SLIDE_EXTENSIONS:
                continue
            try:
                st = p.stat()
            except OSError:  # removed while scanning
                continue
            if st.st_size == 0 or now - st.st_mtime < settle:
                continue
            p = p.resolve()
            rel = p.relative_to(root.resolve()).parts
            row = manifest.get(p, {})
            label = row.get("label") or (rel[0] if len(rel) > 1 else None)
            mpp = None
            if row.get("mpp"):
                with contextlib.suppress(ValueError):
                    mpp = float(row["mpp"])
            found.append(WatchedImage(p, label, row.get("patient") or None, mpp, st.st_size, st.st_mtime_ns))
    return found


def run_watch(rt: Runtime, job_id: str, spec: WatchSpec) -> dict[str, Any]:
    """One pass over the watch folder: claim each new file in the ledger and ingest it."""
    from nucleograph.ingest.cohort import ImageRecord
    from nucleograph.ingest.pipeline import content_hash
    from nucleograph.ingest.run import ingest_records

    opts = rt.options
    ledger.abandon_expired(rt.engine, max_attempts=opts.max_attempts)
    settled = ledger.settled_stats(rt.engine, spec.watch)
    images = [im for im in scan_watch_folder(spec.watch, settle=opts.settle)
              if (str(im.path), im.size, im.mtime_ns) not in settled]
    params = spec.ingest_params()
    out: dict[str, Any] = {"cohort": spec.cohort, "watch": spec.watch, "candidates": len(images), "ingested": 0,
                           "skipped": 0, "failed": 0, "abandoned": 0, "outcomes": {}, "failures": []}
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
                                     driver=rt.driver(), workers=1, progress=False)
        except Exception as exc:  # Neo4j or SQL gone: give the file back for a later retry, fail the run
            _fail_file(rt, spec, digest, f"{type(exc).__name__}: {exc}", out)
            raise
        if summary.failed:
            _fail_file(rt, spec, digest, summary.failures[0]["error"], out)
            continue
        outcome = next(s for s in ("stored", "replaced", "linked", "unchanged") if getattr(summary, s))
        if ledger.finish_file(rt.engine, watch=spec.watch, content_hash=digest, owner=rt.owner,
                               image_id=digest, outcome=outcome):
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


def _fail_file(rt: Runtime, spec: WatchSpec, digest: str, error: str, out: dict[str, Any]) -> None:
    opts = rt.options
    status = ledger.fail_file(rt.engine, watch=spec.watch, content_hash=digest, owner=rt.owner, error=error,
                               max_attempts=opts.max_attempts, backoff=opts.backoff, backoff_max=opts.backoff_max)
    if status == ledger.ABANDONED:
        out["abandoned"] += 1
        log.error("gave up on %s after %d attempts: %s", digest, opts.max_attempts, error)
    else:
        out["failed"] += 1
    out["failures"].append({"content_hash": digest, "status": status, "error": error})


# --- retraining --------------------------------------------------------------------------------------
def labelled_count(rt: Runtime, cohort: str) -> int:
    from nucleograph.db import store

    images = store.cohort_images(rt.driver(), cohort, database=rt.settings.neo4j_database)
    return sum(1 for r in images if r.get("label") is not None)


def run_retrain(rt: Runtime, job_id: str, spec: RetrainSpec, *, scheduled_at: dt.datetime | None,
                manual: bool = False) -> dict[str, Any]:
    """Finish triggers others left behind, then train once for this tick's trigger (if any)."""
    opts, cohort = rt.options, spec.cohort
    out: dict[str, Any] = {"cohort": cohort, "resumed": [], "trained": [], "skipped": None, "failures": []}
    for trig in ledger.pending_triggers(rt.engine, cohort=cohort, max_attempts=opts.max_attempts):
        if ledger.claim_trigger(rt.engine, cohort=cohort, trigger_id=trig["trigger_id"], job_id=job_id,
                                 owner=rt.owner, lease=opts.lease, n_labelled=trig["n_labelled"],
                                 max_attempts=opts.max_attempts):
            _process_trigger(rt, spec, trig["trigger_id"], out, key="resumed")

    trigger_id = None
    if spec.cron is not None or manual:
        when = scheduled_at if (scheduled_at is not None and not manual) else ledger.utcnow()
        trigger_id = f"{'manual' if manual else 'cron'}:{when.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
        n = labelled_count(rt, cohort)
        claimed = ledger.claim_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, job_id=job_id,
                                        owner=rt.owner, lease=opts.lease, n_labelled=n,
                                        max_attempts=opts.max_attempts)
    else:
        # The count, the baseline and the claim are one step under a lock: a second scheduler that
        # counts a moment later sees this trigger's baseline and does not train again.
        with ledger.held_lock(rt.engine, f"retrain:{cohort}", owner=rt.owner, ttl=opts.lease) as got:
            if not got:
                out["skipped"] = "another scheduler is checking this cohort"
                return out
            n = labelled_count(rt, cohort)
            base = ledger.last_trained_count(rt.engine, cohort)
            if n - base < spec.min_new:
                out["skipped"] = f"{n - base} new labelled image(s) since the last training; need {spec.min_new}"
                return out
            from nucleograph.db import store

            version = store.cohort_fingerprint(rt.driver(), cohort, database=rt.settings.neo4j_database)
            trigger_id = f"data:{version}"
            claimed = ledger.claim_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, job_id=job_id,
                                            owner=rt.owner, lease=opts.lease, n_labelled=n,
                                            max_attempts=opts.max_attempts)
    if not claimed:
        out["skipped"] = f"trigger {trigger_id} is handled already"
    else:
        _process_trigger(rt, spec, trigger_id, out, key="trained")
    if out["failures"]:
        raise JobItemsFailed("retraining failed: " + "; ".join(f["error"] for f in out["failures"]), out)
    return out


def _process_trigger(rt: Runtime, spec: RetrainSpec, trigger_id: str, out: dict[str, Any], *, key: str) -> None:
    """Train (or resume the killed run of) a claimed trigger, then explain the run."""
    from sqlalchemy.orm import Session

    from nucleograph.db import store
    from nucleograph.gnn.service import explain_run, new_run_id, train_cohort

    opts, cohort = rt.options, spec.cohort
    trig = ledger.get_trigger(rt.engine, cohort, trigger_id)
    run_id, stage = trig["run_id"], trig["stage"]
    try:
        if stage == "train":
            resume = False
            if run_id is not None:
                with Session(rt.engine) as session:
                    row = session.get(rec.ModelRunRecord, run_id)
                    resume = row is not None and row.status == "running"  # its trainer was killed
            if not resume:
                # Known before training starts, so a scheduler taking this trigger over resumes the
                # same run from its checkpoint instead of starting a second one.
                run_id = new_run_id()
                version = store.cohort_fingerprint(rt.driver(), cohort, database=rt.settings.neo4j_database)
                rec.add_record(rt.engine, rec.ModelRunRecord(id=run_id, cohort=cohort, model=spec.model,
                                                             params=spec.train_params(), data_version=version,
                                                             status="running"))
                if not ledger.update_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, owner=rt.owner,
                                              run_id=run_id):
                    raise NucleographError(f"lost the claim on trigger {trigger_id} before training")
            log.info("training %s for trigger %s (run %s%s)", cohort, trigger_id, run_id, ", resumed" if resume else "")
            trained = train_cohort(rt.driver(), rt.settings, cohort, resume_run=run_id, progress=False)
            stage = "explain" if spec.explain else "-"
            ledger.update_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, owner=rt.owner, stage=stage,
                                   result={"metrics": {k: v for k, v in trained["metrics"].items()
                                                       if isinstance(v, float)}, "n_images": trained["n_images"]})
        explained = None
        if stage == "explain":
            explained = explain_run(rt.driver(), rt.settings, run_id, method=spec.explain, hops=spec.hops)
            explained = {k: explained[k] for k in ("method", "hops", "property", "images", "seconds")}
        trig = ledger.get_trigger(rt.engine, cohort, trigger_id)
        result = {**(trig["result"] or {}), "explain": explained}
        ledger.update_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, owner=rt.owner, status=ledger.DONE,
                               stage="-", lease_until=None, error=None, result=result, finished_at=ledger.utcnow())
        out[key].append({"trigger": trigger_id, "run_id": run_id, **result})
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        status = ledger.fail_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, owner=rt.owner, error=error,
                                      max_attempts=opts.max_attempts, backoff=opts.backoff,
                                      backoff_max=opts.backoff_max)
        out["failures"].append({"trigger": trigger_id, "run_id": run_id, "status": status, "error": error})
        log.error("trigger %s of %s: %s (%s)", trigger_id, cohort, error, status)


# --- running a job -----------------------------------------------------------------------------------
def execute(rt: Runtime, *, job_id: str, kind: str, spec: dict[str, Any], trigger: str = "schedule",
            scheduled_at: dt.datetime | None = None) -> dict[str, Any]:
    """Run one job once with history rows; a run that raises is retried ``job_retries`` times with
    backoff (items that failed on their own are not: they carry their own backoff)."""
    opts = rt.options
    parsed = spec_from_dict(kind, spec)
    attempt = 0
    while True:
        attempt += 1
        run = ledger.start_run(rt.engine, job_id=job_id, kind=kind, trigger=trigger, owner=rt.owner,
                                attempt=attempt, scheduled_at=scheduled_at)
        try:
            if kind == "watch":
                result = run_watch(rt, job_id, parsed)
            else:
                result = run_retrain(rt, job_id, parsed, scheduled_at=scheduled_at, manual=trigger == "manual")
        except JobItemsFailed as exc:
            ledger.finish_run(rt.engine, run, status=ledger.RUN_FAILED, error=str(exc), result=exc.result)
            log.error("job %s: %s", job_id, exc)
            return exc.result
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            ledger.finish_run(rt.engine, run, status=ledger.RUN_FAILED, error=error,
                               result={"traceback": traceback.format_exc(limit=8)})
            final = attempt > opts.job_retries or isinstance(exc, (InputError, ConfigError))
            wait = ledger.backoff_seconds(attempt, base=opts.backoff, cap=opts.backoff_max)
            log.error("job %s attempt %d failed: %s%s", job_id, attempt, error,
                      "" if final else f"; retrying in {wait:.1f} s")
            if final:
                raise
            time.sleep(wait)
            continue
        ledger.finish_run(rt.engine, run, status=ledger.SUCCEEDED, result=result)
        return result


def fire(*context: Any, job_id: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What a stored job calls (its ``func``). ``context`` is ``(runtime, scheduled_at)``, passed by
    :class:`RuntimeExecutor` (the runtime holds a driver: it cannot be pickled into the job store);
    the scheduled time names a cron trigger."""
    if len(context) != 2 or not isinstance(context[0], Runtime):
        raise ConfigError(f"job {job_id} runs only under `nucleograph scheduler` (or `nucleograph jobs run-now`)")
    rt, scheduled_at = context
    return execute(rt, job_id=job_id, kind=kind, spec=spec, trigger="schedule", scheduled_at=scheduled_at)


FIRE_REF = f"{__name__}:fire"


def _run_with_runtime(rt: Runtime, job, jobstore_alias: str, run_times, logger_name: str) -> list:
    """:func:`apscheduler.executors.base.run_job`, passing the runtime and the scheduled time."""
    events = []
    logger = logging.getLogger(logger_name)
    for run_time in run_times:
        if job.misfire_grace_time is not None:
            late = dt.datetime.now(dt.UTC) - run_time
            if late > dt.timedelta(seconds=job.misfire_grace_time):
                events.append(JobExecutionEvent(EVENT_JOB_MISSED, job.id, jobstore_alias, run_time))
                logger.warning('run time of job "%s" was missed by %s', job, late)
                continue
        try:
            if job.func is fire:
                retval = job.func(rt, run_time, *job.args, **job.kwargs)
            else:
                retval = job.func(*job.args, **job.kwargs)
        except BaseException as exc:
            events.append(JobExecutionEvent(EVENT_JOB_ERROR, job.id, jobstore_alias, run_time, exception=exc,
                                            traceback=traceback.format_exc()))
        else:
            events.append(JobExecutionEvent(EVENT_JOB_EXECUTED, job.id, jobstore_alias, run_time, retval=retval))
    return events


class RuntimeExecutor(ThreadPoolExecutor):
    """A thread pool that hands each stored job this process's :class:`Runtime` (which holds a
    driver and an owner id, so it cannot be pickled into the job store)."""

    def __init__(self, runtime: Runtime, max_workers: int):
        super().__init__(max_workers)
        self.runtime = runtime

    def _do_submit_job(self, job, run_times):
        def callback(f):
            exc = f.exception()
            if exc:
                self._run_job_error(job.id, exc, getattr(exc, "__traceback__", None))
            else:
                self._run_job_success(job.id, f.result())

        f = self._pool.submit(_run_with_runtime, self.runtime, job, job._jobstore_alias, run_times, self._logger.name)
        f.add_done_callback(callback)


# --- the job store -----------------------------------------------------------------------------------
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


def _scheduler(engine: Engine, *, executors: dict | None = None) -> BackgroundScheduler:
    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE), "local": MemoryJobStore()},
        executors=executors or {"default": ThreadPoolExecutor(1)},
        job_defaults=JOB_DEFAULTS, timezone=dt.UTC,
    )


@contextlib.contextmanager
def job_store(engine: Engine) -> Iterator[tuple[BackgroundScheduler, SQLAlchemyJobStore]]:
    """The shared job store, opened for adding, listing and removing jobs.

    Deliberately not a started (even paused) scheduler: that would advance the stored jobs' next run
    times under the running schedulers' feet. The scheduler here is never started; it only builds jobs.
    """
    sched = BackgroundScheduler(job_defaults=JOB_DEFAULTS, timezone=dt.UTC)
    store = SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE)
    store.start(sched, "default")
    try:
        yield sched, store
    finally:
        store.shutdown()


def add_job(engine: Engine, job_id: str, spec: WatchSpec | RetrainSpec, *, replace: bool = False) -> dict[str, Any]:
    """Store a job (an interval job runs at once, then on its trigger); ``replace`` overwrites one with
    the same id."""
    kind = "watch" if isinstance(spec, WatchSpec) else "retrain"
    trigger = spec.trigger()
    now = dt.datetime.now(dt.UTC)
    first = trigger.get_next_fire_time(None, now) if isinstance(trigger, CronTrigger) else now
    with job_store(engine) as (sched, store):
        job = sched.add_job(FIRE_REF, trigger=trigger, id=job_id, name=f"{kind} {spec.cohort}",
                            kwargs={"job_id": job_id, "kind": kind, "spec": asdict(spec)}, next_run_time=first,
                            executor="default", **JOB_DEFAULTS)
        job._jobstore_alias = "default"
        try:
            store.add_job(job)
        except ConflictingIdError as exc:
            if not replace:
                raise InputError(f"a job {job_id!r} exists: remove it first (`nucleograph jobs remove {job_id}`) "
                                 "or pass --replace") from exc
            store.update_job(job)
        return _job_dict(job)


def remove_job(engine: Engine, job_id: str) -> None:
    with job_store(engine) as (_, store):
        try:
            store.remove_job(job_id)
        except JobLookupError as exc:
            raise InputError(f"no job {job_id!r}: `nucleograph jobs list` shows the jobs") from exc


def list_jobs(engine: Engine) -> list[dict[str, Any]]:
    with job_store(engine) as (_, store):
        return [_job_dict(j) for j in store.get_all_jobs()]


def get_job(engine: Engine, job_id: str) -> dict[str, Any]:
    with job_store(engine) as (_, store):
        job = store.lookup_job(job_id)
    if job is None:
        raise InputError(f"no job {job_id!r}: `nucleograph jobs list` shows the jobs")
    return _job_dict(job)


def _job_dict(job) -> dict[str, Any]:
    kw = job.kwargs or {}
    nxt = getattr(job, "next_run_time", None)
    return {"id": job.id, "kind": kw.get("kind"), "cohort": (kw.get("spec") or {}).get("cohort"),
            "trigger": str(job.trigger), "next_run": nxt.isoformat() if nxt else None, "spec": kw.get("spec") or {}}


def run_now(settings: Settings, options: SchedulerOptions, job_id: str) -> dict[str, Any]:
    """Run a stored job once in this process, now (claims and locks still apply)."""
    with open_runtime(settings, options) as rt:
        job = get_job(rt.engine, job_id)
        with _heartbeating(rt):  # a long training keeps its claim, as under the scheduler
            return execute(rt, job_id=job_id, kind=job["kind"], spec=job["spec"], trigger="manual")


# --- the scheduler process ---------------------------------------------------------------------------
def _heartbeat(rt: Runtime, stop: threading.Event) -> None:
    period = max(0.2, rt.options.lease / 3)
    while not stop.wait(period):
        try:
            ledger.renew_leases(rt.engine, owner=rt.owner, lease=rt.options.lease)
            ledger.reap_lost_runs(rt.engine, stale_after=2 * rt.options.lease)
        except Exception as exc:  # the database blinked: the next beat tries again, well inside the lease
            log.warning("heartbeat failed: %s", exc)


@contextlib.contextmanager
def _heartbeating(rt: Runtime) -> Iterator[None]:
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(rt, stop), name="lease-heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()


def _poll() -> None:
    """Wakes the scheduler every ``poll`` seconds to see jobs other processes added."""


def serve(settings: Settings, options: SchedulerOptions, *, add: list[tuple[str, WatchSpec | RetrainSpec]] = (),
          run_for: float | None = None, stop: threading.Event | None = None) -> int:
    """Run the scheduler until SIGTERM/SIGINT, ``stop`` is set or ``run_for`` seconds passed."""
    stop = stop or threading.Event()
    with open_runtime(settings, options) as rt:
        for job_id, spec in add:
            add_job(rt.engine, job_id, spec, replace=True)
        ledger.reap_lost_runs(rt.engine, stale_after=2 * options.lease)
        sched = _scheduler(rt.engine, executors={"default": RuntimeExecutor(rt, options.workers),
                                                 "local": ThreadPoolExecutor(1)})
        sched.add_job(_poll, IntervalTrigger(seconds=options.poll), id="poll", jobstore="local", executor="local")
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            with _heartbeating(rt):  # leases stay renewed until the running jobs finished
                sched.start()
                names = ", ".join(j["id"] for j in list_jobs(rt.engine)) or "none yet (add with `nucleograph jobs add`)"
                log.info("scheduler %s started on %s; jobs: %s", rt.owner, _safe_url(rt.engine), names)
                stop.wait(run_for)
                log.info("scheduler %s stopping (waiting for running jobs)", rt.owner)
                sched.shutdown(wait=True)
        finally:
            if sched.running:
                sched.shutdown(wait=False)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)
