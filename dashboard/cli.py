"""`nucleograph dashboard [--host H] [--port P]`: run the Streamlit app headless."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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
    return subprocess.call(streamlit_command(args.host, args.port), env=env)
