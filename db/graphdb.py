"""One object for every Neo4j call: the driver, the database name and the write batch size.

After neo4j-graphrag's ``Neo4jWriter``: the driver is created once per process and passed on inside a
:class:`GraphDB`, instead of ``driver`` and ``database=`` travelling separately through every call.
Reads go with ``routing_=READ`` (so a ``neo4j://`` cluster URI spreads them over secondaries) and
writes with ``WRITE``; managed transactions are retried by the driver on transient failures. Every call
states its access mode: the server refuses a write in a READ session even on a single instance, so a write
sent the wrong way fails in every test, not only on a cluster (``tests/db/test_routing.py`` audits the call
sites against the server's own classification of each query).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import neo4j

from nucleograph.config import Settings
from nucleograph.db.driver import open_driver

T = TypeVar("T")

#: Rows per ``UNWIND $rows`` write statement (the one home of the write batch size).
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
        """Open the driver for ``settings`` (checking that the server answers) and wrap it.

        Parameters
        ----------
        settings : Settings
            Neo4j URI, credentials and database name.
        verify : bool
            Check connectivity now (errors name the fix, see :func:`open_driver`).

        Returns
        -------
        GraphDB
            Owned by the caller, who closes it (``with GraphDB.open(s) as db:`` does).
        """
        return cls(open_driver(settings, verify=verify), settings.neo4j_database)

    @classmethod
    def opener(cls, settings: Settings) -> Callable[[], GraphDB]:
        """A picklable ``open()`` for another process or machine (a Dask worker): the password is resolved
        here, where the local server's password file is.

        Parameters
        ----------
        settings : Settings

        Returns
        -------
        callable
            Opens (and verifies) a :class:`GraphDB` for ``settings`` each time it is called.
        """
        return functools.partial(cls.open, dataclasses.replace(settings, neo4j_password=settings.password()))

    def close(self) -> None:
        """Close the driver (only its owner, the code that opened it, should)."""
        self.driver.close()

    def __enter__(self) -> GraphDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- auto-commit queries (one statement, retried by the driver) ------------------------------
    def read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Run a read query (routed to a reader) and return its records as dicts.

        Parameters
        ----------
        query : str
            A Cypher constant from :mod:`nucleograph.db.queries`.
        **params
            Its ``$parameters``.

        Returns
        -------
        list of dict
            One dict per record, keyed by the query's return names.
        """
        records, _, _ = self.driver.execute_query(
            query, params, database_=self.database, routing_=neo4j.RoutingControl.READ
        )
        return [dict(r) for r in records]

    def read_one(self, query: str, **params: Any) -> dict[str, Any] | None:
        """The first record of a read query as a dict, or None when it returns no rows.

        Parameters
        ----------
        query : str
            A Cypher constant from :mod:`nucleograph.db.queries`.
        **params
            Its ``$parameters``.

        Returns
        -------
        dict or None
        """
        rows = self.read(query, **params)
        return rows[0] if rows else None

    def write(self, query: str, **params: Any) -> list[dict[str, Any]]:
        """Run a write query (routed to the leader, one auto-commit transaction); return its records.

        Parameters
        ----------
        query : str
            A Cypher constant from :mod:`nucleograph.db.queries`.
        **params
            Its ``$parameters``.

        Returns
        -------
        list of dict
            One dict per record (empty for queries that return nothing).
        """
        records, _, _ = self.driver.execute_query(
            query, params, database_=self.database, routing_=neo4j.RoutingControl.WRITE
        )
        return [dict(r) for r in records]

    def run_implicit(self, query: str, **params: Any) -> None:
        """Run one statement in an implicit (auto-commit) transaction, as schema commands and
        ``CALL { ... } IN TRANSACTIONS`` batches need; not retried by the driver.

        Parameters
        ----------
        query : str
            A Cypher constant from :mod:`nucleograph.db.queries`.
        **params
            Its ``$parameters``.
        """
        with self.driver.session(database=self.database, default_access_mode=neo4j.WRITE_ACCESS) as session:
            session.run(query, params).consume()

    def write_batches(self, query: str, rows: list, **params: Any) -> None:
        """Run ``query`` (``UNWIND $rows AS row ...``) once per batch of ``rows``, each its own transaction.

        Parameters
        ----------
        query : str
            A Cypher constant that reads its rows from ``$rows``.
        rows : list
            All rows; sent :attr:`batch_size` at a time.
        **params
            The query's other ``$parameters``, the same for every batch.
        """
        for chunk in chunks(rows, self.batch_size):
            self.write(query, rows=chunk, **params)

    # --- managed transactions (several statements, atomic, retried as a whole) -------------------
    def read_transaction(self, work: Callable[[neo4j.ManagedTransaction], T]) -> T:
        """Run ``work(tx)`` in one read transaction (a READ-mode session, so the server refuses writes).

        Parameters
        ----------
        work : callable
            Takes the transaction; may be called again when the driver retries.

        Returns
        -------
        What ``work`` returns.
        """
        with self.driver.session(database=self.database, default_access_mode=neo4j.READ_ACCESS) as session:
            return session.execute_read(work)

    def write_transaction(self, work: Callable[[neo4j.ManagedTransaction], T]) -> T:
        """Run ``work(tx)`` in one write transaction: all its statements commit together or none do.

        Parameters
        ----------
        work : callable
            Takes the transaction; may be called again when the driver retries.

        Returns
        -------
        What ``work`` returns.
        """
        with self.driver.session(database=self.database, default_access_mode=neo4j.WRITE_ACCESS) as session:
            return session.execute_write(work)


def chunks(rows: list, size: int) -> Iterator[list]:
    """Consecutive slices of ``rows`` of at most ``size`` items.

    Parameters
    ----------
    rows : list
    size : int
        Items per slice.

    Yields
    ------
    list
    """
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
