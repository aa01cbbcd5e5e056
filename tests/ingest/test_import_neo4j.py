"""Imported nuclei end to end into the real local Neo4j: sidecars, manifests, --nuclei, re-ingest, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from nuclei_fixtures import NUCLEI, circle, write_hovernet, write_image, write_mask, write_qupath

from nucleograph.cli import main
from nucleograph.db import store
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.pipeline import IngestParams, content_hash
from nucleograph.ingest.run import ingest_records

pytestmark = pytest.mark.neo4j


def _image(folder: Path, name: str, shade: int = 0) -> Path:
    """A copy of the fixture image with different bytes (each image its own id)."""
    truth = write_image(folder, name)
    from PIL import Image

    im = Image.open(truth.image).convert("RGB")
    im.putpixel((0, 0), (shade, shade, shade))
    im.save(truth.image)
    return truth


def _segmentations(graphdb, cohort: str) -> dict[str, dict]:
    rows = graphdb.read(
        "MATCH (c:Cohort {name: $c})<-[m:IN_COHORT]-(i:Image) MATCH (s:Segmentation {key: m.segmentation}) "
        "RETURN m.path AS path, s.key AS key, s.detector AS detector, s.n_nuclei AS n, s.params AS params, "
        "s.import_notes AS notes", c=cohort)
    return {Path(r["path"]).name: r for r in rows}


def test_sidecars_of_every_kind_are_imported_and_types_are_queryable(tmp_path, test_environ, graphdb, unique_name,
                                                                    capsys):
    folder = tmp_path / "cohort"
    _image(folder, "a.png", 1)
    write_qupath(folder / "a.geojson")
    b = _image(folder, "b.png", 2)
    write_hovernet(folder / "b.json", b.mask)
    c = _image(folder, "c.png", 3)
    write_mask(folder / "c.mask.png", c.mask)
    _image(folder, "d.png", 4)  # no nuclei file: detected
    assert main(["ingest", str(folder), "--cohort", unique_name, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["images"], summary["ok"], summary["stored"]) == (4, 4, 4)
    segs = _segmentations(graphdb, unique_name)
    assert {k: v["detector"] for k, v in segs.items()} == {
        "a.png": "import:qupath", "b.png": "import:hovernet", "c.png": "import:mask", "d.png": "watershed"}
    assert all(v["n"] == len(NUCLEI) for v in segs.values())
    params = json.loads(segs["a.png"]["params"])
    assert params["nuclei_sha"] == content_hash(folder / "a.geojson") and params["format"] == "qupath"
    # the class is a Nucleus property any Cypher query can use
    tumours = graphdb.read(
        "MATCH (:Cohort {name: $c})<-[m:IN_COHORT]-(:Image) "
        "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n.type IN ['Tumor', 1] "
        "RETURN n.type AS type, count(*) AS n ORDER BY type", c=unique_name)
    assert {r["type"]: r["n"] for r in tumours} == {"Tumor": 3, 1: 3}
    outlines = graphdb.read(
        "MATCH (:Cohort {name: $c})<-[m:IN_COHORT]-(:Image) "
        "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
        "RETURN min(size(n.outline)) AS lo, max(size(n.outline)) AS hi, count(n.outline) AS n", c=unique_name)[0]
    assert outlines["n"] == 4 * len(NUCLEI) and 6 <= outlines["lo"] and outlines["hi"] <= 64
    assert store.cohort_counts(graphdb, unique_name)["nuclei"] == 4 * len(NUCLEI)


def test_reingest_is_idempotent_and_a_changed_file_switches_the_cohort(tmp_path, test_environ, graphdb, unique_name,
                                                                       capsys):
    folder = tmp_path / "cohort"
    _image(folder, "a.png", 5)
    sidecar = write_qupath(folder / "a.geojson")
    _image(folder, "b.png", 6)
    write_qupath(folder / "b.geojson")
    assert main(["ingest", str(folder), "--cohort", unique_name, "--json"]) == 0
    first = _segmentations(graphdb, unique_name)
    capsys.readouterr()
    assert main(["ingest", str(folder), "--cohort", unique_name, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["unchanged"] == 2 and again["stored"] == again["replaced"] == 0

    data = json.loads(sidecar.read_text())
    data["features"] = data["features"][:-2]  # the file changes: two nuclei fewer
    sidecar.write_text(json.dumps(data))
    assert main(["ingest", str(folder), "--cohort", unique_name, "--json"]) == 0
    third = json.loads(capsys.readouterr().out)
    assert (third["replaced"], third["unchanged"]) == (1, 1)
    now = _segmentations(graphdb, unique_name)
    assert now["a.png"]["key"] != first["a.png"]["key"] and now["a.png"]["n"] == len(NUCLEI) - 2
    assert now["b.png"]["key"] == first["b.png"]["key"]
    # the old segmentation is gone (no cohort uses it), with its nuclei
    gone = graphdb.read("MATCH (s:Segmentation {key: $k}) RETURN count(s) AS n", k=first["a.png"]["key"])[0]["n"]
    assert gone == 0
    assert store.cohort_counts(graphdb, unique_name)["nuclei"] == 2 * len(NUCLEI) - 2


def test_manifest_nuclei_column_and_cli_nuclei_option(tmp_path, test_environ, graphdb, unique_name, capsys):
    folder = tmp_path / "data"
    a = _image(folder / "images", "a.png", 7)
    b = _image(folder / "images", "b.png", 8)
    (folder / "seg").mkdir()
    write_hovernet(folder / "seg" / "a_hovernet.json", a.mask)
    write_mask(folder / "seg" / "b_labels.npy", b.mask)
    (folder / "manifest.csv").write_text("path,label,nuclei\nimages/a.png,X,seg/a_hovernet.json\n"
                                         "images/b.png,Y,seg/b_labels.npy\n")
    # in worker processes: the import parameters travel to them
    assert main(["ingest", str(folder), "--cohort", unique_name, "--workers", "2", "--json"]) == 0
    segs = _segmentations(graphdb, unique_name)
    assert {k: v["detector"] for k, v in segs.items()} == {"a.png": "import:hovernet", "b.png": "import:mask"}
    assert all(v["n"] == len(NUCLEI) for v in segs.values())
    capsys.readouterr()

    single = tmp_path / "single"
    c = _image(single, "c.png", 9)
    nuclei = write_qupath(tmp_path / "c_cells.geojson")
    assert main(["ingest", str(c.image), "--cohort", unique_name + "x", "--nuclei", str(nuclei), "--json"]) == 0
    assert _segmentations(graphdb, unique_name + "x")["c.png"]["detector"] == "import:qupath"
    capsys.readouterr()
    assert main(["ingest", str(folder), "--cohort", unique_name, "--nuclei", str(nuclei)]) == 1
    assert "names the nuclei of one image, but 2 images were given" in capsys.readouterr().err


def test_bad_files_fail_alone_with_the_reason_and_repairs_are_counted(tmp_path, test_environ, graphdb, unique_name,
                                                                      capsys):
    folder = tmp_path / "batch"
    records, expect = [], {}

    def add(name: str, shade: int, write, error: str | None) -> None:
        truth = _image(folder, f"{name}.png", shade)
        write(truth)
        records.append(ImageRecord(truth.image, "L"))
        expect[str(truth.image)] = error

    add("good", 10, lambda t: write_qupath(folder / "good.geojson"), None)
    add("cut", 11, lambda t: (folder / "cut.geojson").write_text('{"type": "FeatureCollection", "features": [{"ty'),
        "cut.geojson: not valid JSON")
    add("empty", 12, lambda t: (folder / "empty.json").write_bytes(b""), "empty.json: the nuclei file is empty")
    add("small", 13, lambda t: write_mask(folder / "small.mask.npy", t.mask[:60]),
        "small.mask.npy: the mask is 160x60 pixels but the image is 160x120")
    add("dup", 14, lambda t: (folder / "dup.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [{**f, "id": "same"} for f in
                                                   json.loads(write_qupath(folder / "tmp.json").read_text())["features"]]})),
        "dup.geojson: 1 nucleus id(s) appear more than once (same)")
    (folder / "tmp.json").unlink()
    add("far", 15, lambda t: (folder / "far.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [circle(900, 900, 5)]}, "properties": {}}]})),
        "far.geojson: none of its 1 objects is a usable nucleus")

    def repaired(t):
        data = json.loads(write_qupath(folder / "fixed.geojson").read_text())
        data["features"].append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [circle(158, 60, 6)]},
                                 "properties": {"objectType": "detection"}})
        data["features"].append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[70, 90], [84, 104], [84, 90], [70, 104], [70, 90]]]}, "properties": {"objectType": "detection"}})
        (folder / "fixed.geojson").write_text(json.dumps(data))

    add("fixed", 16, repaired, None)
    unknown = _image(folder, "odd.png", 17)
    (folder / "odd.xml").write_text("<nuclei/>")
    records.append(ImageRecord(unknown.image, "L", meta={"nuclei": folder / "odd.xml"}))
    expect[str(unknown.image)] = "odd.xml: unknown nuclei format '.xml'"

    summary = ingest_records(records, cohort=unique_name, params=IngestParams(), settings=test_environ, db=graphdb)
    assert (summary.ok, summary.failed) == (2, 6)
    errors = {f["path"]: f["error"] for f in summary.failures}
    for path, error in expect.items():
        if error is None:
            assert path not in errors
        else:
            assert error in errors[path], errors[path]
    # nothing of a failed image is stored
    stored = {Path(r["path"]).name for r in store.cohort_images(graphdb, unique_name)}
    assert stored == {"good.png", "fixed.png"}
    for path in errors:
        assert not graphdb.read("MATCH (i:Image {id: $id}) RETURN i", id=content_hash(Path(path)))
    # the repairs are in the outcome and on the segmentation
    assert summary.import_notes == [{"path": str(folder / "fixed.png"), "nuclei": str(folder / "fixed.geojson"),
                                     "clipped": 1, "repaired": 1}]
    notes = _segmentations(graphdb, unique_name)["fixed.png"]["notes"]
    assert json.loads(notes) == {"clipped": 1, "repaired": 1}
    # and the CLI prints them
    other = _image(tmp_path / "other", "fixed2.png", 18)
    capsys.readouterr()
    assert main(["ingest", str(other.image), "--cohort", unique_name + "p", "--nuclei", str(folder / "fixed.geojson")]) == 0
    assert "fixed.geojson: 1 clipped to the image; 1 invalid polygon(s) repaired" in capsys.readouterr().err
