"""Looking after the scheduler's state: re-queueing files it gave up on, and pruning its history.

``nucleograph jobs retry`` gives abandoned or failed files of the watch ledger a fresh start;
``nucleograph jobs prune`` (and every scheduler, every ``prune_every`` seconds) deletes finished job
runs and done files' rows beyond the limits of :class:`~nucleograph.config.Settings`. Live state
(pending, claimed, failed and abandoned files, running runs, retraining triggers) is never pruned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from nucleograph.config import Settings
from nucleograph.db import ledger
from nucleograph.errors import InputError

__all__ = ["PRUNE_LOCK", "file_is_still_watched", "prune", "prune_with_settings", "requeue"]

log = logging.getLogger("nucleograph.scheduler")

#: The lock that keeps two schedulers from pruning at once.
PRUNE_LOCK = "prune-history"

_CONTENT_HASH = re.compile(r"[0-9a-f]{16}")


def requeue(engine: Engine, files: Sequence[str] = (), *, all_abandoned: bool = False,
            watch: str | None = None) -> dict[str, Any]:
    """Re-queue watched files: status ``pending``, attempts reset, taken up by the next scan.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    files : sequence of str
        Paths (relative ones are resolved against the working folder) or content hashes, as
        ``nucleograph jobs files`` lists them. Failed and abandoned ones are re-queued.
    all_abandoned : bool
        Also every abandoned file (of ``watch``, when given).
    watch : str, optional
        Only files of this watch folder.

    Returns
    -------
    result : dict
        As :func:`nucleograph.db.ledger.requeue_files`: ``requeued``, ``files``, ``not_requeued``.

    Raises
    ------
    nucleograph.errors.InputError
        Neither files nor ``all_abandoned``, or a file the ledger does not know (nothing changes).
    """
    if not files and not all_abandoned:
        raise InputError("name the files to retry (paths or content hashes from `nucleograph jobs files`) "
                         "or pass --all-abandoned")
    # the ledger holds resolved paths; the error for an unknown file names the path as resolved
    refs = [f if _CONTENT_HASH.fullmatch(f) else str(Path(f).expanduser().resolve()) for f in files]
    return ledger.requeue_files(engine, refs, all_abandoned=all_abandoned, watch=watch)


def file_is_still_watched(row: dict[str, Any]) -> bool:
    """True when a done file is still in its watch folder (or the folder is not visible here):
    its ledger row must stay, or the next scan would ingest the file again.

    Parameters
    ----------
    row : dict
        A row of the watch ledger (``watch``, ``path``).

    Returns
    -------
    bool
    """
    return not Path(row["watch"]).is_dir() or Path(row["path"]).exists()


def prune(engine: Engine, *, keep_days: float | None, keep_rows: int | None) -> dict[str, int]:
    """Delete the finished job history beyond the limits (see :func:`nucleograph.db.ledger.prune_history`).

    A done file's row stays while the file is still in its watch folder, or when that folder cannot
    be seen from here (:func:`file_is_still_watched`), so pruning never makes a file be ingested twice.

    Parameters
    ----------
    engine : sqlalchemy.engine.Engine
    keep_days : float or None
        Keep what finished within this many days; 0 or None: no age limit.
    keep_rows : int or None
        Keep this many of the newest rows (job runs; done files); 0 or None: no row limit.

    Returns
    -------
    dict
        ``job_runs`` and ``files``: rows deleted.

    Raises
    ------
    nucleograph.errors.InputError
        A negative limit.
    """
    for name, value in (("--keep-days", keep_days), ("--keep-rows", keep_rows)):
        if value is not None and not value >= 0:
            raise InputError(f"{name} must be >= 0 (0 keeps everything by that measure), got {value}")
    return ledger.prune_history(engine, keep_days=keep_days, keep_rows=keep_rows, keep_file=file_is_still_watched)


def prune_with_settings(engine: Engine, settings: Settings, *, owner: str, ttl: float) -> dict[str, int] | None:
    """:func:`prune` with the limits of ``settings``, by one scheduler at a time (None: another prunes)."""
    with ledger.held_lock(engine, PRUNE_LOCK, owner=owner, ttl=ttl) as got:
        if not got:
            return None
        pruned = prune(engine, keep_days=settings.jobs_keep_days, keep_rows=settings.jobs_keep_rows)
    if pruned["job_runs"] or pruned["files"]:
        log.info("pruned %d job run(s) and %d done file record(s) (keeping %g days, %d rows)", pruned["job_runs"],
                 pruned["files"], settings.jobs_keep_days, settings.jobs_keep_rows)
    return pruned
