"""Issue 15 item 2: graphs too large for one transaction, stored in bounded batches, against the real Neo4j.

The threshold (``atomic_rows``) and the batch size are lowered so that graphs of a few hundred nuclei
take the slide path. Interrupted writes are real: the ``progress`` hook, called after each committed
batch, raises (or, in a child process, kills that process with SIGKILL) part-way through.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from nucleograph.cli import main
from nucleograph.db import queries as q
from nucleograph.db import schema, store
from nucleograph.errors import InputError
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.graph import build_edges
from nucleograph.ingest.pipeline import ImageGraph, IngestParams

pytestmark = pytest.mark.neo4j

NAMES = ["area", "circularity"]
PARAMS = IngestParams()


def make_graph(n: int, seed: int, image_id: str | None = None, *, side: float = 600.0) -> ImageGraph:
    """``n`` nuclei uniformly over a ``side`` x ``side`` image, joined closer than 60 px."""
    rng = np.random.default_rng(seed)
    xy = np.round(rng.uniform(0, side, size=(n, 2)), 2)
    types = np.empty(n, dtype=object)
    types[:] = [("tumour" if i % 3 else None) for i in range(n)]  # a null column value on a third
    nuclei = {"nucleus_id": np.arange(1, n + 1, dtype=np.int64), "centroid_x": xy[:, 0], "centroid_y": xy[:, 1],
              "area": rng.uniform(20, 200, n), "circularity": rng.uniform(0.5, 1.0, n), "type": types}
    image_id = image_id or uuid.uuid4().hex[:16]
    record = ImageRecord(Path(f"/nonexistent/{image_id}.png"), "A")
    return ImageGraph(image_id, record, int(side), int(side), nuclei, build_edges(xy, threshold=60.0), 60.0)


class Stop(Exception):
    """Raised by a progress hook: the write stops between two committed batches."""


def stop_after(stage: str, batches: int):
    seen = []

    def hook(s: str, done: int, total: int) -> None:
        seen.append(s)
        if seen.count(stage) == batches:
            raise Stop(f"stopped after {batches} {stage} batches")
    return hook


def _nodes(db, key: str) -> list[dict]:
    return db.read("MATCH (:Segmentation {key: $k})-[:HAS_NUCLEUS]->(n:Nucleus) "
                   "RETURN n {.*, uid: null, segmentation: null, image_id: null} AS n ORDER BY n.nid", k=key)


def _edges(db, key: str) -> list[dict]:
    return db.read("MATCH (:Segmentation {key: $k})-[:HAS_NUCLEUS]->(a:Nucleus)-[r:NEAR]->(b:Nucleus) "
                   "RETURN a.nid AS a, b.nid AS b, r.weight AS w, r.dist AS d ORDER BY a, b", k=key)


def _segmentation(db, key: str) -> dict | None:
    row = db.read_one("MATCH (s:Segmentation {key: $k}) RETURN s {.*} AS s", k=key)
    return row["s"] if row else None


def _key(graph: ImageGraph, params: IngestParams = PARAMS) -> str:
    return store.segmentation_key(graph.image_id, params.key())


def test_batched_store_equals_one_transaction(graphdb, unique_name):
    one = make_graph(300, seed=1)
    many = make_graph(300, seed=1)
    calls = []
    a = store.store_image_graph(graphdb, one, cohort=unique_name + "_a", params=PARAMS, feature_names=NAMES)
    b = store.store_image_graph(graphdb, many, cohort=unique_name + "_b", params=PARAMS, feature_names=NAMES,
                                batch=37, atomic_rows=100, progress=lambda *c: calls.append(c))
    assert a.status == b.status == "stored" and (a.nuclei, a.edges) == (b.nuclei, b.edges)
    assert one.n_edges > 300  # the edges too took many batches
    # one transaction per batch of at most 37 rows, nuclei first, then edges
    nuclei_calls = [c for c in calls if c[0] == "nuclei"]
    assert [c[1] for c in nuclei_calls] == [*range(37, 300, 37), 300]
    assert [c[1] for c in calls if c[0] == "edges"][-1] == one.n_edges and len(calls) == 9 + -(-one.n_edges // 37)
    assert _nodes(graphdb, _key(one)) == _nodes(graphdb, _key(many))
    assert _edges(graphdb, _key(one)) == _edges(graphdb, _key(many))
    assert len(_nodes(graphdb, _key(one))) == 300 and len(_edges(graphdb, _key(one))) == one.n_edges
    sa, sb = _segmentation(graphdb, _key(one)), _segmentation(graphdb, _key(many))
    drop = {"key", "image_id", "ingested_at"}
    assert {k: v for k, v in sa.items() if k not in drop} == {k: v for k, v in sb.items() if k not in drop}
    assert sb["status"] == "complete" and "writer" not in sb and "heartbeat" not in sb
    (ga,) = store.read_graphs(graphdb, unique_name + "_a", [one.image_id])
    (gb,) = store.read_graphs(graphdb, unique_name + "_b", [many.image_id])
    for k in ("nids", "features", "centroids"):
        np.testing.assert_array_equal(ga[k], gb[k])

    def edge_list(g):  # read_graphs returns edges in storage order, which the batches change
        return sorted(zip(g["src"].tolist(), g["dst"].tolist(), g["weight"].tolist(), g["dist"].tolist(),
                          strict=True))
    assert edge_list(ga) == edge_list(gb)
    # storing it again changes nothing
    again = store.store_image_graph(graphdb, make_graph(300, seed=1, image_id=many.image_id),
                                    cohort=unique_name + "_b", params=PARAMS, feature_names=NAMES, batch=37,
                                    atomic_rows=100)
    assert again.status == "unchanged" and len(_nodes(graphdb, _key(many))) == 300


def _invisible(db, cohort: str, graph: ImageGraph) -> None:
    """Nothing of ``graph`` reaches a reader of ``cohort``."""
    assert store.cohort_images(db, cohort) == []
    assert list(store.read_graphs(db, cohort, [graph.image_id])) == []
    assert store.cohort_counts(db, cohort) == {"images": 0, "nuclei": 0, "edges": 0}
    assert store.window_nuclei(db, cohort, graph.image_id, 0, 0, 600, 600) is None
    row = db.read_one(q.IMAGE_BY_ID, image_id=graph.image_id, cohort=None)
    assert row is None or _key(graph) not in row["segmentations"]
    state = store.image_state(db, graph.image_id, cohort, _key(graph))
    assert state["has_segmentation"] is False  # v3's IMAGE_STATE said True and linked it


@pytest.mark.parametrize("stage", ["nuclei", "edges"])
def test_an_interrupted_write_is_invisible_and_written_again(graphdb, unique_name, stage):
    graph = make_graph(300, seed=2)
    with pytest.raises(Stop):
        store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=NAMES,
                                batch=40, atomic_rows=100, progress=stop_after(stage, 2))
    left = _segmentation(graphdb, _key(graph))
    assert left["status"] == "writing"
    written = len(_nodes(graphdb, _key(graph)))
    assert written == (80 if stage == "nuclei" else 300)  # really part-written: two batches committed
    assert len(_edges(graphdb, _key(graph))) == (0 if stage == "nuclei" else 80)
    _invisible(graphdb, unique_name, graph)

    calls = []
    result = store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=NAMES,
                                     batch=40, atomic_rows=100, progress=lambda *c: calls.append(c))
    assert result.status == "stored"
    deleted = [c for c in calls if c[0] == "delete"]
    assert deleted and deleted[-1][1] == written and all(b[1] - a[1] <= 40 for a, b in zip(deleted, deleted[1:], strict=False))
    assert len(_nodes(graphdb, _key(graph))) == 300 and len(_edges(graphdb, _key(graph))) == graph.n_edges
    assert store.cohort_counts(graphdb, unique_name) == {"images": 1, "nuclei": 300, "edges": graph.n_edges}
    assert _segmentation(graphdb, _key(graph))["status"] == "complete"


def test_an_interrupted_replacement_leaves_the_old_graph_readable(graphdb, unique_name):
    old = make_graph(200, seed=3)
    store.store_image_graph(graphdb, old, cohort=unique_name, params=PARAMS, feature_names=NAMES)
    before = store.cohort_counts(graphdb, unique_name)
    new_params = IngestParams(threshold=60)
    new = make_graph(300, seed=4, image_id=old.image_id)
    with pytest.raises(Stop):
        store.store_image_graph(graphdb, new, cohort=unique_name, params=new_params, feature_names=NAMES,
                                batch=50, atomic_rows=100, progress=stop_after("edges", 1))
    assert store.cohort_counts(graphdb, unique_name) == before
    (g,) = store.read_graphs(graphdb, unique_name, [old.image_id])
    assert g["segmentation"] == _key(old) and len(g["nids"]) == 200
    row = graphdb.read_one(q.IMAGE_BY_ID, image_id=old.image_id, cohort=unique_name)
    assert row["segmentations"] == [_key(old)]

    # the replacement written again: the old segmentation (no cohort uses it) is deleted in batches
    calls = []
    result = store.store_image_graph(graphdb, new, cohort=unique_name, params=new_params, feature_names=NAMES,
                                     batch=50, atomic_rows=100, progress=lambda *c: calls.append(c))
    assert result.status == "replaced"
    assert store.cohort_counts(graphdb, unique_name) == {"images": 1, "nuclei": 300, "edges": new.n_edges}
    assert _segmentation(graphdb, _key(old)) is None and _nodes(graphdb, _key(old)) == []
    deletes = [c[1] for c in calls if c[0] == "delete"]
    # first the leftover's 300 nuclei, then the old graph's 200, 50 per transaction
    assert deletes == [50, 100, 150, 200, 250, 300, 50, 100, 150, 200]


def test_a_live_writer_is_left_alone_and_a_dead_one_is_not(graphdb, unique_name):
    graph = make_graph(200, seed=5)
    with pytest.raises(Stop):
        store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=NAMES,
                                batch=50, atomic_rows=100, progress=stop_after("nuclei", 1))
    # another process of this host holds the write (its last batch just now)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        writer = f"{socket.gethostname()}:{other.pid}"
        graphdb.write("MATCH (s:Segmentation {key: $k}) SET s.writer = $w, s.heartbeat = datetime()",
                      k=_key(graph), w=writer)
        with pytest.raises(store.GraphBeingWritten, match=f"being written by {writer}"):
            store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=NAMES,
                                    batch=50, atomic_rows=100)
        assert len(_nodes(graphdb, _key(graph))) == 50  # untouched
        # ingest asks before detecting: refused at once, not after a wasted detection
        with pytest.raises(store.GraphBeingWritten):
            store.if_current(graphdb, graph.record, graph.image_id, unique_name, PARAMS.key())
    finally:
        other.kill()
        other.wait()
    result = store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=NAMES,
                                     batch=50, atomic_rows=100)
    assert result.status == "stored" and len(_nodes(graphdb, _key(graph))) == 200


def test_an_interrupted_deletion_is_invisible_and_finished_later(graphdb, unique_name):
    old = make_graph(300, seed=10)
    store.store_image_graph(graphdb, old, cohort=unique_name, params=PARAMS, feature_names=NAMES)
    new_params = IngestParams(threshold=60)
    new = make_graph(100, seed=11, image_id=old.image_id)
    with pytest.raises(Stop):  # the replacement committed; the old graph's deletion stops half way
        store.store_image_graph(graphdb, new, cohort=unique_name, params=new_params, feature_names=NAMES,
                                batch=100, progress=stop_after("delete", 1))
    assert _segmentation(graphdb, _key(old))["status"] == "deleting" and len(_nodes(graphdb, _key(old))) == 200
    row = graphdb.read_one(q.IMAGE_BY_ID, image_id=old.image_id, cohort=unique_name)
    assert row["segmentations"] == [_key(new, new_params)]
    assert store.cohort_counts(graphdb, unique_name) == {"images": 1, "nuclei": 100, "edges": new.n_edges}
    # the old parameters asked for again: not the half-deleted graph
    assert store.if_current(graphdb, old.record, old.image_id, unique_name, PARAMS.key()) is None
    assert _segmentation(graphdb, _key(old)) is None and _nodes(graphdb, _key(old)) == []


CHILD = """
import importlib.util, os, signal, sys
from nucleograph.config import Settings
from nucleograph.db import store
from nucleograph.db.graphdb import GraphDB
spec = importlib.util.spec_from_file_location("slides", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
graph = mod.make_graph(400, seed=6, image_id=sys.argv[2])
def kill(stage, done, total):
    if stage == "edges":
        os.kill(os.getpid(), signal.SIGKILL)
with GraphDB.open(Settings.from_env()) as db:
    store.store_image_graph(db, graph, cohort=sys.argv[3], params=mod.PARAMS, feature_names=mod.NAMES,
                            batch=60, atomic_rows=100, progress=kill)
"""


def test_kill_9_during_a_write_then_ingest_again(test_environ, graphdb, unique_name):
    image_id = uuid.uuid4().hex[:16]
    env = {**os.environ}
    proc = subprocess.run([sys.executable, "-c", CHILD, __file__, image_id, unique_name], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    graph = make_graph(400, seed=6, image_id=image_id)
    assert _segmentation(graphdb, _key(graph))["status"] == "writing"
    assert len(_nodes(graphdb, _key(graph))) == 400 and len(_edges(graphdb, _key(graph))) == 60
    _invisible(graphdb, unique_name, graph)
    # what ingest asks before detecting: the leftover is not taken for a stored graph, and is deleted
    assert store.if_current(graphdb, graph.record, graph.image_id, unique_name, PARAMS.key()) is None
    assert _segmentation(graphdb, _key(graph)) is None and _nodes(graphdb, _key(graph)) == []
    result = store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=NAMES,
                                     batch=60, atomic_rows=100)
    assert result.status == "stored"
    assert store.cohort_counts(graphdb, unique_name) == {"images": 1, "nuclei": 400, "edges": graph.n_edges}
    assert graphdb.read_one("MATCH (n:Nucleus {image_id: $i}) RETURN count(n) AS c", i=image_id)["c"] == 400


def _inside(graph: ImageGraph, x0, y0, x1, y1) -> np.ndarray:
    x, y = graph.nuclei["centroid_x"], graph.nuclei["centroid_y"]
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def test_window_is_one_point_index_query(graphdb, unique_name):
    graph = make_graph(500, seed=7, side=2000.0)
    store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=NAMES)
    # another image with nuclei in the same pixel window, in another cohort: not returned
    store.store_image_graph(graphdb, make_graph(500, seed=8, side=2000.0), cohort=unique_name + "_other",
                            params=PARAMS, feature_names=NAMES)
    box = (400.0, 300.0, 1400.0, 900.0)
    roi = store.window_nuclei(graphdb, unique_name, graph.image_id, *box)
    inside = _inside(graph, *box)
    assert 50 < inside.sum() < 400
    np.testing.assert_array_equal(roi["nids"], graph.nuclei["nucleus_id"][inside])
    np.testing.assert_allclose(roi["centroids"][:, 0], graph.nuclei["centroid_x"][inside], rtol=1e-6)
    np.testing.assert_allclose(roi["features"][:, 0], graph.nuclei["area"][inside], rtol=1e-6)
    assert np.isnan(roi["scores"]).all()
    e = graph.edges
    keep = inside[e["src"]] & inside[e["dst"]]
    got = sorted(zip(roi["nids"][roi["src"]].tolist(), roi["nids"][roi["dst"]].tolist(), strict=True))
    ids = graph.nuclei["nucleus_id"]
    assert got == sorted(zip(ids[e["src"][keep]].tolist(), ids[e["dst"][keep]].tolist(), strict=True)) and len(got) > 0
    # a nucleus exactly on the border is inside (bounds inclusive)
    x, y = float(graph.nuclei["centroid_x"][0]), float(graph.nuclei["centroid_y"][0])
    assert 1 in store.window_nuclei(graphdb, unique_name, graph.image_id, x, y, x + 1, y + 1)["nids"]
    # the plan seeks the point index
    summary = graphdb.driver.execute_query("EXPLAIN " + q.WINDOW_NUCLEI, cohort=unique_name,
                                           image_id=graph.image_id, x0=0.0, y0=0.0, x1=1.0, y1=1.0,
                                           property=None, database_=graphdb.database).summary
    ops = []

    def walk(op):
        ops.append((op["operatorType"].split("@")[0], op.get("args", {}).get("Details", "")))
        for child in op.get("children", []):
            walk(child)
    walk(summary.plan)
    assert ("NodeIndexSeekByRange", "POINT INDEX n:Nucleus(pos) WHERE point.withinBBox(pos, point($x0, $y0), "
            "point($x1, $y1))") in ops
    # nothing reads all nuclei (of the store, or of the segmentation)
    assert not {name for name, _ in ops} & {"NodeIndexScan", "AllNodesScan", "NodeByLabelScan"}
    assert not any("Nucleus(segmentation" in details for _, details in ops)
    with pytest.raises(InputError, match="x0 <= x1"):
        store.window_nuclei(graphdb, unique_name, graph.image_id, 10, 0, 5, 5)


def test_migrate_v4_gives_stored_nuclei_a_point(test_environ, graphdb, unique_name, capsys):
    graph = make_graph(300, seed=9)
    store.store_image_graph(graphdb, graph, cohort=unique_name, params=PARAMS, feature_names=NAMES)
    # the store as schema v3 left it: no point index, no pos on the nuclei, version 3 recorded
    graphdb.run_implicit("DROP INDEX nucleus_pos IF EXISTS")
    graphdb.write("MATCH (n:Nucleus {image_id: $i}) REMOVE n.pos", i=graph.image_id)
    graphdb.write("MATCH (m:SchemaMigration) WHERE m.version > 3 DETACH DELETE m")
    try:
        assert main(["db", "migrate", "--json"]) == 0
    finally:
        schema.migrate(graphdb)  # never leave this run's server behind its schema
    assert json.loads(capsys.readouterr().out) == {"from": 3, "to": schema.LATEST, "applied": schema.LATEST - 3}
    index = graphdb.read_one("SHOW INDEXES YIELD name, type, state WHERE name = 'nucleus_pos' RETURN type, state")
    assert index == {"type": "POINT", "state": "ONLINE"}
    missing = graphdb.read_one("MATCH (n:Nucleus {image_id: $i}) WHERE n.pos IS NULL OR n.pos.x <> n.centroid_x "
                               "OR n.pos.y <> n.centroid_y RETURN count(n) AS c", i=graph.image_id)
    assert missing["c"] == 0
    roi = store.window_nuclei(graphdb, unique_name, graph.image_id, 0, 0, 300, 300)
    np.testing.assert_array_equal(roi["nids"], graph.nuclei["nucleus_id"][_inside(graph, 0, 0, 300, 300)])

