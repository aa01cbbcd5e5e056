"""The SQL side of exactly-once (db/ledger.py) on SQLite and on a real PostgreSQL: claims, leases,
takeovers, backoff, locks and triggers, including many threads racing for the same rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.jobs.runtime import open_engine
from nucleograph.jobs.scheduler import list_jobs


@pytest.fixture
def engine(sql_url, tmp_path):
    settings = Settings.from_env({"NUCLEOGRAPH_HOME": str(tmp_path), "NUCLEOGRAPH_SQL_URL": sql_url})
    eng = open_engine(settings)
    yield eng
    eng.dispose()


def _claim(engine, owner, digest="h1", *, lease=30.0, max_attempts=3):
    return ledger.claim_file(engine, watch="/w", content_hash=digest, cohort="c", path=f"/w/{digest}.png", size=1,
                              mtime_ns=1, label=None, owner=owner, lease=lease, max_attempts=max_attempts)


def test_first_claim_wins_and_a_live_lease_is_respected(engine):
    assert _claim(engine, "a")
    assert not _claim(engine, "b")
    assert ledger.finish_file(engine, watch="/w", content_hash="h1", owner="a", image_id="h1", outcome="stored")
    assert not _claim(engine, "b")  # done: never again
    assert not _claim(engine, "a")
    [row] = ledger.watched_files(engine)
    assert (row["status"], row["attempts"], row["outcome"]) == ("done", 1, "stored")
    assert ledger.settled_stats(engine, "/w") == {("/w/h1.png", 1, 1)}


def test_an_expired_lease_is_taken_over_once_and_the_old_owner_cannot_finish(engine):
    assert _claim(engine, "dead", lease=0.2)
    time.sleep(0.4)
    barrier = threading.Barrier(8)

    def contender(i):
        barrier.wait()
        return _claim(engine, f"o{i}")

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(contender, range(8)))
    assert sum(wins) == 1
    assert not ledger.finish_file(engine, watch="/w", content_hash="h1", owner="dead", image_id="h1", outcome="stored")
    winner = f"o{wins.index(True)}"
    assert ledger.finish_file(engine, watch="/w", content_hash="h1", owner=winner, image_id="h1", outcome="stored")
    assert ledger.watched_files(engine)[0]["attempts"] == 2


def test_many_threads_racing_for_many_files_claim_each_exactly_once(engine):
    digests = [f"h{i}" for i in range(25)]
    claims: dict[str, list[str]] = {d: [] for d in digests}
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def worker(owner):
        barrier.wait()
        for d in digests:
            if _claim(engine, owner, d):
                with lock:
                    claims[d].append(owner)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(worker, [f"w{i}" for i in range(6)]))
    assert all(len(owners) == 1 for owners in claims.values()), claims


def test_failures_back_off_then_are_abandoned(engine):
    def fail(owner):
        return ledger.fail_file(engine, watch="/w", content_hash="h1", owner=owner, error="bad pixels",
                                 max_attempts=2, backoff=0.3, backoff_max=10)

    assert _claim(engine, "a", max_attempts=2)
    assert fail("a") == "failed"
    assert not _claim(engine, "b", max_attempts=2)  # still inside the backoff
    time.sleep(0.4)
    assert _claim(engine, "b", max_attempts=2)
    assert fail("b") == "abandoned"
    time.sleep(1.0)
    assert not _claim(engine, "c", max_attempts=2)
    [row] = ledger.watched_files(engine)
    assert (row["status"], row["attempts"], row["error"]) == ("abandoned", 2, "bad pixels")
    assert ledger.backoff_seconds(1, base=10, cap=100) == 10 and ledger.backoff_seconds(5, base=10, cap=100) == 100


def test_heartbeat_keeps_a_claim_and_a_dead_claimer_is_abandoned_after_max_attempts(engine):
    assert _claim(engine, "a", lease=0.3)
    for _ in range(3):
        time.sleep(0.15)
        assert ledger.renew_leases(engine, owner="a", lease=0.3) >= 1
    assert not _claim(engine, "b")  # renewed: still a's
    time.sleep(0.4)
    assert _claim(engine, "b", lease=0.1, max_attempts=2)
    time.sleep(0.2)
    assert ledger.abandon_expired(engine, max_attempts=2) == 1
    assert ledger.watched_files(engine)[0]["status"] == "abandoned"


def test_locks_exclude_expire_and_release(engine):
    assert ledger.acquire_lock(engine, "retrain:c", owner="a", ttl=0.3)
    assert not ledger.acquire_lock(engine, "retrain:c", owner="b", ttl=0.3)
    assert ledger.acquire_lock(engine, "retrain:c", owner="a", ttl=0.3)  # re-entrant for its holder
    time.sleep(0.4)
    with ledger.held_lock(engine, "retrain:c", owner="b", ttl=5) as got:
        assert got
        assert not ledger.release_lock(engine, "retrain:c", owner="a")
        with ledger.held_lock(engine, "retrain:c", owner="c", ttl=5) as other:
            assert not other
    assert ledger.locks(engine) == []


def test_a_trigger_trains_once(engine):
    kw = dict(cohort="c", job_id="j", lease=0.3, max_attempts=3)
    assert ledger.claim_trigger(engine, trigger_id="data:v1", owner="a", n_labelled=4, **kw)
    assert not ledger.claim_trigger(engine, trigger_id="data:v1", owner="b", n_labelled=4, **kw)
    assert ledger.last_trained_count(engine, "c") == 4
    time.sleep(0.4)
    assert [t["trigger_id"] for t in ledger.pending_triggers(engine, cohort="c", max_attempts=3)] == ["data:v1"]
    assert ledger.claim_trigger(engine, trigger_id="data:v1", owner="b", n_labelled=4, **kw)
    assert not ledger.update_trigger(engine, cohort="c", trigger_id="data:v1", owner="a", run_id="rdead")
    assert ledger.update_trigger(engine, cohort="c", trigger_id="data:v1", owner="b", status="done", stage="-")
    assert not ledger.claim_trigger(engine, trigger_id="data:v1", owner="c", n_labelled=4, **kw)
    assert ledger.pending_triggers(engine, cohort="c", max_attempts=3) == []


def test_history_records_runs_and_reaps_lost_ones(engine):
    ok = ledger.start_run(engine, job_id="j", kind="watch", trigger="schedule", owner="a")
    ledger.finish_run(engine, ok, status="succeeded", result={"ingested": 2})
    ledger.start_run(engine, job_id="j", kind="watch", trigger="schedule", owner="killed")
    time.sleep(0.3)
    assert ledger.reap_lost_runs(engine, stale_after=0.2) == 1
    lost, done = ledger.job_history(engine, job_id="j")
    assert lost["status"] == "lost" and "killed" in lost["error"]
    assert done["status"] == "succeeded" and done["result"] == {"ingested": 2} and done["seconds"] >= 0


def test_processes_starting_together_create_the_tables_once(sql_url, tmp_path):
    """Schedulers, `jobs` commands and ingest workers start together against a fresh database: every
    one of them opens it (run records, scheduler tables and APScheduler's job store) without error."""
    settings = Settings.from_env({"NUCLEOGRAPH_HOME": str(tmp_path), "NUCLEOGRAPH_SQL_URL": sql_url})
    n = 12
    barrier = threading.Barrier(n)

    def open_one(_):
        barrier.wait()
        eng = open_engine(settings)
        try:
            return list_jobs(eng)
        finally:
            eng.dispose()

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(open_one, range(n)))
    assert results == [[]] * n
