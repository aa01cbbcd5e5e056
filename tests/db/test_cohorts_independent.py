"""Issue 16: cohorts that share images never change each other; labels are never dropped silently.

Against the real test Neo4j, through the ingest API and CLI that users run. Each case failed on
the schema-v2 code (labels, path and one graph lived on the shared Image node).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from nucleograph.cli import main
from nucleograph.db import runs as db_runs
from nucleograph.db import store
from nucleograph.ingest.cohort import ImageRecord, discover
from nucleograph.ingest.pipeline import IngestParams, feature_names, process_image
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = pytest.mark.neo4j


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("independent")
    synthesize_cohort("breast", n_per_class=2, out_dir=out, seed=9161, size=(400, 320))
    return out


def _ingest(records, cohort, settings, db, **params):
    return ingest_records(records, cohort=cohort, params=IngestParams(**params), settings=settings, db=db)


def _labels(db, cohort) -> dict[str, tuple]:
    return {r["id"]: (r["label"], r["patient"], r["path"]) for r in store.cohort_images(db, cohort)}


def test_a_second_cohort_keeps_its_own_labels(four, test_environ, graphdb, unique_name):
    first, second = unique_name + "_x", unique_name + "_y"
    records = discover([four])
    assert _ingest(records, first, test_environ, graphdb).stored + 0 >= 0
    before = _labels(graphdb, first)
    relabelled = [ImageRecord(r.path, "A" if r.label == "InSitu" else "B", patient=f"p{i}")
                  for i, r in enumerate(records)]
    summary = _ingest(relabelled, second, test_environ, graphdb)
    assert summary.linked == 4 and summary.failed == 0  # no detection: the nuclei are shared
    got = _labels(graphdb, second)
    assert sorted(v[0] for v in got.values()) == ["A", "A", "B", "B"]
    assert {v[1] for v in got.values()} == {"p0", "p1", "p2", "p3"}
    assert _labels(graphdb, first) == before  # the first cohort is untouched
    # a relabelled row (same file) updates this cohort's membership only
    fixed = [ImageRecord(relabelled[0].path, "B", patient="p0")] + relabelled[1:]
    again = _ingest(fixed, second, test_environ, graphdb)
    assert (again.updated, again.unchanged) == (1, 3)
    assert _labels(graphdb, first) == before
    # a file ingested alone (no label known) with new parameters keeps the label the cohort knows
    alone = _ingest([ImageRecord(records[1].path, None)], first, test_environ, graphdb, threshold=70)
    assert alone.replaced == 1
    assert _labels(graphdb, first) == before


def test_two_labels_for_the_same_bytes_are_refused_naming_both(four, tmp_path, test_environ, graphdb, unique_name):
    src = sorted((four / "images").rglob("*.png"))[0]
    for label in ("A", "B"):
        (tmp_path / "conflict" / label).mkdir(parents=True)
        shutil.copy(src, tmp_path / "conflict" / label / "x.png")
    summary = _ingest(discover([tmp_path / "conflict"]), unique_name, test_environ, graphdb)
    assert summary.failed == 2 and summary.ok == 0
    for failure in summary.failures:
        assert str(tmp_path / "conflict" / "A" / "x.png") in failure["error"]
        assert str(tmp_path / "conflict" / "B" / "x.png") in failure["error"]
    assert store.cohort_images(graphdb, unique_name) == []

    # the same label twice: one image, no error
    (tmp_path / "same" / "A").mkdir(parents=True)
    for name in ("x.png", "y.png"):
        shutil.copy(src, tmp_path / "same" / "A" / name)
    summary = _ingest(discover([tmp_path / "same"]), unique_name, test_environ, graphdb)
    assert summary.failed == 0 and summary.ok == 2
    assert len(store.cohort_images(graphdb, unique_name)) == 1

    # a later ingest that labels the stored bytes differently, under another path: refused, named
    summary = _ingest([ImageRecord(tmp_path / "conflict" / "B" / "x.png", "B")], unique_name, test_environ, graphdb)
    assert summary.failed == 1
    assert str(tmp_path / "same" / "A" / "x.png") in summary.failures[0]["error"]
    assert [r["label"] for r in store.cohort_images(graphdb, unique_name)] == ["A"]


def test_manifest_rows_duplicate_labels_and_missing_files(four, tmp_path, test_environ, graphdb, unique_name, capsys):
    images = sorted((four / "images").rglob("*.png"))
    for p in images[:2]:
        shutil.copy(p, tmp_path / p.name)
    (tmp_path / "manifest.csv").write_text(
        "path,label\n"
        f"{images[0].name},InSitu\n{images[0].name},Invasive\n"  # one file, two labels: both rows refused
        f"{images[1].name},Invasive\n{images[1].name},Invasive\n"  # the same row twice: one image
        "gone.png,InSitu\n"  # a missing file fails alone
    )
    assert main(["ingest", str(tmp_path / "manifest.csv"), "--cohort", unique_name, "--json"]) == 3  # some failed
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] == 1 and out["failed"] == 3
    errors = " ".join(f["error"] for f in out["failures"])
    assert "gone.png: not found" in errors and "'InSitu'" in errors and "'Invasive'" in errors
    assert [r["label"] for r in store.cohort_images(graphdb, unique_name)] == ["Invasive"]


def _explain_with_fake_model_scores(db, cohort, run_id):
    """A run of ``cohort`` with scores on every nucleus (the explainer itself is tested in gnn/)."""
    db_runs.save_run(db, run_id=run_id, cohort=cohort, props={"model": "rsf", "status": "done"})
    for g in store.read_graphs(db, cohort, [r["id"] for r in store.cohort_images(db, cohort)]):
        db_runs.save_scores(db, run_id=run_id, method="occlusion", hops=1, segmentation=g["segmentation"],
                            nids=g["nids"], scores=[0.5 + 0.001 * i for i in range(len(g["nids"]))])
    return db_runs.explanation_key(run_id, "occlusion", 1)


def test_another_cohorts_ingest_changes_nothing_and_replaced_nuclei_make_scores_stale(
    four, test_environ, graphdb, unique_name
):
    tr, t80 = unique_name + "_tr", unique_name + "_t80"
    records = discover([four])
    _ingest(records, tr, test_environ, graphdb)
    ids = sorted(r["id"] for r in store.cohort_images(graphdb, tr))
    key = _explain_with_fake_model_scores(graphdb, tr, "r" + unique_name[1:9].ljust(8, "0"))
    counts = store.cohort_counts(graphdb, tr)
    exported = db_runs.export_scores(graphdb, key, image_ids=None)
    assert len(exported) == counts["nuclei"]

    summary = _ingest(records, t80, test_environ, graphdb, threshold=80)
    assert summary.stored == 4 and summary.replaced == 0
    assert store.cohort_counts(graphdb, tr) == counts  # v2: edges fell, 4 images lost their scores
    assert sorted(db_runs.explained_images(graphdb, key, ids)) == ids
    assert db_runs.export_scores(graphdb, key, image_ids=None) == exported
    assert store.cohort_counts(graphdb, t80)["edges"] < counts["edges"]

    # the cohort itself moves to new nuclei: its explanation says which images are stale
    summary = _ingest(records, tr, test_environ, graphdb, threshold=80)
    assert summary.replaced == 4
    assert store.cohort_counts(graphdb, tr) == store.cohort_counts(graphdb, t80)
    expl = next(e for e in db_runs.list_explanations(graphdb) if e["key"] == key)
    assert sorted(expl["stale_images"]) == ids
    assert db_runs.explained_images(graphdb, key, ids) == []
    assert not any(r["current"] for r in db_runs.export_scores(graphdb, key, image_ids=None))


def test_storing_other_nuclei_for_a_stored_image_keeps_both(four, graphdb, unique_name):
    record = discover([four])[0]
    names = feature_names()
    a = process_image(record, IngestParams())
    b = process_image(record, IngestParams(threshold=60))
    first = store.store_image_graph(graphdb, a, cohort=unique_name + "_a", params=IngestParams(), feature_names=names)
    second = store.store_image_graph(graphdb, b, cohort=unique_name + "_b", params=IngestParams(threshold=60),
                                     feature_names=names)
    assert first.status in ("stored", "linked") and second.status in ("stored", "linked")  # v2: "linked", dropped
    assert store.cohort_counts(graphdb, unique_name + "_a")["edges"] == a.n_edges
    assert store.cohort_counts(graphdb, unique_name + "_b")["edges"] == b.n_edges
    assert a.n_edges != b.n_edges


def test_any_sequence_of_ingests_keeps_each_cohorts_counts(four, test_environ, graphdb, unique_name):
    """Two cohorts sharing two images, ingested in a random order with different thresholds:
    after every step each cohort holds exactly the graphs a clean ingest with its last threshold
    gives, and no segmentation is left that no cohort uses."""
    records = discover([four])[:2]
    thresholds = (60, 80, 100)
    clean = {}
    for t in thresholds:
        graphs = [process_image(r, IngestParams(threshold=t)) for r in records]
        clean[t] = {"images": 2, "nuclei": sum(g.n_nuclei for g in graphs), "edges": sum(g.n_edges for g in graphs)}
    cohorts = [unique_name + "_c1", unique_name + "_c2"]
    last: dict[str, int] = {}
    keys, exported, scored_at = {}, {}, {}
    for n, c in enumerate(cohorts):  # both start at 100 px, each with its own run's scores
        _ingest(records, c, test_environ, graphdb, threshold=100)
        last[c] = scored_at[c] = 100
        keys[c] = _explain_with_fake_model_scores(graphdb, c, f"r{unique_name[1:9]}{n}")
        exported[c] = db_runs.export_scores(graphdb, keys[c], image_ids=None)
    ids = sorted(r["id"] for r in store.cohort_images(graphdb, cohorts[0]))
    scored_alive = True  # the 100 px nuclei both runs scored; deleted once no cohort uses them
    rng = random.Random(16)
    for _ in range(10):
        cohort, t = rng.choice(cohorts), rng.choice(thresholds)
        summary = _ingest(records, cohort, test_environ, graphdb, threshold=t)
        assert summary.ok == 2
        last[cohort] = t
        scored_alive = scored_alive and 100 in last.values()
        for c, lt in last.items():
            assert store.cohort_counts(graphdb, c) == clean[lt], (c, lt)
            # scores: intact while the cohort uses the nuclei they were computed on, else stale
            unchanged = lt == scored_at[c] and scored_alive
            assert sorted(db_runs.explained_images(graphdb, keys[c], ids)) == (ids if unchanged else []), c
            expl = next(e for e in db_runs.list_explanations(graphdb) if e["key"] == keys[c])
            if unchanged:
                assert db_runs.export_scores(graphdb, keys[c], image_ids=None) == exported[c]
            else:
                assert sorted(expl["stale_images"]) == ids
        ids = [r["id"] for r in store.cohort_images(graphdb, cohorts[0] if cohorts[0] in last else cohort)]
        used = {r["segmentation"] for c in last for r in store.cohort_images(graphdb, c)}
        held = {s for i in ids for s in graphdb.read_one(
            "MATCH (i:Image {id: $i}) RETURN [(i)-[:HAS_SEGMENTATION]->(s) | s.key] AS keys", i=i)["keys"]}
        assert held <= used | _used_elsewhere(graphdb, ids, set(cohorts))


def _used_elsewhere(db, ids, mine: set[str]) -> set[str]:
    """Segmentations of these images that other tests' cohorts use (images are shared by content)."""
    rows = db.read("MATCH (i:Image)-[m:IN_COHORT]->(c:Cohort) WHERE i.id IN $ids AND NOT c.name IN $mine "
                   "RETURN collect(DISTINCT m.segmentation) AS keys", ids=ids, mine=sorted(mine))
    return set(rows[0]["keys"])
