"""Faults: Neo4j killed mid-ingest, the ingest killed mid-batch, the database unreachable.

After each, running the ingest again gives the counts of a clean run, and no image is ever
partially stored (every Image's stored nuclei and edges equal its own summary).
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from nucleograph.db import local, store
from nucleograph.db.graphdb import GraphDB
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams, process_image

pytestmark = [pytest.mark.reliability, pytest.mark.neo4j, pytest.mark.slow]

PARTIAL = (
    "MATCH (s:Segmentation) "
    "WITH s, COUNT { (s)-[:HAS_NUCLEUS]->() } AS n, COUNT { (s)-[:HAS_NUCLEUS]->()-[:NEAR]->() } AS e "
    "WHERE n <> s.n_nuclei OR e <> s.n_edges RETURN s.image_id AS id, s.n_nuclei AS want, n AS got"
)
ORPHANS = "MATCH (n:Nucleus) WHERE NOT ()-[:HAS_NUCLEUS]->(n) RETURN count(n) AS c"


@pytest.fixture(scope="module")
def clean_counts(fifty_images):
    """What a clean run stores: the pure pipeline's nuclei and edges over the 50 images."""
    graphs = [process_image(r, IngestParams()) for r in discover([fifty_images])]
    return {"images": len(graphs), "nuclei": sum(g.n_nuclei for g in graphs), "edges": sum(g.n_edges for g in graphs)}


def _check_whole(settings, cohort, expected=None):
    with GraphDB.open(settings) as db:
        partial = db.read(PARTIAL)
        orphans = db.read(ORPHANS)
        counts = store.cohort_counts(db, cohort)
    assert [dict(r) for r in partial] == [], "an image is partially stored"
    assert orphans[0]["c"] == 0
    if expected is not None:
        assert counts == expected
    return counts


def _wait_for_images(settings, cohort, n, proc, timeout=240):
    with GraphDB.open(settings) as db:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"ingest ended early: {proc.communicate()}"
            if store.cohort_counts(db, cohort)["images"] >= n:
                return
            time.sleep(0.2)
    raise AssertionError(f"fewer than {n} images stored within {timeout} s")


def test_neo4j_killed_mid_ingest_then_ingest_again(private_neo4j, fifty_images, clean_counts, run_cli):
    settings, env = private_neo4j
    fail_fast = {**env, "NUCLEOGRAPH_NEO4J_RETRY_SECONDS": "3"}
    proc = run_cli(["ingest", str(fifty_images), "--cohort", "crash", "--json"], fail_fast)
    _wait_for_images(settings, "crash", 10, proc)
    os.kill(local.read_pid(settings), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert "nucleograph db start" in err  # says what to do

    local.start(settings)  # recovery replays the transaction log
    partial_counts = _check_whole(settings, "crash")
    assert 10 <= partial_counts["images"] < 50
    proc = run_cli(["ingest", str(fifty_images), "--cohort", "crash", "--json"], env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["unchanged"] == partial_counts["images"] and summary["ok"] == 50
    _check_whole(settings, "crash", clean_counts)


def test_ingest_killed_mid_batch_then_again(private_neo4j, fifty_images, clean_counts, run_cli):
    settings, env = private_neo4j
    proc = run_cli(["ingest", str(fifty_images), "--cohort", "killed", "--workers", "2"], env)
    _wait_for_images(settings, "killed", 8, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    _check_whole(settings, "killed")
    proc = run_cli(["ingest", str(fifty_images), "--cohort", "killed", "--json"], env)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    _check_whole(settings, "killed", clean_counts)


def test_neo4j_restart_during_ingest_is_retried(private_neo4j, fifty_images, clean_counts, run_cli):
    """A connection dropped mid-ingest is retried by the managed transactions: no error at all."""
    settings, env = private_neo4j
    patient = {**env, "NUCLEOGRAPH_NEO4J_RETRY_SECONDS": "300"}
    proc = run_cli(["ingest", str(fifty_images), "--cohort", "restart", "--json"], patient)
    _wait_for_images(settings, "restart", 5, proc)
    os.kill(local.read_pid(settings), signal.SIGKILL)
    time.sleep(1)
    local.start(settings)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert json.loads(out)["failed"] == 0
    _check_whole(settings, "restart", clean_counts)


def test_unreachable_database_is_a_clear_error(fifty_images, run_cli, tmp_path):
    env = {"NUCLEOGRAPH_HOME": str(tmp_path), "NEO4J_URI": "bolt://127.0.0.1:1", "NEO4J_PASSWORD": "whatever1"}
    proc = run_cli(["ingest", str(fifty_images), "--cohort", "x"], env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "no Neo4j answers at bolt://127.0.0.1:1" in err and "Traceback" not in err
