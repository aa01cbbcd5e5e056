"""One run of a stored job: a row in the job history per attempt, and in-process retries with backoff.

Used by the scheduler (:func:`nucleograph.jobs.scheduler.fire`) and by ``nucleograph jobs run-now``
alike. Items that failed on their own (files, triggers) do not make the run retry: they carry their
own backoff in the ledger and are taken up by a later run. A run that found a database unreachable
fails and is retried; its items spent no attempt (see :func:`nucleograph.jobs.runtime.is_outage`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import traceback
from typing import Any

from nucleograph.db import ledger
from nucleograph.errors import ConfigError, InputError
from nucleograph.jobs.retrain import run_retrain
from nucleograph.jobs.runtime import JobItemsFailed, Runtime, is_outage
from nucleograph.jobs.specs import spec_from_dict
from nucleograph.jobs.watch import run_watch

__all__ = ["execute"]

log = logging.getLogger("nucleograph.scheduler")


def execute(rt: Runtime, *, job_id: str, kind: str, spec: dict[str, Any], trigger: str = "schedule",
            scheduled_at: dt.datetime | None = None) -> dict[str, Any]:
    """Run one job once with history rows; a run that raises is retried ``job_retries`` times with
    backoff (items that failed on their own are not: they carry their own backoff).

    Parameters
    ----------
    rt : Runtime
    job_id : str
    kind : {"watch", "retrain"}
    spec : dict
        The stored spec, rebuilt with :func:`nucleograph.jobs.specs.spec_from_dict`.
    trigger : {"schedule", "manual"}
        What started the run, as the history records it; ``"manual"`` makes a retrain train now.
    scheduled_at : datetime, optional
        The scheduled time of the tick (names a cron trigger).

    Returns
    -------
    result : dict
        The run's result (also when some items failed: see their ``failures``).

    Raises
    ------
    nucleograph.errors.InputError, nucleograph.errors.ConfigError
        At once: the job or its folder needs a person, not a retry.
    Exception
        Whatever the last attempt raised, after ``job_retries`` retries.
    """
    opts = rt.options
    parsed = spec_from_dict(kind, spec)
    rt.retry_deferred(("run",))  # history rows an SQL outage left "running"
    attempt = 0
    while True:
        attempt += 1
        run = ledger.start_run(rt.engine, job_id=job_id, kind=kind, trigger=trigger, owner=rt.owner,
                               attempt=attempt, scheduled_at=scheduled_at)
        try:
            if kind == "watch":
                result = run_watch(rt, job_id, parsed)
            else:
                result = run_retrain(rt, job_id, parsed, scheduled_at=scheduled_at, manual=trigger == "manual")
        except JobItemsFailed as exc:
            _finish_run(rt, run, status=ledger.RUN_FAILED, error=str(exc), result=exc.result)
            log.error("job %s: %s", job_id, exc)
            return exc.result
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            _finish_run(rt, run, status=ledger.RUN_FAILED, error=error,
                        result={"traceback": traceback.format_exc(limit=8)})
            final = attempt > opts.job_retries or isinstance(exc, (InputError, ConfigError))
            wait = ledger.backoff_seconds(attempt, base=opts.backoff, cap=opts.backoff_max)
            log.error("job %s attempt %d failed: %s%s", job_id, attempt, error,
                      "" if final else f"; retrying in {wait:.1f} s")
            if final:
                raise
            time.sleep(wait)
            continue
        _finish_run(rt, run, status=ledger.SUCCEEDED, result=result)
        return result


def _finish_run(rt: Runtime, run: int, **values) -> None:
    """Close the run's history row; when SQL is unreachable, the next run of a job closes it (else
    this live process's heartbeat would keep it ``running``) and the outage is raised."""
    finish = functools.partial(ledger.finish_run, rt.engine, run, **values)
    try:
        finish()
    except Exception as exc:
        if is_outage(exc):
            rt.defer_write(("run", str(run)), finish)
        raise
