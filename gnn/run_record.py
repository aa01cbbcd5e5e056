"""The SQL record of a training run (:class:`nucleograph.db.records.ModelRunRecord`) as
:func:`nucleograph.gnn.service.train_cohort` keeps it: ``running`` with the training process's pid and
host, then ``finished``, ``failed`` or ``interrupted``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from nucleograph.db import records as rec
from nucleograph.errors import InputError
from nucleograph.gnn.interrupt import resume_command


def resumed_params(engine: Engine, run_id: str, cohort: str) -> dict[str, Any]:
    """The recorded params of run ``run_id``, checked to be a run of ``cohort``."""
    with Session(engine) as session:
        row = session.get(rec.ModelRunRecord, run_id)
        if row is None:
            raise InputError(f"no run {run_id!r} to resume; `nucleograph runs` lists them")
        if row.cohort != cohort:
            raise InputError(f"run {run_id} trains on cohort {row.cohort!r}, not {cohort!r}: continue it with "
                             f"`{resume_command(row.cohort, run_id)}`")
        return dict(row.params)


def record_start(engine: Engine, run_id: str, *, new: dict[str, Any] | None) -> None:
    """Record ``run_id`` as running in this process: a new record with the fields ``new``, or (None) a
    resumed one."""
    if new is not None:
        rec.add_record(engine, rec.ModelRunRecord(id=run_id, status=rec.RUNNING, **new, **rec.this_process()))
        return
    with Session(engine) as session, session.begin():
        row = session.get(rec.ModelRunRecord, run_id)
        row.status, row.error = rec.RUNNING, None
        row.pid, row.host = rec.this_process()["pid"], rec.this_process()["host"]


def record_stop(engine: Engine, run_id: str, status: str, error: str) -> None:
    """Record that ``run_id`` stopped unfinished (``failed`` or ``interrupted``), and why."""
    with Session(engine) as session, session.begin():
        row = session.get(rec.ModelRunRecord, run_id)
        row.status, row.error = status, error


def record_finish(engine: Engine, run_id: str, *, metrics: dict, history: list, checkpoints: list[str]) -> None:
    """Record that ``run_id`` finished, with its test metrics, history and checkpoint paths."""
    with Session(engine) as session, session.begin():
        row = session.get(rec.ModelRunRecord, run_id)
        row.status, row.metrics, row.history = rec.FINISHED, metrics, history
        row.checkpoint = json.dumps(checkpoints)
        row.finished_at = dt.datetime.now(dt.UTC)
