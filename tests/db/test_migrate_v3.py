"""`nucleograph db migrate` moves a store written by the previous version (schema v2) to v3 without loss.

``data/v2_store.json`` was written by the schema-v2 code itself (``data/make_v2_store.py``: ingest
two cohorts sharing images, train, explain, then the v2 bug that replaced one image's nuclei under
the explanation). The test loads it into this run's server, rolls the recorded schema version back
to 2, runs the CLI, and checks every fact the old store held against the new model.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from itertools import groupby
from pathlib import Path

import neo4j.time
import numpy as np
import pytest

from nucleograph.cli import main
from nucleograph.db import runs as db_runs
from nucleograph.db import schema, store

pytestmark = pytest.mark.neo4j

DUMP = Path(__file__).parent / "data" / "v2_store.json"
KEYS = {"Cohort": "name", "Image": "id", "Nucleus": "uid", "ModelRun": "id", "Explanation": "key"}
RELATIONSHIPS = {"IN_COHORT", "HAS_NUCLEUS", "NEAR", "TRAINED_ON", "PREDICTED", "OF_RUN"}


def _value(v):
    if isinstance(v, dict) and "$datetime" in v:
        return neo4j.time.DateTime.from_iso_format(v["$datetime"])
    return v


def _load(db, dump, prefix: str) -> dict:
    """Create the dump's nodes and relationships (cohort names prefixed, so the test owns them)."""
    nodes = {}
    for n in dump["nodes"]:
        (label,) = n["labels"]
        if label == "SchemaMigration":
            continue  # this server's own records stand in for them
        props = {k: _value(v) for k, v in n["props"].items()}
        if label == "Cohort":
            props["name"] = prefix + props["name"]
        if label == "ModelRun":
            props["cohort"] = prefix + props["cohort"]
        nodes[n["id"]] = (label, props)
    for label, group in groupby(sorted(nodes.values(), key=lambda x: x[0]), key=lambda x: x[0]):
        assert label in KEYS
        db.write(f"UNWIND $rows AS row CREATE (n:{label}) SET n = row", rows=[p for _, p in group])
    by_type = defaultdict(list)
    for r in dump["rels"]:
        if r["start"] in nodes and r["end"] in nodes:
            (a, pa), (b, pb) = nodes[r["start"]], nodes[r["end"]]
            by_type[(r["type"], a, b)].append({"a": pa[KEYS[a]], "b": pb[KEYS[b]], "props": r["props"]})
    for (rtype, a, b), rows in by_type.items():
        assert rtype in RELATIONSHIPS  # names in the Cypher below come from these allow-lists only
        db.write_batches(f"UNWIND $rows AS row MATCH (a:{a} {{{KEYS[a]}: row.a}}), (b:{b} {{{KEYS[b]}: row.b}}) "
                         f"CREATE (a)-[r:{rtype}]->(b) SET r = row.props", rows)
    return nodes


def test_db_migrate_moves_a_v2_store_without_loss(test_environ, graphdb, unique_name, capsys):
    dump = json.loads(DUMP.read_text())
    prefix = unique_name + "_"
    nodes = _load(graphdb, dump, prefix)
    images = {p["id"]: p for label, p in nodes.values() if label == "Image"}
    old_nuclei = {p["uid"]: p for label, p in nodes.values() if label == "Nucleus"}
    cohorts = defaultdict(set)
    nuclei_of, near_of = Counter(), Counter()
    ids = {k: p for k, p in nodes.items()}
    for r in dump["rels"]:
        if r["type"] == "IN_COHORT":
            cohorts[ids[r["end"]][1]["name"]].add(ids[r["start"]][1]["id"])
        elif r["type"] == "HAS_NUCLEUS":
            nuclei_of[ids[r["start"]][1]["id"]] += 1
        elif r["type"] == "NEAR":
            near_of[ids[r["start"]][1]["image_id"]] += 1
    (expl,) = [p for label, p in nodes.values() if label == "Explanation"]
    run_id = expl["run_id"]
    assert len(cohorts) == 3 and len(expl["images"]) == 8

    # the store as the previous version leaves it: schema 2 recorded; this version refuses to write
    graphdb.write("MATCH (m:SchemaMigration) WHERE m.version > 2 DETACH DELETE m")
    try:
        assert main(["train", "--cohort", prefix + "v2_tr", "--epochs", "1"]) == 1
        assert "nucleograph db migrate" in capsys.readouterr().err
        assert main(["db", "migrate", "--json"]) == 0
    finally:
        schema.migrate(graphdb)  # never leave this run's server behind its schema
    assert json.loads(capsys.readouterr().out) == {"from": 2, "to": schema.LATEST, "applied": schema.LATEST - 2}

    for cohort, members in cohorts.items():
        rows = {r["id"]: r for r in store.cohort_images(graphdb, cohort)}
        assert set(rows) == members
        for image_id, row in rows.items():  # label, patient and path moved onto the membership
            old = images[image_id]
            # (the image v2_t80 re-ingested lost its label in every cohort: the v2 bug this issue fixes)
            assert (row["label"], row["patient"], row["path"]) == (old.get("label"), old.get("patient"), old["path"])
            assert row["segmentation"] == f"{image_id}:{old['params_key']}"
        assert store.cohort_counts(graphdb, cohort) == {
            "images": len(members), "nuclei": sum(nuclei_of[i] for i in members),
            "edges": sum(near_of[i] for i in members)}
        for g in store.read_graphs(graphdb, cohort, sorted(members)):
            old = np.asarray([old_nuclei[f"{g['id']}:{n}"]["features"] for n in g["nids"]], dtype=np.float32)
            np.testing.assert_array_equal(g["features"], old)
    leftover = graphdb.read_one("MATCH (i:Image) WHERE i.id IN $ids AND (i.label IS NOT NULL OR "
                                "i.params_key IS NOT NULL OR EXISTS { (i)-[:HAS_NUCLEUS]->() }) RETURN count(i) AS c",
                                ids=sorted(images))
    assert leftover["c"] == 0

    # the explanation: scores kept on their nuclei; the image v2 re-ingested under it is stale
    prop = expl["property"]
    scored = {uid: n[prop] for uid, n in old_nuclei.items() if prop in n}
    unscored = {n["image_id"] for n in old_nuclei.values() if prop not in n}
    assert len(unscored) == 1  # the v2 bug the dump captured
    (info,) = [e for e in db_runs.list_explanations(graphdb, run_id=run_id)]
    assert info["stale_images"] == sorted(unscored) and info["images"] == 7
    # occlusion scores from before outputs existed are probability drops, under the name --output prob reads
    assert (info["method"], info["output"]) == ("occlusion", "prob")
    assert prop == db_runs.score_property(run_id, "occlusion", expl["hops"], output="prob")
    assert expl["key"] == db_runs.explanation_key(run_id, "occlusion", expl["hops"], output="prob")
    rows = db_runs.export_scores(graphdb, expl["key"], image_ids=None)
    assert {f"{r['image_id']}:{r['nucleus_id']}": r["score"] for r in rows} == scored
    tr = prefix + "v2_tr"
    assert sorted(db_runs.explained_images(graphdb, expl["key"], sorted(cohorts[tr]))) == sorted(
        cohorts[tr] - unscored)
    assert {p["image_id"]: p["label"] for p in db_runs.predictions(graphdb, run_id)} == {
        i: images[i].get("label") for i in cohorts[tr]}

    # a second migrate changes nothing
    assert main(["db", "migrate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied"] == 0
    assert store.cohort_counts(graphdb, tr)["nuclei"] == sum(nuclei_of[i] for i in cohorts[tr])
