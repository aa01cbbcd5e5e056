"""`nucleograph db start|stop|status|migrate`, `nucleograph images` and `nucleograph cypher`."""

from __future__ import annotations

import argparse
import sys

from nucleograph.config import Settings
from nucleograph.db import console, local, schema, store
from nucleograph.db import queries as q
from nucleograph.db import runs as db_runs
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import InputError
from nucleograph.output import DefaultsHelpFormatter, emit_json, format_table, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``db`` and ``cypher`` to the ``nucleograph`` parser."""
    db = sub.add_parser("db", help="start, stop, inspect and migrate the Neo4j database")
    dbsub = db.add_subparsers(dest="db_command", required=True)
    p = dbsub.add_parser("start", help="start the local Neo4j (no-op if it runs) and apply migrations")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_start)
    p = dbsub.add_parser("stop", help="stop the local Neo4j cleanly")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stop)
    p = dbsub.add_parser("status", help="server version, store size, node and relationship counts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = dbsub.add_parser("migrate", help="apply schema migrations (idempotent)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("images", help="list a cohort's images (ids for render, explain --image, the Cypher examples)",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--cohort", required=True, help="a cohort name, as given to `nucleograph ingest --cohort`")
    p.add_argument("--run", default=None, help="add this model run's prediction and split (train/val/test) per image")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")
    p.set_defaults(func=cmd_images)

    c = sub.add_parser("cypher", help="run a Cypher query (read-only unless --write)",
                       formatter_class=DefaultsHelpFormatter)
    c.add_argument("query")
    c.add_argument("--param", action="append", metavar="NAME=VALUE", help="a query parameter (JSON or text)")
    c.add_argument("--write", action="store_true", help="run in a write transaction")
    c.add_argument("--json", action="store_true")
    c.add_argument("--limit", type=positive_int, default=None, help="stop after this many rows (1 or more)")
    c.set_defaults(func=cmd_cypher)


def _to_stderr(message: str) -> None:
    print(f"db start: {message}", file=sys.stderr, flush=True)


def cmd_start(args, settings: Settings) -> int:
    """Run ``nucleograph db start`` (start the local Neo4j (if local) and apply migrations); returns the exit status."""
    info = {"uri": settings.neo4j_uri}
    if settings.is_local:
        info.update(local.start(settings, say=_to_stderr))
    with GraphDB.open(settings) as db:
        info["migrations"] = schema.migrate(db)
    if args.json:
        emit_json(info)
    elif info.get("started"):
        print(f"Neo4j started at {settings.neo4j_uri} (pid {info['pid']}, {info['seconds']} s)")
    else:
        print(f"Neo4j already running at {settings.neo4j_uri}")
    return 0


def cmd_stop(args, settings: Settings) -> int:
    """Run ``nucleograph db stop`` (stop the local Neo4j); returns the exit status."""
    stopped = local.stop(settings)
    if args.json:
        emit_json({"stopped": stopped})
    else:
        print("Neo4j stopped" if stopped else "Neo4j was not running")
    return 0


def server_status(db: GraphDB, settings: Settings) -> dict:
    """Server version and edition, store size, node, relationship and label counts, schema version.

    Parameters
    ----------
    db : GraphDB
    settings : Settings
        Where the local server's store and pid file are.

    Returns
    -------
    dict
    """
    comps = db.read(q.SERVER_COMPONENTS)
    counts = db.read(q.COUNTS)
    labels = db.read(q.LABEL_COUNTS)
    kernel = next((c for c in comps if c["name"] == "Neo4j Kernel"), comps[0])
    return {
        "uri": settings.neo4j_uri,
        "version": kernel["versions"][0],
        "edition": kernel["edition"],
        "store_bytes": local.store_size(settings),
        "pid": local.read_pid(settings) if settings.is_local else None,
        "nodes": counts[0]["nodes"],
        "relationships": counts[0]["relationships"],
        "labels": {r["label"]: r["n"] for r in labels},
        "schema_version": schema.current_version(db),
    }


def cmd_status(args, settings: Settings) -> int:
    """Run ``nucleograph db status`` (print the server's status); returns the exit status."""
    with GraphDB.open(settings) as db:
        info = server_status(db, settings)
    if args.json:
        emit_json(info)
    else:
        print(f"Neo4j {info['version']} {info['edition']} at {info['uri']}")
        print(f"store: {info['store_bytes'] / 1e6:.1f} MB   nodes: {info['nodes']}   relationships: {info['relationships']}")
        print(f"schema version: {info['schema_version']}   labels: {info['labels']}")
    return 0


def cmd_migrate(args, settings: Settings) -> int:
    """Run ``nucleograph db migrate`` (apply schema migrations); returns the exit status."""
    with GraphDB.open(settings) as db:
        info = schema.migrate(db)
    if args.json:
        emit_json(info)
    else:
        print(f"schema version {info['from']} -> {info['to']} ({info['applied']} migration(s) applied)")
    return 0


def cmd_cypher(args, settings: Settings) -> int:
    """Run ``nucleograph cypher``; returns the exit status."""
    params = console.parse_params(args.param)
    with GraphDB.open(settings) as db:
        try:
            columns, rows = console.run_cypher(db, args.query, params, write=args.write, limit=args.limit)
        except console.WriteRefused as exc:
            raise console.WriteRefused(f"{exc} Run it with --write if you mean to change the database.") from exc
    if args.json:
        emit_json(rows)
    else:
        print(format_table(columns, rows))
    return 0


def cmd_images(args, settings: Settings) -> int:
    """Run ``nucleograph images`` (a cohort's images, with a run's predictions when given); returns the exit status."""
    with GraphDB.open(settings) as db:
        images = store.cohort_images(db, args.cohort)
        if not images:
            names = store.cohort_names(db)
            raise InputError(f"cohort {args.cohort!r} has no images; cohorts: {', '.join(names) or 'none yet'} "
                             "(`nucleograph ingest PATH --cohort NAME` adds some)")
        preds = {p["image_id"]: p for p in db_runs.predictions(db, args.run)} if args.run else {}
    rows = [{"image_id": r["id"], "label": r["label"], "nuclei": r["n_nuclei"], "edges": r["n_edges"],
             **({"pred": preds.get(r["id"], {}).get("pred"), "split": preds.get(r["id"], {}).get("split")}
                if args.run else {}),
             "path": r["path"]} for r in images]
    if args.json:
        emit_json(rows)
    else:
        print(format_table(list(rows[0]), rows, max_width=200))
    return 0
