"""Fixtures for fault tests: a private Neo4j per test that may be killed, and a 50-image cohort."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nucleograph.db import local, schema
from nucleograph.db.graphdb import GraphDB
from nucleograph.ingest.synth import synthesize_cohort

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def private_neo4j(neo4j_settings):
    """A Neo4j of this test alone (its own store and port), so killing it disturbs no other test."""
    with local.temporary_server(launcher_from=neo4j_settings.home / "launcher") as (settings, env):
        with GraphDB.open(settings) as db:
            schema.migrate(db)
        yield settings, env


@pytest.fixture(scope="session")
def fifty_images(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fifty")
    synthesize_cohort("prostate", n_per_class=25, out_dir=out, seed=123, size=(320, 320))
    return out


@pytest.fixture
def run_cli():
    """Start ``nucleograph ARGS`` as its own process (so it can be killed with -9)."""
    procs = []

    def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
        full_env = dict(os.environ)
        full_env.pop("NEO4J_PASSWORD", None)  # the private server's generated password file is used
        full_env.update(env, PYTHONUNBUFFERED="1")
        exe = shutil.which("nucleograph", path=str(Path(sys.executable).parent)) or "nucleograph"
        proc = subprocess.Popen([exe, *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
