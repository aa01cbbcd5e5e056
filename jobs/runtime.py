"""What a running job has: settings, options, the SQL engine, this process's owner id, a Neo4j
connection (:class:`~nucleograph.db.graphdb.GraphDB`) opened on first use, and the heartbeat that keeps its claims (leases) alive.

Work in progress is held under a lease in the ledger (:mod:`nucleograph.db.ledger`) that the heartbeat
thread renews every ``lease / 3`` seconds; a scheduler killed with SIGKILL stops renewing, and after the
lease expires another (or the restarted) scheduler takes the work over. The heartbeat also marks runs
whose process stopped beating as lost.

A job that finds Neo4j or the SQL database unreachable (:func:`is_outage`) gives its item back
without spending one of the item's attempts; when the SQL database itself is gone the ledger write
waits in the runtime (:meth:`Runtime.defer_write`) until a later run of the job can make it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from neo4j import exceptions as neo4j_exc
from sqlalchemy import exc as sql_exc
from sqlalchemy.engine import Engine

from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.db import records as rec
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import DatabaseError, NucleographError
from nucleograph.jobs.specs import SchedulerOptions

__all__ = ["JOB_TABLE", "JobItemsFailed", "Runtime", "heartbeating", "is_outage", "new_owner", "open_engine",
           "open_runtime"]

log = logging.getLogger("nucleograph.scheduler")

#: APScheduler's job-store table, in the database of the run records.
JOB_TABLE = "apscheduler_jobs"


class JobItemsFailed(NucleographError):
    """Some items of a job run (files, triggers) failed; each is retried on its own backoff.

    Parameters
    ----------
    message : str
    result : dict
        The run's result, recorded in the job history although the run failed.
    """

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


#: Errors that say a database could not be reached, not that the item (file, trigger) is bad: our
#: DatabaseError (raised, never recorded per image, only when Neo4j does not answer), the driver's
#: connection errors that reach us untranslated, and SQLAlchemy's connection errors.
OUTAGE_ERRORS = (
    DatabaseError,
    neo4j_exc.ServiceUnavailable, neo4j_exc.SessionExpired, neo4j_exc.IncompleteCommit, neo4j_exc.TransientError,
    sql_exc.OperationalError, sql_exc.InterfaceError, sql_exc.DisconnectionError, sql_exc.TimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) says Neo4j or the SQL database is unreachable.

    Such a failure says nothing about the file or trigger in hand: it is given back without spending
    one of its attempts, and the job retries when the database answers again.

    Parameters
    ----------
    exc : BaseException

    Returns
    -------
    bool
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OUTAGE_ERRORS) or (isinstance(exc, sql_exc.DBAPIError) and exc.connection_invalidated):
            return True
        seen.add(id(exc))
        exc = exc.__cause__
    return False


@dataclass
class Runtime:
    """What a running job needs: settings, options, the SQL engine, this process's owner id and a
    Neo4j connection opened on first use (so a Neo4j outage fails jobs, which retry, not the scheduler).

    It holds a driver and a process's identity, so it is never stored with a job: the scheduler hands
    it to the jobs it runs (see :class:`nucleograph.jobs.scheduler.RuntimeExecutor`).
    """

    settings: Settings
    options: SchedulerOptions
    engine: Engine
    owner: str
    _db: GraphDB | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _deferred: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def defer_write(self, key: tuple[str, ...], write: Callable[[], Any]) -> None:
        """Remember a ledger write about a claimed item (done, failed, given back) that SQL refused;
        :meth:`retry_deferred` makes it. Without it the claim would stay this live process's, its
        lease renewed by the heartbeat, and no one would take the item up again.

        Parameters
        ----------
        key : tuple of str
            The item, e.g. ``("file", watch, content_hash)``; a later write for it replaces this one.
        write : callable
            ``write()``: the ledger call.
        """
        with self._lock:
            self._deferred[key] = write

    def retry_deferred(self, scope: tuple[str, ...]) -> int:
        """Make the deferred writes whose key starts with ``scope``; returns how many were made.

        Raises
        ------
        Exception
            The SQL database still fails (the writes not made stay deferred).
        """
        with self._lock:
            todo = [(k, w) for k, w in self._deferred.items() if k[:len(scope)] == scope]
        for key, write in todo:
            write()
            with self._lock:
                if self._deferred.get(key) is write:
                    del self._deferred[key]
        return len(todo)

    def db(self) -> GraphDB:
        """The Neo4j driver and database, opened on the first call (thread-safe); closed by :meth:`close`.

        Returns
        -------
        GraphDB
        """
        with self._lock:
            if self._db is None:
                self._db = GraphDB.open(self.settings)
            return self._db

    def close(self) -> None:
        """Close the Neo4j driver (if opened) and dispose of the SQL engine."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        self.engine.dispose()


def new_owner() -> str:
    """This process's id in claims and history: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def open_engine(settings: Settings) -> Engine:
    """The run-records engine with the scheduler's tables (ledger and job store) created.

    Parameters
    ----------
    settings : nucleograph.config.Settings
        ``sql_url`` names the database (SQLite by default).

    Returns
    -------
    sqlalchemy.engine.Engine
    """
    engine = rec.open_engine(settings)
    # APScheduler's job store would create its table on start() with the same check-then-create race
    # as create_all: make it here, under the schema lock, so start() finds it.
    ledger.create_tables(engine, SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE).jobs_t.metadata)
    return engine


@contextlib.contextmanager
def open_runtime(settings: Settings, options: SchedulerOptions) -> Iterator[Runtime]:
    """A :class:`Runtime` with a new owner id, closed (driver and engine) on exit."""
    rt = Runtime(settings=settings, options=options, engine=open_engine(settings), owner=new_owner())
    try:
        yield rt
    finally:
        rt.close()


def _heartbeat(rt: Runtime, stop: threading.Event) -> None:
    period = max(0.2, rt.options.lease / 3)
    while not stop.wait(period):
        try:
            ledger.renew_leases(rt.engine, owner=rt.owner, lease=rt.options.lease)
            ledger.reap_lost_runs(rt.engine, stale_after=2 * rt.options.lease)
        except Exception as exc:  # the database blinked: the next beat tries again, well inside the lease
            log.warning("heartbeat failed: %s", exc)


@contextlib.contextmanager
def heartbeating(rt: Runtime) -> Iterator[None]:
    """Renew ``rt``'s leases (and reap lost runs) from a background thread while the block runs."""
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(rt, stop), name="lease-heartbeat", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
