"""Stopping a training run: Ctrl-C and SIGTERM end it as ``interrupted``, resumable from its checkpoint.

No torch here: ``nucleograph runs`` imports :func:`resume_command` and should start fast.
"""

from __future__ import annotations

import shlex
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def resume_command(cohort: str, run_id: str) -> str:
    """The command that continues run ``run_id`` of ``cohort`` from its last epoch checkpoint."""
    return f"nucleograph train --cohort {shlex.quote(cohort)} --resume {shlex.quote(run_id)}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is (as Ctrl-C raises KeyboardInterrupt): see :func:`sigterm_interrupts`."""


class TrainingInterrupted(KeyboardInterrupt):
    """A training run stopped by Ctrl-C or SIGTERM; its record says ``interrupted``.

    A KeyboardInterrupt, so whatever catches Ctrl-C catches it; the message says how to resume.
    """

    def __init__(self, run_id: str, cohort: str, why: str):
        self.run_id, self.cohort = run_id, cohort
        super().__init__(f"run {run_id} was interrupted ({why}); continue it from its last epoch checkpoint with "
                         f"`{resume_command(cohort, run_id)}`")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` instead of ending Python at once.

    Python's default SIGTERM ends the process without running ``except`` or ``finally`` blocks, so a
    run stopped by ``kill`` or a service manager could not record that it stopped. Signal handlers
    can only be set from the main thread: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
