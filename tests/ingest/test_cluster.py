"""Ingest on a Dask cluster (issue 19): a real ``dask scheduler`` and ``dask worker`` processes on loopback,
started by these tests, writing to the test run's own Neo4j.

The cohorts are small synthetic images plus one segmentation large enough to go in over many transactions
(``store.ATOMIC_ROWS``), so that a worker can be killed while it is writing. Expected counts come from
building every graph here, in this process, without any cluster or database: a clean run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
from dask_fixtures import loopback_cluster
from distributed import get_task_stream
from polygon_fixtures import write_geojson

from nucleograph import cluster
from nucleograph.db import store
from nucleograph.errors import ConfigError
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams, content_hash, process_image, slide_tiles
from nucleograph.ingest.polygons import SegmentationParams
from nucleograph.ingest.readers import is_slide, read_image
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

ROOT = Path(__file__).resolve().parents[2]
PARAMS = IngestParams()


def _grid(path: Path, *, cols: int, rows: int, offset: float) -> Path:
    """``cols`` x ``rows`` squares 40 px apart (about 10 neighbours each within 100 px): nuclei plus edges well
    above ``store.ATOMIC_ROWS``, so the graph is written a batch per transaction."""
    xs, ys = np.meshgrid(np.arange(cols) * 40.0 + offset, np.arange(rows) * 40.0 + offset)
    return write_geojson(path, [shapely.box(x, y, x + 12, y + 12) for x, y in zip(xs.ravel(), ys.ravel(), strict=True)])


def _pyramid(path: Path, rgb: np.ndarray) -> Path:
    """``rgb`` as a tiled two-level pyramidal TIFF (the reduced level a SubIFD), which readers take for a slide."""
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, photometric="rgb", tile=(256, 256), subifds=1)
        tif.write(rgb[::4, ::4], photometric="rgb", tile=(256, 256), subfiletype=1)
    return path


def _expected(records) -> dict[str, tuple[int, int]]:
    """Each record's (nuclei, edges) as a clean ingest builds them, by image id."""
    out = {}
    for r in records:
        image_id = content_hash(Path(r.path))
        params = SegmentationParams.for_record(PARAMS, r, sha=image_id) if r.path.suffix == ".geojson" else PARAMS
        g = process_image(r, params, image_id=image_id)
        out[image_id] = (g.n_nuclei, g.n_edges)
    return out


def _stored(graphdb, image_id: str) -> list[dict]:
    """Every segmentation of the image, with the nuclei and edges actually stored under it."""
    return graphdb.read(
        "MATCH (:Image {id: $id})-[:HAS_SEGMENTATION]->(s:Segmentation) "
        "RETURN s.key AS key, s.status AS status, s.n_nuclei AS n_nuclei, s.n_edges AS n_edges, "
        "COUNT { (s)-[:HAS_NUCLEUS]->() } AS nuclei, COUNT { (s)-[:HAS_NUCLEUS]->()-[:NEAR]->() } AS edges, "
        "COUNT { MATCH (s)-[:HAS_NUCLEUS]->(n) WITH DISTINCT n.uid AS u RETURN u } AS uids", id=image_id)


def _writing(graphdb, image_id: str) -> str | None:
    row = graphdb.read_one("MATCH (s:Segmentation {image_id: $id, status: 'writing'}) RETURN s.writer AS writer",
                           id=image_id)
    return row["writer"] if row else None


@pytest.mark.neo4j
@pytest.mark.slow
def test_a_worker_killed_while_writing_leaves_every_image_stored_once(tmp_path, test_environ, graphdb, unique_name):
    synthesize_cohort("breast", n_per_class=3, out_dir=tmp_path / "images", seed=1919, size=(512, 384))
    big = _grid(tmp_path / "big.geojson", cols=100, rows=80, offset=10.25)
    records = discover([tmp_path / "images", big])
    expected = _expected(records)
    big_id = content_hash(big)
    assert sum(expected[big_id]) > store.ATOMIC_ROWS  # the batched path: a kill can land between batches

    with loopback_cluster(tmp_path / "dask", workers=2) as dask:
        env = {**os.environ, "NUCLEOGRAPH_DASK": dask.address, "NUCLEOGRAPH_HOME": str(test_environ.home),
               "NEO4J_URI": test_environ.neo4j_uri}
        ingest = subprocess.Popen(
            [sys.executable, "-m", "nucleograph.cli", "ingest", str(tmp_path / "images"), str(big),
             "--cohort", unique_name, "--json"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 240
            while (writer := _writing(graphdb, big_id)) is None:
                assert ingest.poll() is None, "the ingest ended before the large graph was seen half-written"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            writing = store.Writer.parse(writer)
            assert writing.worker and writing.worker.endswith(dask.pids()[writing.pid])  # a worker, named in full
            lost = dask.kill(writing.pid)  # SIGKILL, between two committed batches of its graph
            out, err = ingest.communicate(timeout=240)
        finally:
            if ingest.poll() is None:
                ingest.kill()
                ingest.wait()
        assert len(dask.pids()) == 1 and lost not in dask.client.scheduler_info()["workers"]
    assert ingest.returncode == 0, err.decode()
    assert f"Dask cluster {dask.address}: dashboard http://127.0.0.1:" in err.decode()
    summary = json.loads(out)
    # stored, or (a finished task whose result died with the worker, rerun) found stored and unchanged
    assert (summary["ok"], summary["failed"]) == (7, 0) and summary["stored"] + summary["unchanged"] == 7
    assert (summary["nuclei"], summary["edges"]) == tuple(np.sum(list(expected.values()), axis=0))
    assert store.cohort_counts(graphdb, unique_name) == {
        "images": 7, "nuclei": summary["nuclei"], "edges": summary["edges"]}
    for image_id, (nuclei, edges) in expected.items():
        (seg,) = _stored(graphdb, image_id)  # one segmentation per image: the rerun's; the lost write is gone
        assert seg["status"] == "complete"
        assert seg["nuclei"] == seg["n_nuclei"] == seg["uids"] == nuclei and seg["edges"] == seg["n_edges"] == edges


@pytest.mark.neo4j
@pytest.mark.slow
def test_a_lost_workers_unfinished_write_is_cleared_from_another_machine(tmp_path, graphdb, unique_name):
    """The writer of a leftover 'writing' segmentation runs on another host: only the scheduler can say it
    is gone (host:pid cannot), and it does at once, not after STALE_AFTER_S."""
    synthesize_cohort("prostate", n_per_class=1, out_dir=tmp_path / "images", seed=1921, size=(384, 384))
    graph = process_image(discover([tmp_path / "images"])[0], PARAMS)
    names = ["area", "circularity"]

    with loopback_cluster(tmp_path / "dask", workers=2) as dask:
        scheduler = cluster.scheduler_id(dask.client)
        alive = cluster.worker_alive(dask.client)
        (pid_a, address_a), (pid_b, address_b) = sorted(dask.pids().items())

        def leave_write(writer: store.Writer) -> None:
            """A large-graph write stopped after its first committed batch, as its writer left it."""
            def stop(stage, done, total):
                raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=names,
                                        batch=20, atomic_rows=50, progress=stop, writer=writer)
            assert _writing(graphdb, graph.image_id) == str(writer)

        def refused(**kwargs) -> bool:
            try:
                store.if_current(graphdb, graph.record, graph.image_id, unique_name, PARAMS.key(), **kwargs)
            except store.GraphBeingWritten:
                return True
            return _writing(graphdb, graph.image_id) is not None

        # a live worker of this cluster, with its real pid: left alone
        leave_write(store.Writer("another-host", pid_b, f"{scheduler}/{address_b}"))
        assert refused(alive=alive)
        # the same address with another process (a restarted worker on a fixed port): that writer is gone
        graphdb.write("MATCH (s:Segmentation {image_id: $id, status: 'writing'}) SET s.writer = $w",
                      id=graph.image_id, w=str(store.Writer("another-host", pid_b + 100_000, f"{scheduler}/{address_b}")))
        assert not refused(alive=alive) and _stored(graphdb, graph.image_id) == []

        # a worker that died: without the scheduler (host:pid of another host) the write waits for its heartbeat
        # to age; with it, the write is cleared at once and the image stores
        dask.kill(pid_a)
        leave_write(store.Writer("another-host", pid_a, f"{scheduler}/{address_a}"))
        assert refused()
        assert refused(alive=lambda tag, pid: None)  # another cluster's worker: unknown, left alone
        result = store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=names,
                                         batch=20, atomic_rows=50, alive=alive)
        assert result.status == "stored"
        (seg,) = _stored(graphdb, graph.image_id)
        assert seg["status"] == "complete" and seg["nuclei"] == graph.n_nuclei and seg["edges"] == graph.n_edges


@pytest.mark.neo4j
@pytest.mark.slow
def test_a_slides_tiles_are_tasks_and_make_the_same_graph(tmp_path, test_environ, graphdb, unique_name):
    synthesize_cohort("breast", n_per_class=1, out_dir=tmp_path / "images", seed=1923, size=(1024, 1024))
    slide = _pyramid(tmp_path / "slide.tif", np.hstack([read_image(r.path) for r in discover([tmp_path / "images"])]))
    params = IngestParams(slide_tile=1024)
    (record,) = discover([slide])
    assert is_slide(slide) and slide_tiles(record, params) == [(0, 0, 1024, 1024), (896, 0, 1024, 1024),
                                                                 (1792, 0, 256, 1024)]
    serial = process_image(record, params)  # the slide read tile after tile, in this process
    with loopback_cluster(tmp_path / "dask", workers=2) as dask, get_task_stream(dask.client) as stream:
        summary = ingest_records([record], cohort=unique_name, params=params, settings=test_environ, db=graphdb,
                                 client=dask.client)
    tasks = [t["key"] for t in stream.data]
    assert sum(str(k).startswith("detect-tile-") for k in tasks) == 3
    assert sum(str(k).startswith("ingest-slide-") for k in tasks) == 1
    assert (summary.ok, summary.stored) == (1, 1)
    assert (summary.nuclei, summary.edges) == (serial.n_nuclei, serial.n_edges) and serial.n_nuclei > 100
    g = next(store.read_graphs(graphdb, unique_name, [serial.image_id]))
    np.testing.assert_allclose(g["centroids"], np.c_[serial.nuclei["centroid_x"], serial.nuclei["centroid_y"]],
                               atol=1e-3)


@pytest.mark.neo4j
def test_a_local_cluster_from_the_command_line_with_the_unet(tmp_path, test_environ, graphdb, unique_name, capsys):
    """``--cluster local:1``: a LocalCluster started and stopped by the command; U-Net inference on its
    worker (the network loaded once there) gives the nuclei it gives in one process."""
    import torch

    from nucleograph.cli import main

    synthesize_cohort("prostate", n_per_class=1, out_dir=tmp_path, seed=1920, size=(384, 384))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as on the worker: the same sums in the same order
    try:
        expected = [process_image(r, IngestParams(detector="unet")) for r in discover([tmp_path])]
    finally:
        torch.set_num_threads(threads)
    assert main(["ingest", str(tmp_path), "--cohort", unique_name, "--cluster", "local:1", "--detector", "unet",
                 "--json"]) == 0
    captured = capsys.readouterr()
    assert "Dask cluster local:1: dashboard http://127.0.0.1:" in captured.err
    summary = json.loads(captured.out)
    assert (summary["ok"], summary["stored"]) == (2, 2)
    assert (summary["nuclei"], summary["edges"]) == (sum(g.n_nuclei for g in expected), sum(g.n_edges for g in expected))
    assert store.cohort_counts(graphdb, unique_name)["nuclei"] == summary["nuclei"] > 0
    assert {r["detector"] for r in store.cohort_images(graphdb, unique_name)} == {"unet"}
    assert main(["ingest", str(tmp_path), "--cohort", unique_name, "--cluster", "local", "--workers", "2"]) == 1
    assert "use --cluster local:2 instead" in capsys.readouterr().err


def test_cluster_spec():
    assert cluster.ClusterSpec.parse("local") == cluster.ClusterSpec(None, None)
    assert cluster.ClusterSpec.parse("local:3") == cluster.ClusterSpec(None, 3)
    assert cluster.ClusterSpec.parse("tcp://scheduler:8786") == cluster.ClusterSpec("tcp://scheduler:8786", None)
    assert cluster.ClusterSpec.chosen(None, {}) is None
    assert cluster.ClusterSpec.chosen(None, {cluster.ENV: "tcp://10.0.0.5:8786"}).address == "tcp://10.0.0.5:8786"
    assert cluster.ClusterSpec.chosen("local:2", {cluster.ENV: "tcp://10.0.0.5:8786"}).workers == 2
    for bad in ("local:0", "local:x", "scheduler:8786", "tcp://scheduler", "http://h:1"):
        with pytest.raises(ConfigError, match="--cluster"):
            cluster.ClusterSpec.parse(bad)
    with pytest.raises(ConfigError, match=cluster.ENV):
        cluster.ClusterSpec.chosen(None, {cluster.ENV: "nonsense"})


def test_docker_compose_runs_a_dask_cluster_that_the_apps_use():
    import yaml

    def data(volumes: list[str]) -> set[str]:
        return {v.removesuffix(":ro") for v in volumes if ":/data" in v}

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    scheduler, worker = services["dask-scheduler"], services["dask-worker"]
    assert scheduler["command"][:2] == ["dask", "scheduler"] and "8786" in scheduler["command"]
    assert worker["command"][:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert worker["deploy"]["replicas"] == 2 and "--nthreads" in worker["command"]
    for app in ("dashboard", "scheduler"):  # the app containers: ingest and explain go to that scheduler
        env = services[app]["environment"]
        assert cluster.ClusterSpec.chosen(None, env) == cluster.ClusterSpec("tcp://dask-scheduler:8786")
        # the workers read the images at the paths the app containers give them
        assert data(services[app]["volumes"]) == data(worker["volumes"]) == {"${DATA_DIR:-./data}:/data"}
    assert all(s.get("build") == "." for s in (scheduler, worker))  # the project's image: nucleograph installed
