"""Scheduled ingestion and retraining: a persistent APScheduler whose jobs live in SQL.

Jobs are kept by APScheduler's SQLAlchemy job store (table ``apscheduler_jobs``) in the database of
the run records (``NUCLEOGRAPH_SQL_URL``, SQLite by default), so they survive restarts and several
schedulers (or ``nucleograph jobs`` commands) share them. Two kinds of job, each in its own module:
``watch`` (:mod:`nucleograph.jobs.watch`: ingest each new file of a folder once) and ``retrain``
(:mod:`nucleograph.jobs.retrain`: train once per trigger, then explain). Their specs are in
:mod:`nucleograph.jobs.specs`; a run's history rows and retries in :mod:`nucleograph.jobs.execute`;
leases and their heartbeat in :mod:`nucleograph.jobs.runtime`; re-queueing files and pruning the
history in :mod:`nucleograph.jobs.housekeeping`.

This module is the APScheduler wiring: the stored job's entry point (:func:`fire`), the executor that
hands it this process's runtime, adding, listing and removing stored jobs, ``run-now`` and the
scheduler process (:func:`serve`). It uses only APScheduler's public API.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import pickle
import signal
import threading
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import ConflictingIdError, JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import select
from sqlalchemy.engine import Engine

from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.errors import ConfigError, InputError
from nucleograph.jobs.execute import execute
from nucleograph.jobs.housekeeping import prune_with_settings
from nucleograph.jobs.runtime import JOB_TABLE, Runtime, heartbeating, open_runtime
from nucleograph.jobs.specs import RetrainSpec, SchedulerOptions, WatchSpec, check_job_id

__all__ = ["FIRE_REF", "JOB_DEFAULTS", "RuntimeExecutor", "add_job", "fire", "get_job", "job_store", "list_jobs",
           "remove_job", "run_now", "serve", "upgrade_stored_jobs"]

log = logging.getLogger("nucleograph.scheduler")

#: Every stored job runs one instance at a time, coalesces missed runs into one, and is never
#: dropped for being late; :class:`RuntimeExecutor` relies on the first and the last.
JOB_DEFAULTS = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


# --- the stored job's entry point ----------------------------------------------------------------------
class _Worker(threading.local):
    """The executor whose pool runs the current thread; set by the pool when it starts the thread."""

    executor: RuntimeExecutor | None = None


_worker = _Worker()


def _bind_worker(executor: RuntimeExecutor) -> None:
    _worker.executor = executor


def fire(*, job_id: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What a stored job calls (its ``func``, stored as :data:`FIRE_REF`).

    It runs in a thread of a :class:`RuntimeExecutor`, which gives it this process's runtime and the
    scheduled time of the run (the time names a cron trigger, the same in every scheduler).

    Parameters
    ----------
    job_id : str
        The stored job's id: :func:`add_job` stores it in the job's keyword arguments too, so it is
        also the key under which the executor queued the run's scheduled time.
    kind : {"watch", "retrain"}
    spec : dict
        The job's spec, as :func:`dataclasses.asdict` stored it.

    Returns
    -------
    result : dict
        As :func:`nucleograph.jobs.execute.execute`.

    Raises
    ------
    nucleograph.errors.ConfigError
        Called outside a scheduler's executor (e.g. by a plain APScheduler).
    """
    executor = _worker.executor
    if executor is None:
        raise ConfigError(f"job {job_id} runs only under `nucleograph scheduler` (or `nucleograph jobs run-now`)")
    return execute(executor.runtime, job_id=job_id, kind=kind, spec=spec, trigger="schedule",
                   scheduled_at=executor.take_run_time(job_id))


#: The reference APScheduler stores (in SQL) for each job's function: stored jobs keep pointing here,
#: so :func:`fire` must stay importable under this name.
FIRE_REF = "nucleograph.jobs.scheduler:fire"
#: Where :func:`fire` lived before the scheduler moved into :mod:`nucleograph.jobs`; jobs stored then
#: are rewritten to :data:`FIRE_REF` (APScheduler would otherwise drop them as unrestorable).
FORMER_FIRE_REFS = ("nucleograph.scheduler:fire",)


class RuntimeExecutor(ThreadPoolExecutor):
    """A thread pool that hands each stored job this process's :class:`~nucleograph.jobs.runtime.Runtime`
    (it holds a driver and an owner id, so it cannot be pickled into the job store) and its scheduled
    time, through APScheduler's and the standard library's public hooks only.

    The pool binds each of its threads to this executor when it starts it (``pool_kwargs`` passes
    ``initializer`` to :class:`concurrent.futures.ThreadPoolExecutor`), so :func:`fire` finds the
    runtime. The scheduled times reach :func:`fire` through :meth:`submit_job`, the one place
    APScheduler gives them to: they are queued per job id before the job is submitted and taken in
    order by :func:`fire`, which APScheduler's ``run_job`` calls once per run time (stored jobs have
    ``misfire_grace_time=None``, so no run time is skipped; with ``coalesce`` there is one).

    Parameters
    ----------
    runtime : Runtime
    max_workers : int
        Jobs that may run at the same time.
    """

    def __init__(self, runtime: Runtime, max_workers: int):
        super().__init__(max_workers, pool_kwargs={"initializer": _bind_worker, "initargs": (self,)})
        self.runtime = runtime
        self._run_times: dict[str, list[dt.datetime]] = {}
        self._run_times_lock = threading.Lock()

    def submit_job(self, job, run_times) -> None:
        """Queue the job's run times for :func:`fire`, then submit it as APScheduler does."""
        if job.func is not fire:
            return super().submit_job(job, run_times)
        with self._run_times_lock:  # before submitting: a free thread may start the job at once
            self._run_times.setdefault(job.id, []).extend(run_times)
        try:
            super().submit_job(job, run_times)
        except BaseException:  # not submitted (e.g. the previous run still going): not run at these times
            with self._run_times_lock:
                queued = self._run_times[job.id]
                del queued[len(queued) - len(run_times):]
                if not queued:
                    del self._run_times[job.id]
            raise

    def take_run_time(self, job_id: str) -> dt.datetime | None:
        """The scheduled time of the job's run that is starting (None when none is queued)."""
        with self._run_times_lock:
            queued = self._run_times.get(job_id)
            if not queued:
                return None
            when = queued.pop(0)
            if not queued:
                del self._run_times[job_id]
            return when


# --- the job store ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def job_store(engine: Engine) -> Iterator[tuple[BackgroundScheduler, SQLAlchemyJobStore]]:
    """The shared job store, opened for adding, listing and removing jobs.

    Deliberately not a started (even paused) scheduler: that would advance the stored jobs' next run
    times under the running schedulers' feet. The scheduler here is never started; it only builds jobs.
    """
    sched = BackgroundScheduler(job_defaults=JOB_DEFAULTS, timezone=dt.UTC)
    store = SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE)
    upgrade_stored_jobs(engine, store)
    store.start(sched, "default")
    try:
        yield sched, store
    finally:
        store.shutdown()


def upgrade_stored_jobs(engine: Engine, store: SQLAlchemyJobStore) -> int:
    """Point jobs stored under a former reference of :func:`fire` at :data:`FIRE_REF`.

    APScheduler stores each job's state pickled, with its function as a ``module:name`` string; a job
    whose function no longer imports is deleted when the store loads it. Rewriting the reference keeps
    such jobs (schedule, spec and next run unchanged). Idempotent; one transaction.

    Returns
    -------
    int
        How many stored jobs were rewritten.
    """
    table = store.jobs_t
    changed = 0
    with engine.begin() as conn:
        for job_id, blob in conn.execute(select(table.c.id, table.c.job_state)).all():
            state = pickle.loads(blob)
            if state.get("func") in FORMER_FIRE_REFS:
                state["func"] = FIRE_REF
                conn.execute(table.update().where(table.c.id == job_id)
                             .values(job_state=pickle.dumps(state, store.pickle_protocol)))
                changed += 1
    if changed:
        log.info("%d stored job(s) now call %s (the scheduler moved into nucleograph.jobs)", changed, FIRE_REF)
    return changed


def add_job(engine: Engine, job_id: str, spec: WatchSpec | RetrainSpec, *, replace: bool = False) -> dict[str, Any]:
    """Store a job (an interval job runs at once, then on its trigger).

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
        From :func:`nucleograph.jobs.runtime.open_engine`.
    job_id : str
    spec : WatchSpec or RetrainSpec
    replace : bool
        Overwrite a job with the same id.

    Returns
    -------
    job : dict
        ``id``, ``kind``, ``cohort``, ``trigger``, ``next_run`` (ISO time) and ``spec``.

    Raises
    ------
    nucleograph.errors.InputError
        A job with this id exists and ``replace`` is false, the id is unusable, or the watched folder
        is not there (:meth:`~nucleograph.jobs.specs.WatchSpec.check_folder`). Nothing is stored then.
    """
    check_job_id(job_id)
    if isinstance(spec, WatchSpec):
        spec.check_folder()
    kind = "watch" if isinstance(spec, WatchSpec) else "retrain"
    trigger = spec.trigger()
    now = dt.datetime.now(dt.UTC)
    first = trigger.get_next_fire_time(None, now) if isinstance(trigger, CronTrigger) else now
    with job_store(engine) as (sched, store):
        job = sched.add_job(FIRE_REF, trigger=trigger, id=job_id, name=f"{kind} {spec.cohort}",
                            kwargs={"job_id": job_id, "kind": kind, "spec": asdict(spec)}, next_run_time=first,
                            executor="default", **JOB_DEFAULTS)
        try:
            store.add_job(job)
        except ConflictingIdError as exc:
            if not replace:
                raise InputError(f"a job {job_id!r} exists: remove it first (`nucleograph jobs remove {job_id}`) "
                                 "or pass --replace") from exc
            store.update_job(job)
        return _job_dict(job)


def remove_job(engine: Engine, job_id: str) -> None:
    """Delete a stored job (its history stays).

    Raises
    ------
    nucleograph.errors.InputError
        No job has this id.
    """
    with job_store(engine) as (_, store):
        try:
            store.remove_job(job_id)
        except JobLookupError as exc:
            raise InputError(f"no job {job_id!r}: `nucleograph jobs list` shows the jobs") from exc


def list_jobs(engine: Engine) -> list[dict[str, Any]]:
    """The stored jobs, as :func:`add_job` returns them, by next run time."""
    with job_store(engine) as (_, store):
        return [_job_dict(j) for j in store.get_all_jobs()]


def get_job(engine: Engine, job_id: str) -> dict[str, Any]:
    """One stored job, as :func:`add_job` returns it.

    Raises
    ------
    nucleograph.errors.InputError
        No job has this id.
    """
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
    """Run a stored job once in this process, now (claims and locks still apply).

    Returns
    -------
    result : dict
        As :func:`nucleograph.jobs.execute.execute` (a retrain trains now, as a ``manual`` trigger).
    """
    with open_runtime(settings, options) as rt:
        job = get_job(rt.engine, job_id)
        with heartbeating(rt):  # a long training keeps its claim, as under the scheduler
            return execute(rt, job_id=job_id, kind=job["kind"], spec=job["spec"], trigger="manual")


# --- the scheduler process -------------------------------------------------------------------------------
def _poll() -> None:
    """Wakes the scheduler every ``poll`` seconds to see jobs other processes added."""


def _prune(rt: Runtime) -> None:
    """Prune the job history with the limits of the settings (one scheduler at a time)."""
    try:
        prune_with_settings(rt.engine, rt.settings, owner=rt.owner, ttl=rt.options.lease)
    except Exception as exc:  # the database blinked: the next pruning tries again
        log.warning("pruning the job history failed: %s", exc)


def serve(settings: Settings, options: SchedulerOptions, *, add: list[tuple[str, WatchSpec | RetrainSpec]] = (),
          run_for: float | None = None, stop: threading.Event | None = None) -> int:
    """Run the scheduler until SIGTERM/SIGINT, ``stop`` is set or ``run_for`` seconds passed.

    Besides the stored jobs it prunes the job history when it starts and every
    ``options.prune_every`` seconds, with the limits of ``settings`` (one scheduler at a time).

    Parameters
    ----------
    settings : nucleograph.config.Settings
    options : SchedulerOptions
    add : list of (job id, spec)
        Jobs stored (replacing ones with the same id) before the scheduler starts.
    run_for : float, optional
        Stop after this many seconds.
    stop : threading.Event, optional
        Stop when set (signals set it too, when this runs in the main thread).

    Returns
    -------
    int
        0, once the running jobs finished.
    """
    stop = stop or threading.Event()
    with open_runtime(settings, options) as rt:
        store = SQLAlchemyJobStore(engine=rt.engine, tablename=JOB_TABLE)
        upgrade_stored_jobs(rt.engine, store)
        for job_id, spec in add:
            add_job(rt.engine, job_id, spec, replace=True)
        ledger.reap_lost_runs(rt.engine, stale_after=2 * options.lease)
        sched = BackgroundScheduler(
            jobstores={"default": store,
                       "local": MemoryJobStore()},
            executors={"default": RuntimeExecutor(rt, options.workers), "local": ThreadPoolExecutor(1)},
            job_defaults=JOB_DEFAULTS, timezone=dt.UTC,
        )
        sched.add_job(_poll, IntervalTrigger(seconds=options.poll), id="poll", jobstore="local", executor="local")
        if options.prune_every > 0:  # now, then every prune_every seconds
            sched.add_job(_prune, IntervalTrigger(seconds=options.prune_every), args=(rt,), id="prune",
                          jobstore="local", executor="local", next_run_time=dt.datetime.now(dt.UTC),
                          **JOB_DEFAULTS)
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            with heartbeating(rt):  # leases stay renewed until the running jobs finished
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
