"""Retraining: train a cohort once per reason to train, then explain the new run.

A reason to train is a trigger row in the ledger keyed by ``(cohort, trigger id)``, so it trains once
with any number of schedulers: ``data:<cohort fingerprint>`` when ``min_new`` labelled images arrived
since the last training, ``cron:<scheduled time>`` for a crontab tick (every scheduler computes the same
id from the scheduled time), ``manual:<now>`` for ``nucleograph jobs run-now``. A trigger moves through
the stages ``train`` -> ``explain`` -> ``-``; its run id is recorded before training starts, so a
scheduler that takes a killed one's trigger over resumes the same run from its checkpoint. A trigger
whose training finds Neo4j or SQL unreachable is given back ``pending`` without spending an attempt.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from typing import Any

from sqlalchemy.orm import Session

from nucleograph.db import ledger, store
from nucleograph.db import records as rec
from nucleograph.errors import NucleographError
from nucleograph.gnn.service import explain_run, new_run_id, train_cohort
from nucleograph.jobs.runtime import JobItemsFailed, Runtime, is_outage
from nucleograph.jobs.specs import RetrainSpec

__all__ = ["labelled_count", "run_retrain"]

log = logging.getLogger("nucleograph.scheduler")


def labelled_count(rt: Runtime, cohort: str) -> int:
    """The number of labelled images of ``cohort`` in Neo4j."""
    images = store.cohort_images(rt.db(), cohort)
    return sum(1 for r in images if r.get("label") is not None)


def run_retrain(rt: Runtime, job_id: str, spec: RetrainSpec, *, scheduled_at: dt.datetime | None,
                manual: bool = False) -> dict[str, Any]:
    """Finish triggers others left behind, then train once for this tick's trigger (if any).

    Parameters
    ----------
    rt : Runtime
    job_id : str
        The stored job's id (recorded with the triggers it claims).
    spec : RetrainSpec
    scheduled_at : datetime, optional
        The tick's scheduled time; names a cron trigger.
    manual : bool
        A ``run-now``: train now, whatever the counts.

    Returns
    -------
    result : dict
        ``resumed`` and ``trained`` (one entry per trigger: run id, metrics, explanation), or
        ``skipped`` with the reason.

    Raises
    ------
    JobItemsFailed
        A trigger failed (it is retried on its own backoff); carries the result.
    Exception
        Neo4j or SQL is unreachable: the trigger in hand is given back without spending an attempt.
    """
    opts, cohort = rt.options, spec.cohort
    rt.retry_deferred(("trigger", cohort))  # give-backs an SQL outage held up
    out: dict[str, Any] = {"cohort": cohort, "resumed": [], "trained": [], "skipped": None, "failures": []}
    for trig in ledger.pending_triggers(rt.engine, cohort=cohort, max_attempts=opts.max_attempts):
        if ledger.claim_trigger(rt.engine, cohort=cohort, trigger_id=trig["trigger_id"], job_id=job_id,
                                owner=rt.owner, lease=opts.lease, n_labelled=trig["n_labelled"],
                                max_attempts=opts.max_attempts):
            _process_trigger(rt, spec, trig["trigger_id"], out, key="resumed")

    trigger_id = None
    if spec.cron is not None or manual:
        when = scheduled_at if (scheduled_at is not None and not manual) else ledger.utcnow()
        trigger_id = f"{'manual' if manual else 'cron'}:{when.astimezone(dt.UTC):%Y-%m-%dT%H:%M:%SZ}"
        n = labelled_count(rt, cohort)
        claimed = ledger.claim_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, job_id=job_id,
                                       owner=rt.owner, lease=opts.lease, n_labelled=n,
                                       max_attempts=opts.max_attempts)
    else:
        # The count, the baseline and the claim are one step under a lock: a second scheduler that
        # counts a moment later sees this trigger's baseline and does not train again.
        with ledger.held_lock(rt.engine, f"retrain:{cohort}", owner=rt.owner, ttl=opts.lease) as got:
            if not got:
                out["skipped"] = "another scheduler is checking this cohort"
                return out
            n = labelled_count(rt, cohort)
            base = ledger.last_trained_count(rt.engine, cohort)
            if n - base < spec.min_new:
                out["skipped"] = f"{n - base} new labelled image(s) since the last training; need {spec.min_new}"
                return out
            version = store.cohort_fingerprint(rt.db(), cohort)
            trigger_id = f"data:{version}"
            claimed = ledger.claim_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, job_id=job_id,
                                           owner=rt.owner, lease=opts.lease, n_labelled=n,
                                           max_attempts=opts.max_attempts)
    if not claimed:
        out["skipped"] = f"trigger {trigger_id} is handled already"
    else:
        _process_trigger(rt, spec, trigger_id, out, key="trained")
    if out["failures"]:
        raise JobItemsFailed("retraining failed: " + "; ".join(f["error"] for f in out["failures"]), out)
    return out


def _run_id_to_train(rt: Runtime, spec: RetrainSpec, trigger_id: str, run_id: str | None) -> tuple[str, bool]:
    """The run a claimed trigger trains: its killed trainer's run (resumed), else a new one."""
    if run_id is not None:
        with Session(rt.engine) as session:
            row = session.get(rec.ModelRunRecord, run_id)
            # its trainer was killed (still "running", or "interrupted" once noticed or by SIGTERM/Ctrl-C)
            if row is not None and row.status in (rec.RUNNING, rec.INTERRUPTED):
                return run_id, True
    # Known before training starts, so a scheduler taking this trigger over resumes the same run from
    # its checkpoint instead of starting a second one.
    cohort = spec.cohort
    run_id = new_run_id()
    version = store.cohort_fingerprint(rt.db(), cohort)
    rec.add_record(rt.engine, rec.ModelRunRecord(id=run_id, cohort=cohort, model=spec.model,
                                                 params=spec.train_params(), data_version=version,
                                                 status="running"))
    if not ledger.update_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, owner=rt.owner, run_id=run_id):
        raise NucleographError(f"lost the claim on trigger {trigger_id} before training")
    return run_id, False


def _process_trigger(rt: Runtime, spec: RetrainSpec, trigger_id: str, out: dict[str, Any], *, key: str) -> None:
    """Train (or resume the killed run of) a claimed trigger, then explain the run."""
    opts, cohort = rt.options, spec.cohort
    trig = ledger.get_trigger(rt.engine, cohort, trigger_id)
    run_id, stage = trig["run_id"], trig["stage"]
    try:
        if stage == "train":
            run_id, resume = _run_id_to_train(rt, spec, trigger_id, run_id)
            log.info("training %s for trigger %s (run %s%s)", cohort, trigger_id, run_id, ", resumed" if resume else "")
            trained = train_cohort(rt.db(), rt.settings, cohort, resume_run=run_id, progress=False)
            stage = "explain" if spec.explain else "-"
            ledger.update_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, owner=rt.owner, stage=stage,
                                  result={"metrics": {k: v for k, v in trained["metrics"].items()
                                                      if isinstance(v, float)}, "n_images": trained["n_images"]})
        explained = None
        if stage == "explain":
            explained = explain_run(rt.db(), rt.settings, run_id, method=spec.explain, hops=spec.hops)
            explained = {k: explained[k] for k in ("method", "hops", "property", "images", "seconds")}
        trig = ledger.get_trigger(rt.engine, cohort, trigger_id)
        result = {**(trig["result"] or {}), "explain": explained}
        ledger.update_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, owner=rt.owner, status=ledger.DONE,
                              stage="-", lease_until=None, error=None, result=result, finished_at=ledger.utcnow())
        out[key].append({"trigger": trigger_id, "run_id": run_id, **result})
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        if is_outage(exc):
            _release_trigger(rt, cohort, trigger_id, error)
            raise  # the run fails and is retried; the trigger spent no attempt
        status = ledger.fail_trigger(rt.engine, cohort=cohort, trigger_id=trigger_id, owner=rt.owner, error=error,
                                     max_attempts=opts.max_attempts, backoff=opts.backoff,
                                     backoff_max=opts.backoff_max)
        out["failures"].append({"trigger": trigger_id, "run_id": run_id, "status": status, "error": error})
        log.error("trigger %s of %s: %s (%s)", trigger_id, cohort, error, status)


def _release_trigger(rt: Runtime, cohort: str, trigger_id: str, error: str) -> None:
    """Give a claimed trigger back ``pending`` (its stage and run are kept); when SQL is down too, the
    next run of the job does."""
    release = functools.partial(ledger.release_trigger, rt.engine, cohort=cohort, trigger_id=trigger_id,
                                owner=rt.owner, reason=f"waiting for the database: {error}", wait=rt.options.backoff)
    try:
        release()
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("could not give trigger %s back now (%s); the next run will", trigger_id, exc)
        rt.defer_write(("trigger", cohort, trigger_id), release)
    else:
        log.warning("gave trigger %s of %s back without spending an attempt: %s", trigger_id, cohort, error)
