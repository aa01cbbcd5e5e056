"""Helpers of the scheduler tests (imported by name: tests/ has no packages)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest


def drop(images: list[tuple[Path, str]], watch: Path) -> list[Path]:
    """Put images into ``watch/<label>/`` atomically (written hidden, then renamed)."""
    out = []
    for path, label in images:
        dst = watch / label / path.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name("." + dst.name + ".part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dst)
        out.append(dst)
    return out



def wait_for(condition: Callable[[], object], *, timeout: float, what: str, procs=(), interval: float = 0.3):
    """Poll ``condition`` until truthy; on timeout fail with the scheduler logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for p in procs:
            if p.proc.poll() is not None:
                pytest.fail(f"scheduler exited ({p.proc.returncode}) while waiting for {what}:\n{p.output()[-4000:]}")
        time.sleep(interval)
    logs = "\n---\n".join(p.output()[-4000:] for p in procs)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{logs}")
