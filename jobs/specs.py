"""What a scheduled job is: the scheduler's options and the two job kinds, checked when they are built.

A spec is stored in the job store as a plain dict (``dataclasses.asdict``) and rebuilt with
:func:`spec_from_dict` each time the job runs, so a spec holds only values that survive that round
trip. Every check raises :class:`nucleograph.errors.InputError` or ``ConfigError`` with the option
to fix. What can change after a job is stored (a watch folder) is checked when it is added
(:func:`check_job_id`, :meth:`WatchSpec.check_folder`) and again when it runs.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from nucleograph.db.runs import DEFAULT_METHOD, METHODS
from nucleograph.errors import ConfigError, InputError
from nucleograph.gnn.cli import MODEL_CHOICES
from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX
from nucleograph.ingest.pipeline import IngestParams

__all__ = ["KINDS", "SPECS", "RetrainSpec", "SchedulerOptions", "WatchSpec", "check_job_id", "spec_from_dict"]

KINDS = ("watch", "retrain")
#: The longest job id and cohort name the job store and the ledger hold (their column widths).
MAX_JOB_ID, MAX_COHORT = 191, 200


def check_job_id(job_id: str) -> str:
    """``job_id`` if it can name a stored job.

    Raises
    ------
    nucleograph.errors.InputError
        Empty, padded with spaces, or longer than 191 characters.
    """
    if not isinstance(job_id, str) or not job_id.strip():
        raise InputError("a job needs a non-empty --id, e.g. --id inbox-watch")
    if job_id != job_id.strip() or len(job_id) > MAX_JOB_ID:
        raise InputError(f"--id {job_id!r}: use at most {MAX_JOB_ID} characters, without leading or trailing spaces")
    return job_id


def _check_cohort(cohort: str, kind: str) -> None:
    if not isinstance(cohort, str) or not cohort.strip():
        raise InputError(f"a {kind} job needs --cohort (a non-empty name, e.g. --cohort inbox)")
    if cohort != cohort.strip() or len(cohort) > MAX_COHORT or not cohort.isprintable():
        raise InputError(f"--cohort {cohort!r}: use at most {MAX_COHORT} printable characters, without leading "
                         "or trailing spaces")


@dataclass(frozen=True)
class SchedulerOptions:
    """How the scheduler runs its jobs (one process; passed explicitly).

    Parameters
    ----------
    poll : float
        Seconds between looks at the job store for jobs added or changed by other processes.
    lease : float
        Seconds a claim (file, trigger, lock) stays valid without a heartbeat; a killed scheduler's
        claims are taken over this long after it stopped. Renewed every ``lease / 3`` seconds.
    max_attempts : int
        Attempts per file or trigger before it is abandoned (and reported).
    backoff, backoff_max : float
        Retry delay after the n-th failure: ``backoff * 2**(n-1)`` seconds, at most ``backoff_max``.
    job_retries : int
        In-process retries of a whole job run that raised (e.g. Neo4j unreachable), with the same backoff.
        Such runs spend no attempt of the file or trigger they held.
    settle : float
        A file is ingested only when unmodified for this many seconds (it may still be being copied).
    workers : int
        Jobs that may run at the same time in this process.
    prune_every : float
        Seconds between prunings of the job history (:func:`nucleograph.jobs.housekeeping.prune`,
        limits from :class:`~nucleograph.config.Settings`); 0: never.

    Raises
    ------
    nucleograph.errors.ConfigError
        A negative time, a lease under one second, or fewer than one attempt or worker.
    """

    poll: float = 2.0
    lease: float = 60.0
    max_attempts: int = 5
    backoff: float = 10.0
    backoff_max: float = 900.0
    job_retries: int = 2
    settle: float = 2.0
    workers: int = 4
    prune_every: float = 3600.0

    def __post_init__(self):
        for name in ("poll", "lease", "settle", "backoff", "backoff_max", "prune_every"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"scheduler option {name} must be >= 0, got {getattr(self, name)}")
        if self.lease < 1:
            raise ConfigError(f"--lease must be at least 1 second, got {self.lease}")
        if self.max_attempts < 1 or self.workers < 1 or self.job_retries < 0:
            raise ConfigError("--max-attempts and --workers must be >= 1 and --job-retries >= 0")


@dataclass(frozen=True)
class WatchSpec:
    """A watch-folder ingestion job: every ``interval`` seconds, ingest the new files of ``watch``.

    Parameters
    ----------
    watch : str
        The folder (made absolute): class sub-folders (label = folder name) and/or ``manifest.csv``.
    cohort : str
        The cohort the files are ingested into.
    interval : float
        Seconds between scans.
    detector, threshold, threshold_unit
        As :class:`nucleograph.ingest.pipeline.IngestParams`, which checks them.

    Raises
    ------
    nucleograph.errors.InputError
        No folder or cohort, an interval that is not positive, or ingest parameters that
        :class:`~nucleograph.ingest.pipeline.IngestParams` refuses. Whether the folder exists is
        checked by :meth:`check_folder` (when the job is added, and by each scan).
    """

    watch: str
    cohort: str
    interval: float = 10.0
    detector: str = "watershed"
    threshold: float = DEFAULT_THRESHOLD_PX
    threshold_unit: str = "px"

    def __post_init__(self):
        _check_cohort(self.cohort, "watch")
        if not isinstance(self.watch, str | os.PathLike) or not str(self.watch).strip():
            raise InputError("a watch job needs --watch FOLDER (the folder new images arrive in)")
        if not self.interval > 0:
            raise InputError(f"--interval must be positive, got {self.interval}")
        object.__setattr__(self, "watch", str(Path(self.watch).expanduser().resolve()))
        self.ingest_params()  # validates detector and threshold

    def check_folder(self) -> None:
        """Check that the watched folder is there and readable (when the job is added).

        Raises
        ------
        nucleograph.errors.InputError
            It does not exist, is not a folder, or cannot be listed: the message names the path.
        """
        path = Path(self.watch)
        if not path.exists():
            raise InputError(f"watch folder {path} does not exist: create it (mkdir -p {path}) or fix --watch")
        if not path.is_dir():
            raise InputError(f"--watch {path} is a file, not a folder: give the folder the images arrive in")
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"watch folder {path} cannot be read by this user: fix its permissions or --watch")

    def ingest_params(self) -> IngestParams:
        """The ingest parameters of each file of this job."""
        return IngestParams(detector=self.detector, threshold=self.threshold, threshold_unit=self.threshold_unit)

    def trigger(self) -> IntervalTrigger:
        """The APScheduler trigger: every ``interval`` seconds."""
        return IntervalTrigger(seconds=self.interval, timezone=dt.UTC)


@dataclass(frozen=True)
class RetrainSpec:
    """A retraining job: on ``min_new`` new labelled images (checked every ``interval`` s) or on ``cron``.

    Parameters
    ----------
    cohort : str
        The cohort to train.
    min_new : int, optional
        Train when this many labelled images arrived since the last training.
    cron : str, optional
        Or train at the times of this crontab expression (UTC). Exactly one of the two.
    interval : float
        Seconds between checks for ``min_new``.
    model, epochs, lr, folds, seed, batch_size, patience, ensemble
        As :func:`nucleograph.gnn.service.train_cohort` takes them.
    explain : str or None
        Explanation method run on the new model (one of :data:`nucleograph.db.runs.METHODS`), or None.
    hops : int
        Occlusion neighbourhood in hops.

    Raises
    ------
    nucleograph.errors.InputError
        No cohort, not exactly one of ``min_new`` and ``cron``, a bad crontab expression, a model
        that is not in the registry (:data:`nucleograph.gnn.models.MODEL_NAMES`), an unknown
        explanation method, or a training option out of range.
    """

    cohort: str
    min_new: int | None = None
    cron: str | None = None
    interval: float = 60.0
    model: str = "rsf"
    epochs: int = 50
    lr: float = 0.003
    folds: int = 1
    seed: int = 0
    batch_size: int = 8
    patience: int | None = 10
    ensemble: int = 1
    explain: str | None = DEFAULT_METHOD  # None: no explanation after training
    hops: int = 1

    def __post_init__(self):
        _check_cohort(self.cohort, "retrain")
        if (self.min_new is None) == (self.cron is None):
            raise InputError("a retrain job needs exactly one of --min-new N (new labelled images) or --cron EXPR")
        if self.min_new is not None and self.min_new < 1:
            raise InputError(f"--min-new must be at least 1, got {self.min_new}")
        if not self.interval > 0 or self.epochs < 1:
            raise InputError("--interval must be positive and --epochs at least 1")
        if self.cron is not None:
            self.trigger()  # validates the expression
        if self.model not in MODEL_CHOICES:
            raise InputError(f"--model {self.model!r} is not a model: choose one of {', '.join(MODEL_CHOICES)}")
        if self.explain is not None and self.explain not in METHODS:
            raise InputError(f"--explain {self.explain!r}: choose one of {', '.join(METHODS)} or none")
        for name, low in (("folds", 1), ("batch_size", 1), ("hops", 1), ("ensemble", 1)):
            if getattr(self, name) < low:
                raise InputError(f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}")
        if not self.lr > 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"--patience must be at least 1 (or none), got {self.patience}")

    def trigger(self) -> IntervalTrigger | CronTrigger:
        """The APScheduler trigger: the crontab times, or every ``interval`` seconds for ``min_new``."""
        if self.cron is None:
            return IntervalTrigger(seconds=self.interval, timezone=dt.UTC)
        try:
            return CronTrigger.from_crontab(self.cron, timezone=dt.UTC)
        except ValueError as exc:
            raise InputError(f"--cron {self.cron!r} is not a crontab expression (e.g. '0 2 * * *'): {exc}") from exc

    def train_params(self) -> dict[str, Any]:
        """The run parameters exactly as :func:`nucleograph.gnn.service.train_cohort` records them."""
        return {"model": self.model, "epochs": self.epochs, "lr": self.lr, "folds": self.folds, "seed": self.seed,
                "batch_size": self.batch_size, "patience": self.patience, "model_kwargs": {},
                "ensemble": self.ensemble}


SPECS = {"watch": WatchSpec, "retrain": RetrainSpec}


def spec_from_dict(kind: str, values: dict[str, Any]) -> WatchSpec | RetrainSpec:
    """Rebuild (and so re-check) a stored job's spec.

    Parameters
    ----------
    kind : {"watch", "retrain"}
    values : dict
        The stored ``asdict(spec)``; keys that are not fields of the kind's spec are ignored.

    Returns
    -------
    WatchSpec or RetrainSpec

    Raises
    ------
    nucleograph.errors.InputError
        An unknown kind, or values the spec refuses.
    """
    if kind not in SPECS:
        raise InputError(f"unknown job kind {kind!r}: choose one of {', '.join(KINDS)}")
    cls = SPECS[kind]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})

