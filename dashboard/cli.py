"""`nucleograph dashboard [--host H] [--port P]`: run the Streamlit app headless."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nucleograph.config import Settings

APP = Path(__file__).resolve().parent / "app.py"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="open the cohort dashboard (Streamlit) in a browser")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8501)
    p.set_defaults(func=cmd_dashboard)


def streamlit_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP), "--server.address", host, "--server.port",
            str(port), "--server.headless", "true", "--browser.gatherUsageStats", "false"]


def cmd_dashboard(args, settings: Settings) -> int:
    # The app reads its settings from the environment; pass the resolved ones on explicitly so a
    # relative NUCLEOGRAPH_HOME means the same folder wherever Streamlit's cwd is.
    env = dict(os.environ, NUCLEOGRAPH_HOME=str(settings.home), NEO4J_URI=settings.neo4j_uri,
               NEO4J_USER=settings.neo4j_user, NEO4J_DATABASE=settings.neo4j_database,
               NUCLEOGRAPH_SQL_URL=settings.sql_url)
    print(f"dashboard at http://{args.host}:{args.port} (Neo4j {settings.neo4j_uri}); Ctrl-C stops it", flush=True)
    return run_forwarding_signals(streamlit_command(args.host, args.port), env=env)


def run_forwarding_signals(cmd: list[str], *, env: dict[str, str] | None = None, grace: float = 10.0) -> int:
    """Run ``cmd`` and wait for it; SIGTERM, SIGINT or SIGHUP to this process is passed on to it.

    ``subprocess.call`` would leave the child running when this process is terminated (a service
    manager's SIGTERM, ``kill``): Python dies at once and the orphaned Streamlit server keeps its port.
    Here the signal goes to the child and this process waits for it to exit (killing it after
    ``grace`` seconds), so stopping ``nucleograph dashboard`` stops the server.

    Parameters
    ----------
    cmd : list of str
        The child's command line.
    env : dict, optional
        The child's environment.
    grace : float
        Seconds the child has to exit after a forwarded signal before it is killed.

    Returns
    -------
    int
        The child's exit status (negative: the signal that ended it, as ``subprocess`` reports it).
    """
    child = subprocess.Popen(cmd, env=env)
    forwarded: list[int] = []

    def forward(signum, _frame) -> None:
        forwarded.append(signum)
        if child.poll() is None:
            child.send_signal(signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}
    deadline = None
    try:
        while True:
            try:
                # short waits, not one blocking wait: the grace period starts when a signal arrives
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if forwarded and deadline is None:
                    deadline = time.monotonic() + grace
                if deadline is not None and time.monotonic() > deadline:
                    child.kill()  # it ignored the forwarded signal for `grace` seconds
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
