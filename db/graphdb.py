"""One object for every Neo4j call: the driver, the database name and the write batch size.

After neo4j-graphrag's ``Neo4jWriter``: the driver is created once per process and passed on inside a
:class:`GraphDB`, instead of ``driver`` and ``database=`` travelling separately through every call.
Reads go with ``routing_=READ`` (so a ``neo4j://`` cluster URI spreads them over secondaries) and
writes with ``WRITE``; managed transactions are retried by the driver on transient failures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import neo4j

from nucleograph.config import Settings
from nucleograph.db.driver import open_driver

T = TypeVar("T")

#: Rows per ``UNWIND $rows`` write statement.
BATCH = 10_000


@dataclass(frozen=True)
class GraphDB:
    """The driver and the database that nucleograph reads and writes.

    Parameters
    ----------
    driver : neo4j.Driver
        Created once per process (:func:`nucleograph.db.driver.open_driver`); closed by its owner.
    database : str
        Neo4j database name (``NEO4J_DATABASE``).
    batch_size : int
        Rows per ``UNWIND $rows`` statement in batched writes.

    Examples
    --------
    >>> db = GraphDB.open(Settings.from_env())  # doctest: +SKIP
    >>> db.read("MATCH (c:Cohort) RETURN c.name AS name")  # doctest: +SKIP
    [{'name': 'breast'}]
    """

    driver: neo4j.Driver
    database: str = "neo4j"
    batch_size: int = BATCH

    @classmethod
    def open(cls, settings: Settings, *, verify: bool = True) -> GraphDB:
        """Open the driver for ``settings`` (checking that the server answers) and wrap it."""
        return cls(open_driver(settings, verify=verify), settings.neo4j_database)

    def close(self) -> None:
        self.driver.close()

    def __enter__(self) -> GraphDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- auto-commit queries (one statement, retried by the driver) ------------------------------
    def read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Run a read query (routed to a reader) and return its records as dicts."""
        records, _, _ = self.driver.execute_query(
            query, params, database_=self.database, routing_=neo4j.RoutingControl.READ
        )
        return [dict(r) for r in records]

    def read_one(self, query: str, **params: Any) -> dict[str, Any] | None:
        """The first record of a read query as a dict, or None when it returns no rows."""
        rows = self.read(query, **params)
        return rows[0] if rows else None

    def write(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Run a write query (routed to the leader) and return its records as dicts."""
        records, _, _ = self.driver.execute_query(
            query, params, database_=self.database, routing_=neo4j.RoutingControl.WRITE
        )
        return [dict(r) for r in records]

    def write_batches(self, query: str, rows: list, **params: Any) -> None:
        """Run ``query`` (``UNWIND $rows AS row ...``) once per batch of ``rows``, each in its own transaction."""
        for chunk in chunks(rows, self.batch_size):
            self.write(query, rows=chunk, **params)

    # --- managed transactions (several statements, atomic, retried as a whole) -------------------
    def read_transaction(self, work: Callable[[neo4j.ManagedTransaction], T]) -> T:
        with self.driver.session(database=self.database, default_access_mode=neo4j.READ_ACCESS) as session:
            return session.execute_read(work)

    def write_transaction(self, work: Callable[[neo4j.ManagedTransaction], T]) -> T:
        with self.driver.session(database=self.database) as session:
            return session.execute_write(work)


def chunks(rows: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``rows`` of at most ``size`` items."""
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
