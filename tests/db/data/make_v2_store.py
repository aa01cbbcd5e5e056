"""Write a store with nucleograph's schema-v2 code and dump it to ``v2_store.json`` (test data).

The migration test (tests/db/test_migrate_v3.py) loads the dump into its server and migrates it.
Regenerate it only from the version that wrote schema v2 (commit 6b9f41c, the last before v3): ::

    git worktree add /tmp/oldwt 6b9f41c
    for d in db ingest gnn dashboard jobs; do ln -sfn /tmp/oldwt/$d /tmp/oldwt/nucleograph/$d; done
    cd /tmp && PYTHONPATH=/tmp/oldwt /work/main/.venv/bin/python /work/main/tests/db/data/make_v2_store.py

It starts its own Neo4j (a temporary home, a free port, the launcher the tests build), runs the old
CLI as a user would (synthesize, ingest two cohorts sharing images, train, explain, then the old
bug: ingest one shared image into a third cohort with another threshold, which replaced the first
cohort's nuclei), and dumps every node and relationship with its properties.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from nucleograph.config import Settings
from nucleograph.db import local
from nucleograph.db.graphdb import GraphDB

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE.parents[2] / ".nucleograph" / "test" / "launcher"
NODES = "MATCH (n) RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props"
RELS = (
    "MATCH (a)-[r]->(b) RETURN type(r) AS type, elementId(a) AS start, elementId(b) AS end, "
    "properties(r) AS props"
)


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _plain(value):
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "iso_format"):
        return {"$datetime": value.iso_format()}
    return value


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="v2store-"))
    (home / "launcher").symlink_to(LAUNCHER, target_is_directory=True)
    env = {**os.environ, "NUCLEOGRAPH_HOME": str(home), "NEO4J_URI": f"bolt://127.0.0.1:{_port()}",
           "NUCLEOGRAPH_NEO4J_HEAP": "1g", "NUCLEOGRAPH_NEO4J_PAGECACHE": "256m"}
    env.pop("NEO4J_PASSWORD", None)
    settings = Settings.from_env(env)

    def cli(*args: str) -> None:
        print("$ nucleograph", " ".join(args), flush=True)
        subprocess.run([sys.executable, "-m", "nucleograph.cli", *args], env=env, check=True)

    try:
        cli("db", "start")
        data = home / "data"
        cli("synth", "breast", "--n", "4", "--size", "320x320", "--seed", "4242", "--out", str(data))
        folder = data
        cli("ingest", str(folder), "--cohort", "v2_tr")
        cli("ingest", str(folder), "--cohort", "v2_shared")  # the same bytes: linked
        cli("train", "--cohort", "v2_tr", "--model", "rsf", "--epochs", "3", "--seed", "0", "--json")
        with GraphDB.open(settings) as db:
            run_id = db.read("MATCH (r:ModelRun) RETURN r.id AS id")[0]["id"]
        cli("explain", "--run", run_id, "--method", "occlusion", "--hops", "1")
        one = sorted((folder / "images").rglob("*.png"))[0]
        cli("ingest", str(one), "--cohort", "v2_t80", "--threshold", "80")  # replaced v2_tr's nuclei
        with GraphDB.open(settings) as db:
            nodes, rels = db.read(NODES), db.read(RELS)
        dump = {"written_by": "nucleograph schema v2 (6b9f41c)", "image_root": str(data),
                "nodes": [{**n, "props": {k: _plain(v) for k, v in n["props"].items()}} for n in nodes],
                "rels": [{**r, "props": {k: _plain(v) for k, v in r["props"].items()}} for r in rels]}
        (HERE / "v2_store.json").write_text(json.dumps(dump, separators=(",", ":")))
        print(f"{len(nodes)} nodes, {len(rels)} relationships -> {HERE / 'v2_store.json'}")
    finally:
        local.stop(settings)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
