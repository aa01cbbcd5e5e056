"""Storing a whole slide's graph (issue 15 item 2): the store path against a bare batched UNWIND ... CREATE.

The slide is the real segmentation shipped in the ``histolytics`` wheel (``hgsc_nuclei_wsi.parquet``:
592,349 nucleus polygons over 47,001 x 66,210 px, read from the installed package). It goes through the
project's own import code (``ingest.importers.read_nuclei`` and ``clean_geometries``) and graph code
(``ingest.graph.build_edges``, 100 px); without pixels, the nuclei get the morphology features of
``ingest.polygons.polygon_features`` (what ingesting the file without its image computes: the same
definitions as detected nuclei) and their outlines (``ingest.outlines.compact_rings``), type and source
id, as an import stores them.

One throw-away Neo4j at the default heap and page cache (1g / 512m), schema migrated, both paths
warmed up on the first 20k nuclei (as other images). In order:
1. bare: the same nucleus and edge rows (built per batch by ``db.store.nucleus_rows``/``edge_rows``, as
   the store builds them) written by ``UNWIND $rows ... CREATE`` to a ``BareNucleus`` label (uid
   constraint only), one auto-commit transaction per batch of ``db.batch_size`` rows; then deleted;
2. store: ``db.store.store_image_graph`` (the slide path: batched transactions, 'writing' -> 'complete');
3. again: the same call (idempotent: ``unchanged``);
4. window: ``db.store.window_nuclei`` of the densest 2048 x 1536 px window of a grid (point index);
5. replace: the cohort moves to another (tiny) segmentation of the image, and the slide's graph is
   deleted in batches.
Prints seconds, rows/s, the ratio store/bare (target >= 0.8), peak RSS of Python (ru_maxrss) and of
Neo4j (VmHWM). ``--nuclei N`` keeps the N nuclei nearest the slide's centre (a square window).

    ./.venv/bin/python bench/bench_slide_store.py --nuclei 50000 [--json]
    ./.venv/bin/python bench/bench_slide_store.py            # the whole slide
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import shapely

from nucleograph.db import local, schema, store
from nucleograph.db.graphdb import GraphDB
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.features import MORPHOLOGY_COLUMNS
from nucleograph.ingest.graph import build_edges
from nucleograph.ingest.importers import ImportParams, clean_geometries, read_nuclei
from nucleograph.ingest.outlines import compact_rings
from nucleograph.ingest.pipeline import ImageGraph, IngestParams, content_hash
from nucleograph.ingest.polygons import polygon_features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest_write import BARE_CONSTRAINT, BARE_EDGES, BARE_NODES  # noqa: E402  the same baseline

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD_PX = 100.0
GEOMETRIC = list(MORPHOLOGY_COLUMNS)
BARE_DELETE = "MATCH (n:BareNucleus) WITH n LIMIT $limit DETACH DELETE n RETURN count(n) AS deleted"


def slide_file() -> Path:
    """The slide segmentation, from the installed histolytics wheel (its package is not imported)."""
    try:
        path = Path(str(importlib.metadata.distribution("histolytics").locate_file(
            "histolytics/data/hgsc_nuclei_wsi.parquet")))
    except importlib.metadata.PackageNotFoundError as exc:
        raise SystemExit("histolytics is not installed: `pip install --no-deps histolytics==0.3.0`") from exc
    if not path.is_file():
        raise SystemExit(f"{path} is missing: install histolytics==0.3.0")
    return path


def slide_graph(path: Path, n: int | None) -> tuple[ImageGraph, ImportParams, dict[str, float]]:
    """The slide's graph (its ``n`` nuclei nearest the centre, if given) and how long each step took."""
    timings = {}
    t = time.perf_counter()
    parsed = read_nuclei(path, "geoparquet")
    bounds = shapely.total_bounds(np.asarray(parsed.geometries, dtype=object))
    width, height = int(math.ceil(bounds[2])) + 1, int(math.ceil(bounds[3])) + 1
    geoms, kept, _notes = clean_geometries(parsed, width=width, height=height)
    geoms = np.asarray(geoms, dtype=object)
    kept = np.asarray(kept)
    centre = shapely.get_coordinates(shapely.centroid(geoms))
    if n is not None and n < len(geoms):  # the n nearest the centre in L-inf distance: a square window
        chebyshev = np.abs(centre - np.median(centre, axis=0)).max(axis=1)
        keep = np.sort(np.argpartition(chebyshev, n)[:n])
        geoms, kept, centre = geoms[keep], kept[keep], centre[keep]
    timings["read"] = time.perf_counter() - t
    t = time.perf_counter()
    nuclei = polygon_features(geoms)  # the product's morphology of polygons without pixels (a few cover no pixel)
    rows = nuclei["nucleus_id"] - 1
    geoms, kept = geoms[rows], kept[rows]
    nuclei["nucleus_id"] = np.arange(1, len(rows) + 1, dtype=np.int64)
    centre = np.stack([nuclei["centroid_x"], nuclei["centroid_y"]], axis=1)
    nuclei["outline"] = compact_rings([shapely.get_coordinates(g.exterior)[:-1] for g in geoms], tolerance=0.25)
    nuclei["type"] = np.asarray([parsed.types[i] for i in kept], dtype=object)
    nuclei["source_id"] = np.asarray([parsed.ids[i] for i in kept], dtype=object)
    timings["features"] = time.perf_counter() - t
    del parsed, geoms
    t = time.perf_counter()
    edges = build_edges(centre, threshold=THRESHOLD_PX)
    timings["graph"] = time.perf_counter() - t
    params = ImportParams.of(IngestParams(threshold=THRESHOLD_PX), path, sha=content_hash(path))
    image_id = content_hash(path) if n is None else f"{content_hash(path)[:10]}w{len(centre):05d}"[:16]
    record = ImageRecord(path, "slide")
    return ImageGraph(image_id, record, width, height, nuclei, edges, THRESHOLD_PX), params, timings


def bare_write(db: GraphDB, graph: ImageGraph, names: list[str]) -> None:
    """The same rows, built per batch the way the store builds them, by bare UNWIND ... CREATE."""
    key, size = "bare:" + graph.image_id, db.batch_size
    for lo in range(0, graph.n_nuclei, size):
        part = {k: v[lo:lo + size] for k, v in graph.nuclei.items()}
        db.write(BARE_NODES, rows=store.nucleus_rows(key, graph.image_id, part, names))
    for lo in range(0, graph.n_edges, size):
        part = {k: v[lo:lo + size] for k, v in graph.edges.items()}
        db.write(BARE_EDGES, rows=store.edge_rows(key, graph.nuclei, part))


def head(graph: ImageGraph, n: int, image_id: str) -> ImageGraph:
    """The first ``n`` nuclei of ``graph`` and the edges between them, as another image."""
    keep = (graph.edges["src"] < n) & (graph.edges["dst"] < n)
    return ImageGraph(image_id, graph.record, graph.width, graph.height, {k: v[:n] for k, v in graph.nuclei.items()},
                      {k: v[keep] for k, v in graph.edges.items()}, THRESHOLD_PX)


def densest_window(graph: ImageGraph, width: int = 2048, height: int = 1536) -> tuple[float, ...]:
    """The cell of a ``width`` x ``height`` grid over the slide holding the most nuclei (a viewport in tissue)."""
    x, y = graph.nuclei["centroid_x"], graph.nuclei["centroid_y"]
    counts, xe, ye = np.histogram2d(x, y, bins=[np.arange(x.min(), x.max() + width, width),
                                                 np.arange(y.min(), y.max() + height, height)])
    i, j = np.unravel_index(np.argmax(counts), counts.shape)
    return float(xe[i]), float(ye[j]), float(xe[i] + width), float(ye[j] + height)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def server_hwm_mb(settings) -> float | None:
    pid = local.read_pid(settings)
    if pid is None:
        return None
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def timed(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nuclei", type=int, default=None, help="keep the N nuclei nearest the centre (default: all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = slide_file()
    graph, params, timings = slide_graph(path, args.nuclei)
    names = GEOMETRIC
    rows = graph.n_nuclei + graph.n_edges
    rss_graph = peak_rss_mb()
    say = (lambda *a: None) if args.json else print
    say(f"{graph.n_nuclei} nuclei, {graph.n_edges} edges ({rows} rows), mean degree "
        f"{2 * graph.n_edges / graph.n_nuclei:.1f}; built in {sum(timings.values()):.1f} s {timings}")
    heap, pagecache = "1g", "512m"  # nucleograph.config.Settings' defaults
    with local.temporary_server(launcher_from=ROOT / ".nucleograph" / "test" / "launcher", heap=heap,
                                pagecache=pagecache) as (settings, _env), GraphDB.open(settings) as db:
        schema.migrate(db)
        db.write(BARE_CONSTRAINT)
        # warm-up of both paths (JIT, query plans, store files): the first 20k nuclei, as other images
        bare_write(db, head(graph, 20_000, "warmup-bare"), names)
        store.store_image_graph(db, head(graph, 20_000, "warmup-store"), cohort="warmup", params=params,
                                feature_names=names, atomic_rows=0)
        while db.write(BARE_DELETE, limit=db.batch_size)[0]["deleted"]:
            pass
        t_bare, _ = timed(lambda: bare_write(db, graph, names))
        say(f"bare UNWIND: {t_bare:.1f} s, {rows / t_bare:,.0f} rows/s")
        t_bare_delete, _ = timed(lambda: [None for _ in iter(
            lambda: db.write(BARE_DELETE, limit=db.batch_size)[0]["deleted"], 0)])
        marks: dict[str, float] = {}
        t0 = time.perf_counter()

        def progress(stage: str, done: int, total: int) -> None:
            marks[stage] = time.perf_counter() - t0
            if done == total or done % (20 * db.batch_size) == 0:
                say(f"  {stage}: {done:,}/{total:,} ({marks[stage]:.0f} s)")

        t_store, result = timed(lambda: store.store_image_graph(db, graph, cohort="slide", params=params,
                                                                feature_names=names, progress=progress))
        assert result.status == "stored", result
        say(f"store: {t_store:.1f} s, {rows / t_store:,.0f} rows/s, ratio to bare {t_bare / t_store:.2f}")
        counts = store.cohort_counts(db, "slide")
        assert counts == {"images": 1, "nuclei": graph.n_nuclei, "edges": graph.n_edges}, counts
        t_again, again = timed(lambda: store.store_image_graph(db, graph, cohort="slide", params=params,
                                                               feature_names=names))
        assert again.status == "unchanged", again
        box = densest_window(graph)
        store.window_nuclei(db, "slide", graph.image_id, *box)  # warm-up (query plan)
        t_window, roi = timed(lambda: store.window_nuclei(db, "slide", graph.image_id, *box))
        say(f"window 2048x1536: {len(roi['nids'])} nuclei, {len(roi['src'])} edges in {t_window * 1000:.0f} ms")
        tiny = ImageGraph(graph.image_id, graph.record, graph.width, graph.height,
                          {k: v[:3] for k, v in graph.nuclei.items()}, build_edges(
                              np.stack([graph.nuclei["centroid_x"][:3], graph.nuclei["centroid_y"][:3]], 1)),
                          THRESHOLD_PX)
        other = ImportParams.of(IngestParams(threshold=THRESHOLD_PX / 2), path, sha=content_hash(path))
        t_replace, replaced = timed(lambda: store.store_image_graph(db, tiny, cohort="slide", params=other,
                                                                    feature_names=names))
        assert replaced.status == "replaced"
        left = db.read_one("MATCH (n:Nucleus {image_id: $i}) RETURN count(n) AS n", i=graph.image_id)["n"]
        assert left == tiny.n_nuclei, left
        say(f"replace (slide graph deleted in batches): {t_replace:.1f} s")
        neo4j_hwm = server_hwm_mb(settings)
    out = {
        "nuclei": graph.n_nuclei, "edges": graph.n_edges, "rows": rows, "build_s": round(sum(timings.values()), 1),
        "bare_s": round(t_bare, 1), "bare_rows_per_s": round(rows / t_bare), "bare_delete_s": round(t_bare_delete, 1),
        "store_s": round(t_store, 1), "store_rows_per_s": round(rows / t_store),
        "ratio_store_to_bare": round(t_bare / t_store, 3), "store_nuclei_s": round(marks.get("nuclei", 0), 1),
        "again_s": round(t_again, 2), "window_ms": round(t_window * 1000), "window_nuclei": len(roi["nids"]),
        "replace_delete_s": round(t_replace, 1),
        "python_peak_rss_mb_after_graph": round(rss_graph), "python_peak_rss_mb": round(peak_rss_mb()),
        "neo4j_peak_rss_mb": None if neo4j_hwm is None else round(neo4j_hwm), "heap": heap, "pagecache": pagecache,
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
