"""Shared fixtures: one real local Neo4j for the whole test session (started here, as CI needs).

The test server has its own state folder and port, so a developer's database is never touched:
``NUCLEOGRAPH_TEST_HOME`` (default ``.nucleograph/test``) and ``NUCLEOGRAPH_TEST_PORT`` (7688).
Its data is wiped at the start of each session; the built launcher is kept.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from db import local, schema
from db.driver import open_driver
from nucleograph.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_env() -> dict[str, str]:
    home = Path(os.environ.get("NUCLEOGRAPH_TEST_HOME") or ROOT / ".nucleograph" / "test").resolve()
    port = os.environ.get("NUCLEOGRAPH_TEST_PORT") or "7688"
    return {
        "NUCLEOGRAPH_HOME": str(home),
        "NEO4J_URI": f"bolt://127.0.0.1:{port}",
        "NUCLEOGRAPH_NEO4J_HEAP": "1g",
        "NUCLEOGRAPH_NEO4J_PAGECACHE": "256m",
    }


@pytest.fixture(scope="session")
def neo4j_settings() -> Settings:
    """Settings of the session's test Neo4j, started fresh (and stopped at the end)."""
    settings = Settings.from_env(test_env())
    if local.read_pid(settings) is not None:
        local.stop(settings)
    shutil.rmtree(settings.neo4j_home, ignore_errors=True)
    (settings.home / "records.sqlite").unlink(missing_ok=True)
    local.start(settings)
    driver = open_driver(settings)
    schema.migrate(driver, database=settings.neo4j_database)
    driver.close()
    yield settings
    local.stop(settings)


@pytest.fixture(scope="session")
def driver(neo4j_settings):
    drv = open_driver(neo4j_settings)
    yield drv
    drv.close()


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
