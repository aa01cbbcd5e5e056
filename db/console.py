"""Running user Cypher (the `nucleograph cypher` command and the dashboard console).

Read-only is enforced by the server, not by parsing text: the query runs in a READ access-mode
transaction, which Neo4j refuses to let write (CREATE, MERGE, SET, DELETE, schema and write
procedures all fail). ``write=True`` uses a write transaction instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

import neo4j
from neo4j import exceptions as neo4j_exc

from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import DatabaseError, InputError

_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class WriteRefused(DatabaseError):
    """A query that writes was run read-only. The message names no way around it: the dashboard
    shows it to a browser user, who has none; the command line adds its ``--write`` hint."""


def parse_params(pairs: list[str] | None) -> dict[str, Any]:
    """Turn ``["k=v", ...]`` into parameters; a value is read as JSON when it parses, else as text.

    Parameters
    ----------
    pairs : list of str, optional
        ``NAME=VALUE`` as given to ``--param``.

    Returns
    -------
    dict

    Raises
    ------
    InputError
        A pair is not ``NAME=VALUE`` with a valid parameter name.
    """
    params: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not _PARAM_NAME.match(name):
            raise InputError(f"--param {pair!r}: write it as NAME=VALUE, e.g. --param image=ab12 or --param k=5")
        try:
            params[name] = json.loads(raw)
        except json.JSONDecodeError:
            params[name] = raw
    return params


def to_plain(value: Any) -> Any:
    """Nodes, relationships, paths and temporal values as JSON-friendly Python values.

    Parameters
    ----------
    value : Any
        A value of a driver record.

    Returns
    -------
    Any
        Nodes as dicts with ``_labels``, relationships with ``_type``, paths with ``_nodes`` and
        ``_relationships``, temporal values as ISO text; anything else unchanged.
    """
    if isinstance(value, neo4j.graph.Node):
        return {"_labels": sorted(value.labels), **{k: to_plain(v) for k, v in value.items()}}
    if isinstance(value, neo4j.graph.Relationship):
        return {"_type": value.type, **{k: to_plain(v) for k, v in value.items()}}
    if isinstance(value, neo4j.graph.Path):
        return {"_nodes": [to_plain(n) for n in value.nodes], "_relationships": [to_plain(r) for r in value.relationships]}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if hasattr(value, "iso_format"):
        return value.iso_format()
    return value


def run_cypher(
    db: GraphDB, query: str, params: dict[str, Any] | None = None, *, write: bool = False, limit: int | None = None,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Run ``query`` with ``params``; return (column names, rows as plain dicts).

    Parameters
    ----------
    db : GraphDB
    query : str
        User Cypher (values only as ``$params``).
    params : dict, optional
    write : bool
        Run in a write transaction; otherwise a read transaction, which the server keeps from writing.
    limit : int, optional
        Stop after this many rows.

    Returns
    -------
    (list of str, list of dict)

    Raises
    ------
    WriteRefused
        The query writes and ``write`` is False.
    DatabaseError
        The server rejected the query.
    """

    def work(tx: neo4j.ManagedTransaction):
        result = tx.run(query, params or {})
        keys = list(result.keys())
        rows = []
        for record in result:
            rows.append({k: to_plain(record[k]) for k in keys})
            if limit is not None and len(rows) >= limit:
                break
        return keys, rows

    try:
        return db.write_transaction(work) if write else db.read_transaction(work)
    except neo4j_exc.ClientError as exc:
        if not write and _is_write_refusal(exc):
            raise WriteRefused(
                f"refused: this query writes, and the console is read-only ({exc.code}): the server runs it in "
                "a read transaction, which cannot create, change or delete anything."
            ) from exc
        raise DatabaseError(f"Neo4j rejected the query: {exc.code}: {exc.message}") from exc


def _is_write_refusal(exc: neo4j_exc.ClientError) -> bool:
    code = exc.code or ""
    return "AccessMode" in code or "Forbidden" in code or "Security" in code
