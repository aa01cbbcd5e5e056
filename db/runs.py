"""Model runs, predictions and per-nucleus explanation scores in Neo4j."""

from __future__ import annotations

import json
import re
from typing import Any

import neo4j

from nucleograph.db import queries as q
from nucleograph.errors import InputError

METHODS = ("attention", "occlusion")
_RUN_ID = re.compile(r"^r[0-9a-f]{6,32}$")
BATCH = 10_000


def score_property(run_id: str, method: str, hops: int | None = None) -> str:
    """The Nucleus property holding a run's scores for a method, e.g. ``imp_r1a2b3c4_occlusion_k1``.

    Built only from a generated run id and an allow-listed method, so it is safe as a property key.
    """
    if not _RUN_ID.match(run_id):
        raise InputError(f"{run_id!r} is not a run id (r followed by hex digits, as `nucleograph train` prints)")
    if method not in METHODS:
        raise InputError(f"unknown explanation method {method!r}: choose one of {', '.join(METHODS)}")
    suffix = f"_k{int(hops)}" if method == "occlusion" else ""
    return f"imp_{run_id}_{method}{suffix}"


def explanation_key(run_id: str, method: str, hops: int | None = None) -> str:
    return score_property(run_id, method, hops).removeprefix("imp_")


def save_run(driver: neo4j.Driver, *, run_id: str, cohort: str, props: dict[str, Any], database: str) -> None:
    clean = {k: (json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list)) and not _is_flat_list(v)
                 else v) for k, v in props.items()}
    driver.execute_query(q.CREATE_MODEL_RUN, run_id=run_id, cohort=cohort, props={**clean, "cohort": cohort},
                         database_=database)


def _is_flat_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, (int, float, str, bool)) for x in v)


def save_predictions(driver: neo4j.Driver, run_id: str, rows: list[dict[str, Any]], *, database: str) -> None:
    """``rows``: ``{"image_id", "props": {"pred", "prob", "probs", "split"}}`` per image."""
    for start in range(0, len(rows), BATCH):
        driver.execute_query(q.WRITE_PREDICTIONS, run_id=run_id, rows=rows[start : start + BATCH], database_=database)


def get_run(driver: neo4j.Driver, run_id: str, *, database: str) -> dict[str, Any] | None:
    records, _, _ = driver.execute_query(q.MODEL_RUN, run_id=run_id, database_=database,
                                         routing_=neo4j.RoutingControl.READ)
    return dict(records[0]["run"]) if records else None


def list_runs(driver: neo4j.Driver, *, cohort: str | None = None, database: str) -> list[dict[str, Any]]:
    records, _, _ = driver.execute_query(q.MODEL_RUNS, cohort=cohort, database_=database,
                                         routing_=neo4j.RoutingControl.READ)
    return [dict(r["run"]) for r in records]


def predictions(driver: neo4j.Driver, run_id: str, *, database: str) -> list[dict[str, Any]]:
    records, _, _ = driver.execute_query(q.RUN_PREDICTIONS, run_id=run_id, database_=database,
                                         routing_=neo4j.RoutingControl.READ)
    return [dict(r) for r in records]


def save_scores(
    driver: neo4j.Driver, *, run_id: str, method: str, hops: int | None, image_id: str, nids, scores, database: str
) -> str:
    """Write one image's per-nucleus scores (one transaction) and record it under the explanation.

    Returns the property name. Other runs' and methods' properties are never touched.
    """
    prop = score_property(run_id, method, hops)
    key = explanation_key(run_id, method, hops)
    rows = [[f"{image_id}:{int(n)}", float(s)] for n, s in zip(nids, scores, strict=True)]
    driver.execute_query(q.MERGE_EXPLANATION, run_id=run_id, key=key, method=method,
                         hops=hops if method == "occlusion" else None, property=prop, database_=database)

    def work(tx: neo4j.ManagedTransaction) -> None:
        for start in range(0, len(rows), BATCH):
            tx.run(q.WRITE_SCORES, rows=rows[start : start + BATCH], property=prop).consume()
        tx.run(q.MARK_EXPLAINED, key=key, image_ids=[image_id]).consume()

    with driver.session(database=database) as session:
        session.execute_write(work)
    return prop


def list_explanations(driver: neo4j.Driver, *, run_id: str | None = None, database: str) -> list[dict[str, Any]]:
    records, _, _ = driver.execute_query(q.EXPLANATIONS, run_id=run_id, database_=database,
                                         routing_=neo4j.RoutingControl.READ)
    return [dict(r) for r in records]


def image_scores(driver: neo4j.Driver, image_id: str, prop: str, *, database: str) -> list[dict[str, Any]]:
    records, _, _ = driver.execute_query(q.IMAGE_SCORES, image_id=image_id, property=prop, database_=database,
                                         routing_=neo4j.RoutingControl.READ)
    return [dict(r) for r in records]


def export_scores(driver: neo4j.Driver, key: str, *, image_ids: list[str] | None, database: str) -> list[dict[str, Any]]:
    records, _, _ = driver.execute_query(q.SCORES_EXPORT, key=key, image_ids=image_ids, database_=database,
                                         routing_=neo4j.RoutingControl.READ)
    return [dict(r) for r in records]
