"""`nucleograph scheduler` and `nucleograph jobs list|add|remove|run-now|history|files|triggers|retry|prune`.

Every `nucleograph` command builds this parser, so this module imports only the light job modules
(specs, the SQL engine). The commands that run or load stored jobs import
:mod:`nucleograph.jobs.scheduler` when they run: it brings the retraining code and with it PyTorch
and DGL (seconds of startup), as the `train` and `explain` commands of :mod:`nucleograph.gnn.cli` do.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.db.runs import DEFAULT_METHOD
from nucleograph.errors import InputError
from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX
from nucleograph.ingest.pipeline import DETECTORS
from nucleograph.jobs.housekeeping import prune, requeue
from nucleograph.jobs.runtime import open_engine
from nucleograph.jobs.specs import RetrainSpec, SchedulerOptions, WatchSpec
from nucleograph.output import emit_json, format_table, positive_int


def _options_args(p: argparse.ArgumentParser) -> None:
    d = SchedulerOptions()
    g = p.add_argument_group("scheduling")
    g.add_argument("--lease", type=float, default=d.lease,
                   help=f"seconds before a killed scheduler's claims are taken over (default {d.lease:g})")
    g.add_argument("--max-attempts", type=int, default=d.max_attempts,
                   help=f"attempts per file or trigger before it is abandoned (default {d.max_attempts})")
    g.add_argument("--backoff", type=float, default=d.backoff,
                   help=f"retry delay after the first failure, doubled each time (default {d.backoff:g} s)")
    g.add_argument("--backoff-max", type=float, default=d.backoff_max, help=f"longest retry delay ({d.backoff_max:g} s)")
    g.add_argument("--job-retries", type=int, default=d.job_retries,
                   help=f"in-process retries of a job run that raised (default {d.job_retries})")
    g.add_argument("--settle", type=float, default=d.settle,
                   help=f"ingest a file only when unmodified this long (default {d.settle:g} s)")


def _options(args) -> SchedulerOptions:
    return SchedulerOptions(
        poll=getattr(args, "poll", SchedulerOptions.poll), lease=args.lease, max_attempts=args.max_attempts,
        backoff=args.backoff, backoff_max=args.backoff_max, job_retries=args.job_retries, settle=args.settle,
        workers=getattr(args, "workers", SchedulerOptions.workers),
        prune_every=getattr(args, "prune_every", SchedulerOptions.prune_every),
    )


def _watch_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--watch", "--dir", dest="watch", required=required,
                   help="folder to watch: class sub-folders (label = folder name) and/or manifest.csv")
    p.add_argument("--interval", type=float, default=None, help="seconds between scans (default 10)")
    p.add_argument("--detector", choices=DETECTORS, default="watershed")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_PX, help="edge threshold (default %(default)s)")
    p.add_argument("--threshold-unit", choices=["px", "um"], default="px")


def _retrain_args(p: argparse.ArgumentParser, *, prefix: str) -> None:
    p.add_argument(f"--{prefix}min-new", dest="min_new", type=int, default=None,
                   help="retrain when this many new labelled images arrived since the last training")
    p.add_argument(f"--{prefix}cron", dest="cron", default=None,
                   help="retrain on this crontab schedule (UTC), e.g. '0 2 * * *'")
    p.add_argument(f"--{prefix}interval", dest="retrain_interval", type=float, default=60.0,
                   help="seconds between checks for --min-new (default 60)")
    p.add_argument("--model", default="rsf", help="model to train (default rsf)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--folds", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="train a seed ensemble of K models per split (default 1: one model)")
    p.add_argument("--explain", default=DEFAULT_METHOD,
                   help=f"explanation method for the new run, or 'none' (default {DEFAULT_METHOD})")
    p.add_argument("--hops", type=int, default=1, help="occlusion neighbourhood in hops (default 1)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `scheduler` and `jobs` commands to the `nucleograph` parser's subcommands ``sub``."""
    p = sub.add_parser("scheduler", help="run the persistent scheduler (watch-folder ingestion, retraining)")
    p.add_argument("--cohort", default=None, help="cohort of the jobs that --watch/--retrain-* add")
    _watch_args(p, required=False)
    _retrain_args(p, prefix="retrain-")
    p.add_argument("--job-id", default=None, help="id prefix of the jobs added from these options (default: cohort)")
    p.add_argument("--poll", type=float, default=SchedulerOptions.poll,
                   help="seconds between looks for jobs added by other processes (default 2)")
    p.add_argument("--workers", type=int, default=SchedulerOptions.workers, help="jobs run at once (default 4)")
    p.add_argument("--run-for", type=float, default=None, help="stop after this many seconds (default: run until stopped)")
    p.add_argument("--prune-every", type=float, default=SchedulerOptions.prune_every,
                   help="seconds between prunings of the job history (default %(default)g; 0: never); the limits "
                        "are NUCLEOGRAPH_JOBS_KEEP_DAYS and NUCLEOGRAPH_JOBS_KEEP_ROWS")
    _options_args(p)
    p.set_defaults(func=cmd_scheduler)

    jobs = sub.add_parser("jobs", help="scheduled jobs: list, add, remove, run now, history")
    jsub = jobs.add_subparsers(dest="jobs_command", required=True)
    p = jsub.add_parser("list", help="the stored jobs and their next run")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = jsub.add_parser("add", help="store a job (the running schedulers pick it up)")
    asub = p.add_subparsers(dest="kind", required=True)
    w = asub.add_parser("watch", help="ingest each new file of a folder into a cohort")
    w.add_argument("--id", required=True)
    w.add_argument("--cohort", required=True)
    _watch_args(w, required=True)
    w.add_argument("--replace", action="store_true")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_add)
    r = asub.add_parser("retrain", help="retrain a cohort on new labelled images or on a schedule, then explain")
    r.add_argument("--id", required=True)
    r.add_argument("--cohort", required=True)
    _retrain_args(r, prefix="")
    r.add_argument("--replace", action="store_true")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_add)

    p = jsub.add_parser("remove", help="delete a stored job (its history stays)")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_remove)

    p = jsub.add_parser("run-now", help="run a stored job once in this process, now")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    _options_args(p)
    p.set_defaults(func=cmd_run_now)

    p = jsub.add_parser("history", help="past job runs: status, duration, error")
    p.add_argument("--job", default=None, help="only this job id")
    p.add_argument("--status", choices=["running", "succeeded", "failed", "lost"], default=None)
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = jsub.add_parser("files", help="the watch-folder ledger: each file's status, attempts and error")
    p.add_argument("--cohort", default=None)
    p.add_argument("--status", choices=[ledger.PENDING, ledger.CLAIMED, ledger.FAILED, ledger.DONE, ledger.ABANDONED],
                   default=None)
    p.add_argument("--limit", type=positive_int, default=200)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_files)

    p = jsub.add_parser("triggers", help="retraining triggers: what trained when, and the runs")
    p.add_argument("--cohort", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_triggers)

    p = jsub.add_parser("retry", help="re-queue abandoned or failed files: attempts reset, ingested by the next scan")
    p.add_argument("files", nargs="*", metavar="FILE", help="a path or content hash, as `jobs files` lists them")
    p.add_argument("--all-abandoned", action="store_true", help="every abandoned file (of --job, if given)")
    p.add_argument("--job", default=None, help="only files of this watch job's folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_retry)

    p = jsub.add_parser("prune", help="delete finished job runs and done files' records beyond the limits")
    p.add_argument("--keep-days", type=float, default=None, metavar="D",
                   help="keep what finished within D days (default NUCLEOGRAPH_JOBS_KEEP_DAYS, 30; 0: no age limit)")
    p.add_argument("--keep-rows", type=int, default=None, metavar="N",
                   help="keep the N newest rows of each (default NUCLEOGRAPH_JOBS_KEEP_ROWS, 100000; 0: no limit)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)


def _watch_spec(args, cohort: str) -> WatchSpec:
    return WatchSpec(watch=args.watch, cohort=cohort, interval=args.interval or 10.0, detector=args.detector,
                         threshold=args.threshold, threshold_unit=args.threshold_unit)


def _retrain_spec(args, cohort: str) -> RetrainSpec:
    explain = None if (args.explain or "").lower() == "none" else args.explain
    return RetrainSpec(cohort=cohort, min_new=args.min_new, cron=args.cron, interval=args.retrain_interval,
                           model=args.model, epochs=args.epochs, folds=args.folds, seed=args.seed,
                           ensemble=args.ensemble, explain=explain, hops=args.hops)


def cmd_scheduler(args, settings: Settings) -> int:
    """`nucleograph scheduler`: store the jobs its options describe, then run until stopped."""
    from nucleograph.jobs import scheduler as sch  # torch and DGL: only when a job command runs

    add: list[tuple[str, WatchSpec | RetrainSpec]] = []
    wants_retrain = args.min_new is not None or args.cron is not None
    if (args.watch or wants_retrain) and not args.cohort:
        raise InputError("--watch and --retrain-min-new/--retrain-cron need --cohort")
    prefix = args.job_id or args.cohort
    if args.watch:
        add.append((f"{prefix}-watch", _watch_spec(args, args.cohort)))
    if wants_retrain:
        add.append((f"{prefix}-retrain", _retrain_spec(args, args.cohort)))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return sch.serve(settings, _options(args), add=add, run_for=args.run_for)


def cmd_list(args, settings: Settings) -> int:
    """`nucleograph jobs list`: the stored jobs and their next run."""
    from nucleograph.jobs import scheduler as sch  # torch and DGL: only when a job command runs

    engine = open_engine(settings)
    try:
        rows = sch.list_jobs(engine)
    finally:
        engine.dispose()
    if args.json:
        emit_json(rows)
    else:
        print(format_table(["id", "kind", "cohort", "trigger", "next_run"], rows))
    return 0


def cmd_add(args, settings: Settings) -> int:
    """`nucleograph jobs add watch|retrain`: store a job; the running schedulers pick it up."""
    from nucleograph.jobs import scheduler as sch  # torch and DGL: only when a job command runs

    spec = _watch_spec(args, args.cohort) if args.kind == "watch" else _retrain_spec(args, args.cohort)
    engine = open_engine(settings)
    try:
        job = sch.add_job(engine, args.id, spec, replace=args.replace)
    finally:
        engine.dispose()
    if args.json:
        emit_json(job)
    else:
        print(f"added job {job['id']} ({job['kind']} {job['cohort']}, {job['trigger']}); next run {job['next_run']}")
    return 0


def cmd_remove(args, settings: Settings) -> int:
    """`nucleograph jobs remove ID`: delete a stored job (its history stays)."""
    from nucleograph.jobs import scheduler as sch  # torch and DGL: only when a job command runs

    engine = open_engine(settings)
    try:
        sch.remove_job(engine, args.id)
    finally:
        engine.dispose()
    if args.json:
        emit_json({"removed": args.id})
    else:
        print(f"removed job {args.id}")
    return 0


def cmd_run_now(args, settings: Settings) -> int:
    """`nucleograph jobs run-now ID`: run a stored job once in this process; exit 3 if items failed."""
    from nucleograph.jobs import scheduler as sch  # torch and DGL: only when a job command runs

    result = sch.run_now(settings, _options(args), args.id)
    if args.json:
        emit_json(result)
    else:
        print({k: v for k, v in result.items() if k != "failures"})
        for f in result.get("failures", []):
            print(f"  failed: {f['error']}", file=sys.stderr)
    return 3 if result.get("failures") else 0


def _print_rows(args, settings: Settings, fetch, columns: list[str]) -> int:
    """Rows from ``fetch(engine)`` as a table, or JSON with ``--json``."""
    engine = open_engine(settings)
    try:
        rows = fetch(engine)
    finally:
        engine.dispose()
    if args.json:
        emit_json(rows)
    else:
        print(format_table(columns, rows))
    return 0


def cmd_history(args, settings: Settings) -> int:
    """`nucleograph jobs history`: past job runs with status, duration and error."""
    return _print_rows(
        args, settings,
        lambda engine: ledger.job_history(engine, job_id=args.job, status=args.status, limit=args.limit),
        ["id", "job_id", "trigger", "attempt", "status", "started_at", "seconds", "error"],
    )


def cmd_files(args, settings: Settings) -> int:
    """`nucleograph jobs files`: the watch-folder ledger, one row per file."""
    return _print_rows(
        args, settings,
        lambda engine: ledger.watched_files(engine, cohort=args.cohort, status=args.status, limit=args.limit),
        ["content_hash", "cohort", "label", "status", "attempts", "outcome", "path", "error"],
    )


def cmd_triggers(args, settings: Settings) -> int:
    """`nucleograph jobs triggers`: the retraining triggers and their runs."""
    return _print_rows(
        args, settings,
        lambda engine: ledger.triggers(engine, cohort=args.cohort),
        ["cohort", "trigger_id", "status", "stage", "attempts", "n_labelled", "run_id", "error"],
    )


def cmd_retry(args, settings: Settings) -> int:
    """`nucleograph jobs retry FILE... | --all-abandoned [--job ID]`: re-queue files, attempts reset."""
    watch = None
    engine = open_engine(settings)
    try:
        if args.job is not None:
            from nucleograph.jobs import scheduler as sch  # torch and DGL: only when a job command runs

            job = sch.get_job(engine, args.job)
            if job["kind"] != "watch":
                raise InputError(f"job {args.job!r} is a {job['kind']} job: --job takes a watch job "
                                 "(`nucleograph jobs list` shows them)")
            watch = job["spec"]["watch"]
        result = requeue(engine, args.files, all_abandoned=args.all_abandoned, watch=watch)
    finally:
        engine.dispose()
    if args.json:
        emit_json(result)
        return 0
    print(f"re-queued {result['requeued']} file(s); the next scan of their folder ingests them")
    for f in result["files"]:
        print(f"  {f['path']} (was {f['status']} after {f['attempts']} attempt(s))")
    for f in result["not_requeued"]:
        print(f"  not re-queued: {f['path']} is {f['status']}", file=sys.stderr)
    return 0


def cmd_prune(args, settings: Settings) -> int:
    """`nucleograph jobs prune [--keep-days D] [--keep-rows N]`: delete the old finished job history."""
    keep_days = settings.jobs_keep_days if args.keep_days is None else args.keep_days
    keep_rows = settings.jobs_keep_rows if args.keep_rows is None else args.keep_rows
    engine = open_engine(settings)
    try:
        pruned = prune(engine, keep_days=keep_days, keep_rows=keep_rows)
    finally:
        engine.dispose()
    if args.json:
        emit_json({**pruned, "keep_days": keep_days, "keep_rows": keep_rows})
    else:
        print(f"pruned {pruned['job_runs']} job run(s) and {pruned['files']} done file record(s) "
              f"(kept {keep_days:g} days, {keep_rows} rows; 0 is no limit)")
    return 0
