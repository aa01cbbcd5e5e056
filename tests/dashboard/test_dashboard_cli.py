"""`nucleograph dashboard` serves the app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from nucleograph.cli import build_parser
from nucleograph.dashboard.cli import streamlit_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_command_defaults_to_localhost_headless():
    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port) == ("127.0.0.1", 8501)
    cmd = streamlit_command(args.host, args.port)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"


@pytest.mark.neo4j
@pytest.mark.slow
def test_dashboard_command_serves_the_app(test_environ):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nucleograph.cli", "dashboard", "--port", str(port)],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert body == "ok", proc.stdout.read() if proc.poll() is not None else "no answer"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200 and b"<div id=\"root\">" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []


def _gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie counts as gone: it no longer runs)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.1)
    return _gone(pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_parent_reaches_the_child_and_is_waited_for(tmp_path, signum):
    # the parent runs run_forwarding_signals over a child that records the signal it gets, then exits
    marker = tmp_path / "child-got"
    child = ("import pathlib, signal, sys, time\n"
             f"def bye(s, f): pathlib.Path({str(marker)!r}).write_text(str(s)); sys.exit(3)\n"
             "signal.signal(signal.SIGTERM, bye); signal.signal(signal.SIGINT, bye)\n"
             "print('ready', flush=True); time.sleep(60)\n")
    parent = ("import sys\nfrom nucleograph.dashboard.cli import run_forwarding_signals\n"
              f"sys.exit(run_forwarding_signals([sys.executable, '-c', {child!r}]))\n")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    kids: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        kids = _children(proc.pid)
        assert len(kids) == 1
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 3  # the child's own exit status, after it handled the signal
        assert marker.read_text() == str(int(signum))
        assert _wait_gone(kids[0], 5)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        for pid in kids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_sigterm_to_nucleograph_dashboard_stops_streamlit(tmp_path):
    port = _free_port()
    env = dict(os.environ, NUCLEOGRAPH_HOME=str(tmp_path), NEO4J_URI=f"bolt://127.0.0.1:{_free_port()}")
    proc = subprocess.Popen([sys.executable, "-m", "nucleograph.cli", "dashboard", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        kids = _children(proc.pid)
        assert len(kids) == 1, "nucleograph dashboard should run Streamlit as its one child"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert _wait_gone(kids[0], 5), f"Streamlit (pid {kids[0]}) still runs after SIGTERM to its parent"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        proc.kill()
        proc.wait()
        for pid in kids:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
