"""`nucleograph scheduler` against the real test Neo4j and real SQL (SQLite and PostgreSQL): files
dropped into a watched folder are ingested once, also with two schedulers, beside a manual ingest and
across a SIGKILL; retraining trains once per trigger and explains the run; failures are retried and
reported; a Neo4j or SQL outage spends no file's attempts and loses no file."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from jobs_helpers import TcpProxy, drop, wait_for
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from nucleograph.cli import main
from nucleograph.config import Settings
from nucleograph.db import ledger, store
from nucleograph.db import records as rec
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.pipeline import IngestParams, content_hash
from nucleograph.ingest.run import ingest_records
from nucleograph.jobs.runtime import open_engine

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

FAST = ["--interval", "0.5", "--poll", "0.5", "--settle", "0.2", "--lease", "3", "--backoff", "0.5"]


def _engine(env):
    return open_engine(Settings.from_env(env))


def _files(engine, cohort):
    return ledger.watched_files(engine, cohort=cohort)


def _done(engine, cohort, n):
    rows = _files(engine, cohort)
    return len(rows) == n and all(r["status"] == "done" for r in rows)


def _clean_counts(graphdb, settings, images, cohort):
    """The counts of a clean, single ingest of the same files (into a cohort of its own)."""
    records = [ImageRecord(path=p, label=label) for p, label in images]
    summary = ingest_records(records, cohort=cohort, params=IngestParams(), settings=settings, db=graphdb)
    assert summary.failed == 0
    return store.cohort_counts(graphdb, cohort)


def _counts(graphdb, cohort):
    return store.cohort_counts(graphdb, cohort)


def _remote_env(env: dict[str, str], settings: Settings) -> dict[str, str]:
    """The same server under a name that is not a loopback literal (as `bolt://neo4j:7687` in
    docker-compose), so the code takes its remote path: no local server management, password from
    NEO4J_PASSWORD."""
    host = socket.gethostname()
    try:
        socket.create_connection((host, settings.neo4j_port), timeout=5).close()
    except OSError as exc:
        pytest.fail(f"this host's name {host!r} does not reach the test Neo4j on port {settings.neo4j_port} "
                    f"({exc}); map it to 127.0.0.1 in /etc/hosts")
    out = dict(env)
    out["NEO4J_URI"] = f"neo4j://{host}:{settings.neo4j_port}"
    out["NEO4J_PASSWORD"] = settings.password()
    assert not Settings.from_env(out).is_local
    return out


# SQLite with the local server; PostgreSQL with a remote-style NEO4J_URI, as docker-compose runs it
@pytest.mark.parametrize(("sql_url", "remote"), [("sqlite", False), ("postgresql", True)],
                         ids=["sqlite-local-uri", "postgresql-remote-uri"], indirect=["sql_url"])
def test_dropped_files_are_ingested_once(remote, sql_url, scheduler_env, start_scheduler, fresh_images, tmp_path,
                                         graphdb, neo4j_settings, unique_name):
    env = _remote_env(scheduler_env, neo4j_settings) if remote else scheduler_env
    watch = tmp_path / "watch"
    watch.mkdir()
    images = fresh_images(4)
    engine = _engine(env)
    p = start_scheduler(["--watch", str(watch), "--cohort", unique_name, *FAST], env)
    drop(images[:2], watch)
    wait_for(lambda: _done(engine, unique_name, 2), timeout=90, what="the first two files", procs=[p])
    drop(images[2:], watch)
    # the same content again under another name, and a file already ingested, touched: nothing new
    drop([(images[0][0], "Other")], watch)
    os.utime(watch / images[1][1] / images[1][0].name)
    wait_for(lambda: _done(engine, unique_name, 4), timeout=90, what="all four files", procs=[p])
    wait_for(lambda: ledger.job_history(engine, status="succeeded", limit=5), timeout=10, what="a finished run")
    assert p.stop() == 0, p.output()

    clean = _clean_counts(graphdb, neo4j_settings, images, unique_name + "-clean")
    assert _counts(graphdb, unique_name) == clean and clean["images"] == 4
    rows = _files(engine, unique_name)
    assert sorted(r["outcome"] for r in rows) == ["stored"] * 4 and all(r["attempts"] == 1 for r in rows)
    with Session(engine) as s:  # one ingest record per file: nothing was ingested twice
        paths = s.scalars(select(rec.IngestRecord.path).where(rec.IngestRecord.cohort == unique_name)).all()
    assert len(paths) == 4
    labels = {r["label"] for r in store.cohort_images(graphdb, unique_name)}
    assert labels == {"InSitu", "Invasive"}
    assert "remote" not in p.output() or remote
    engine.dispose()


def test_kill_9_mid_ingest_then_restart_loses_and_duplicates_nothing(
        sql_url, scheduler_env, start_scheduler, fresh_images, tmp_path, graphdb, neo4j_settings, unique_name):
    watch = tmp_path / "watch"
    images = fresh_images(6)
    drop(images, watch)
    engine = _engine(scheduler_env)
    args = ["--watch", str(watch), "--cohort", unique_name, *FAST]
    first = start_scheduler(args, scheduler_env)

    def mid_ingest():
        rows = _files(engine, unique_name)
        return any(r["status"] == "done" for r in rows) and any(r["status"] == "claimed" for r in rows)

    wait_for(mid_ingest, timeout=90, what="the first file done and another one claimed", procs=[first],
             interval=0.05)
    first.kill9()
    before = _files(engine, unique_name)
    assert len([r for r in before if r["status"] == "done"]) < 6

    second = start_scheduler(args, scheduler_env)
    wait_for(lambda: _done(engine, unique_name, 6), timeout=120, what="all files after the restart", procs=[second])
    # the killed run shows in the history as lost once its heartbeat is stale
    wait_for(lambda: ledger.job_history(engine, status="lost"), timeout=20, what="the killed run marked lost",
             procs=[second])
    assert second.stop() == 0

    clean = _clean_counts(graphdb, neo4j_settings, images, unique_name + "-clean")
    assert _counts(graphdb, unique_name) == clean and clean["images"] == 6
    rows = _files(engine, unique_name)
    assert len({r["content_hash"] for r in rows}) == 6
    taken_over = [r for r in rows if r["attempts"] == 2]
    assert taken_over, "the claim the killed scheduler held was not taken over"
    engine.dispose()


def test_two_schedulers_at_once_ingest_once_and_train_once(
        sql_url, scheduler_env, start_scheduler, fresh_images, tmp_path, graphdb, neo4j_settings, unique_name):
    watch = tmp_path / "watch"
    watch.mkdir()
    images = fresh_images(6)
    engine = _engine(scheduler_env)
    args = ["--watch", str(watch), "--cohort", unique_name, *FAST, "--retrain-min-new", "6",
            "--retrain-interval", "1", "--epochs", "2"]
    a = start_scheduler(args, scheduler_env)
    b = start_scheduler(args, scheduler_env)
    drop(images, watch)
    wait_for(lambda: _done(engine, unique_name, 6), timeout=120, what="all six files", procs=[a, b])

    def trained():
        trig = ledger.triggers(engine, cohort=unique_name)
        return trig if trig and all(t["status"] == "done" for t in trig) else None

    [trigger] = wait_for(trained, timeout=150, what="the retraining and its explanation", procs=[a, b])
    # a few more scheduler ticks: nothing new may start
    wait_for(lambda: len(ledger.job_history(engine, job_id=f"{unique_name}-retrain", status="succeeded")) >= 4,
             timeout=30, what="more retrain checks", procs=[a, b])
    assert a.stop() == 0 and b.stop() == 0

    clean = _clean_counts(graphdb, neo4j_settings, images, unique_name + "-clean")
    assert _counts(graphdb, unique_name) == clean
    rows = _files(engine, unique_name)
    assert len(rows) == 6 and all(r["attempts"] == 1 for r in rows)
    owners = {r["owner"] for r in rows}
    assert len(ledger.triggers(engine, cohort=unique_name)) == 1
    assert trigger["trigger_id"].startswith("data:") and trigger["n_labelled"] == 6
    with Session(engine) as s:
        runs = s.scalars(select(rec.ModelRunRecord).where(rec.ModelRunRecord.cohort == unique_name)).all()
    assert [(r.id, r.status) for r in runs] == [(trigger["run_id"], "finished")]
    assert trigger["result"]["explain"]["images"] == 6
    from nucleograph.db import runs as db_runs

    assert [r["id"] for r in db_runs.list_runs(graphdb, cohort=unique_name)] \
        == [trigger["run_id"]]
    assert owners  # (which scheduler took which file is up to the race)
    engine.dispose()


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_manual_ingest_beside_the_scheduler_duplicates_nothing(
        sql_url, scheduler_env, start_scheduler, fresh_images, tmp_path, graphdb, neo4j_settings, unique_name):
    watch = tmp_path / "watch"
    images = fresh_images(6)
    dropped = drop(images, watch)
    engine = _engine(scheduler_env)
    p = start_scheduler(["--watch", str(watch), "--cohort", unique_name, *FAST], scheduler_env)
    settings = Settings.from_env(scheduler_env)
    manual: dict = {}

    def run_manual():
        records = [ImageRecord(path=d.resolve(), label=label) for d, (_, label) in zip(dropped, images, strict=True)]
        manual["summary"] = ingest_records(records, cohort=unique_name, params=IngestParams(), settings=settings,
                                           db=graphdb)

    t = threading.Thread(target=run_manual)
    t.start()
    t.join(timeout=120)
    wait_for(lambda: _done(engine, unique_name, 6), timeout=120, what="the scheduler's ledger", procs=[p])
    assert p.stop() == 0
    clean = _clean_counts(graphdb, neo4j_settings, images, unique_name + "-clean")
    assert _counts(graphdb, unique_name) == clean and clean["images"] == 6
    assert manual["summary"].ok + manual["summary"].failed == 6
    engine.dispose()


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_failures_are_retried_with_backoff_reported_and_abandoned(
        sql_url, scheduler_env, start_scheduler, fresh_images, tmp_path, graphdb, neo4j_settings, unique_name):
    watch = tmp_path / "watch"
    good = drop(fresh_images(1), watch)
    (good[0].parent / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    engine = _engine(scheduler_env)
    p = start_scheduler(["--watch", str(watch), "--cohort", unique_name, *FAST, "--max-attempts", "3"],
                        scheduler_env)

    def settled():
        rows = {Path(r["path"]).name: r for r in _files(engine, unique_name)}
        return rows if rows.get("broken.png", {}).get("status") == "abandoned" and len(rows) == 2 else None

    rows = wait_for(settled, timeout=90, what="the broken file abandoned", procs=[p])
    assert p.stop() == 0
    broken = rows["broken.png"]
    assert broken["attempts"] == 3 and "broken.png" in broken["error"]
    assert rows[good[0].name]["status"] == "done"
    failed = ledger.job_history(engine, job_id=f"{unique_name}-watch", status="failed")
    assert len(failed) >= 3 and all("broken.png" in r["error"] for r in failed)
    assert _counts(graphdb, unique_name)["images"] == 1
    engine.dispose()


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_cli_jobs_add_list_run_now_history_remove(sql_url, test_environ, monkeypatch, fresh_images, tmp_path,
                                                  unique_name, capsys, driver):
    monkeypatch.setenv("NUCLEOGRAPH_SQL_URL", sql_url)
    watch = tmp_path / "watch"
    drop(fresh_images(2), watch)
    job = f"{unique_name}-w"
    assert main(["jobs", "add", "watch", "--id", job, "--cohort", unique_name, "--watch", str(watch),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "watch"
    assert main(["jobs", "add", "retrain", "--id", f"{unique_name}-r", "--cohort", unique_name,
                 "--cron", "0 3 * * *", "--epochs", "2"]) == 0
    assert main(["jobs", "add", "watch", "--id", job, "--cohort", unique_name, "--watch", str(watch)]) == 1
    capsys.readouterr()
    assert main(["jobs", "list", "--json"]) == 0
    listed = {j["id"]: j for j in json.loads(capsys.readouterr().out)}
    assert set(listed) == {job, f"{unique_name}-r"}
    assert listed[f"{unique_name}-r"]["next_run"].endswith("03:00:00+00:00")

    assert main(["jobs", "run-now", job, "--settle", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ingested"] == 2 and result["outcomes"] == {"stored": 2}
    assert main(["jobs", "run-now", job, "--settle", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ingested"] == 0
    assert main(["jobs", "history", "--job", job, "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [(h["trigger"], h["status"]) for h in history] == [("manual", "succeeded")] * 2
    assert main(["jobs", "files", "--cohort", unique_name]) == 0
    assert "(2 rows)" in capsys.readouterr().out
    assert main(["jobs", "remove", job]) == 0
    assert main(["jobs", "remove", job]) == 1
    assert "no job" in capsys.readouterr().err
    assert main(["jobs", "add", "retrain", "--id", "x", "--cohort", unique_name]) == 1
    assert "exactly one of --min-new" in capsys.readouterr().err


def _failed_runs(engine, job_id):
    return ledger.job_history(engine, job_id=job_id, status="failed", limit=1000)


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_a_neo4j_outage_spends_no_attempts_and_every_file_is_ingested_after_it(
        sql_url, scheduler_env, start_scheduler, fresh_images, tmp_path, graphdb, neo4j_settings, unique_name):
    """Issue 16: with Neo4j down, each retry of a watched file used one of its attempts, so valid files
    ended abandoned and were never ingested once Neo4j was back."""
    neo4j = TcpProxy(neo4j_settings.neo4j_port)  # Neo4j as the scheduler reaches it: we cut it off
    neo4j.up()
    env = {**scheduler_env, "NEO4J_URI": f"bolt://127.0.0.1:{neo4j.port}",
           "NUCLEOGRAPH_NEO4J_RETRY_SECONDS": "1"}  # the driver gives up after 1 s, not 60
    watch = tmp_path / "watch"
    watch.mkdir()
    images = fresh_images(3)
    engine = _engine(env)
    job = f"{unique_name}-watch"
    p = start_scheduler(["--watch", str(watch), "--cohort", unique_name, *FAST, "--max-attempts", "2"], env)
    drop(images[:1], watch)
    wait_for(lambda: _done(engine, unique_name, 1), timeout=90, what="the file before the outage", procs=[p])

    neo4j.down()
    try:
        failed_before = len(_failed_runs(engine, job))
        drop(images[1:], watch)

        def waited():  # both files given back more often than --max-attempts allows failures
            rows = _files(engine, unique_name)
            outage_runs = len(_failed_runs(engine, job)) - failed_before
            return outage_runs >= 8 and sum(r["status"] == "pending" for r in rows) == 2

        wait_for(waited, timeout=120, what="runs failing during the outage", procs=[p])
        rows = _files(engine, unique_name)
        assert not [r for r in rows if r["status"] in ("failed", "abandoned")], rows
        pending = [r for r in rows if r["status"] == "pending"]
        assert all(r["attempts"] == 0 and r["error"].startswith("waiting for the database") for r in pending)
    finally:
        neo4j.up()  # `db start`

    wait_for(lambda: _done(engine, unique_name, 3), timeout=120, what="all files after the outage", procs=[p])
    assert p.stop() == 0, p.output()
    rows = _files(engine, unique_name)
    assert [r["attempts"] for r in rows] == [1, 1, 1] and {r["outcome"] for r in rows} == {"stored"}
    assert _counts(graphdb, unique_name)["images"] == 3
    neo4j.down()
    engine.dispose()


@pytest.mark.parametrize("sql_url", ["postgresql"], indirect=True)
def test_an_sql_outage_mid_ingest_loses_no_file(
        sql_url, scheduler_env, start_scheduler, fresh_images, tmp_path, graphdb, neo4j_settings, unique_name):
    """The records database (PostgreSQL) goes away while a file is claimed: the scheduler cannot even
    write that it gives the file back. Once the database is back the file is ingested, with one
    attempt, and no history row stays 'running'."""
    url = make_url(sql_url)
    postgres = TcpProxy(url.port)
    postgres.up()
    env = {**scheduler_env, "NUCLEOGRAPH_SQL_URL": url.set(port=postgres.port).render_as_string(hide_password=False)}
    engine = _engine(scheduler_env)  # the test itself reaches the database directly
    watch = tmp_path / "watch"
    images = fresh_images(3)
    p = start_scheduler(["--watch", str(watch), "--cohort", unique_name, *FAST, "--max-attempts", "2"], env)
    drop(images, watch)
    try:
        wait_for(lambda: any(r["status"] == "claimed" for r in _files(engine, unique_name)), timeout=90,
                 what="a file claimed", procs=[p], interval=0.05)
        postgres.down()
        time.sleep(5)  # longer than the lease (3 s)
    finally:
        postgres.up()
    wait_for(lambda: _done(engine, unique_name, 3), timeout=150, what="all files after the outage", procs=[p])
    wait_for(lambda: not ledger.job_history(engine, status="running"), timeout=30, what="no run left running",
             procs=[p])
    assert p.stop() == 0, p.output()
    rows = _files(engine, unique_name)
    assert [r["attempts"] for r in rows] == [1, 1, 1], rows
    assert _counts(graphdb, unique_name)["images"] == 3
    postgres.down()
    engine.dispose()


@pytest.mark.parametrize("sql_url", ["sqlite"], indirect=True)
def test_jobs_retry_brings_an_abandoned_file_back(sql_url, test_environ, monkeypatch, fresh_images, tmp_path,
                                                 unique_name, capsys, graphdb):
    """A valid file abandoned before this fix (attempts spent on an outage) is ingested after
    `jobs retry`; nothing else brings it back."""
    monkeypatch.setenv("NUCLEOGRAPH_SQL_URL", sql_url)
    watch = tmp_path / "watch"
    [path] = drop(fresh_images(1), watch)
    path = path.resolve()
    job = f"{unique_name}-w"
    assert main(["jobs", "add", "watch", "--id", job, "--cohort", unique_name, "--watch", str(watch)]) == 0
    engine = _engine(dict(os.environ))
    st = path.stat()
    assert ledger.claim_file(engine, watch=str(watch.resolve()), content_hash=content_hash(path), cohort=unique_name,
                             path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns, label=None, owner="old",
                             lease=30, max_attempts=1)
    ledger.fail_file(engine, watch=str(watch.resolve()), content_hash=content_hash(path), owner="old",
                     error="DatabaseError: no Neo4j answers", max_attempts=1, backoff=0, backoff_max=0)
    capsys.readouterr()
    assert main(["jobs", "run-now", job, "--settle", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["candidates"] == 0  # abandoned: not looked at again
    assert main(["jobs", "retry", str(path)]) == 0
    assert capsys.readouterr().out.startswith("re-queued 1 file(s)")
    assert main(["jobs", "run-now", job, "--settle", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outcomes"] == {"stored": 1}
    [row] = _files(engine, unique_name)
    assert (row["status"], row["attempts"]) == ("done", 1)
    assert _counts(graphdb, unique_name)["images"] == 1
    engine.dispose()
