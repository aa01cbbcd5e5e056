"""Versioned, idempotent schema migrations for the graph model.

Each migration is a tuple of statements from :mod:`nucleograph.db.queries`; applied versions are recorded as
``(:SchemaMigration {version})`` nodes, so ``migrate`` only runs what is new and a second run
changes nothing. Add a migration by appending to :data:`MIGRATIONS`.
"""

from __future__ import annotations

import neo4j

from nucleograph.db import queries as q

MIGRATIONS: tuple[tuple[str, ...], ...] = (q.SCHEMA_V1, q.SCHEMA_V2)
LATEST = len(MIGRATIONS)


def current_version(driver: neo4j.Driver, *, database: str) -> int:
    records, _, _ = driver.execute_query(q.SCHEMA_VERSION, database_=database, routing_=neo4j.RoutingControl.READ)
    return int(records[0]["version"])


def migrate(driver: neo4j.Driver, *, database: str) -> dict:
    """Apply the migrations newer than the stored version; return ``{"from": v0, "to": v1, "applied": n}``."""
    start = current_version(driver, database=database)
    for version in range(start + 1, LATEST + 1):
        # Schema commands cannot share a transaction with data writes: one auto-commit each.
        for statement in MIGRATIONS[version - 1]:
            driver.execute_query(statement, database_=database)
        driver.execute_query(q.SCHEMA_RECORD, version=version, database_=database)
    return {"from": start, "to": max(start, LATEST), "applied": max(0, LATEST - start)}
