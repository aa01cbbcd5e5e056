"""Read-only access and exposure: the console cannot write, secrets stay secret, servers stay local."""

from __future__ import annotations

import pytest

from nucleograph.cli import main
from nucleograph.db.console import run_cypher
from nucleograph.errors import DatabaseError

pytestmark = [pytest.mark.reliability, pytest.mark.neo4j]

WRITES = [
    "CREATE (:Evil {v: 1})",
    "MERGE (:Evil {v: 1})",
    "MATCH (i:Image) WITH i LIMIT 1 SET i.label = 'tampered'",
    "MATCH (n:Nucleus) WITH n LIMIT 1 DELETE n",
    "MATCH (n:Nucleus) WITH n LIMIT 1 DETACH DELETE n",
    "MATCH (n:Nucleus) WITH n LIMIT 1 REMOVE n.area",
    "MATCH (n:Nucleus) WITH n LIMIT 1 REMOVE n:Nucleus",
    "LOAD CSV FROM 'file:///etc/hostname' AS row CREATE (:Evil {v: row[0]})",
    "LOAD CSV FROM 'file:///etc/passwd' AS row RETURN row",
    "LOAD CSV FROM 'http://127.0.0.1:7474/x.csv' AS row RETURN row",
    "CREATE INDEX evil IF NOT EXISTS FOR (n:Evil) ON (n.v)",
    "DROP CONSTRAINT image_id",
    "CREATE CONSTRAINT evil IF NOT EXISTS FOR (n:Evil) REQUIRE n.v IS UNIQUE",
    "CALL db.createLabel('Evil')",
    "CALL db.createProperty('evil')",
    "CALL db.createRelationshipType('EVIL')",
    "CALL { CREATE (:Evil) } IN TRANSACTIONS",
    "CREATE DATABASE evil",
    "ALTER USER neo4j SET PASSWORD 'tampered123'",
    "CREATE USER evil SET PASSWORD 'tampered123'",
]

SNAPSHOT = (
    "CALL () { MATCH (n) RETURN count(n) AS nodes } "
    "CALL () { MATCH ()-[r]->() RETURN count(r) AS rels } "
    "CALL () { MATCH (n) UNWIND keys(n) AS k RETURN count(k) AS props } "
    "CALL () { MATCH (n) UNWIND labels(n) AS l RETURN collect(DISTINCT l) AS labels } "
    "RETURN nodes, rels, props, labels"
)


def _snapshot(graphdb):
    rows = graphdb.read(SNAPSHOT)
    cons = graphdb.read("SHOW CONSTRAINTS YIELD name RETURN collect(name) AS c")
    idx = graphdb.read("SHOW INDEXES YIELD name RETURN collect(name) AS i")
    r = dict(rows[0])
    r["labels"] = sorted(r["labels"])
    return r, sorted(cons[0]["c"]), sorted(idx[0]["i"])


@pytest.mark.parametrize("query", WRITES)
def test_console_cannot_change_anything(query, graphdb, test_environ, capsys):
    graphdb.write("MERGE (:Probe {name: 'access-test'})")  # something to tamper with
    before = _snapshot(graphdb)
    with pytest.raises(DatabaseError):
        run_cypher(graphdb, query)
    assert main(["cypher", query]) == 1  # the CLI without --write, the same way
    capsys.readouterr()
    assert _snapshot(graphdb) == before


def test_values_travel_as_parameters(graphdb):
    """A value that looks like Cypher stays a value."""
    evil = "x'}) DETACH DELETE n //"
    _, rows = run_cypher(graphdb, "RETURN $v AS v", {"v": evil})
    assert rows == [{"v": evil}]


def test_password_is_never_printed_or_logged(test_environ, capsys):
    secret = test_environ.password()
    assert main(["db", "start"]) == 0
    assert main(["db", "status", "--json"]) == 0
    assert main(["cypher", "RETURN 1 AS x"]) == 0
    assert main(["cypher", "RETURN 1 AS x", "--write", "--json"]) == 0
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    log = (test_environ.home / "neo4j.log").read_text(errors="replace")
    assert secret not in log
    debug_logs = list((test_environ.neo4j_home / "logs").glob("*.log"))
    assert all(secret not in p.read_text(errors="replace") for p in debug_logs)
    assert secret not in repr(test_environ)


def test_dashboard_binds_to_localhost_by_default():
    from nucleograph.cli import build_parser

    args = build_parser().parse_args(["dashboard"])
    assert args.host == "127.0.0.1"
