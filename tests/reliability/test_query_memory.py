"""A console query that needs more memory than Neo4j grants fails at once, with what to do instead.

The driver takes Neo4j's out-of-memory errors for transient ones and would retry the same query
for a minute (``max_transaction_retry_time``); the console must not.
"""

from __future__ import annotations

import time

import pytest

from nucleograph.cli import main
from nucleograph.db import console
from nucleograph.db.graphdb import GraphDB

pytestmark = [pytest.mark.reliability, pytest.mark.neo4j]

# 30 million integers collected into one list: about 600 MB of tracked memory, over the 358 MiB that a
# 512 MB heap allows all transactions together (dbms.memory.transaction.total.max, 70% of the heap)
HUGE_LIST = "UNWIND range(1, 30000000) AS i RETURN size(collect(i)) AS n"


def test_out_of_memory_query_is_explained_and_not_retried(private_neo4j, monkeypatch, capsys):
    settings, env = private_neo4j  # a 512 MB heap of its own, so no other test shares its memory
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NEO4J_PASSWORD", raising=False)
    started = time.monotonic()
    assert main(["cypher", HUGE_LIST]) == 1
    seconds = time.monotonic() - started
    err = capsys.readouterr().err
    assert "ran out of memory" in err and "MemoryPoolOutOfMemoryError" in err, err
    assert "LIMIT" in err and "NUCLEOGRAPH_NEO4J_HEAP" in err and "Traceback" not in err
    assert seconds < 30, f"took {seconds:.0f} s: the driver retried the query"
    with GraphDB.open(settings) as db:  # the server is fine afterwards
        with pytest.raises(console.QueryOutOfMemory):
            console.run_cypher(db, HUGE_LIST)
        assert console.run_cypher(db, "RETURN 1 AS x") == (["x"], [{"x": 1}])
