"""Run, ingest and job records in SQL (SQLAlchemy): SQLite under NUCLEOGRAPH_HOME by default,
any SQLAlchemy URL (e.g. ``postgresql+psycopg2://...``) through ``NUCLEOGRAPH_SQL_URL``."""

from __future__ import annotations

import datetime as dt
import os
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.schema import CreateColumn

from nucleograph.config import Settings
from nucleograph.errors import DatabaseError


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    pass


class IngestRecord(Base):
    """One attempt to ingest one image into one cohort."""

    __tablename__ = "ingest_records"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cohort: Mapped[str] = mapped_column(String(200), index=True)
    path: Mapped[str] = mapped_column(Text)
    image_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    label: Mapped[str | None] = mapped_column(String(100), nullable=True)
    status: Mapped[str] = mapped_column(String(20))  # stored | unchanged | replaced | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    detector: Mapped[str | None] = mapped_column(String(40), nullable=True)
    params_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    nuclei: Mapped[int] = mapped_column(Integer, default=0)
    edges: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


class ModelRunRecord(Base):
    """One training run: model, hyperparameters, data version, metrics, checkpoint."""

    __tablename__ = "model_runs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    cohort: Mapped[str] = mapped_column(String(200), index=True)
    model: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="running")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)
    checkpoint: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # the process training it (this_process()), so a run killed with -9 is told from a live one
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)


class EvaluationRecord(Base):
    """One evaluation of an explanation (``nucleograph evaluate``): overall means of its metrics, and the
    whole summary (per class, per role, per image) as JSON."""

    __tablename__ = "explanation_evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(40), index=True)
    cohort: Mapped[str] = mapped_column(String(200), index=True)
    method: Mapped[str] = mapped_column(String(40))
    hops: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output: Mapped[str | None] = mapped_column(String(20), nullable=True)
    explanation_key: Mapped[str] = mapped_column(String(200), index=True)
    n_images: Mapped[int] = mapped_column(Integer, default=0)
    deletion_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    deletion_random_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    deletion_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)  # lower is better
    insertion_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    insertion_random_auc: Mapped[float | None] = mapped_column(Float, nullable=True)
    insertion_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)  # higher is better
    sparsity: Mapped[float | None] = mapped_column(Float, nullable=True)
    tie_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    stability: Mapped[float | None] = mapped_column(Float, nullable=True)
    structure_auroc: Mapped[float | None] = mapped_column(Float, nullable=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)


def open_engine(settings: Settings) -> Engine:
    """The SQL engine for the run records, with tables created if missing."""
    url = settings.sql_url
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # concurrent ingest workers write records too
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=60000")
            # WAL is a property of the file: set once. Switching needs the database to itself and SQLite
            # answers "database is locked" at once instead of waiting, so retry while others open it.
            deadline = time.monotonic() + 60
            while True:
                try:
                    if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        cur.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    create_schema(engine, Base.metadata)
    return engine


# Any fixed 64-bit number, the same in every nucleograph process sharing a database.
_SCHEMA_LOCK_KEY = 0x6E75636C656F


def create_schema(engine: Engine, *metadatas: MetaData) -> None:
    """Create the tables of ``metadatas`` that are missing, safely when several processes start at once.

    ``create_all`` checks, then creates: two processes starting together against PostgreSQL can both
    see a table missing and the second ``CREATE TABLE`` fails on the catalogue's unique index. Here the
    check and the creation run in one transaction holding a PostgreSQL advisory lock, so they are
    serialised and the second process finds the tables made (DDL is transactional in PostgreSQL).
    SQLite: Python's driver opens no transaction for a SELECT or DDL by itself, so the same race
    exists there; ``BEGIN IMMEDIATE`` takes the database's write lock for check and creation.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        for metadata in metadatas:
            metadata.create_all(conn)
            _add_missing_columns(conn, metadata)


def _add_missing_columns(conn: Connection, metadata: MetaData) -> None:
    """Add the nullable columns a model gained since its table was created (``create_all`` skips tables
    that exist), e.g. ``model_runs.pid`` in a records database of an older version."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable:
                raise DatabaseError(f"{table.name}.{column.name} is missing and NOT NULL: migrate it by hand")
            # names from the model above, never user text
            conn.execute(text(f"ALTER TABLE {conn.dialect.identifier_preparer.format_table(table)} ADD COLUMN "
                              f"{CreateColumn(column).compile(dialect=conn.dialect)}"))


def add_record(engine: Engine, record: Base) -> None:
    with Session(engine) as session, session.begin():
        session.add(record)


def ingest_records(engine: Engine, *, cohort: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    stmt = select(IngestRecord).order_by(IngestRecord.id.desc()).limit(limit)
    if cohort is not None:
        stmt = stmt.where(IngestRecord.cohort == cohort)
    with Session(engine) as session:
        return [_as_dict(r) for r in session.scalars(stmt)]


def _as_dict(row: Base) -> dict[str, Any]:
    out = {}
    for col in row.__table__.columns:
        value = getattr(row, col.name)
        out[col.name] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out


RUNNING, INTERRUPTED, FAILED, FINISHED = "running", "interrupted", "failed", "finished"


def this_process() -> dict[str, Any]:
    """``pid`` and ``host`` of the calling process, as a :class:`ModelRunRecord` stores them."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def process_gone(pid: int | None, host: str | None) -> bool:
    """True when process ``pid`` of ``host`` surely no longer runs.

    False when it runs, or when that cannot be told: no pid recorded (older runs) or another host.
    """
    if pid is None or host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def mark_dead_runs(engine: Engine, *, cohort: str | None = None) -> list[str]:
    """Mark ``running`` runs whose training process is gone ``interrupted``; returns their ids.

    A run stopped by Ctrl-C or SIGTERM marks itself; one killed with -9 (or by the machine going
    down) cannot, so its record says ``running`` until this notices its process has ended.

    Parameters
    ----------
    engine : Engine
    cohort : str, optional
        Only this cohort's runs.

    Returns
    -------
    list of str
    """
    stmt = select(ModelRunRecord).where(ModelRunRecord.status == RUNNING)
    if cohort is not None:
        stmt = stmt.where(ModelRunRecord.cohort == cohort)
    marked = []
    with Session(engine) as session, session.begin():
        for row in session.scalars(stmt).all():
            if not process_gone(row.pid, row.host):
                continue
            # only if no resumed trainer took the run over since it was read
            done = session.execute(
                update(ModelRunRecord)
                .where(ModelRunRecord.id == row.id, ModelRunRecord.status == RUNNING,
                       ModelRunRecord.pid == row.pid, ModelRunRecord.host == row.host)
                .values(status=INTERRUPTED, error=f"its training process (pid {row.pid} on {row.host}) ended "
                                                  "before the run finished: killed?")
                .execution_options(synchronize_session=False)
            )
            if done.rowcount:
                marked.append(row.id)
    return marked


def unfinished_runs(engine: Engine, *, cohort: str | None = None) -> list[dict[str, Any]]:
    """Runs not ``finished`` (running, interrupted, failed), newest first; Neo4j holds finished runs only.

    Parameters
    ----------
    engine : Engine
    cohort : str, optional
        Only this cohort's runs.

    Returns
    -------
    list of dict
        ``id, cohort, model, status, error, created_at, pid, host``.
    """
    stmt = (select(ModelRunRecord).where(ModelRunRecord.status != FINISHED)
            .order_by(ModelRunRecord.created_at.desc()))
    if cohort is not None:
        stmt = stmt.where(ModelRunRecord.cohort == cohort)
    keys = ("id", "cohort", "model", "status", "error", "created_at", "pid", "host")
    with Session(engine) as session:
        return [{k: v for k, v in _as_dict(r).items() if k in keys} for r in session.scalars(stmt)]


def add_evaluation(engine: Engine, **fields: Any) -> dict[str, Any]:
    """Record one explanation evaluation (the columns of :class:`EvaluationRecord`); returns the stored row.

    Parameters
    ----------
    engine : Engine
    **fields
        ``run_id, cohort, method, hops, output, explanation_key, n_images``, the metric columns and
        ``summary`` (strict JSON: no NaN).

    Returns
    -------
    dict
        The row, with its ``id`` and ``created_at``.
    """
    with Session(engine, expire_on_commit=False) as session, session.begin():
        row = EvaluationRecord(**fields)
        session.add(row)
    return _as_dict(row)


def evaluations(engine: Engine, *, run_id: str | None = None, cohort: str | None = None,
                limit: int = 1000) -> list[dict[str, Any]]:
    """Recorded explanation evaluations, newest first (of ``run_id`` or ``cohort`` only, when given).

    Parameters
    ----------
    engine : Engine
    run_id, cohort : str, optional
    limit : int

    Returns
    -------
    list of dict
        Every column of :class:`EvaluationRecord`.
    """
    stmt = select(EvaluationRecord).order_by(EvaluationRecord.id.desc()).limit(limit)
    if run_id is not None:
        stmt = stmt.where(EvaluationRecord.run_id == run_id)
    if cohort is not None:
        stmt = stmt.where(EvaluationRecord.cohort == cohort)
    with Session(engine) as session:
        return [_as_dict(r) for r in session.scalars(stmt)]
