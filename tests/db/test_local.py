"""The local Neo4j: lifecycle, persistence, auth and exposure, against a real server."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from nucleograph.cli import main
from nucleograph.config import Settings
from nucleograph.db import local
from nucleograph.db.driver import open_driver
from nucleograph.errors import ConfigError, DatabaseError

pytestmark = pytest.mark.neo4j


def test_password_file_is_private(neo4j_settings):
    mode = stat.S_IMODE(os.stat(neo4j_settings.password_file).st_mode)
    assert mode == 0o600


def test_wrong_password_names_the_setting(neo4j_settings):
    bad = Settings.from_env({"NUCLEOGRAPH_HOME": str(neo4j_settings.home), "NEO4J_URI": neo4j_settings.neo4j_uri,
                             "NEO4J_PASSWORD": "not-the-password"})
    with pytest.raises(ConfigError, match="NEO4J_PASSWORD"):
        open_driver(bad)


def test_nothing_listening_says_how_to_start(tmp_path):
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings.from_env({"NUCLEOGRAPH_HOME": str(tmp_path), "NEO4J_URI": f"bolt://127.0.0.1:{port}",
                                  "NEO4J_PASSWORD": "whatever123"})
    with pytest.raises(DatabaseError, match="nucleograph db start"):
        open_driver(settings)


def test_listens_on_loopback_only(neo4j_settings):
    port_hex = f"{neo4j_settings.neo4j_port:04X}"
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            rows = [line.split() for line in fh.read().splitlines()[1:]]
        listening += [r[1].split(":")[0] for r in rows if r[3] == "0A" and r[1].endswith(":" + port_hex)]
    assert listening, "the test server should listen"
    # 127.0.0.1 as IPv4, or IPv4-mapped in the IPv6 table (::ffff:127.0.0.1); never 0.0.0.0 or ::
    loopback = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}
    assert set(listening) <= loopback, listening


def test_second_start_is_a_noop(neo4j_settings):
    pid = local.read_pid(neo4j_settings)
    info = local.start(neo4j_settings)
    assert info == {"pid": pid, "started": False, "seconds": 0.0}


def test_remote_uri_starts_nothing(tmp_path):
    settings = Settings.from_env({"NUCLEOGRAPH_HOME": str(tmp_path), "NEO4J_URI": "neo4j://db.example.org:7687"})
    assert not settings.is_local
    with pytest.raises(ConfigError, match="remote"):
        local.start(settings)


@pytest.mark.slow
def test_data_survives_stop_and_start(neo4j_settings, tmp_path, monkeypatch, capsys):
    """start, write, stop, start again: the data is still there (a second server on its own port)."""
    home = tmp_path / "home"
    home.mkdir()
    # Reuse the session's built launcher instead of building it again.
    (home / "launcher").symlink_to(neo4j_settings.home / "launcher", target_is_directory=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NUCLEOGRAPH_HOME", str(home))
    monkeypatch.setenv("NEO4J_URI", f"bolt://127.0.0.1:{port}")
    monkeypatch.setenv("NUCLEOGRAPH_NEO4J_HEAP", "512m")
    monkeypatch.delenv("NEO4J_PASSWORD", raising=False)
    try:
        assert main(["db", "start"]) == 0
        err = capsys.readouterr().err
        assert "db start: starting Neo4j" in err and "waiting for Bolt" in err  # not a silent wait
        assert main(["cypher", "CREATE (:Probe {v: $v})", "--param", "v=42", "--write"]) == 0
        assert main(["db", "stop"]) == 0
        assert local.read_pid(Settings.from_env()) is None
        assert main(["db", "start"]) == 0
        capsys.readouterr()
        assert main(["cypher", "MATCH (p:Probe) RETURN p.v AS v", "--json"]) == 0
        assert '"v": 42' in capsys.readouterr().out
    finally:
        main(["db", "stop"])


def test_first_build_says_it_runs_maven(tmp_path, monkeypatch):
    """The first start's Maven build (minutes) is announced before it runs, and its end after."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # a stand-in for Maven (the build tool, not the database): makes the folder a real build fills
    (bin_dir / "mvn").write_text("#!/bin/sh\nmkdir -p target/lib\n")
    (bin_dir / "mvn").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    settings = Settings.from_env({"NUCLEOGRAPH_HOME": str(tmp_path / "home")})
    said: list[str] = []
    local.build_launcher(settings, say=said.append)
    assert said[0].startswith("building the Neo4j launcher with Maven") and "first start only" in said[0]
    assert said[1].startswith("built the launcher in")
    said.clear()
    local.build_launcher(settings, say=said.append)  # built: nothing to say
    assert said == []
