"""Run, ingest and job records in SQL (SQLAlchemy): SQLite under NUCLEOGRAPH_HOME by default,
any SQLAlchemy URL (e.g. ``postgresql+psycopg2://...``) through ``NUCLEOGRAPH_SQL_URL``."""

from __future__ import annotations

import datetime as dt
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
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from nucleograph.config import Settings


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
