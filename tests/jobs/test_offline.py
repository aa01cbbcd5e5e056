"""Job failures that need no Neo4j: an unreachable Neo4j fails the run, which is retried with backoff
and reported in the history; the file goes back to the ledger for a later retry."""

from __future__ import annotations

import json
import shutil

import pytest

from nucleograph.cli import main
from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.jobs.runtime import open_engine
from nucleograph.jobs.specs import SchedulerOptions, WatchSpec


@pytest.fixture
def offline_env(sql_url, tmp_path, monkeypatch, image_pool):
    """A Neo4j URI where nothing listens, this test's SQL database, one image in a watch folder."""
    import socket

    from jobs_helpers import drop

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"NUCLEOGRAPH_HOME": str(tmp_path / "home"), "NEO4J_URI": f"bolt://127.0.0.1:{port}",
           "NEO4J_PASSWORD": "unused-password", "NUCLEOGRAPH_SQL_URL": sql_url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    drop(image_pool[:1], tmp_path / "watch")
    return env


def test_unreachable_neo4j_is_retried_with_backoff_and_reported(offline_env, tmp_path, capsys):
    assert main(["jobs", "add", "watch", "--id", "w", "--cohort", "c", "--watch", str(tmp_path / "watch")]) == 0
    code = main(["jobs", "run-now", "w", "--settle", "0", "--job-retries", "2", "--backoff", "0.2"])
    assert code == 1
    assert "no Neo4j answers" in capsys.readouterr().err
    engine = open_engine(Settings.from_env(offline_env))
    history = ledger.job_history(engine, job_id="w")
    assert [(h["attempt"], h["status"]) for h in reversed(history)] == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert all("no Neo4j answers" in h["error"] for h in history)
    started = [h["started_at"] for h in reversed(history)]
    assert started == sorted(started)
    [row] = ledger.watched_files(engine)
    assert row["status"] == "failed" and row["attempts"] == 3 and "Neo4j" in row["error"]  # one per run
    assert main(["jobs", "history", "--status", "failed", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    engine.dispose()


def test_bad_job_definitions_are_refused_with_the_fix(offline_env, tmp_path, capsys):
    assert main(["jobs", "add", "retrain", "--id", "r", "--cohort", "c", "--cron", "every day"]) == 1
    assert "not a crontab expression" in capsys.readouterr().err
    assert main(["jobs", "add", "retrain", "--id", "r", "--cohort", "c", "--min-new", "3", "--explain", "magic"]) == 1
    assert "choose one of" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "watch")
    assert main(["jobs", "add", "watch", "--id", "w", "--cohort", "c", "--watch", str(tmp_path / "watch")]) == 0
    assert main(["jobs", "run-now", "w"]) == 1  # a missing folder is not retried: it needs a person
    assert "does not exist" in capsys.readouterr().err
    engine = open_engine(Settings.from_env(offline_env))
    assert [h["status"] for h in ledger.job_history(engine, job_id="w")] == ["failed"]
    engine.dispose()


def test_scheduler_options_are_checked():
    with pytest.raises(ValueError, match="--lease"):
        SchedulerOptions(lease=0.1)
    with pytest.raises(ValueError, match="--interval"):
        WatchSpec(watch="/tmp", cohort="c", interval=0)


def test_a_bad_mpp_in_a_watched_manifest_fails_the_run_with_the_fix(offline_env, tmp_path, capsys):
    # the manifest is read as `nucleograph ingest` reads it: the scan stops at the bad row, not retried
    (tmp_path / "watch" / "manifest.csv").write_text("path,label,mpp\nInSitu/later.png,InSitu,fast\n")
    assert main(["jobs", "add", "watch", "--id", "w", "--cohort", "c", "--watch", str(tmp_path / "watch")]) == 0
    assert main(["jobs", "run-now", "w", "--settle", "0"]) == 1
    assert "manifest.csv, line 2: mpp must be a positive number" in capsys.readouterr().err
    engine = open_engine(Settings.from_env(offline_env))
    [run] = ledger.job_history(engine, job_id="w")
    assert run["status"] == "failed" and "mpp must be a positive number" in run["error"]
    assert ledger.watched_files(engine) == []
    engine.dispose()
