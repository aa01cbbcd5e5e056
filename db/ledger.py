"""Scheduler state in SQL, beside the run records: job history, the watch-folder file ledger, the
retraining triggers and named locks, all with leases so a killed scheduler's work is taken over.

Exactly once rests on two SQL guarantees that SQLite and PostgreSQL both give:

* an ``INSERT`` of an existing primary key fails (the first claimer wins), and
* a conditional ``UPDATE ... WHERE owner/lease/status ...`` is atomic: of two processes taking over
  the same expired lease, exactly one sees ``rowcount == 1`` (PostgreSQL re-checks the ``WHERE`` of
  the second after the first commits; SQLite serialises writers).

Times are UTC from the process clock; leases are tens of seconds, so hosts need clocks within a few
seconds of each other (NTP).

Attempts count only failures of the item itself (its own error, or a holder that died with it). An
item given back because a database was unreachable (:func:`release_file`, :func:`release_trigger`)
waits as ``pending`` with its attempts unchanged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
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
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from nucleograph.db.records import create_schema
from nucleograph.errors import InputError

# statuses of a claimable item (a watched file or a retraining trigger)
CLAIMED = "claimed"  # someone works on it; the lease says until when
PENDING = "pending"  # waits for its next attempt (a database was down, or re-queued); no attempt spent
FAILED = "failed"  # the last attempt failed; next_attempt_at says when to retry
DONE = "done"
ABANDONED = "abandoned"  # max_attempts failed attempts; reported, retried only when changed or re-queued
#: Statuses of a claimable item that are live state, never pruned.
LIVE = (CLAIMED, PENDING, FAILED, ABANDONED)

# statuses of a job run (history)
RUNNING, SUCCEEDED, RUN_FAILED, LOST = "running", "succeeded", "failed", "lost"
FINISHED_RUNS = (SUCCEEDED, RUN_FAILED, LOST)


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
    """A mapped object, or a row of ``select(Table.__table__)``, as a dict with ISO times in UTC."""
    values = row._mapping if hasattr(row, "_mapping") else {c.name: getattr(row, c.name) for c in row.__table__.columns}
    return {k: as_utc(v).isoformat() if isinstance(v, dt.datetime) else v for k, v in values.items()}


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

    A new content hash is claimed by inserting its row. An existing row is taken over when its
    holder's lease expired (the holder was killed) or its last attempt failed and the backoff has
    passed, and fewer than ``max_attempts`` attempts were made; or when it is ``pending`` (given back
    during a database outage, or re-queued) and its wait is over. An ``abandoned`` file seen with a
    newer modification time than the attempts that gave up on it (touched, copied in again) starts
    afresh, with one attempt.
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
    changed_since_abandoned = and_(WatchedFile.status == ABANDONED, WatchedFile.mtime_ns < mtime_ns)
    takeover = and_(
        WatchedFile.watch == watch, WatchedFile.content_hash == content_hash,
        or_(and_(WatchedFile.attempts < max_attempts,
                 or_(and_(WatchedFile.status == CLAIMED, WatchedFile.lease_until < now),
                     and_(WatchedFile.status == FAILED, WatchedFile.next_attempt_at <= now))),
            and_(WatchedFile.status == PENDING, WatchedFile.next_attempt_at <= now),
            changed_since_abandoned),
    )
    attempts = case((changed_since_abandoned, 1), else_=WatchedFile.attempts + 1)
    with engine.begin() as conn:
        result = conn.execute(update(WatchedFile).where(takeover).values(
            status=CLAIMED, owner=owner, lease_until=until, attempts=attempts, path=path,
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


def release_file(engine: Engine, *, watch: str, content_hash: str, owner: str, reason: str, wait: float) -> bool:
    """Give a claimed file back without spending an attempt: a database was unreachable, so the
    attempt said nothing about the file. It waits ``pending`` for ``wait`` seconds, then any
    scheduler may claim it. False when ``owner`` no longer held the claim (nothing changes)."""
    where = and_(WatchedFile.watch == watch, WatchedFile.content_hash == content_hash,
                 WatchedFile.owner == owner, WatchedFile.status == CLAIMED)
    return _release(engine, WatchedFile, where, reason=reason, wait=wait)


def _release(engine: Engine, table, where, *, reason: str, wait: float) -> bool:
    """The claimed row of ``table`` matching ``where`` goes back to ``pending``; the claim's attempt
    is taken back (a new row's first claim counted one)."""
    with engine.begin() as conn:
        return conn.execute(update(table).where(where).values(
            status=PENDING, lease_until=None, error=reason[:4000],
            attempts=case((table.attempts > 0, table.attempts - 1), else_=0),
            next_attempt_at=utcnow() + _seconds(wait),
        )).rowcount == 1


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


def requeue_files(engine: Engine, refs: Sequence[str] = (), *, all_abandoned: bool = False,
                  watch: str | None = None) -> dict[str, Any]:
    """Give failed or abandoned files a fresh start: status ``pending``, no attempts, due now.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    refs : sequence of str
        Files by absolute path or by content hash, as ``nucleograph jobs files`` lists them.
    all_abandoned : bool
        Also every abandoned file (of ``watch``, when given).
    watch : str, optional
        Only files of this watch folder (as its job stores it).

    Returns
    -------
    result : dict
        ``requeued`` (how many), ``files`` (the re-queued rows, as they were) and ``not_requeued``
        (named files that are done, claimed or pending already: ``path``, ``status``).

    Raises
    ------
    nucleograph.errors.InputError
        A ref names no file of the ledger (of ``watch``); nothing is changed then.
    """
    scope = [WatchedFile.watch == watch] if watch is not None else []
    matches = or_(WatchedFile.path.in_(list(refs)), WatchedFile.content_hash.in_(list(refs)))
    retryable = WatchedFile.status.in_([FAILED, ABANDONED])
    with engine.begin() as conn:
        named = conn.execute(select(WatchedFile.watch, WatchedFile.content_hash, WatchedFile.path,
                                    WatchedFile.status).where(matches, *scope)).all() if refs else []
        unknown = [r for r in refs if not any(r in (row.path, row.content_hash) for row in named)]
        if unknown:
            where = f" of the watch folder {watch}" if watch is not None else ""
            raise InputError(f"no watched file{where} is {', '.join(map(repr, unknown))}: give a path or content "
                             "hash as `nucleograph jobs files` lists them")
        chosen = [and_(WatchedFile.watch == w, WatchedFile.content_hash == h) for w, h, _, _ in named]
        if all_abandoned:
            chosen.append(and_(WatchedFile.status == ABANDONED, *scope))
        rows = [_row_dict(r) for r in conn.execute(
            select(WatchedFile.__table__).where(or_(*chosen), retryable))] if chosen else []
        for row in rows:
            conn.execute(update(WatchedFile).where(
                WatchedFile.watch == row["watch"], WatchedFile.content_hash == row["content_hash"], retryable,
            ).values(status=PENDING, attempts=0, owner=None, lease_until=None, next_attempt_at=utcnow(),
                     error=None))
    done = {(r["watch"], r["content_hash"]) for r in rows}
    skipped = [{"path": p, "status": s} for w, h, p, s in named if (w, h) not in done]
    return {"requeued": len(rows), "files": rows, "not_requeued": skipped}


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
            _trigger_due(now, max_attempts),
        ).values(status=CLAIMED, owner=owner, lease_until=until, attempts=RetrainTrigger.attempts + 1)).rowcount == 1


def _trigger_due(now: dt.datetime, max_attempts: int):
    """Triggers someone should (re)try now: expired claims and due failures, under ``max_attempts``
    attempts, and due ``pending`` ones (given back during an outage: no attempt spent)."""
    return or_(
        and_(RetrainTrigger.attempts < max_attempts,
             or_(and_(RetrainTrigger.status == CLAIMED, RetrainTrigger.lease_until < now),
                 and_(RetrainTrigger.status == FAILED, RetrainTrigger.next_attempt_at <= now))),
        and_(RetrainTrigger.status == PENDING, RetrainTrigger.next_attempt_at <= now),
    )


def pending_triggers(engine: Engine, *, cohort: str, max_attempts: int) -> list[dict[str, Any]]:
    """Triggers of ``cohort`` that someone should (re)try now: expired claims, due failures and due
    pending triggers."""
    stmt = select(RetrainTrigger).where(
        RetrainTrigger.cohort == cohort, _trigger_due(utcnow(), max_attempts),
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


def release_trigger(engine: Engine, *, cohort: str, trigger_id: str, owner: str, reason: str, wait: float) -> bool:
    """As :func:`release_file`, for a retraining trigger (its stage and run id are kept, so the next
    claim resumes it)."""
    where = and_(RetrainTrigger.cohort == cohort, RetrainTrigger.trigger_id == trigger_id,
                 RetrainTrigger.owner == owner, RetrainTrigger.status == CLAIMED)
    return _release(engine, RetrainTrigger, where, reason=reason, wait=wait)


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


# --- pruning -----------------------------------------------------------------------------------------
def prune_history(engine: Engine, *, keep_days: float | None, keep_rows: int | None,
                  keep_file: Callable[[dict[str, Any]], bool] | None = None, batch: int = 500) -> dict[str, int]:
    """Delete finished job runs and done files' rows beyond the limits; live state is never touched.

    A finished job run (succeeded, failed, lost) goes when it finished more than ``keep_days`` ago or
    is not among the ``keep_rows`` newest finished runs; a ``done`` file of the ledger likewise (by
    when it was done), unless ``keep_file(row)`` says to keep it. Running runs and pending, claimed,
    failed or abandoned files (:data:`LIVE`) always stay; so do retraining triggers (the newest one of
    a cohort is the baseline of "enough new labelled images").

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    keep_days : float or None
        Age limit in days; None or 0: none.
    keep_rows : int or None
        Rows kept per table (the newest); None or 0: no limit.
    keep_file : callable, optional
        ``keep_file(row) -> bool`` for each done file's row that the limits would delete (a dict as
        :func:`watched_files` gives it); True keeps it.
    batch : int
        Rows per ``DELETE`` statement.

    Returns
    -------
    dict
        ``job_runs`` and ``files``: how many rows were deleted.
    """
    cutoff = utcnow() - dt.timedelta(days=float(keep_days)) if keep_days else None
    runs_when = func.coalesce(JobRun.finished_at, JobRun.heartbeat_at)
    out = {"job_runs": 0, "files": 0}
    with engine.begin() as conn:
        finished = JobRun.status.in_(FINISHED_RUNS)
        limits = []
        if cutoff is not None:
            limits.append(runs_when < cutoff)
        if keep_rows:
            newest = select(JobRun.id).where(finished).order_by(JobRun.id.desc()).offset(keep_rows - 1).limit(1)
            edge = conn.execute(newest).scalar_one_or_none()
            if edge is not None:
                limits.append(JobRun.id < edge)
        if limits:
            out["job_runs"] = conn.execute(delete(JobRun).where(finished, or_(*limits))).rowcount
    with engine.begin() as conn:
        done = WatchedFile.status == DONE
        limits = []
        if cutoff is not None:
            limits.append(WatchedFile.done_at < cutoff)
        if keep_rows:  # files done at the same instant as the last one kept stay too
            edge = conn.execute(select(WatchedFile.done_at).where(done).order_by(WatchedFile.done_at.desc())
                                .offset(keep_rows - 1).limit(1)).scalar_one_or_none()
            if edge is not None:
                limits.append(WatchedFile.done_at < edge)
        if not limits:
            return out
        rows = [_row_dict(r) for r in conn.execute(select(WatchedFile.__table__).where(done, or_(*limits)))]
        gone: dict[str, list[str]] = {}
        for row in rows:
            if keep_file is None or not keep_file(row):
                gone.setdefault(row["watch"], []).append(row["content_hash"])
        for watch, hashes in gone.items():
            for start in range(0, len(hashes), batch):
                out["files"] += conn.execute(delete(WatchedFile).where(
                    done, WatchedFile.watch == watch, WatchedFile.content_hash.in_(hashes[start:start + batch]),
                )).rowcount
    return out


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
