"""The APScheduler wiring without Neo4j or SQL: a stored job's function reference stays importable, and
:class:`RuntimeExecutor` hands each run this process's runtime and its own scheduled time."""

from __future__ import annotations

import datetime as dt
import pickle
import threading
import time

import pytest
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import ref_to_obj
from sqlalchemy import select

from nucleograph.config import Settings
from nucleograph.errors import ConfigError
from nucleograph.jobs import scheduler
from nucleograph.jobs.runtime import JOB_TABLE, Runtime, open_engine
from nucleograph.jobs.specs import SchedulerOptions, WatchSpec


def test_the_stored_reference_names_fire():
    # stored in SQL with every job: moving `fire` would orphan the jobs already stored
    assert scheduler.FIRE_REF == "nucleograph.jobs.scheduler:fire"
    assert ref_to_obj(scheduler.FIRE_REF) is scheduler.fire


def test_fire_outside_a_scheduler_is_refused():
    with pytest.raises(ConfigError, match="runs only under `nucleograph scheduler`"):
        scheduler.fire(job_id="j", kind="watch", spec={})


def test_each_run_gets_the_runtime_and_its_scheduled_time(monkeypatch):
    calls: list[tuple] = []
    third_a = threading.Event()
    release = threading.Event()

    def fake_execute(rt, *, job_id, kind, spec, trigger, scheduled_at):
        calls.append((rt, job_id, trigger, scheduled_at, time.time()))
        if job_id == "a" and len([c for c in calls if c[1] == "a"]) == 1:
            release.wait(10)  # the first run of `a` is still going when its next runs are due
        if len([c for c in calls if c[1] == "a"]) == 3:
            third_a.set()
        return {}

    monkeypatch.setattr(scheduler, "execute", fake_execute)
    rt = Runtime(settings=None, options=SchedulerOptions(), engine=None, owner="me")
    executor = scheduler.RuntimeExecutor(rt, 2)
    sched = BackgroundScheduler(jobstores={"default": MemoryJobStore()}, executors={"default": executor},
                                job_defaults=scheduler.JOB_DEFAULTS, timezone=dt.UTC)
    start = dt.datetime.now(dt.UTC)
    b_time = start - dt.timedelta(seconds=20)
    sched.start()
    try:
        sched.add_job(scheduler.FIRE_REF, IntervalTrigger(seconds=0.3, timezone=dt.UTC), id="a",
                      next_run_time=start, kwargs={"job_id": "a", "kind": "retrain", "spec": {}})
        sched.add_job(scheduler.FIRE_REF, DateTrigger(b_time, timezone=dt.UTC), id="b",
                      kwargs={"job_id": "b", "kind": "watch", "spec": {}})
        time.sleep(1.5)  # `a` is due five times meanwhile: refused (max_instances 1), those times dropped
        released = time.time()
        release.set()
        assert third_a.wait(10)
    finally:
        sched.shutdown(wait=True)
    assert all(c[0] is rt for c in calls) and {c[2] for c in calls} == {"schedule"}
    assert [c[3] for c in calls if c[1] == "b"] == [b_time]
    a_times = [c[3] for c in calls if c[1] == "a"]
    assert a_times[0] == start and a_times == sorted(a_times) and len(set(a_times)) == len(a_times)
    # the second run carries its own tick, not one of the ticks refused while the first one ran
    assert a_times[1].timestamp() > released - 0.6
    assert executor.take_run_time("a") is None and executor.take_run_time("b") is None


def test_jobs_stored_before_the_move_keep_working(tmp_path):
    # A job stored when `fire` lived in nucleograph/scheduler.py: APScheduler would drop it on load.
    engine = open_engine(Settings.from_env({"NUCLEOGRAPH_HOME": str(tmp_path)}))
    scheduler.add_job(engine, "w1", WatchSpec(watch=str(tmp_path), cohort="c", interval=60))
    table = SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE).jobs_t
    with engine.begin() as conn:
        state = pickle.loads(conn.execute(select(table.c.job_state)).scalar_one())
        state["func"] = "nucleograph.scheduler:fire"
        conn.execute(table.update().values(job_state=pickle.dumps(state)))

    jobs = scheduler.list_jobs(engine)

    assert [j["id"] for j in jobs] == ["w1"] and jobs[0]["spec"]["cohort"] == "c"
    with engine.begin() as conn:
        assert pickle.loads(conn.execute(select(table.c.job_state)).scalar_one())["func"] == scheduler.FIRE_REF
    assert scheduler.upgrade_stored_jobs(engine, SQLAlchemyJobStore(engine=engine, tablename=JOB_TABLE)) == 0
    engine.dispose()
