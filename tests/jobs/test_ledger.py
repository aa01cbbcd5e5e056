"""The SQL side of exactly-once (db/ledger.py) on SQLite and on a real PostgreSQL: claims, leases,
takeovers, backoff, locks and triggers, including many threads racing for the same rows; give-backs
that spend no attempt, re-queueing, and pruning that never touches live state."""

from __future__ import annotations

import datetime as dt
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import update

from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.errors import InputError
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


def _release(engine, owner, digest="h1", *, wait=0.0):
    return ledger.release_file(engine, watch="/w", content_hash=digest, owner=owner, reason="Neo4j down", wait=wait)


def test_a_file_given_back_during_an_outage_spends_no_attempt(engine):
    # ten outages in a row, with max_attempts 2: the file is never abandoned, and never stuck
    for i in range(10):
        assert _claim(engine, f"o{i}", max_attempts=2)
        assert _release(engine, f"o{i}")
        [row] = ledger.watched_files(engine)
        assert (row["status"], row["attempts"]) == ("pending", 0)
        assert "Neo4j down" in row["error"]
    assert not _release(engine, "o0")  # no longer claimed: nothing to give back
    assert _claim(engine, "a", max_attempts=2)
    assert not _release(engine, "b")  # only its holder gives a claim back
    assert ledger.fail_file(engine, watch="/w", content_hash="h1", owner="a", error="bad pixels", max_attempts=2,
                            backoff=0, backoff_max=0) == "failed"
    assert ledger.watched_files(engine)[0]["attempts"] == 1  # the file's own failure counts


def test_a_given_back_file_waits_for_its_backoff(engine):
    assert _claim(engine, "a")
    assert _release(engine, "a", wait=0.4)
    assert not _claim(engine, "b")
    time.sleep(0.5)
    assert _claim(engine, "b")
    assert ledger.watched_files(engine)[0]["attempts"] == 1


def test_an_abandoned_file_touched_or_copied_again_starts_afresh(engine):
    def claim(owner, mtime_ns):
        return ledger.claim_file(engine, watch="/w", content_hash="h1", cohort="c", path="/w/h1.png", size=1,
                                 mtime_ns=mtime_ns, label=None, owner=owner, lease=30, max_attempts=1)

    assert claim("a", 100)
    assert ledger.fail_file(engine, watch="/w", content_hash="h1", owner="a", error="bad", max_attempts=1,
                            backoff=0, backoff_max=0) == "abandoned"
    assert not claim("b", 100)  # the same file as it was: stays abandoned
    assert not claim("b", 50)  # an older copy of it (e.g. a duplicate elsewhere): too
    assert ledger.settled_stats(engine, "/w") == {("/w/h1.png", 1, 100)}
    assert claim("b", 200)  # touched or copied in again
    [row] = ledger.watched_files(engine)
    assert (row["status"], row["attempts"], row["owner"], row["mtime_ns"]) == ("claimed", 1, "b", 200)


def test_requeue_resets_abandoned_and_failed_files(engine):
    for digest, max_attempts in (("h1", 1), ("h2", 3), ("h3", 1)):
        assert _claim(engine, "a", digest, max_attempts=max_attempts)
        ledger.fail_file(engine, watch="/w", content_hash=digest, owner="a", error="bad", max_attempts=max_attempts,
                         backoff=60, backoff_max=60)
    assert _claim(engine, "a", "h4")
    ledger.finish_file(engine, watch="/w", content_hash="h4", owner="a", image_id="h4", outcome="stored")
    statuses = {r["content_hash"]: r["status"] for r in ledger.watched_files(engine)}
    assert statuses == {"h1": "abandoned", "h2": "failed", "h3": "abandoned", "h4": "done"}

    with pytest.raises(InputError, match=r"no watched file is '/w/nope\.png', 'deadbeef': give a path"):
        ledger.requeue_files(engine, ["/w/h1.png", "/w/nope.png", "deadbeef"])
    assert {r["content_hash"]: r["status"] for r in ledger.watched_files(engine)} == statuses  # nothing changed
    with pytest.raises(InputError, match="of the watch folder /other"):
        ledger.requeue_files(engine, ["/w/h1.png"], watch="/other")

    result = ledger.requeue_files(engine, ["/w/h2.png", "h4"])  # by path and by content hash
    assert result["requeued"] == 1 and [f["content_hash"] for f in result["files"]] == ["h2"]
    assert result["not_requeued"] == [{"path": "/w/h4.png", "status": "done"}]
    assert not _claim(engine, "b", "h4")  # done stays done
    assert _claim(engine, "b", "h2", max_attempts=1)  # due now, attempts reset: claimable under max 1

    assert ledger.requeue_files(engine, all_abandoned=True, watch="/other")["requeued"] == 0
    result = ledger.requeue_files(engine, all_abandoned=True, watch="/w")
    assert sorted(f["content_hash"] for f in result["files"]) == ["h1", "h3"]
    rows = {r["content_hash"]: r for r in ledger.watched_files(engine)}
    assert [(rows[h]["status"], rows[h]["attempts"]) for h in ("h1", "h3")] == [("pending", 0)] * 2
    assert _claim(engine, "c", "h1", max_attempts=1)


def _age(engine, table, column, days: float, **where):
    with engine.begin() as conn:
        conn.execute(update(table).filter_by(**where).values({column: ledger.utcnow() - dt.timedelta(days=days)}))


def test_prune_keeps_live_state_and_the_newest_history(engine):
    runs = []
    for i in range(6):
        run = ledger.start_run(engine, job_id="j", kind="watch", trigger="schedule", owner="a")
        if i < 5:
            ledger.finish_run(engine, run, status="failed" if i % 2 else "succeeded")
        runs.append(run)
    for run in runs[:3]:
        _age(engine, ledger.JobRun, "finished_at", 40, id=run)
    _age(engine, ledger.JobRun, "heartbeat_at", 40, id=runs[5])  # an old run still running: live
    # files: two done long ago, one done now, and every live status, all long ago
    for digest in ("old1", "old2", "new", "pend", "claim", "fail", "aband"):
        assert _claim(engine, "a", digest, max_attempts=2)
    for digest in ("old1", "old2", "new"):
        ledger.finish_file(engine, watch="/w", content_hash=digest, owner="a", image_id=digest, outcome="stored")
    _release(engine, "a", "pend")
    ledger.fail_file(engine, watch="/w", content_hash="fail", owner="a", error="x", max_attempts=2, backoff=0,
                     backoff_max=0)
    ledger.fail_file(engine, watch="/w", content_hash="aband", owner="a", error="x", max_attempts=1, backoff=0,
                     backoff_max=0)
    for digest in ("old1", "old2"):
        _age(engine, ledger.WatchedFile, "done_at", 40, content_hash=digest)
    with engine.begin() as conn:
        conn.execute(update(ledger.WatchedFile).values(first_seen=ledger.utcnow() - dt.timedelta(days=400)))

    asked: list[str] = []

    def keep_file(row):  # e.g. the file is still in its watch folder
        asked.append(row["content_hash"])
        return row["content_hash"] == "old2"

    pruned = ledger.prune_history(engine, keep_days=30, keep_rows=0, keep_file=keep_file)
    assert pruned == {"job_runs": 3, "files": 1} and sorted(asked) == ["old1", "old2"]
    assert sorted(r["id"] for r in ledger.job_history(engine)) == sorted(runs[3:])
    statuses = {r["content_hash"]: r["status"] for r in ledger.watched_files(engine)}
    assert statuses == {"old2": "done", "new": "done", "pend": "pending", "claim": "claimed", "fail": "failed",
                        "aband": "abandoned"}

    # by rows: the newest finished run and the newest done file stay; the running run stays
    assert ledger.prune_history(engine, keep_days=0, keep_rows=1) == {"job_runs": 1, "files": 1}
    assert sorted(r["id"] for r in ledger.job_history(engine)) == [runs[4], runs[5]]
    assert {r["content_hash"] for r in ledger.watched_files(engine, status="done")} == {"new"}
    assert ledger.prune_history(engine, keep_days=None, keep_rows=None) == {"job_runs": 0, "files": 0}
    assert len(ledger.watched_files(engine)) == 5


def test_a_trigger_given_back_during_an_outage_spends_no_attempt(engine):
    kw = dict(cohort="c", job_id="j", lease=30, max_attempts=1, n_labelled=4)
    assert ledger.claim_trigger(engine, trigger_id="data:v1", owner="a", **kw)
    assert ledger.update_trigger(engine, cohort="c", trigger_id="data:v1", owner="a", run_id="r1", stage="explain")
    assert ledger.release_trigger(engine, cohort="c", trigger_id="data:v1", owner="a", reason="Neo4j down", wait=0.3)
    assert ledger.pending_triggers(engine, cohort="c", max_attempts=1) == []  # waiting
    assert not ledger.claim_trigger(engine, trigger_id="data:v1", owner="b", **kw)
    time.sleep(0.4)
    [due] = ledger.pending_triggers(engine, cohort="c", max_attempts=1)
    assert (due["status"], due["attempts"], due["run_id"], due["stage"]) == ("pending", 0, "r1", "explain")
    assert ledger.claim_trigger(engine, trigger_id="data:v1", owner="b", **kw)  # under max_attempts 1: not spent
    assert ledger.get_trigger(engine, "c", "data:v1")["attempts"] == 1
