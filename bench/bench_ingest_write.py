"""Neo4j write throughput of the ingest path against a bare UNWIND ... CREATE of the same rows.

Both write the same nucleus and edge rows (from one real synthetic 2048x1536 image, given a fresh
image id per repetition) to the same server, in the same batch size, one transaction per image;
the bare version has the same uniqueness constraint on its key so its MATCHes are indexed too.
Prints rows/s for both and the ratio (target: ingest >= 0.7 of bare).

    ./.venv/bin/python bench/bench_ingest_write.py [--reps 6] [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

from nucleograph.db import local, schema, store
from nucleograph.db.graphdb import GraphDB, chunks
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.pipeline import IngestParams, feature_names, process_image
from nucleograph.ingest.synth import synthesize_cohort

BARE_NODES = "UNWIND $rows AS row CREATE (n:BareNucleus) SET n = row"
BARE_EDGES = (
    "UNWIND $rows AS row MATCH (a:BareNucleus {uid: row[0]}), (b:BareNucleus {uid: row[1]}) "
    "CREATE (a)-[:BARE_NEAR {weight: row[2], dist: row[3]}]->(b)"
)
BARE_CONSTRAINT = "CREATE CONSTRAINT bare_uid IF NOT EXISTS FOR (n:BareNucleus) REQUIRE n.uid IS UNIQUE"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-write-"))
    with local.temporary_server(launcher_from=Path(".nucleograph/test/launcher")) as (settings, _env):
        db = GraphDB.open(settings)
        schema.migrate(db)
        db.write(BARE_CONSTRAINT)
        synthesize_cohort("breast", n_per_class=1, out_dir=work / "synth", seed=0)
        record = discover([work / "synth"])[0]
        params = IngestParams()
        graph = process_image(record, params)
        names = feature_names()
        n_rows = graph.n_nuclei + graph.n_edges
        db.write("MERGE (:Cohort {name: 'bench'})")

        def ingest_once(k: int) -> float:
            g = copy.copy(graph)
            g.image_id = f"bench{k:011d}"
            t = time.perf_counter()
            store.store_image_graph(db, g, cohort="bench", params=params, feature_names=names)
            return time.perf_counter() - t

        def bare_once(k: int) -> float:
            image_id = f"bare{k:012d}"
            t = time.perf_counter()
            nodes = store.nucleus_rows(image_id, image_id, graph.nuclei, names)
            rels = store.edge_rows(image_id, graph.nuclei, graph.edges)

            def work_tx(tx):
                for chunk in chunks(nodes, db.batch_size):
                    tx.run(BARE_NODES, rows=chunk).consume()
                for chunk in chunks(rels, db.batch_size):
                    tx.run(BARE_EDGES, rows=chunk).consume()

            db.write_transaction(work_tx)
            return time.perf_counter() - t

        ingest_once(-1), bare_once(-1)  # warm-up: query plans, page cache
        t_ingest, t_bare = [], []
        for k in range(args.reps):  # interleaved, so drift hits both alike
            t_ingest.append(ingest_once(k))
            t_bare.append(bare_once(k))
        tot_i, tot_b = sum(t_ingest), sum(t_bare)
        out = {
            "nuclei_per_image": graph.n_nuclei, "edges_per_image": graph.n_edges, "reps": args.reps,
            "ingest_rows_per_s": round(n_rows * args.reps / tot_i), "bare_rows_per_s": round(n_rows * args.reps / tot_b),
            "ingest_s_per_image": round(tot_i / args.reps, 3), "bare_s_per_image": round(tot_b / args.reps, 3),
            "ratio_ingest_over_bare": round(tot_b / tot_i, 3),
        }
        db.close()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, v in out.items():
            print(f"{k:>24}: {v}")


if __name__ == "__main__":
    main()
