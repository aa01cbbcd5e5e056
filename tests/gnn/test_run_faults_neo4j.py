"""Training runs that stop early or cannot be tested, on cohorts in the real local Neo4j: a run killed
(-9, SIGTERM, Ctrl-C) is recorded ``interrupted`` and resumable, a corrupt graph cache is rebuilt, and
a cohort too small for a test set is refused with the fix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from nucleograph.cli import main
from nucleograph.db import records as rec
from nucleograph.db import runs as db_runs
from nucleograph.gnn.graph_cache import CacheWarning, cache_paths
from nucleograph.gnn.service import load_cohort
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

# long enough that a run is still training when the test stops it, short enough to resume in seconds
EPOCHS = 40


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, neo4j_settings, graphdb):
    out = tmp_path_factory.mktemp("faults")
    synthesize_cohort("prostate", n_per_class=6, out_dir=out, seed=7, size=(384, 384))
    name = "flt-" + out.name[-8:]
    summary = ingest_records(discover([out]), cohort=name, params=IngestParams(), settings=neo4j_settings,
                             db=graphdb)
    assert summary.ok == 12
    load_cohort(graphdb, neo4j_settings, name)  # the subprocesses start from the graph cache
    return name


def _json(capsys):
    return json.loads(capsys.readouterr().out)


def _record(settings, run_id) -> dict:
    engine = rec.open_engine(settings)
    try:
        with Session(engine) as session:
            row = session.get(rec.ModelRunRecord, run_id)
            return {"status": row.status, "error": row.error, "pid": row.pid}
    finally:
        engine.dispose()


def _start_training(cohort: str) -> subprocess.Popen:
    """``nucleograph train`` as its own process (the test_environ settings), so it can be killed."""
    exe = Path(sys.executable).parent / "nucleograph"
    return subprocess.Popen([str(exe), "train", "--cohort", cohort, "--model", "rsf", "--epochs", str(EPOCHS),
                             "--patience", "0"], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a test run started in the background (no job control) inherits SIGINT ignored,
                            # and Python then installs no Ctrl-C handler: give the child a terminal's default
                            preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_in_training(settings, cohort: str, proc: subprocess.Popen, timeout: float = 300) -> str:
    """The id of ``proc``'s run once it has written its first epoch checkpoint."""
    engine = rec.open_engine(settings)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"training ended early: {proc.communicate()}"
            mine = [r["id"] for r in rec.unfinished_runs(engine, cohort=cohort) if r["pid"] == proc.pid]
            if mine and (settings.home / "runs" / mine[0] / "fold0" / "checkpoint.pt").exists():
                return mine[0]
            time.sleep(0.05)
    finally:
        engine.dispose()
    proc.kill()
    raise AssertionError(f"no epoch checkpoint within {timeout} s: {proc.communicate()}")


def test_a_run_killed_with_9_is_listed_interrupted_and_resumes(cohort, neo4j_settings, graphdb, test_environ, capsys):
    proc = _start_training(cohort)
    run_id = _run_in_training(neo4j_settings, cohort, proc)
    proc.kill()
    proc.communicate()
    assert _record(neo4j_settings, run_id)["status"] == "running"  # nothing could run in a -9'd process

    assert main(["runs", "--cohort", cohort, "--json"]) == 0
    listed = {r["id"]: r for r in _json(capsys)}
    resume = f"nucleograph train --cohort {cohort} --resume {run_id}"
    assert listed[run_id]["status"] == "interrupted" and listed[run_id]["resume"] == resume
    record = _record(neo4j_settings, run_id)
    assert record["status"] == "interrupted" and f"pid {proc.pid}" in record["error"]
    assert main(["runs", "--cohort", cohort]) == 0
    table = capsys.readouterr().out
    assert f"run {run_id} is interrupted" in table and f"continue it with `{resume}`" in table

    assert main(resume.split()[1:] + ["--json"]) == 0
    out = _json(capsys)
    assert out["run_id"] == run_id and "accuracy" in out["metrics"]
    run = db_runs.get_run(graphdb, run_id)
    assert run["status"] == "finished" and [h["epoch"] for h in json.loads(run["history"])] == list(range(EPOCHS))
    assert _record(neo4j_settings, run_id)["status"] == "finished"
    assert main(["runs", "--cohort", cohort, "--json"]) == 0
    assert "resume" not in {r["id"]: r for r in _json(capsys)}[run_id]


@pytest.mark.parametrize("sig, why", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_a_run_stopped_by_sigterm_or_ctrl_c_records_itself_interrupted(cohort, neo4j_settings, test_environ, sig,
                                                                        why):
    proc = _start_training(cohort)
    run_id = _run_in_training(neo4j_settings, cohort, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"run {run_id} was interrupted ({why})" in err
    assert f"`nucleograph train --cohort {cohort} --resume {run_id}`" in err and "Traceback" not in err
    record = _record(neo4j_settings, run_id)  # without `nucleograph runs` looking first
    assert record["status"] == "interrupted" and record["error"] == f"interrupted by {why}"


@pytest.mark.parametrize("part", ["graphs", "metadata"])
def test_a_corrupt_graph_cache_is_rebuilt_with_a_warning(cohort, neo4j_settings, graphdb, test_environ, capsys,
                                                         part):
    data = load_cohort(graphdb, neo4j_settings, cohort)
    graphs_file, meta_file = cache_paths(neo4j_settings.home, data.data_version)
    broken = graphs_file if part == "graphs" else meta_file
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a disk full, a copy cut short

    with pytest.warns(CacheWarning, match=f"{graphs_file.name} is unusable"):
        assert main(["train", "--cohort", cohort, "--model", "mlp", "--epochs", "1", "--json"]) == 0
    out = _json(capsys)
    assert not out["from_cache"] and out["n_images"] == 12 and "accuracy" in out["metrics"]
    again = load_cohort(graphdb, neo4j_settings, cohort)
    assert again.from_cache and again.image_ids == data.image_ids and (again.labels == data.labels).all()


def test_a_cohort_too_small_for_a_test_set_is_refused_with_the_fix(neo4j_settings, graphdb, test_environ,
                                                                    unique_name, tmp_path, capsys):
    # 3 images per class, all of one patient per class: grouped by patient, nothing is left to test on
    synthesize_cohort("prostate", n_per_class=3, out_dir=tmp_path, seed=5, size=(384, 384))
    records = discover([tmp_path])
    assert len({r.patient for r in records}) == 2
    assert ingest_records(records, cohort=unique_name, params=IngestParams(), settings=neo4j_settings,
                          db=graphdb).ok == 6

    assert main(["train", "--cohort", unique_name, "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert f"cohort {unique_name!r} has 2 patients (6 images)" in err and "no test set" in err
    assert "--split-by image" in err and "ingest more patients" in err
    assert main(["train", "--cohort", unique_name, "--folds", "3", "--epochs", "1"]) == 1
    assert f"cohort {unique_name!r} has 2 patients (6 images): too few for 3 folds" in capsys.readouterr().err
    engine = rec.open_engine(neo4j_settings)
    assert rec.unfinished_runs(engine, cohort=unique_name) == []  # refused before a run was recorded
    engine.dispose()

    assert main(["train", "--cohort", unique_name, "--split-by", "image", "--epochs", "1", "--json"]) == 0
    metrics = _json(capsys)["metrics"]
    assert "accuracy" in metrics and metrics["folds"][0]["accuracy"] == metrics["accuracy"]
