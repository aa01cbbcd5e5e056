"""Versioned, idempotent schema migrations for the graph model.

Each migration is a tuple of statements from :mod:`nucleograph.db.queries`; applied versions are recorded as
``(:SchemaMigration {version})`` nodes, so ``migrate`` only runs what is new and a second run
changes nothing. Add a migration by appending to :data:`MIGRATIONS`.
"""

from __future__ import annotations

from nucleograph.db import queries as q
from nucleograph.db.graphdb import GraphDB

MIGRATIONS: tuple[tuple[str, ...], ...] = (q.SCHEMA_V1, q.SCHEMA_V2)
LATEST = len(MIGRATIONS)


def current_version(db: GraphDB) -> int:
    """The newest migration applied to ``db`` (0 for a fresh database).

    Parameters
    ----------
    db : GraphDB

    Returns
    -------
    int
    """
    return int(db.read(q.SCHEMA_VERSION)[0]["version"])


def migrate(db: GraphDB) -> dict:
    """Apply the migrations newer than the stored version; return ``{"from": v0, "to": v1, "applied": n}``.

    Parameters
    ----------
    db : GraphDB
        The database to migrate (its ``database`` name is the one changed).

    Returns
    -------
    dict
    """
    start = current_version(db)
    for version in range(start + 1, LATEST + 1):
        # Schema commands cannot share a transaction with data writes: one auto-commit each.
        for statement in MIGRATIONS[version - 1]:
            db.write(statement)
        db.write(q.SCHEMA_RECORD, version=version)
    return {"from": start, "to": max(start, LATEST), "applied": max(0, LATEST - start)}
