"""Shared fixtures: one real local Neo4j for the whole test session (started here, as CI needs).

Each test run gets its own server: a fresh home under ``NUCLEOGRAPH_TEST_HOME`` (default
``.nucleograph/test``) named after the run, and a free loopback port (``NUCLEOGRAPH_TEST_PORT`` pins
one). So two test runs on one machine never stop, wipe or share each other's server or store, and a
developer's database is never touched. The launcher is built once into the test home (under a file
lock, so concurrent runs do not build it twice) and shared read-only; a run deletes only its own home.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import pytest

from nucleograph.config import Settings
from nucleograph.db import local, schema
from nucleograph.db.driver import open_driver
from nucleograph.db.graphdb import GraphDB

ROOT = Path(__file__).resolve().parents[1]
TEST_HOME = Path(os.environ.get("NUCLEOGRAPH_TEST_HOME") or ROOT / ".nucleograph" / "test").resolve()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_orphans(runs: Path) -> None:
    """Stop and delete the servers of earlier test runs whose pytest process is gone (killed runs)."""
    for home in runs.glob("run-*-*"):
        owner = home.name.split("-")[1]
        if not owner.isdigit() or _alive(int(owner)):
            continue  # a live run owns it: never touch another run's server
        settings = Settings.from_env({"NUCLEOGRAPH_HOME": str(home)})
        if local.read_pid(settings) is not None:
            local.stop(settings)
        shutil.rmtree(home, ignore_errors=True)


def _run_home() -> Path:
    runs = TEST_HOME / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    _reap_orphans(runs)
    return Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=runs))


# Chosen once per test process: every fixture and subprocess of this run sees the same server.
RUN_HOME = _run_home()
RUN_PORT = os.environ.get("NUCLEOGRAPH_TEST_PORT") or _free_port()


def test_env() -> dict[str, str]:
    return {
        "NUCLEOGRAPH_HOME": str(RUN_HOME),
        "NEO4J_URI": f"bolt://127.0.0.1:{RUN_PORT}",
        "NUCLEOGRAPH_NEO4J_HEAP": "1g",
        "NUCLEOGRAPH_NEO4J_PAGECACHE": "256m",
    }


def _shared_launcher() -> Path:
    """The launcher built once for all test runs (a file lock keeps concurrent runs from racing)."""
    TEST_HOME.mkdir(parents=True, exist_ok=True)
    with open(TEST_HOME / "launcher.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return local.build_launcher(Settings.from_env({"NUCLEOGRAPH_HOME": str(TEST_HOME)}))


@pytest.fixture(scope="session")
def neo4j_settings() -> Settings:
    """Settings of this run's own test Neo4j, started fresh (stopped and deleted at the end)."""
    launcher = _shared_launcher()
    (RUN_HOME / "launcher").symlink_to(launcher, target_is_directory=True)
    settings = Settings.from_env(test_env())
    local.start(settings)
    with GraphDB.open(settings) as db:
        schema.migrate(db)
    yield settings
    local.stop(settings)
    shutil.rmtree(RUN_HOME, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    if local.read_pid(Settings.from_env(test_env())) is None:
        shutil.rmtree(RUN_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def driver(neo4j_settings):
    drv = open_driver(neo4j_settings)
    yield drv
    drv.close()


@pytest.fixture(scope="session")
def graphdb(driver, neo4j_settings) -> GraphDB:
    """The test database over the session's driver (the ``driver`` fixture owns and closes it)."""
    return GraphDB(driver, neo4j_settings.neo4j_database)


@pytest.fixture
def test_environ(neo4j_settings, monkeypatch) -> Settings:
    """Point the CLI (which reads the environment) at the test server."""
    for key, value in test_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NEO4J_PASSWORD", raising=False)
    monkeypatch.delenv("NUCLEOGRAPH_SQL_URL", raising=False)
    return neo4j_settings


@pytest.fixture
def unique_name() -> str:
    return "t" + uuid.uuid4().hex[:10]
