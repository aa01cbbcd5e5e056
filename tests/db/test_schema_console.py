"""Schema migrations and the read-only Cypher console, against the real local Neo4j."""

from __future__ import annotations

import json

import pytest

from nucleograph.cli import main
from nucleograph.db import console, schema
from nucleograph.errors import DatabaseError, InputError

pytestmark = pytest.mark.neo4j


def _schema_snapshot(graphdb):
    cons = graphdb.read("SHOW CONSTRAINTS YIELD name RETURN collect(name) AS n")
    idx = graphdb.read("SHOW INDEXES YIELD name RETURN collect(name) AS n")
    return sorted(cons[0]["n"]), sorted(idx[0]["n"])


def test_migrate_twice_changes_nothing(graphdb):
    first = schema.migrate(graphdb)
    before = _schema_snapshot(graphdb)
    second = schema.migrate(graphdb)
    assert first["to"] == schema.LATEST and second == {"from": schema.LATEST, "to": schema.LATEST, "applied": 0}
    assert _schema_snapshot(graphdb) == before
    assert "image_id" in before[0] and "nucleus_uid" in before[0]


def test_cli_cypher_json(test_environ, capsys):
    assert main(["cypher", "RETURN 1 AS x, $name AS name", "--param", "name=abc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"x": 1, "name": "abc"}]


def test_cli_cypher_refuses_create_without_write(test_environ, graphdb, unique_name, capsys):
    code = main(["cypher", "CREATE (:Probe {name: $n})", "--param", f"n={unique_name}"])
    assert code == 1
    err = capsys.readouterr().err
    assert "read-only" in err and "--write" in err  # the command line names its flag
    rows = graphdb.read("MATCH (p:Probe {name: $n}) RETURN count(p) AS c", n=unique_name)
    assert rows[0]["c"] == 0
    assert main(["cypher", "CREATE (:Probe {name: $n})", "--param", f"n={unique_name}", "--write"]) == 0
    rows = graphdb.read("MATCH (p:Probe {name: $n}) RETURN count(p) AS c", n=unique_name)
    assert rows[0]["c"] == 1


def test_write_refusal_names_no_cli_flag(graphdb, unique_name):
    """The dashboard shows this message to a browser user: it must not tell them to pass --write."""
    with pytest.raises(console.WriteRefused, match="read-only") as exc:
        console.run_cypher(graphdb, "CREATE (:Probe {name: $n})", {"n": unique_name})
    assert "--write" not in str(exc.value)


def test_bad_param_is_explained():
    with pytest.raises(InputError, match="NAME=VALUE"):
        console.parse_params(["novalue"])


def test_syntax_error_is_a_database_error(graphdb):
    with pytest.raises(DatabaseError, match="rejected"):
        console.run_cypher(graphdb, "MATCH (n RETURN n")
