"""`nucleograph dashboard` serves the app."""

from __future__ import annotations

import os
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
