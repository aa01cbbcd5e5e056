"""Versioned, idempotent schema migrations for the graph model.

Each migration is a tuple of statements from :mod:`nucleograph.db.queries`; applied versions are recorded as
``(:SchemaMigration {version})`` nodes, so ``migrate`` only runs what is new and a second run
changes nothing. Add a migration by appending to :data:`MIGRATIONS`.
"""

from __future__ import annotations

from nucleograph.db import queries as q
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import DatabaseError

MIGRATIONS: tuple[tuple[str, ...], ...] = (q.SCHEMA_V1, q.SCHEMA_V2, q.SCHEMA_V3, q.SCHEMA_V4)
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
        # Schema commands cannot share a transaction with data writes, and data migrations batch
        # themselves (CALL ... IN TRANSACTIONS): each statement runs as its own implicit transaction.
        for statement in MIGRATIONS[version - 1]:
            db.run_implicit(statement)
        db.write(q.SCHEMA_RECORD, version=version)
    return {"from": start, "to": max(start, LATEST), "applied": max(0, LATEST - start)}


def require_current(db: GraphDB) -> None:
    """Refuse to work on a store written by an older version until it is migrated.

    Parameters
    ----------
    db : GraphDB

    Raises
    ------
    DatabaseError
        The store's schema is older (or newer) than this version's, naming the fix.
    """
    version = current_version(db)
    if version == 0 or version == LATEST:  # 0: a new, empty database (migrated when first written)
        return
    if version < LATEST:
        raise DatabaseError(f"the Neo4j store is at schema version {version}, this nucleograph needs {LATEST}: "
                            "run `nucleograph db migrate` (it moves the stored data, keeps everything, and can "
                            "be run again if interrupted)")
    raise DatabaseError(f"the Neo4j store is at schema version {version}, newer than this nucleograph knows "
                        f"({LATEST}): upgrade nucleograph")
