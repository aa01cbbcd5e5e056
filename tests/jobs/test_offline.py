"""Job failures that need no Neo4j: an unreachable Neo4j fails the run, which is retried with backoff
and reported in the history, and spends none of the file's attempts; bad job definitions are refused
when added; files are re-queued and the history pruned from the command line and by the scheduler."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import socket
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from sqlalchemy import update

from nucleograph.cli import main
from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.db.graphdb import GraphDB
from nucleograph.jobs.execute import execute
from nucleograph.jobs.runtime import is_outage, open_engine, open_runtime
from nucleograph.jobs.specs import RetrainSpec, SchedulerOptions, WatchSpec


@pytest.fixture
def offline_env(sql_url, tmp_path, monkeypatch, image_pool):
    """A Neo4j URI where nothing listens, this test's SQL database, one image in a watch folder."""
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
    for _ in range(3):  # more runs than --max-attempts
        code = main(["jobs", "run-now", "w", "--settle", "0", "--job-retries", "2", "--backoff", "0.2",
                     "--max-attempts", "2"])
        assert code == 1
        assert "no Neo4j answers" in capsys.readouterr().err
    engine = open_engine(Settings.from_env(offline_env))
    history = ledger.job_history(engine, job_id="w")
    assert [(h["attempt"], h["status"]) for h in reversed(history)] == [(1, "failed"), (2, "failed"), (3, "failed")] * 3
    assert all("no Neo4j answers" in h["error"] for h in history)
    started = [h["started_at"] for h in reversed(history)]
    assert started == sorted(started)
    assert ledger.watched_files(engine) == []  # Neo4j did not answer: no file was claimed, none spent an attempt
    assert main(["jobs", "history", "--status", "failed", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 9
    engine.dispose()


def test_neo4j_lost_mid_run_gives_the_file_back_without_spending_attempts(offline_env, tmp_path, monkeypatch):
    """The issue's outage: the scheduler's driver was open when Neo4j went away, and each retry of a
    valid file spent one of its attempts until it was abandoned, never to be ingested."""
    monkeypatch.setenv("NUCLEOGRAPH_NEO4J_RETRY_SECONDS", "0.2")
    settings = Settings.from_env()
    options = SchedulerOptions(max_attempts=2, job_retries=0, backoff=0, settle=0)
    spec = asdict(WatchSpec(watch=str(tmp_path / "watch"), cohort="c"))
    with open_runtime(settings, options) as rt:
        rt._db = GraphDB.open(settings, verify=False)  # opened before the outage: no check on first use
        address = settings.neo4j_uri.removeprefix("bolt://")
        for _ in range(2 * options.max_attempts + 1):
            with pytest.raises(Exception, match=re.escape(address)) as raised:  # the run fails (and is retried)
                execute(rt, job_id="w", kind="watch", spec=spec, trigger="manual")
            assert is_outage(raised.value), raised.value
            [row] = ledger.watched_files(rt.engine)
            assert (row["status"], row["attempts"]) == ("pending", 0)
            assert row["error"].startswith("waiting for the database: ") and address in row["error"]
        history = ledger.job_history(rt.engine, job_id="w")
        assert len(history) == 2 * options.max_attempts + 1 and {h["status"] for h in history} == {"failed"}


def test_bad_job_definitions_are_refused_with_the_fix(offline_env, tmp_path, capsys):
    watch, afile = tmp_path / "watch", tmp_path / "afile.png"
    afile.write_bytes(b"x")
    refused = [
        (["retrain", "--id", "r", "--cohort", "c", "--cron", "every day"], "not a crontab expression"),
        (["retrain", "--id", "r", "--cohort", "c", "--min-new", "3", "--explain", "magic"], "choose one of"),
        (["retrain", "--id", "r", "--cohort", "c", "--min-new", "3", "--model", "gcn"],
         r"--model 'gcn' is not a model: choose one of rsf, rsf-edge, rsf-attention, mlp"),
        (["retrain", "--id", "r", "--cohort", "c", "--min-new", "3", "--folds", "0"], "--folds must be at least 1"),
        (["retrain", "--id", "r", "--cohort", " ", "--min-new", "3"], "needs --cohort"),
        (["watch", "--id", "w", "--cohort", "", "--watch", str(watch)], "needs --cohort"),
        (["watch", "--id", "w", "--cohort", " c", "--watch", str(watch)], "without leading or trailing spaces"),
        (["watch", "--id", "", "--cohort", "c", "--watch", str(watch)], "needs a non-empty --id"),
        (["watch", "--id", "w", "--cohort", "c", "--watch", str(tmp_path / "ghost")],
         f"watch folder {tmp_path / 'ghost'} does not exist: create it .* or fix --watch"),
        (["watch", "--id", "w", "--cohort", "c", "--watch", str(afile)], f"--watch {afile} is a file, not a folder"),
    ]
    for args, message in refused:
        assert main(["jobs", "add", *args]) == 1, args
        assert re.search(message, capsys.readouterr().err), (args, message)
    assert main(["jobs", "add", "watch", "--id", "w", "--cohort", "c", "--watch", str(tmp_path / "ghost"),
                 "--replace"]) == 1  # --replace is refused alike
    capsys.readouterr()
    assert main(["jobs", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # nothing was stored

    assert main(["jobs", "add", "watch", "--id", "w", "--cohort", "c", "--watch", str(watch)]) == 0
    shutil.rmtree(watch)  # gone after the job was stored
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
    with pytest.raises(ValueError, match="needs --watch FOLDER"):
        WatchSpec(watch="", cohort="c")
    with pytest.raises(ValueError, match="--cohort 'x{300}': use at most 200"):
        WatchSpec(watch="/tmp", cohort="x" * 300)
    with pytest.raises(ValueError, match="--lr must be positive"):
        RetrainSpec(cohort="c", min_new=1, lr=0)
    with pytest.raises(ValueError, match="--hops must be at least 1"):
        RetrainSpec(cohort="c", min_new=1, hops=0)
    with pytest.raises(ValueError, match="scheduler option prune_every must be >= 0"):
        SchedulerOptions(prune_every=-1)
    with pytest.raises(ValueError, match="NUCLEOGRAPH_JOBS_KEEP_DAYS='soon' must be a number >= 0"):
        Settings.from_env({"NUCLEOGRAPH_JOBS_KEEP_DAYS": "soon"})
    with pytest.raises(ValueError, match="NUCLEOGRAPH_JOBS_KEEP_ROWS='-5' must be a number >= 0"):
        Settings.from_env({"NUCLEOGRAPH_JOBS_KEEP_ROWS": "-5"})
    limits = Settings.from_env({"NUCLEOGRAPH_JOBS_KEEP_DAYS": "7.5", "NUCLEOGRAPH_JOBS_KEEP_ROWS": "0"})
    assert (limits.jobs_keep_days, limits.jobs_keep_rows) == (7.5, 0)


def test_retraining_trains_as_train_does_by_default():
    from nucleograph.db.runs import DEFAULT_METHOD
    from nucleograph.gnn.models import DEFAULT_MODEL
    from nucleograph.gnn.train import TrainConfig

    # the spec does not import torch, so its defaults are written out; they must stay train's
    spec = RetrainSpec(cohort="c", min_new=1)
    assert (spec.model, spec.epochs, spec.lr, spec.seed, spec.batch_size, spec.patience, spec.ensemble) == (
        DEFAULT_MODEL, TrainConfig.epochs, TrainConfig.lr, TrainConfig.seed, TrainConfig.batch_size,
        TrainConfig.patience, TrainConfig.ensemble)
    assert spec.explain == DEFAULT_METHOD


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


def test_outages_are_told_apart_from_bad_files(postgres_server):
    from neo4j.exceptions import ServiceUnavailable
    from sqlalchemy import create_engine, text

    from nucleograph.errors import DatabaseError, InputError

    with socket.socket() as s:  # a PostgreSQL port where nothing listens: the records database is down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{port}/x")
    with pytest.raises(Exception) as sql_down:
        with down.connect() as conn:
            conn.execute(text("SELECT 1"))
    down.dispose()
    assert is_outage(sql_down.value)
    assert is_outage(DatabaseError("no Neo4j answers at bolt://x"))
    try:
        raise RuntimeError("training stopped") from ServiceUnavailable("gone")
    except RuntimeError as exc:
        assert is_outage(exc)
    assert not is_outage(InputError("x.png: not an image"))
    assert not is_outage(ValueError("bad pixels"))


def _abandon(engine, path: Path, digest: str, *, max_attempts: int = 1) -> None:
    assert ledger.claim_file(engine, watch=str(path.parents[1]), content_hash=digest, cohort="c", path=str(path),
                             size=1, mtime_ns=1, label=None, owner="old", lease=30, max_attempts=max_attempts)
    ledger.fail_file(engine, watch=str(path.parents[1]), content_hash=digest, owner="old", error="Neo4j down",
                     max_attempts=max_attempts, backoff=600, backoff_max=600)


def test_jobs_retry_requeues_abandoned_files(offline_env, tmp_path, capsys, monkeypatch):
    watch = tmp_path / "watch"
    assert main(["jobs", "add", "watch", "--id", "w", "--cohort", "c", "--watch", str(watch)]) == 0
    assert main(["jobs", "add", "retrain", "--id", "r", "--cohort", "c", "--min-new", "2"]) == 0
    capsys.readouterr()
    engine = open_engine(Settings.from_env(offline_env))
    [image] = sorted(watch.rglob("*.png"))
    _abandon(engine, image, "a" * 16)
    _abandon(engine, watch / "Benign" / "b.png", "b" * 16)
    _abandon(engine, watch / "Benign" / "c.png", "c" * 16, max_attempts=5)  # failed, waiting 10 minutes
    other = tmp_path / "other" / "X" / "d.png"
    _abandon(engine, other, "d" * 16)
    assert ledger.claim_file(engine, watch=str(watch), content_hash="e" * 16, cohort="c", path=str(watch / "e.png"),
                             size=1, mtime_ns=1, label=None, owner="old", lease=30, max_attempts=1)
    ledger.finish_file(engine, watch=str(watch), content_hash="e" * 16, owner="old", image_id="e", outcome="stored")

    assert main(["jobs", "retry"]) == 1
    assert "or pass --all-abandoned" in capsys.readouterr().err
    assert main(["jobs", "retry", str(image), str(tmp_path / "ghost.png")]) == 1
    assert f"no watched file is '{tmp_path / 'ghost.png'}'" in capsys.readouterr().err
    assert main(["jobs", "retry", "--all-abandoned", "--job", "r"]) == 1
    assert "is a retrain job: --job takes a watch job" in capsys.readouterr().err
    assert main(["jobs", "retry", "--all-abandoned", "--job", "nope"]) == 1
    assert "no job 'nope'" in capsys.readouterr().err
    assert main(["jobs", "retry", str(other), "--job", "w"]) == 1  # not a file of that job's folder
    assert f"no watched file of the watch folder {watch} is '{other}'" in capsys.readouterr().err
    assert ledger.watched_files(engine, status="pending") == []  # refused: nothing changed

    assert main(["jobs", "retry", "--all-abandoned", "--job", "w"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("re-queued 2 file(s)") and str(image) in out and "b.png" in out
    (watch / "Benign").mkdir()
    monkeypatch.chdir(watch / "Benign")  # a relative path, and a content hash
    assert main(["jobs", "retry", "c.png", "e" * 16, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["requeued"] == 1 and result["not_requeued"] == [{"path": str(watch / "e.png"), "status": "done"}]
    rows = {r["content_hash"][0]: r for r in ledger.watched_files(engine)}
    assert {k: (r["status"], r["attempts"]) for k, r in rows.items()} == {
        "a": ("pending", 0), "b": ("pending", 0), "c": ("pending", 0), "d": ("abandoned", 1), "e": ("done", 1)}
    assert main(["jobs", "files", "--status", "pending", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert main(["jobs", "retry", "--all-abandoned"]) == 0  # every folder's
    assert capsys.readouterr().out.startswith("re-queued 1 file(s)")
    engine.dispose()


def _history(engine, *, days_old: float, n: int, file: Path | None = None, digest: str = "") -> None:
    """``n`` finished job runs (and a done file) that finished ``days_old`` days ago."""
    when = ledger.utcnow() - dt.timedelta(days=days_old)
    for _ in range(n):
        run = ledger.start_run(engine, job_id="w", kind="watch", trigger="schedule", owner="old")
        ledger.finish_run(engine, run, status="succeeded")
        with engine.begin() as conn:
            conn.execute(update(ledger.JobRun).where(ledger.JobRun.id == run).values(finished_at=when))
    if file is not None:
        watch = str(file.parents[1])
        assert ledger.claim_file(engine, watch=watch, content_hash=digest, cohort="c", path=str(file), size=1,
                                 mtime_ns=1, label=None, owner="old", lease=30, max_attempts=1)
        ledger.finish_file(engine, watch=watch, content_hash=digest, owner="old", image_id=digest, outcome="stored")
        with engine.begin() as conn:
            conn.execute(update(ledger.WatchedFile).where(ledger.WatchedFile.content_hash == digest)
                         .values(done_at=when))


def test_jobs_prune_deletes_old_history_but_not_files_still_watched(offline_env, tmp_path, capsys):
    watch = tmp_path / "watch"
    engine = open_engine(Settings.from_env(offline_env))
    [image] = sorted(watch.rglob("*.png"))
    _history(engine, days_old=40, n=3, file=image, digest="a" * 16)  # done, and still in the folder
    _history(engine, days_old=40, n=0, file=watch / "X" / "moved-away.png", digest="b" * 16)
    _history(engine, days_old=40, n=0, file=tmp_path / "unseen" / "X" / "y.png", digest="c" * 16)  # no such folder
    _history(engine, days_old=2, n=4)
    _abandon(engine, watch / "X" / "bad.png", "d" * 16)
    with engine.begin() as conn:
        conn.execute(update(ledger.WatchedFile).values(first_seen=ledger.utcnow() - dt.timedelta(days=400)))

    assert main(["jobs", "prune", "--keep-days", "-1"]) == 1
    assert "--keep-days must be >= 0" in capsys.readouterr().err
    assert main(["jobs", "prune", "--json"]) == 0  # the defaults: 30 days, 100000 rows
    assert json.loads(capsys.readouterr().out) == {"job_runs": 3, "files": 1, "keep_days": 30.0, "keep_rows": 100000}
    assert {r["content_hash"][0] for r in ledger.watched_files(engine)} == {"a", "c", "d"}
    assert main(["jobs", "prune", "--keep-days", "0", "--keep-rows", "2"]) == 0
    assert capsys.readouterr().out.startswith("pruned 2 job run(s) and 0 done file record(s)")
    assert len(ledger.job_history(engine)) == 2
    engine.dispose()


def test_the_scheduler_prunes_with_the_configured_limits(offline_env, tmp_path, monkeypatch):
    from nucleograph.jobs.scheduler import serve

    monkeypatch.setenv("NUCLEOGRAPH_JOBS_KEEP_DAYS", "1")
    settings = Settings.from_env()
    engine = open_engine(settings)
    _history(engine, days_old=3, n=5, file=tmp_path / "watch" / "X" / "gone.png", digest="a" * 16)
    _history(engine, days_old=0.5, n=2)
    _abandon(engine, tmp_path / "watch" / "X" / "bad.png", "b" * 16)
    stop = threading.Event()
    server = threading.Thread(target=serve, args=(settings, SchedulerOptions(poll=0.2)), kwargs={"stop": stop})
    server.start()
    try:
        deadline = time.monotonic() + 60
        while len(ledger.job_history(engine)) != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        server.join(60)
    assert len(ledger.job_history(engine)) == 2
    assert [r["status"] for r in ledger.watched_files(engine)] == ["abandoned"]
    assert ledger.locks(engine) == []  # the pruning lock was released
    engine.dispose()
