"""Training on segmentations ingested without their image (morphology features only), in the real local
Neo4j; and a cohort mixing them with images, which one model cannot read, refused with the fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nucleograph.db import runs as db_runs
from nucleograph.errors import InputError
from nucleograph.gnn.keys import FEAT
from nucleograph.gnn.service import load_cohort, train_cohort
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.features import MORPHOLOGY_COLUMNS
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


def _nuclei_geojson(path: Path, *, elongation: float, seed: int, n: int = 60) -> None:
    """A plain GeoJSON of ``n`` ellipses (semi-axes ``7 * elongation`` and ``7 / elongation``) scattered over
    400 x 400 px in GeoJSON pixel coordinates; written with json and numpy only."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    features = []
    for k in range(n):
        cx, cy = rng.uniform(20, 380, 2)
        a, b, theta = 7 * elongation * rng.uniform(0.9, 1.1), 7 / elongation, rng.uniform(0, np.pi)
        x = cx + a * np.cos(t) * np.cos(theta) - b * np.sin(t) * np.sin(theta)
        y = cy + a * np.cos(t) * np.sin(theta) + b * np.sin(t) * np.cos(theta)
        ring = np.column_stack([x, y]).round(2).tolist()
        features.append({"type": "Feature", "id": f"{seed}-{k}",
                         "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}, "properties": {}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def test_a_cohort_of_segmentations_trains_on_morphology_and_a_mixed_one_is_refused(
    tmp_path, neo4j_settings, graphdb, unique_name,
):
    folder = tmp_path / "segs"
    folder.mkdir()
    rows = ["path,label"]
    for k in range(4):
        _nuclei_geojson(folder / f"round{k}.geojson", elongation=1.0, seed=k)
        _nuclei_geojson(folder / f"long{k}.geojson", elongation=1.8, seed=10 + k)
        rows += [f"round{k}.geojson,round", f"long{k}.geojson,long"]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    summary = ingest_records(discover([folder]), cohort=unique_name, params=IngestParams(), settings=neo4j_settings,
                             db=graphdb)
    assert (summary.ok, summary.failed) == (8, 0), summary.failures

    data = load_cohort(graphdb, neo4j_settings, unique_name, cache=False)
    assert len(data.graphs) == 8 and {g.ndata[FEAT].shape[1] for g in data.graphs} == {len(MORPHOLOGY_COLUMNS)}
    assert all(np.isfinite(g.ndata[FEAT].numpy()).all() for g in data.graphs)
    out = train_cohort(graphdb, neo4j_settings, unique_name, model="rsf", epochs=2, seed=0)
    run = db_runs.get_run(graphdb, out["run_id"])
    assert run["status"] == "finished" and "accuracy" in out["metrics"]
    assert len(db_runs.predictions(graphdb, out["run_id"])) == 8

    # an image with pixels in the same cohort: its nuclei also have stain and texture features
    images = tmp_path / "images"
    synthesize_cohort("prostate", n_per_class=1, out_dir=images, seed=3, size=(256, 256))
    extra = ingest_records(discover([images]), cohort=unique_name, params=IngestParams(), settings=neo4j_settings,
                           db=graphdb)
    assert extra.ok == 2
    with pytest.raises(InputError, match=r"mixes nuclei with 2 different feature sets: 2 image\(s\) have 13 features "
                                         r".*8 have 8 .*lacking hematoxylin_od_mean.*a cohort of their own"):
        train_cohort(graphdb, neo4j_settings, unique_name, model="rsf", epochs=1, seed=0)
