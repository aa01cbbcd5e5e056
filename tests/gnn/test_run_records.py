"""Run records in SQL (SQLite here): the training process is recorded, so a run whose process is gone
is told from a live one, and older records databases gain the new columns."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from sqlalchemy.orm import Session

from nucleograph.config import Settings
from nucleograph.db import records as rec


def _settings(tmp_path) -> Settings:
    return Settings.from_env({"NUCLEOGRAPH_HOME": str(tmp_path)})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_running_runs_of_gone_processes_become_interrupted(tmp_path):
    engine = rec.open_engine(_settings(tmp_path))
    here = rec.this_process()
    runs = {
        "rdead000001": {"pid": _dead_pid(), "host": here["host"]},  # killed with -9
        "rlive000001": here,  # this process: alive
        "rhost000001": {"pid": _dead_pid(), "host": here["host"] + "-elsewhere"},  # cannot be checked
        "rold0000001": {"pid": None, "host": None},  # recorded before pids were
    }
    for run_id, proc in runs.items():
        rec.add_record(engine, rec.ModelRunRecord(id=run_id, cohort="c", model="rsf", status="running", **proc))
    rec.add_record(engine, rec.ModelRunRecord(id="rdone000001", cohort="c", model="rsf", status="finished",
                                              pid=_dead_pid(), host=here["host"]))

    assert rec.mark_dead_runs(engine, cohort="other") == []
    assert rec.mark_dead_runs(engine) == ["rdead000001"]
    assert rec.mark_dead_runs(engine) == []  # marked once
    status = {r["id"]: r["status"] for r in rec.unfinished_runs(engine)}
    assert status == {"rdead000001": "interrupted", "rlive000001": "running", "rhost000001": "running",
                      "rold0000001": "running"}  # finished runs are not listed
    with Session(engine) as session:
        assert "ended before the run finished" in session.get(rec.ModelRunRecord, "rdead000001").error
    engine.dispose()


def test_an_older_records_database_gains_the_process_columns(tmp_path):
    # model_runs as versions before the pid and host columns created it, with a run in it
    con = sqlite3.connect(tmp_path / "records.sqlite")
    con.execute("CREATE TABLE model_runs (id VARCHAR(40) NOT NULL PRIMARY KEY, cohort VARCHAR(200) NOT NULL, "
                "model VARCHAR(40) NOT NULL, status VARCHAR(20) NOT NULL, params JSON NOT NULL, "
                "data_version VARCHAR(64), metrics JSON NOT NULL, history JSON NOT NULL, checkpoint TEXT, "
                "error TEXT, created_at DATETIME NOT NULL, finished_at DATETIME)")
    con.execute("INSERT INTO model_runs VALUES ('rold0000001', 'c', 'rsf', 'running', '{}', NULL, '{}', '[]', "
                "NULL, NULL, '2024-01-01 00:00:00', NULL)")
    con.commit()
    con.close()
    engine = rec.open_engine(_settings(tmp_path))
    assert rec.unfinished_runs(engine)[0] | {"created_at": None} == {
        "id": "rold0000001", "cohort": "c", "model": "rsf", "status": "running", "error": None,
        "created_at": None, "pid": None, "host": None}
    rec.add_record(engine, rec.ModelRunRecord(id="rnew0000001", cohort="c", model="rsf", **rec.this_process()))
    engine.dispose()
    engine = rec.open_engine(_settings(tmp_path))  # a second open finds the columns there
    assert {r["id"]: r["pid"] for r in rec.unfinished_runs(engine)}["rnew0000001"] == rec.this_process()["pid"]
    engine.dispose()
