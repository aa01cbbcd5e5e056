"""Progress off a terminal: plain lines on standard error, never silence."""

from __future__ import annotations

import io

from nucleograph.progress import LineProgress, progress


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lines_every_few_seconds_and_at_the_end():
    out, clock = io.StringIO(), _Clock()
    bar = LineProgress(total=40, desc="ingest c", unit="image", stream=out, every=5.0, clock=clock)
    for _ in range(12):
        clock.t += 1.0
        bar.update(1)
    bar.set_postfix(loss="0.512")
    bar.close()
    bar.close()  # once
    lines = out.getvalue().splitlines()
    assert lines[0] == "ingest c: 0/40 image, 0 image/s, 0 s"
    assert lines[1] == "ingest c: 5/40 image, 1 image/s, 5 s"
    assert lines[2] == "ingest c: 10/40 image, 1 image/s, 10 s"
    assert lines[-1] == "ingest c: 12/40 image, 1 image/s, 12 s (loss 0.512)" and len(lines) == 4


def test_iterating_counts_and_a_resumed_run_starts_at_initial():
    out = io.StringIO()
    seen = list(LineProgress(range(3, 5), total=5, initial=3, desc="train", unit="epoch", stream=out))
    assert seen == [3, 4] and out.getvalue().splitlines()[-1].startswith("train: 5/5 epoch")


def test_not_a_terminal_gives_lines_a_terminal_a_bar_disabled_nothing():
    out = io.StringIO()
    assert isinstance(progress(total=1, stream=out), LineProgress)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = progress(total=2, desc="x", stream=tty)
    bar.update(2)
    bar.close()
    assert "\r" in tty.getvalue() and "2/2" in tty.getvalue()  # tqdm redraws in place
    silent = io.StringIO()
    quiet = progress(range(2), enabled=False, stream=silent)
    assert list(quiet) == [0, 1] and silent.getvalue() == ""


def test_a_loop_that_breaks_off_still_writes_its_last_line():
    out = io.StringIO()
    for epoch in LineProgress(range(10), desc="train", unit="epoch", stream=out):
        if epoch == 2:
            break
    assert out.getvalue().splitlines()[-1].startswith("train: 2/10 epoch")


def test_refresh_writes_a_line_within_the_quiet_interval_and_an_empty_postfix_clears():
    out, clock = io.StringIO(), _Clock()
    bar = LineProgress(total=1, desc="ingest c", unit="image", stream=out, every=5.0, clock=clock)
    clock.t = 1.0
    bar.set_postfix(writing="edges 10/10")
    bar.update(0)  # within 5 s: no line
    bar.refresh()  # a line now
    bar.set_postfix()
    bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[1] == "ingest c: 0/1 image, 0 image/s, 1 s (writing edges 10/10)"
    assert lines[-1] == "ingest c: 1/1 image, 1 image/s, 1 s" and len(lines) == 3
