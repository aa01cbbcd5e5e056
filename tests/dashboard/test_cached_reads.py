"""The dashboard's cached reads: one cache entry per server and parameters, the driver never hashed.

These exercise the caching helper alone (the read below touches no database); the reads themselves
run against the real Neo4j in test_pages.py.
"""

from __future__ import annotations

import threading

from nucleograph.config import Settings
from nucleograph.dashboard import data

CALLS: list[tuple[str, str, int, int]] = []


@data.cached_read()
def _echo(reader: data.Reader, *, a: int, b: int = 0) -> int:
    CALLS.append((reader.settings.neo4j_uri, reader.settings.neo4j_database, a, b))
    return a + b


def _reader(uri: str = "bolt://127.0.0.1:7001", database: str = "neo4j") -> data.Reader:
    # A lock cannot be hashed or pickled: the read works only if the reader (driver) is left out of the key.
    settings = Settings.from_env({"NEO4J_URI": uri, "NEO4J_DATABASE": database, "NUCLEOGRAPH_HOME": "/nonexistent"})
    return data.Reader(settings, threading.Lock())  # type: ignore[arg-type]


def test_cached_read_runs_once_per_server_and_parameters():
    _echo.clear()
    CALLS.clear()
    one = _reader()
    assert _echo(one, a=1, b=2) == 3
    assert _echo(one, b=2, a=1) == 3  # keyword order does not matter
    assert _echo(_reader(), a=1, b=2) == 3  # an equal server hits the same entry
    assert len(CALLS) == 1
    _echo(one, a=2, b=2)
    _echo(_reader(uri="bolt://127.0.0.1:7002"), a=1, b=2)
    _echo(_reader(database="other"), a=1, b=2)
    assert CALLS[1:] == [("bolt://127.0.0.1:7001", "neo4j", 2, 2), ("bolt://127.0.0.1:7002", "neo4j", 1, 2),
                         ("bolt://127.0.0.1:7001", "other", 1, 2)]
    _echo.clear()
    _echo(one, a=1, b=2)
    assert len(CALLS) == 5


def test_each_read_has_its_own_cache():
    # Reads are closures of one helper; Streamlit must still keep their results apart.
    other_calls = []

    @data.cached_read()
    def _other(reader: data.Reader, *, a: int, b: int = 0) -> int:
        other_calls.append(a)
        return -a

    _echo.clear()
    one = _reader()
    assert _echo(one, a=5) == 5
    assert _other(one, a=5) == -5
    assert other_calls == [5]
    assert _echo.__name__ == "_echo"  # the read keeps its own name (and docstring) for pages and docs
