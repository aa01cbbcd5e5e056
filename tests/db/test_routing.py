"""Issue 19 item 4: every Neo4j read goes with routing READ and every write with WRITE.

Two halves, both against the real local server:

- the server refuses a write in a READ session or READ-routed query even on a single instance, so any
  write that took a read path anywhere in the product fails (here, and in every test that runs it);
- the call sites are audited against the server's own classification of each query (``EXPLAIN``'s
  query type): ``read``/``read_one``/``read_transaction`` only with read-only queries, and a
  ``write``/``write_batches``/``write_transaction`` never with reads alone (which a ``neo4j://`` cluster
  would send to the leader instead of spreading them over the secondaries).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import neo4j
import pytest

from nucleograph.db import queries as q

pytestmark = pytest.mark.neo4j

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("db", "ingest", "gnn", "jobs", "dashboard", "nucleograph")
READS = {"read", "read_one", "read_transaction"}
WRITES = {"write", "write_batches", "write_transaction"}


def test_the_server_refuses_a_write_sent_as_a_read(graphdb, unique_name):
    with pytest.raises(neo4j.exceptions.ClientError, match="(?i)access mode|read"):
        graphdb.read(q.MERGE_COHORT, cohort=unique_name, task=None)
    with pytest.raises(neo4j.exceptions.ClientError, match="(?i)access mode|read"):
        graphdb.read_transaction(lambda tx: tx.run(q.MERGE_COHORT, cohort=unique_name, task=None).consume())
    assert graphdb.read(q.COHORT_IMAGES, cohort=unique_name) == []  # nothing was written
    graphdb.write(q.MERGE_COHORT, cohort=unique_name, task=None)
    assert unique_name in [r["name"] for r in graphdb.read(q.COHORT_NAMES)]


def _query_names(node: ast.AST) -> set[str]:
    """``q.NAME`` constants that ``node`` passes as the first argument of ``tx.run``."""
    return {
        c.args[0].attr for c in ast.walk(node)
        if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "run" and c.args
        and isinstance(c.args[0], ast.Attribute) and isinstance(c.args[0].value, ast.Name) and c.args[0].value.id == "q"
    }


def _tx_helpers(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Module functions that take a transaction first (``_set_membership(tx, ...)``)."""
    return {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef) and f.args.args
            and f.args.args[0].arg == "tx"}


def _local_defs(scope: ast.AST) -> dict[str, ast.FunctionDef]:
    """The functions defined in ``scope`` itself (not inside its own nested functions)."""
    found, todo = {}, list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef):
            found.setdefault(node.name, node)
        elif not isinstance(node, (ast.Lambda, ast.ClassDef)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def _work_queries(arg: ast.AST, scopes: list[ast.AST], helpers: dict[str, ast.FunctionDef]) -> set[str]:
    """The queries a transaction function runs (a lambda, or a def of the innermost of ``scopes`` that has
    it), through module tx helpers too."""
    body = arg if isinstance(arg, ast.Lambda) else None
    if isinstance(arg, ast.Name):
        body = next((d[arg.id] for d in map(_local_defs, reversed(scopes)) if arg.id in d), None)
    if body is None:
        return set()
    names = _query_names(body)
    for call in ast.walk(body):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in helpers:
            names |= _query_names(helpers[call.func.id])
    return names


class _Sites(ast.NodeVisitor):
    """``(line, method, queries)`` of every read or write call, with the functions around it."""

    def __init__(self, helpers: dict[str, ast.FunctionDef], module: ast.Module):
        self.helpers, self.scopes, self.found = helpers, [module], []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scopes.append(node)
        self.generic_visit(node)
        self.scopes.pop()

    def visit_Call(self, call: ast.Call) -> None:
        method = call.func.attr if isinstance(call.func, ast.Attribute) else None
        if method in READS | WRITES and call.args:
            first = call.args[0]
            if method.endswith("_transaction"):
                names = _work_queries(first, self.scopes, self.helpers)
            elif isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name) and first.value.id == "q":
                names = {first.attr}
            else:
                names = set()  # a query chosen at run time (the console's): the server decides, as above
            if names:
                self.found.append((call.lineno, method, frozenset(names)))
        self.generic_visit(call)


def call_sites() -> list[tuple[str, str, frozenset[str]]]:
    """``(where, method, queries)`` for every GraphDB read or write in the product's packages."""
    sites = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            visitor = _Sites(_tx_helpers(tree), tree)
            visitor.visit(tree)
            sites.extend((f"{path.relative_to(ROOT)}:{line}", m, n) for line, m, n in visitor.found)
    return sites


def _query_type(session: neo4j.Session, name: str) -> str:
    """The server's classification of ``queries.NAME``: 'r' (read only), 'rw', 'w' or 's' (schema); a call of
    a procedure (which EXPLAIN types 's') counts as a read when the server lists the procedure's mode as READ
    or DBMS (``dbms.components``), as a write otherwise."""
    query = getattr(q, name)
    kind = session.run("EXPLAIN " + query).consume().query_type
    called = re.findall(r"\bCALL\s+([A-Za-z_][\w.]*)\s*\(", query)
    if kind == "s" and called:
        modes = {r["mode"] for r in session.run("SHOW PROCEDURES YIELD name, mode WHERE name IN $names RETURN mode",
                                                names=called)}
        return "r" if modes and modes <= {"READ", "DBMS"} else "w"
    return kind


def misrouted(sites: list[tuple[str, str, frozenset[str]]], session: neo4j.Session) -> list[str]:
    """The call sites whose access mode does not fit their queries, as the server classifies them."""
    kinds = {name: _query_type(session, name) for name in sorted({n for _, _, ns in sites for n in ns})}
    wrong = []
    for where, method, queries in sites:
        types = {kinds[n] for n in queries}
        if method in READS and types != {"r"}:
            wrong.append(f"{where}: {method} runs {sorted(n for n in queries if kinds[n] != 'r')}, which write")
        if method in WRITES and types == {"r"}:
            wrong.append(f"{where}: {method} runs only reads {sorted(queries)}: use read/read_transaction")
    return wrong


def _calls_in_text() -> set[str]:
    """``path:line`` of every line that calls a GraphDB read or write with a query constant, found by text
    (the console's query, chosen at run time, aside)."""
    pattern = re.compile(r"\.(read|read_one|write|write_batches)\(q\.|\.(read|write)_transaction\(")
    return {f"{path.relative_to(ROOT)}:{n}"
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), start=1)
            if pattern.search(line) and "if write else" not in line}


def test_every_call_site_routes_its_queries_the_way_they_go(graphdb):
    sites = call_sites()
    assert _calls_in_text() <= {where for where, _, _ in sites}  # the audit sees every call the text shows
    assert len(sites) > 40
    with graphdb.driver.session(database=graphdb.database) as session:
        assert _query_type(session, "COHORT_NAMES") == "r"  # EXPLAIN tells reads from writes
        assert _query_type(session, "MERGE_COHORT") in ("w", "rw")
        assert misrouted(sites, session) == []


def test_the_audit_catches_a_write_sent_as_a_read_and_a_read_sent_as_a_write(tmp_path, monkeypatch, graphdb):
    bad = tmp_path / "db" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("from nucleograph.db import queries as q\n\n"
                   "def names(db):\n    return db.write(q.COHORT_NAMES)\n\n"
                   "def state(db):\n    return db.read_transaction(lambda tx: tx.run(q.MERGE_COHORT))\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("db",))
    with graphdb.driver.session(database=graphdb.database) as session:
        assert misrouted(call_sites(), session) == [
            "db/bad.py:4: write runs only reads ['COHORT_NAMES']: use read/read_transaction",
            "db/bad.py:7: read_transaction runs ['MERGE_COHORT'], which write"]
