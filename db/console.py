"""Running user Cypher (the `nucleograph cypher` command and the dashboard console).

Read-only is enforced by the server, not by parsing text: the query runs in a READ access-mode
transaction, which Neo4j refuses to let write (CREATE, MERGE, SET, DELETE, schema and write
procedures all fail). ``write=True`` uses a write transaction instead.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import neo4j
from neo4j import exceptions as neo4j_exc

from nucleograph.db.driver import AUTH_RATE_LIMIT
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import DatabaseError, InputError

_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Neo4j integers are signed 64-bit; the driver cannot send a Python int outside this range.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: A query that needed more memory than the server grants: one transaction's limit
#: (db.memory.transaction.max), all transactions' (dbms.memory.transaction.total.max) or the heap.
OUT_OF_MEMORY_CODES = frozenset({
    "Neo.TransientError.General.TransactionMemoryLimit",
    "Neo.TransientError.General.MemoryPoolOutOfMemoryError",
    "Neo.TransientError.General.OutOfMemoryError",
})


class WriteRefused(DatabaseError):
    """A query that writes was run read-only. The message names no way around it: the dashboard
    shows it to a browser user, who has none; the command line adds its ``--write`` hint."""


class QueryOutOfMemory(DatabaseError):
    """The server ran out of memory for a query. Not a Neo4j error, so the driver does not retry it:
    the same query would only run out of memory again."""


class _NotANumber(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity`` in a ``--param`` value (Python's JSON reader accepts them)."""


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
        A pair is not ``NAME=VALUE`` with a valid parameter name; a value holds NaN or Infinity, a
        float too large for 64 bits, or an integer outside Neo4j's 64-bit range.
    """
    params: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not _PARAM_NAME.match(name):
            raise InputError(f"--param {pair!r}: write it as NAME=VALUE, e.g. --param image=ab12 or --param k=5")
        try:
            params[name] = json.loads(raw, parse_constant=_refuse_constant)
        except _NotANumber as exc:
            raise InputError(
                f"--param {name}={raw}: {exc} is not a number a query parameter can carry (JSON has no NaN or "
                f"Infinity); write it in the query instead (toFloat('{exc}')), or pass it as text in quotes: "
                f"--param '{name}=\"{raw}\"'"
            ) from exc
        except json.JSONDecodeError:
            params[name] = raw
        _check_numbers(name, raw, params[name])
    return params


def _refuse_constant(constant: str) -> float:
    raise _NotANumber(constant)


def _check_numbers(name: str, raw: str, value: Any) -> None:
    """Refuse numbers that Neo4j cannot store, naming the parameter (the driver would raise a bare
    OverflowError for a large integer, and a float like 1e999 reads as infinity)."""
    if isinstance(value, list):
        for v in value:
            _check_numbers(name, raw, v)
    elif isinstance(value, dict):
        for v in value.values():
            _check_numbers(name, raw, v)
    elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise InputError(
            f"--param {name}={raw}: the integer {value} is outside Neo4j's 64-bit range ({INT64_MIN} to "
            f"{INT64_MAX}); pass a float (e.g. {float(value):.6g}) or text in quotes: --param '{name}=\"{raw}\"'"
        )
    elif isinstance(value, float) and not math.isfinite(value):
        raise InputError(
            f"--param {name}={raw}: the number is too large for a 64-bit float (it reads as infinity); "
            f"pass a smaller number, or text in quotes: --param '{name}=\"{raw}\"'"
        )


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
    QueryOutOfMemory
        The query needed more memory than the server grants (not retried).
    DatabaseError
        The server rejected the query.
    """

    def work(tx: neo4j.ManagedTransaction):
        try:
            result = tx.run(query, params or {})
            keys = list(result.keys())
            rows = []
            for record in result:
                rows.append({k: to_plain(record[k]) for k in keys})
                if limit is not None and len(rows) >= limit:
                    break
        except neo4j_exc.TransientError as exc:
            if exc.code in OUT_OF_MEMORY_CODES:
                raise QueryOutOfMemory(_out_of_memory_message(exc)) from exc
            raise
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


def _out_of_memory_message(exc: neo4j_exc.Neo4jError) -> str:
    return (
        f"Neo4j ran out of memory for this query ({exc.code}: {exc.message}). It holds more in memory at once "
        "than the server allows, e.g. a large collect() or list: return less (add LIMIT, page with SKIP and "
        "LIMIT, count() or sum() instead of collecting), or give the server more memory (for the local one "
        "NUCLEOGRAPH_NEO4J_HEAP, then restart it)."
    )


def _is_write_refusal(exc: neo4j_exc.ClientError) -> bool:
    code = exc.code or ""
    if isinstance(exc, neo4j_exc.AuthError) or code == AUTH_RATE_LIMIT:
        return False  # a login refused while opening a connection, whatever the query
    return "AccessMode" in code or "Forbidden" in code or "Security" in code
