"""Errors a user meets at the console and the command line, each explained without a traceback:
the server's login rate limit, numbers a parameter cannot carry, non-JSON numbers in ``--json``
output and counts below 1 in ``--limit``."""

from __future__ import annotations

import json
import secrets

import pytest

from nucleograph.cli import main
from nucleograph.db import console
from nucleograph.errors import InputError

pytestmark = pytest.mark.neo4j


def _strict_json(text: str):
    """Parse ``text`` as JSON proper: Python's reader would accept NaN and Infinity, which are not JSON."""

    def refuse(token: str):
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def login_user(driver, unique_name):
    """A user of its own (a wrong password locks only that user), dropped afterwards."""
    password = secrets.token_hex(12)
    driver.execute_query("CREATE USER $name SET PASSWORD $password CHANGE NOT REQUIRED",
                         name=unique_name, password=password, database_="system")
    yield unique_name
    driver.execute_query("DROP USER $name IF EXISTS", name=unique_name, database_="system")


def test_login_rate_limit_is_explained(test_environ, login_user, monkeypatch, capsys):
    monkeypatch.setenv("NEO4J_USER", login_user)
    monkeypatch.setenv("NEO4J_PASSWORD", "a-wrong-password")
    errors = []
    for _ in range(5):  # Neo4j locks a user after 3 wrong passwords in a row (auth_max_failed_attempts)
        assert main(["db", "status"]) == 1
        errors.append(capsys.readouterr().err)
    assert "refused user" in errors[0] and "NEO4J_PASSWORD" in errors[0]
    locked = errors[-1]
    assert "too many times in a row" in locked and "AuthenticationRateLimit" in locked, locked
    assert "NEO4J_PASSWORD" in locked and "wait" in locked and login_user in locked
    assert "Traceback" not in locked


@pytest.mark.parametrize(("value", "match"), [
    ("99999999999999999999", r"--param n=99999999999999999999: the integer .* outside Neo4j's 64-bit range"),
    ("-9223372036854775809", r"--param n=-9223372036854775809: the integer .* outside Neo4j's 64-bit range"),
    ("[1, 99999999999999999999]", r"--param n=\[1, 99999999999999999999\]: the integer 99999999999999999999"),
    ("NaN", r"--param n=NaN: NaN is not a number a query parameter can carry"),
    ("Infinity", r"--param n=Infinity: Infinity is not a number"),
    ("-Infinity", r"--param n=-Infinity: -Infinity is not a number"),
    ('{"a": [NaN]}', r"--param n=\{\"a\": \[NaN\]\}: NaN is not a number"),
    ("1e999", r"--param n=1e999: the number is too large for a 64-bit float"),
])
def test_param_numbers_neo4j_cannot_carry_are_refused(value, match):
    with pytest.raises(InputError, match=match):
        console.parse_params([f"n={value}"])


def test_param_limits_are_exact():
    edge = {"lo": -(2**63), "hi": 2**63 - 1, "big": 1.5e308, "text": "NaN is fine inside text"}
    pairs = [f"{k}={json.dumps(v) if k == 'text' else v}" for k, v in edge.items()]
    assert console.parse_params(pairs) == edge
    for over in (2**63, -(2**63) - 1):
        with pytest.raises(InputError, match=f"the integer {over} is outside"):
            console.parse_params([f"n={over}"])


@pytest.mark.parametrize("value", ["99999999999999999999", "NaN", "Infinity"])
def test_cli_param_error_names_the_parameter(test_environ, value, capsys):
    assert main(["cypher", "RETURN $n AS n", "--param", f"n={value}", "--json"]) == 1
    out = capsys.readouterr()
    assert out.out == "" and f"--param n={value}" in out.err and "Traceback" not in out.err


def test_cli_param_at_the_int64_edge(test_environ, capsys):
    assert main(["cypher", "RETURN $n AS n", "--param", f"n={2**63 - 1}", "--json"]) == 0
    assert _strict_json(capsys.readouterr().out) == [{"n": 2**63 - 1}]
    assert main(["cypher", "RETURN $n AS n", "--param", f"n={2**63}", "--json"]) == 1
    assert f"--param n={2**63}: the integer" in capsys.readouterr().err


def test_json_output_is_strict_json(test_environ, capsys):
    query = ("RETURN 0.0/0.0 AS nan, 1.0/0.0 AS inf, -1.0/0.0 AS ninf, 1.5 AS x, "
             "[1.0, 0.0/0.0] AS xs, {a: 1.0/0.0} AS m")
    assert main(["cypher", query, "--json"]) == 0
    rows = _strict_json(capsys.readouterr().out)
    assert rows == [{"nan": None, "inf": None, "ninf": None, "x": 1.5, "xs": [1.0, None], "m": {"a": None}}]


@pytest.mark.parametrize("value", ["-1", "0", "ten"])
def test_cypher_limit_below_one_is_refused(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cypher", "RETURN 1 AS x", "--limit", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --limit" in err and "1 or more" in err and value in err
