"""Progress for anything a user waits for: a tqdm bar on a terminal, plain lines anywhere else.

A bar redraws itself with carriage returns, which a log file, ``make`` or CI shows as nothing until
the end (tqdm's ``disable`` when not a terminal) or as one unreadable line. :func:`progress` gives
the same ``update`` / ``set_postfix`` / ``close`` / iteration interface either way; off a terminal it
writes ``desc: 12/40 image, 3.1 image/s`` to standard error at most every ``every`` seconds, plus a
first and a last line, so a long step is never silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

LINE_EVERY_SECONDS = 5.0


class LineProgress:
    """The non-terminal stand-in for a tqdm bar: one line per ``every`` seconds.

    Parameters
    ----------
    iterable : iterable, optional
        Iterated by ``for x in LineProgress(...)``, counting one step per item.
    total : int, optional
        Steps expected (default ``len(iterable)`` when it has one).
    desc, unit : str
        Line prefix and the name of a step.
    initial : int
        Steps already done (a resumed run).
    stream : file, optional
        Default standard error.
    every : float
        Seconds between lines; the first and last line are always written.
    clock : callable, optional
        Seconds now (tests pass a fake one).
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, stream: TextIO | None = None,
                 every: float = LINE_EVERY_SECONDS, clock=time.monotonic) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n = self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.every, self.clock = every, clock
        self.postfix = ""
        self.t0 = self.clock()
        self.last = None
        self.closed = False
        self._write()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:  # the loop ended, or broke off (early stopping): the last line either way
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self) -> str:
        """The current state as one line (no newline)."""
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        elapsed = self.clock() - self.t0
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {done} {self.unit}, {rate:.2g} {self.unit}/s, {elapsed:.0f} s"
        return text + (f" ({self.postfix})" if self.postfix else "")

    def _write(self) -> None:
        self.last = self.clock()
        print(self.line(), file=self.stream, flush=True)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps; write a line when ``every`` seconds passed since the last."""
        self.n += n
        if self.clock() - self.last >= self.every:
            self._write()

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the count (tqdm's ``set_postfix``)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def refresh(self) -> None:
        """Write a line now (tqdm's ``refresh``): a step worth seeing even within ``every`` seconds."""
        self._write()

    def close(self) -> None:
        """Write the last line (once)."""
        if not self.closed:
            self.closed = True
            self._write()


class _Silent:
    """No output; the interface of :class:`LineProgress` (``enabled=False``)."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable or ())

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, enabled: bool = True, stream: TextIO | None = None):
    """A tqdm bar when ``stream`` is a terminal, else a :class:`LineProgress`; nothing when not ``enabled``.

    Parameters
    ----------
    iterable : iterable, optional
    total : int, optional
    desc, unit : str
    initial : int
    enabled : bool
        False: a silent stand-in with the same interface.
    stream : file, optional
        Where progress goes (default standard error).

    Returns
    -------
    tqdm.tqdm or LineProgress
        Both have ``update``, ``set_postfix``, ``close`` and iterate over ``iterable``.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> bar = progress(total=2, desc="ingest c", unit="image", stream=out)
    >>> bar.update(2); bar.close()
    >>> out.getvalue().splitlines()[-1].startswith("ingest c: 2/2 image")
    True
    """
    if not enabled:
        return _Silent(iterable)
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream)
