"""Scheduler state in SQL, beside the run records: job history, the watch-folder file ledger, the
retraining triggers and named locks, all with leases so a killed scheduler's work is taken over.

Exactly once rests on two SQL guarantees that SQLite and PostgreSQL both give:

* an ``INSERT`` of an existing primary key fails (the first claimer wins), and
* a conditional ``UPDATE ... WHERE owner/lease/status ...`` is atomic: of two processes taking over
  the same expired lease, exactly one sees ``rowcount == 1`` (PostgreSQL re-checks the ``WHERE`` of
  the second after the first commits; SQLite serialises writers).

Times are UTC from the process clock; leases are tens of seconds, so hosts need clocks within a few
seconds of each other (NTP).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Text,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from nucleograph.db.records import create_schema

# statuses of a claimable item (a watched file or a retraining trigger)
CLAIMED = "claimed"  # someone works on it; the lease says until when
FAILED = "failed"  # the last attempt failed; next_attempt_at says when to retry
DONE = "done"
ABANDONED = "abandoned"  # max_attempts failed attempts; reported, never retried automatically

# statuses of a job run (history)
RUNNING, SUCCEEDED, RUN_FAILED, LOST = "running", "succeeded", "failed", "lost"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands timezone-aware columns back naive; everything here is stored in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


class JobsBase(DeclarativeBase):
    """Tables of the scheduler (kept apart from the run records' metadata; same database)."""


class JobRun(JobsBase):
    """One execution of one scheduled job (or of ``jobs run-now``): the job history."""

    __tablename__ = "job_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(191), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    trigger: Mapped[str] = mapped_column(String(40))  # schedule | manual
    owner: Mapped[str] = mapped_column(String(120))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(20), index=True)
    scheduled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class WatchedFile(JobsBase):
    """The ledger of a watch folder: one row per distinct file content, claimed before ingest."""

    __tablename__ = "watched_files"
    watch: Mapped[str] = mapped_column(String(500), primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    cohort: Mapped[str] = mapped_column(String(200), index=True)
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, default=0)
    label: Mapped[str | None] = mapped_column(String(100), nullable=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    owner: Mapped[str | None] = mapped_column(String(120), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    image_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)  # stored | unchanged | linked ...
    first_seen: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    done_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class RetrainTrigger(JobsBase):
    """One reason to retrain a cohort (enough new labelled images, a cron time); trains once."""

    __tablename__ = "retrain_triggers"
    cohort: Mapped[str] = mapped_column(String(200), primary_key=True)
    trigger_id: Mapped[str] = mapped_column(String(120), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(191))
    status: Mapped[str] = mapped_column(String(20), index=True)
    stage: Mapped[str] = mapped_column(String(20), default="train")  # what is left: train | explain | -
    owner: Mapped[str | None] = mapped_column(String(120), nullable=True)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    n_labelled: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobLock(JobsBase):
    """A named lock with an expiry (held by one scheduler process at a time)."""

    __tablename__ = "job_locks"
    name: Mapped[str] = mapped_column(String(191), primary_key=True)
    owner: Mapped[str] = mapped_column(String(120))
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


def create_tables(engine: Engine, *extra: MetaData) -> None:
    """Create the scheduler's tables (and ``extra`` ones, e.g. APScheduler's job store) if missing:
    idempotent, and serialised between processes that start together (see ``create_schema``)."""
    create_schema(engine, JobsBase.metadata, *extra)


def _row_dict(row: Any) -> dict[str, Any]:
    out = {}
    for col in row.__table__.columns:
        value = getattr(row, col.name)
        if isinstance(value, dt.datetime):
            value = as_utc(value).isoformat()
        out[col.name] = value
    return out


def _seconds(s: float) -> dt.timedelta:
    return dt.timedelta(seconds=float(s))


def backoff_seconds(attempt: int, *, base: float, cap: float) -> float:
    """Exponential backoff: ``base * 2**(attempt-1)``, at most ``cap``."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


# --- job history -------------------------------------------------------------------------------------
def start_run(engine: Engine, *, job_id: str, kind: str, trigger: str, owner: str, attempt: int = 1,
              scheduled_at: dt.datetime | None = None) -> int:
    now = utcnow()
    with engine.begin() as conn:
        result = conn.execute(insert(JobRun).values(
            job_id=job_id, kind=kind, trigger=trigger, owner=owner, attempt=attempt, status=RUNNING,
            scheduled_at=scheduled_at, started_at=now, heartbeat_at=now, result={},
        ))
        return int(result.inserted_primary_key[0])


def finish_run(engine: Engine, run_id: int, *, status: str, error: str | None = None,
               result: dict[str, Any] | None = None) -> None:
    now = utcnow()
    with engine.begin() as conn:
        started = conn.execute(select(JobRun.started_at).where(JobRun.id == run_id)).scalar_one()
        conn.execute(update(JobRun).where(JobRun.id == run_id).values(
            status=status, error=error, result=result or {}, finished_at=now,
            seconds=round((now - as_utc(started)).total_seconds(), 3),
        ))


def reap_lost_runs(engine: Engine, *, stale_after: float) -> int:
    """Mark ``running`` history rows whose process stopped heart-beating as ``lost`` (killed)."""
    cutoff = utcnow() - _seconds(stale_after)
    with engine.begin() as conn:
        result = conn.execute(update(JobRun).where(JobRun.status == RUNNING, JobRun.heartbeat_at < cutoff).values(
            status=LOST, error="the scheduler running this job stopped (killed?) before it finished"))
        return result.rowcount


def job_history(engine: Engine, *, job_id: str | None = None, status: str | None = None,
                limit: int = 50) -> list[dict[str, Any]]:
    stmt = select(JobRun).order_by(JobRun.id.desc()).limit(limit)
    if job_id is not None:
        stmt = stmt.where(JobRun.job_id == job_id)
    if status is not None:
        stmt = stmt.where(JobRun.status == status)
    return _rows(engine, stmt)


def _rows(engine: Engine, stmt) -> list[dict[str, Any]]:
    with Session(engine) as session:
        return [_row_dict(r) for r in session.scalars(stmt)]


# --- leases ------------------------------------------------------------------------------------------
def renew_leases(engine: Engine, *, owner: str, lease: float) -> int:
    """Extend every lease ``owner`` holds (files, triggers, locks) and beat its running history rows."""
    now = utcnow()
    until = now + _seconds(lease)
    n = 0
    with engine.begin() as conn:
        n += conn.execute(update(WatchedFile).where(WatchedFile.owner == owner, WatchedFile.status == CLAIMED)
                          .values(lease_until=until)).rowcount
        n += conn.execute(update(RetrainTrigger).where(RetrainTrigger.owner == owner, RetrainTrigger.status == CLAIMED)
                          .values(lease_until=until)).rowcount
        n += conn.execute(update(JobLock).where(JobLock.owner == owner).values(expires_at=until)).rowcount
        conn.execute(update(JobRun).where(JobRun.owner == owner, JobRun.status == RUNNING).values(heartbeat_at=now))
    return n


# --- the watch-folder ledger -------------------------------------------------------------------------
def settled_stats(engine: Engine, watch: str) -> set[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of files of ``watch`` that need nothing more (done or abandoned),
    so a scan hashes only new or changed files."""
    stmt = select(WatchedFile.path, WatchedFile.size, WatchedFile.mtime_ns).where(
        WatchedFile.watch == watch, WatchedFile.status.in_([DONE, ABANDONED]))
    with engine.connect() as conn:
        return {(p, int(s), int(m)) for p, s, m in conn.execute(stmt)}


def claim_file(engine: Engine, *, watch: str, content_hash: str, cohort: str, path: str, size: int, mtime_ns: int,
               label: str | None, owner: str, lease: float, max_attempts: int) -> bool:
    """Claim a file for ingestion; True when this ``owner`` now holds it.

    A new content hash is claimed by inserting its row. An existing row is taken over only when its
    holder's lease expired (the holder was killed) or its last attempt failed and the backoff has
    passed, and fewer than ``max_attempts`` attempts were made.
    """
    now = utcnow()
    until = now + _seconds(lease)
    try:
        with engine.begin() as conn:
            conn.execute(insert(WatchedFile).values(
                watch=watch, content_hash=content_hash, cohort=cohort, path=path, size=size, mtime_ns=mtime_ns,
                label=label, status=CLAIMED, owner=owner, lease_until=until, attempts=1, first_seen=now,
            ))
        return True
    except IntegrityError:
        pass
    takeover = and_(
        WatchedFile.watch == watch, WatchedFile.content_hash == content_hash,
        WatchedFile.attempts < max_attempts,
        or_(and_(WatchedFile.status == CLAIMED, WatchedFile.lease_until < now),
            and_(WatchedFile.status == FAILED, WatchedFile.next_attempt_at <= now)),
    )
    with engine.begin() as conn:
        result = conn.execute(update(WatchedFile).where(takeover).values(
            status=CLAIMED, owner=owner, lease_until=until, attempts=WatchedFile.attempts + 1, path=path,
            size=size, mtime_ns=mtime_ns, label=label,
        ))
        return result.rowcount == 1


def finish_file(engine: Engine, *, watch: str, content_hash: str, owner: str, image_id: str | None,
                outcome: str) -> bool:
    """Mark a claimed file done; False when ``owner`` lost the claim meanwhile (nothing changes)."""
    with engine.begin() as conn:
        result = conn.execute(update(WatchedFile).where(
            WatchedFile.watch == watch, WatchedFile.content_hash == content_hash, WatchedFile.owner == owner,
            WatchedFile.status == CLAIMED,
        ).values(status=DONE, image_id=image_id, outcome=outcome, error=None, lease_until=None, done_at=utcnow()))
        return result.rowcount == 1


def fail_file(engine: Engine, *, watch: str, content_hash: str, owner: str, error: str, max_attempts: int,
              backoff: float, backoff_max: float) -> str | None:
    """Record a failed attempt: ``failed`` (retried after the backoff) or, after ``max_attempts``,
    ``abandoned``. Returns the new status, or None when ``owner`` no longer held the claim."""
    where = and_(WatchedFile.watch == watch, WatchedFile.content_hash == content_hash,
                 WatchedFile.owner == owner, WatchedFile.status == CLAIMED)
    return _record_failure(engine, WatchedFile, where, error=error, max_attempts=max_attempts,
                           backoff=backoff, backoff_max=backoff_max)


def _record_failure(engine: Engine, table, where, *, error: str, max_attempts: int, backoff: float,
                    backoff_max: float) -> str | None:
    """The failed attempt of the claimed row of ``table`` matching ``where`` (which includes its owner):
    ``failed`` with a backoff, or ``abandoned`` after ``max_attempts``; None when no such claim."""
    now = utcnow()
    with engine.begin() as conn:
        attempts = conn.execute(select(table.attempts).where(where)).scalar_one_or_none()
        if attempts is None:
            return None
        status = ABANDONED if attempts >= max_attempts else FAILED
        wait = backoff_seconds(attempts, base=backoff, cap=backoff_max)
        conn.execute(update(table).where(where).values(
            status=status, error=error[:4000], lease_until=None, next_attempt_at=now + _seconds(wait)))
        return status


def abandon_expired(engine: Engine, *, max_attempts: int) -> int:
    """Claims whose holders died ``max_attempts`` times (a file that kills the process): abandoned."""
    now = utcnow()
    with engine.begin() as conn:
        return conn.execute(update(WatchedFile).where(
            WatchedFile.status == CLAIMED, WatchedFile.lease_until < now, WatchedFile.attempts >= max_attempts,
        ).values(status=ABANDONED, error="the ingesting scheduler stopped during every attempt")).rowcount


def watched_files(engine: Engine, *, cohort: str | None = None, watch: str | None = None,
                  status: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    stmt = select(WatchedFile).order_by(WatchedFile.first_seen.desc()).limit(limit)
    if cohort is not None:
        stmt = stmt.where(WatchedFile.cohort == cohort)
    if watch is not None:
        stmt = stmt.where(WatchedFile.watch == watch)
    if status is not None:
        stmt = stmt.where(WatchedFile.status == status)
    return _rows(engine, stmt)


# --- retraining triggers -----------------------------------------------------------------------------
def claim_trigger(engine: Engine, *, cohort: str, trigger_id: str, job_id: str, owner: str, lease: float,
                  n_labelled: int, max_attempts: int) -> bool:
    """Claim ``(cohort, trigger_id)`` for training: insert it, or take it over when its holder's lease
    expired or its backoff after a failure passed. True when ``owner`` holds it now."""
    now = utcnow()
    until = now + _seconds(lease)
    try:
        with engine.begin() as conn:
            conn.execute(insert(RetrainTrigger).values(
                cohort=cohort, trigger_id=trigger_id, job_id=job_id, status=CLAIMED, stage="train", owner=owner,
                lease_until=until, attempts=1, n_labelled=n_labelled, created_at=now, result={},
            ))
        return True
    except IntegrityError:
        pass
    with engine.begin() as conn:
        return conn.execute(update(RetrainTrigger).where(
            RetrainTrigger.cohort == cohort, RetrainTrigger.trigger_id == trigger_id,
            RetrainTrigger.attempts < max_attempts,
            or_(and_(RetrainTrigger.status == CLAIMED, RetrainTrigger.lease_until < now),
                and_(RetrainTrigger.status == FAILED, RetrainTrigger.next_attempt_at <= now)),
        ).values(status=CLAIMED, owner=owner, lease_until=until, attempts=RetrainTrigger.attempts + 1)).rowcount == 1


def pending_triggers(engine: Engine, *, cohort: str, max_attempts: int) -> list[dict[str, Any]]:
    """Triggers of ``cohort`` that someone should (re)try now: expired claims and due failures."""
    now = utcnow()
    stmt = select(RetrainTrigger).where(
        RetrainTrigger.cohort == cohort, RetrainTrigger.attempts < max_attempts,
        or_(and_(RetrainTrigger.status == CLAIMED, RetrainTrigger.lease_until < now),
            and_(RetrainTrigger.status == FAILED, RetrainTrigger.next_attempt_at <= now)),
    ).order_by(RetrainTrigger.created_at)
    return _rows(engine, stmt)


def get_trigger(engine: Engine, cohort: str, trigger_id: str) -> dict[str, Any] | None:
    stmt = select(RetrainTrigger).where(RetrainTrigger.cohort == cohort, RetrainTrigger.trigger_id == trigger_id)
    rows = _rows(engine, stmt)
    return rows[0] if rows else None


def update_trigger(engine: Engine, *, cohort: str, trigger_id: str, owner: str, **values: Any) -> bool:
    """Change a trigger ``owner`` holds (run id, stage, status...); False when the claim was lost."""
    with engine.begin() as conn:
        return conn.execute(update(RetrainTrigger).where(
            RetrainTrigger.cohort == cohort, RetrainTrigger.trigger_id == trigger_id,
            RetrainTrigger.owner == owner, RetrainTrigger.status == CLAIMED,
        ).values(**values)).rowcount == 1


def fail_trigger(engine: Engine, *, cohort: str, trigger_id: str, owner: str, error: str, max_attempts: int,
                 backoff: float, backoff_max: float) -> str | None:
    """As :func:`fail_file`, for a retraining trigger."""
    where = and_(RetrainTrigger.cohort == cohort, RetrainTrigger.trigger_id == trigger_id,
                 RetrainTrigger.owner == owner, RetrainTrigger.status == CLAIMED)
    return _record_failure(engine, RetrainTrigger, where, error=error, max_attempts=max_attempts,
                           backoff=backoff, backoff_max=backoff_max)


def last_trained_count(engine: Engine, cohort: str) -> int:
    """Labelled images behind the cohort's latest trigger that trains or trained (0 if none):
    the baseline that "enough new labelled images" is counted from."""
    stmt = select(RetrainTrigger.n_labelled).where(
        RetrainTrigger.cohort == cohort, RetrainTrigger.status != ABANDONED,
    ).order_by(RetrainTrigger.n_labelled.desc()).limit(1)
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one_or_none() or 0)


def triggers(engine: Engine, *, cohort: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    stmt = select(RetrainTrigger).order_by(RetrainTrigger.created_at.desc()).limit(limit)
    if cohort is not None:
        stmt = stmt.where(RetrainTrigger.cohort == cohort)
    return _rows(engine, stmt)


# --- named locks -------------------------------------------------------------------------------------
def acquire_lock(engine: Engine, name: str, *, owner: str, ttl: float) -> bool:
    """Take the lock ``name`` for ``ttl`` seconds (renewed with :func:`renew_leases`); True if taken.
    An expired lock (its holder died) is taken over; the holder may take its own lock again."""
    now = utcnow()
    until = now + _seconds(ttl)
    try:
        with engine.begin() as conn:
            conn.execute(insert(JobLock).values(name=name, owner=owner, acquired_at=now, expires_at=until))
        return True
    except IntegrityError:
        pass
    with engine.begin() as conn:
        return conn.execute(update(JobLock).where(
            JobLock.name == name, or_(JobLock.expires_at < now, JobLock.owner == owner),
        ).values(owner=owner, acquired_at=now, expires_at=until)).rowcount == 1


def release_lock(engine: Engine, name: str, *, owner: str) -> bool:
    with engine.begin() as conn:
        return conn.execute(delete(JobLock).where(JobLock.name == name, JobLock.owner == owner)).rowcount == 1


@contextlib.contextmanager
def held_lock(engine: Engine, name: str, *, owner: str, ttl: float) -> Iterator[bool]:
    """``with held_lock(...) as got:`` -- ``got`` is False when another process holds it."""
    got = acquire_lock(engine, name, owner=owner, ttl=ttl)
    try:
        yield got
    finally:
        if got:
            release_lock(engine, name, owner=owner)


def locks(engine: Engine) -> list[dict[str, Any]]:
    return _rows(engine, select(JobLock).order_by(JobLock.name))
