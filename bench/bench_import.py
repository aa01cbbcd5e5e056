"""Import throughput: nuclei per second from QuPath GeoJSON into Neo4j, beside detecting the same images.

Writes synthetic breast images (2048x1536, about 1,600 nuclei each) with a QuPath GeoJSON sidecar per
image (the true nuclei as detections, classified, their outlines traced from the generator's masks with
up to 64 vertices, as QuPath's are), then measures, on a fresh local Neo4j:

- parse: reading the GeoJSON files alone (``ingest.importers.read_nuclei``);
- import: ``nucleograph ingest`` of the folder (sidecars found, polygons repaired/clipped, painted,
  measured, linked and written to Neo4j), one worker;
- detect: the same images ingested by watershed detection instead, for scale;
- outlines: tracing every nucleus's outline (now part of each ingest) against measuring its features,
  and against the marching-squares reference, on the generator's masks.

Prints nuclei/s and the mean per-image time by stage.

    ./.venv/bin/python bench/bench_import.py [--images 4] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from nucleograph.db import local, records, schema
from nucleograph.db.graphdb import GraphDB
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.features import nucleus_features
from nucleograph.ingest.importers import read_nuclei
from nucleograph.ingest.outlines import EDGE_OFFSET, outlines, outlines_reference
from nucleograph.ingest.pipeline import IngestParams
from nucleograph.ingest.readers import read_image
from nucleograph.ingest.run import ingest_records
from nucleograph.ingest.synth import synthesize_cohort


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_sidecars(folder: Path) -> int:
    """A QuPath GeoJSON next to every image of ``folder``; returns the number of nuclei written."""
    total = 0
    for record in discover([folder]):
        mask = np.asarray(Image.open(record.meta["mask"])).astype(np.int32)
        ids = np.unique(mask)[1:]
        rings = outlines(mask, ids, max_vertices=64, tolerance=0.25)
        features = []
        for k, (nid, flat) in enumerate(zip(ids, rings, strict=True)):
            xy = (np.asarray(flat).reshape(-1, 2) + EDGE_OFFSET).round(2).tolist()
            features.append({"type": "Feature", "id": f"00000000-0000-4000-8000-{int(nid):012d}",
                             "geometry": {"type": "Polygon", "coordinates": [xy + xy[:1]]},
                             "properties": {"objectType": "detection",
                                            "classification": {"name": ("Tumor", "Stroma", "Immune")[k % 3]}}})
        Path(record.path).with_suffix(".geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": features}))
        total += len(features)
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=4, help="images (half per class)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-import-"))
    synthesize_cohort("breast", n_per_class=max(1, args.images // 2), out_dir=work / "synth", seed=11)
    # the manifest's nuclei column names CSVs of true centroids (not outlines): the sidecars are used
    folder = work / "synth"
    n_written = write_sidecars(folder)
    files = sorted(folder.rglob("*.geojson"))

    t = time.perf_counter()
    parsed = sum(len(read_nuclei(f).geometries) for f in files)
    t_parse = time.perf_counter() - t
    outline_times = _outline_times(discover([folder]))

    with local.temporary_server(launcher_from=Path(".nucleograph/test/launcher")) as (settings, _env):
        with GraphDB.open(settings) as db:
            schema.migrate(db)
            recs = discover([folder])
            warm = ingest_records(recs[:1], cohort="warm", params=IngestParams(), settings=settings, db=db)
            t = time.perf_counter()
            imp = ingest_records(recs, cohort="imported", params=IngestParams(), settings=settings, db=db)
            t_import = time.perf_counter() - t
            stages_import = _stages(settings, "imported")
            for f in files:  # the same images, now detected
                f.rename(f.with_suffix(".geojson.off"))
            t = time.perf_counter()
            det = ingest_records(recs, cohort="detected", params=IngestParams(), settings=settings, db=db)
            t_detect = time.perf_counter() - t
            stages_detect = _stages(settings, "detected")
    assert imp.failed == det.failed == warm.failed == 0, (imp.failures, det.failures)
    out = {
        "cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "images": len(files),
        "nuclei_in_files": n_written,
        "parse": {"nuclei": parsed, "seconds": round(t_parse, 3), "nuclei_per_s": round(parsed / t_parse)},
        "import": {"nuclei": imp.nuclei, "edges": imp.edges, "seconds": round(t_import, 2),
                   "nuclei_per_s": round(imp.nuclei / t_import), "stages_s_per_image": stages_import},
        "detect": {"nuclei": det.nuclei, "edges": det.edges, "seconds": round(t_detect, 2),
                   "nuclei_per_s": round(det.nuclei / t_detect), "stages_s_per_image": stages_detect},
        "outlines_s_per_image": outline_times,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['cpu']}, {out['cores']} cores; {len(files)} images, {n_written} nuclei in QuPath GeoJSON")
    print(f"parse GeoJSON only      {out['parse']['nuclei_per_s']:>8,} nuclei/s")
    print(f"import into Neo4j       {out['import']['nuclei_per_s']:>8,} nuclei/s  ({t_import:.1f} s) {stages_import}")
    print(f"detect (watershed)      {out['detect']['nuclei_per_s']:>8,} nuclei/s  ({t_detect:.1f} s) {stages_detect}")
    print(f"outlines vs features    {outline_times}")


def _outline_times(recs) -> dict[str, float]:
    """Mean seconds per image: compiled outlines, the marching-squares reference, all features."""
    times: dict[str, list[float]] = {"outlines": [], "outlines_reference": [], "features": []}
    outlines(np.ones((4, 4), np.int32), [1])  # compile (or load the cached compilation) first
    for record in recs:
        mask = np.asarray(Image.open(record.meta["mask"])).astype(np.int32)
        image = read_image(record.path)
        ids = np.unique(mask)[1:]
        for name, fn, fn_args in (("outlines", outlines, (mask, ids)),
                                  ("outlines_reference", outlines_reference, (mask, ids)),
                                  ("features", nucleus_features, (image, mask))):
            t = time.perf_counter()
            fn(*fn_args)
            times[name].append(time.perf_counter() - t)
    return {k: round(float(np.mean(v)), 3) for k, v in times.items()}


def _stages(settings, cohort: str) -> dict[str, float]:
    """Mean seconds per image by stage, from the SQL ingest records of ``cohort``."""
    engine = records.open_engine(settings)
    try:
        rows = [r["timings"] for r in records.ingest_records(engine, cohort=cohort) if r["status"] != "failed"]
    finally:
        engine.dispose()
    keys = sorted({k for t in rows for k in t})
    return {k: round(float(np.mean([t.get(k, 0.0) for t in rows])), 3) for k in keys}


if __name__ == "__main__":
    main()
