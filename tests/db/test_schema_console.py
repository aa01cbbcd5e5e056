"""Schema migrations and the read-only Cypher console, against the real local Neo4j."""

from __future__ import annotations

import json

import neo4j
import pytest

from nucleograph.cli import main
from nucleograph.db import console, schema
from nucleograph.errors import DatabaseError, InputError

pytestmark = pytest.mark.neo4j


def _schema_snapshot(driver, database):
    cons, _, _ = driver.execute_query("SHOW CONSTRAINTS YIELD name RETURN collect(name) AS n", database_=database)
    idx, _, _ = driver.execute_query("SHOW INDEXES YIELD name RETURN collect(name) AS n", database_=database)
    return sorted(cons[0]["n"]), sorted(idx[0]["n"])


def test_migrate_twice_changes_nothing(driver, neo4j_settings):
    db = neo4j_settings.neo4j_database
    first = schema.migrate(driver, database=db)
    before = _schema_snapshot(driver, db)
    second = schema.migrate(driver, database=db)
    assert first["to"] == schema.LATEST and second == {"from": schema.LATEST, "to": schema.LATEST, "applied": 0}
    assert _schema_snapshot(driver, db) == before
    assert "image_id" in before[0] and "nucleus_uid" in before[0]


def test_cli_cypher_json(test_environ, capsys):
    assert main(["cypher", "RETURN 1 AS x, $name AS name", "--param", "name=abc", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"x": 1, "name": "abc"}]


def test_cli_cypher_refuses_create_without_write(test_environ, driver, unique_name, capsys):
    code = main(["cypher", "CREATE (:Probe {name: $n})", "--param", f"n={unique_name}"])
    assert code == 1
    assert "read-only" in capsys.readouterr().err
    rows, _, _ = driver.execute_query("MATCH (p:Probe {name: $n}) RETURN count(p) AS c", n=unique_name,
                                      database_=test_environ.neo4j_database, routing_=neo4j.RoutingControl.READ)
    assert rows[0]["c"] == 0
    assert main(["cypher", "CREATE (:Probe {name: $n})", "--param", f"n={unique_name}", "--write"]) == 0
    rows, _, _ = driver.execute_query("MATCH (p:Probe {name: $n}) RETURN count(p) AS c", n=unique_name,
                                      database_=test_environ.neo4j_database)
    assert rows[0]["c"] == 1


def test_bad_param_is_explained():
    with pytest.raises(InputError, match="NAME=VALUE"):
        console.parse_params(["novalue"])


def test_syntax_error_is_a_database_error(driver, neo4j_settings):
    with pytest.raises(DatabaseError, match="rejected"):
        console.run_cypher(driver, "MATCH (n RETURN n", database=neo4j_settings.neo4j_database)
