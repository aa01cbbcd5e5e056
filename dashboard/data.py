"""What the dashboard pages read, cached: the driver once per server, query results for ``TTL`` seconds.

Pages call these functions and draw; nothing here draws. Every cached function takes the driver as
``_driver`` (not hashed) and the server's URI and database as plain arguments, so two servers never
share a cache entry. Results are plain Python values or DataFrames (what ``st.cache_data`` pickles).
"""

from __future__ import annotations

import json
import math
from typing import Any

import neo4j
import numpy as np
import pandas as pd
import streamlit as st

from nucleograph.config import Settings
from nucleograph.db import queries as dq
from nucleograph.db import queries as q
from nucleograph.errors import NucleographError

TTL = 60  # seconds a listing stays cached: new ingests and runs show up within a minute
TTL_IMAGE = 600  # one image's graph and pixels change only when it is re-ingested
DISPLAY_MAX_SIDE = 1200  # image pixels sent to the browser (nuclei keep full-resolution coordinates)
PATTERN_TOP_MAX = 50  # the pattern query keeps up to this many top nuclei per image; pages filter to k
SHAPE_FEATURES = {
    "area": "area (px²)",
    "circularity": "circularity",
    "eccentricity": "eccentricity",
    "solidity": "solidity",
    "hematoxylin": "hematoxylin OD",
    "degree": "degree",
    "density": "local density (Σ NEAR weight)",
}


# --- connection -------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _driver_for(uri: str, user: str, database: str, _settings: Settings) -> neo4j.Driver:
    from nucleograph.db.driver import open_driver

    return open_driver(_settings)


@st.cache_resource(show_spinner=False)
def _engine_for(sql_url: str, _settings: Settings):
    from nucleograph.db.records import open_engine

    return open_engine(_settings)


def connect() -> tuple[Settings, neo4j.Driver]:
    """Settings from the environment and the shared driver; stops the page with the fix on failure."""
    try:
        settings = Settings.from_env()
        driver = _driver_for(settings.neo4j_uri, settings.neo4j_user, settings.neo4j_database, _settings=settings)
    except NucleographError as exc:
        st.error(f"Cannot reach the database: {exc}")
        st.stop()
    return settings, driver


def engine(settings: Settings):
    return _engine_for(settings.sql_url, _settings=settings)


def _read(driver: neo4j.Driver, query: str, database: str, **params) -> list[dict[str, Any]]:
    records, _, _ = driver.execute_query(query, params, database_=database, routing_=neo4j.RoutingControl.READ)
    return [dict(r) for r in records]


# --- cohorts ----------------------------------------------------------------------------------------
@st.cache_data(ttl=TTL, show_spinner=False)
def cohorts(_driver, uri: str, database: str) -> list[dict[str, Any]]:
    return _read(_driver, dq.DASH_COHORTS, database)


@st.cache_data(ttl=TTL, show_spinner=False)
def cohort_images(_driver, uri: str, database: str, cohort: str) -> pd.DataFrame:
    rows = _read(_driver, dq.DASH_COHORT_IMAGES, database, cohort=cohort)
    cols = ["id", "path", "label", "patient", "width", "height", "detector", "n_nuclei", "n_edges", "ingested_at"]
    return pd.DataFrame(rows, columns=cols)


@st.cache_data(ttl=TTL, show_spinner=False)
def ingest_log(_engine, sql_url: str, cohort: str) -> pd.DataFrame:
    from nucleograph.db.records import ingest_records

    rows = ingest_records(_engine, cohort=cohort)
    cols = ["created_at", "path", "image_id", "label", "status", "error", "detector", "nuclei", "edges", "seconds"]
    return pd.DataFrame(rows, columns=[*cols, "id"])[cols] if rows else pd.DataFrame(columns=cols)


# --- runs and explanations ---------------------------------------------------------------------------
@st.cache_data(ttl=TTL, show_spinner=False)
def runs(_driver, uri: str, database: str, cohort: str) -> list[dict[str, Any]]:
    out = []
    for r in _read(_driver, dq.DASH_RUNS, database, cohort=cohort):
        run = dict(r["run"])
        for key in ("metrics", "history", "params"):
            run[key] = _json(run.get(key))
        out.append(run)
    return out


@st.cache_data(ttl=TTL, show_spinner=False)
def sql_runs(_engine, sql_url: str, cohort: str) -> pd.DataFrame:
    """Runs as recorded in SQL (also those still running or failed, which Neo4j does not hold)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from nucleograph.db.records import ModelRunRecord

    stmt = select(ModelRunRecord).where(ModelRunRecord.cohort == cohort).order_by(ModelRunRecord.created_at.desc())
    with Session(_engine) as session:
        rows = [
            {"id": r.id, "model": r.model, "status": r.status, "created_at": r.created_at, "error": r.error}
            for r in session.scalars(stmt)
        ]
    return pd.DataFrame(rows, columns=["id", "model", "status", "created_at", "error"])


@st.cache_data(ttl=TTL, show_spinner=False)
def explanations(_driver, uri: str, database: str, cohort: str) -> list[dict[str, Any]]:
    return _read(_driver, dq.DASH_EXPLANATIONS, database, cohort=cohort)


def explanation_label(e: dict[str, Any]) -> str:
    hops = f" k={e['hops']}" if e.get("hops") is not None else ""
    return f"{e['run_id']} · {e.get('model') or '?'} · {e['method']}{hops} ({e['images']} images)"


@st.cache_data(ttl=TTL, show_spinner=False)
def run_predictions(_driver, uri: str, database: str, run_id: str) -> pd.DataFrame:
    rows = _read(_driver, dq.DASH_RUN_PREDICTIONS, database, run_id=run_id)
    return pd.DataFrame(rows, columns=["image_id", "label", "pred", "prob", "split", "fold"])


@st.cache_data(ttl=TTL, show_spinner=False)
def image_prediction(_driver, uri: str, database: str, run_id: str, image_id: str) -> dict[str, Any] | None:
    rows = _read(_driver, dq.DASH_IMAGE_PREDICTION, database, run_id=run_id, image_id=image_id)
    return rows[0] if rows else None


def confusion(run: dict[str, Any], preds: pd.DataFrame, *, split: str) -> tuple[np.ndarray, list[str]] | None:
    """The run's confusion matrix (rows true, columns predicted) and class names.

    ``split="test"`` sums the held-out matrices the run recorded per fold; any other split counts
    the stored predictions of that split (``"all"``: every image).
    """
    names = list(run.get("class_names") or sorted(set(preds["label"].dropna()) | set(preds["pred"].dropna())))
    if split == "test":
        folds = (run.get("metrics") or {}).get("folds") or []
        mats = [np.asarray(f["confusion_matrix"]) for f in folds if f.get("confusion_matrix")]
        if mats and all(m.shape == (len(names), len(names)) for m in mats):
            return np.sum(mats, axis=0), names
    sub = preds if split == "all" else preds[preds["split"] == split]
    if sub.empty or not names:
        return None
    index = {n: i for i, n in enumerate(names)}
    cm = np.zeros((len(names), len(names)), dtype=int)
    for t, p in zip(sub["label"], sub["pred"], strict=True):
        if t in index and p in index:
            cm[index[t], index[p]] += 1
    return cm, names


# --- one image --------------------------------------------------------------------------------------
@st.cache_data(ttl=TTL_IMAGE, show_spinner=False)
def image_graph(_driver, uri: str, database: str, image_id: str, prop: str | None) -> dict[str, Any] | None:
    """One image's nuclei (DataFrame ``nid, x, y, area, score``), edges as row-index arrays, metadata."""
    rows = _read(_driver, dq.DASH_IMAGE_GRAPH, database, image_id=image_id, property=prop)
    if not rows:
        return None
    r = rows[0]
    table = np.asarray([[np.nan if v is None else v for v in row] for row in r["nuclei"]], dtype=float).reshape(-1, 5)
    nuclei = pd.DataFrame(table, columns=["nid", "x", "y", "area", "score"]).astype({"nid": np.int64})
    index = pd.Series(np.arange(len(nuclei)), index=nuclei["nid"].to_numpy())
    src = index.reindex(np.asarray(r["src"], dtype=np.int64)).to_numpy()
    dst = index.reindex(np.asarray(r["dst"], dtype=np.int64)).to_numpy()
    meta = {k: r[k] for k in ("id", "path", "label", "patient", "width", "height", "detector", "n_nuclei", "n_edges")}
    return {"meta": meta, "nuclei": nuclei, "src": src, "dst": dst}


@st.cache_data(ttl=TTL_IMAGE, show_spinner=False, max_entries=64)
def image_source(path: str, max_side: int = DISPLAY_MAX_SIDE) -> tuple[str | None, str | None]:
    """The image as a JPEG data URI at most ``max_side`` pixels wide, or (None, why) if it is unreadable.

    JPEG, not PNG: Plotly would PNG-encode a PIL image on every draw, which takes seconds for a
    2048 x 1536 tile; a cached JPEG string is sent as it is.
    """
    import base64
    import io

    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (max_side, max_side))  # JPEG decodes at a reduced scale directly
            rgb = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        from nucleograph.ingest.readers import (
            read_image,  # TIFF variants, 16-bit, and a clear message otherwise
        )

        try:
            rgb = Image.fromarray(read_image(path))
        except NucleographError as exc:
            return None, str(exc)
    rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None


@st.cache_data(ttl=TTL, show_spinner=False)
def nucleus(_driver, uri: str, database: str, uid: str, prop: str | None) -> dict[str, Any] | None:
    rows = _read(_driver, dq.DASH_NUCLEUS, database, uid=uid, property=prop)
    if not rows:
        return None
    out = dict(rows[0])
    out["props"] = {k: v for k, v in (out["props"] or {}).items() if v is not None and not k.startswith("imp_")}
    return out


@st.cache_data(ttl=TTL, show_spinner=False)
def neighbours(_driver, uri: str, database: str, uid: str, prop: str | None) -> pd.DataFrame:
    rows = _read(_driver, dq.DASH_NEIGHBOURS, database, uid=uid, property=prop)
    return pd.DataFrame(rows, columns=["nid", "dist", "weight", "area", "hematoxylin", "score"])


# --- cohort patterns --------------------------------------------------------------------------------
@st.cache_data(ttl=TTL, show_spinner=False)
def patterns(_driver, uri: str, database: str, cohort: str, key: str, per_image: int = 100) -> pd.DataFrame:
    """Ranked nuclei of every explained image: the top ``PATTERN_TOP_MAX`` plus an even sample.

    One row per kept nucleus with ``rank`` (0 = most important), ``percentile`` (1 = most important),
    ``sample`` (True for the systematic sample that stands for all nuclei) and its features.
    """
    rows = _read(_driver, dq.DASH_PATTERNS, database, cohort=cohort, key=key, k=PATTERN_TOP_MAX, per_image=per_image,
                 nan=float("nan"))
    cols = list(dq.PATTERN_COLUMNS)
    if not rows:
        return pd.DataFrame(columns=["image_id", "label", "total", *cols, "percentile", "sample"])
    counts = [len(r["nuclei"]) for r in rows]
    table = np.array([v for r in rows for v in r["nuclei"]], dtype=float).reshape(-1, len(cols))
    df = pd.DataFrame(table, columns=cols)
    df.insert(0, "total", np.repeat([r["total"] for r in rows], counts))
    df.insert(0, "label", np.repeat([r["label"] for r in rows], counts))
    df.insert(0, "image_id", np.repeat([r["image_id"] for r in rows], counts))
    df["rank"] = df["rank"].astype(np.int64)
    df["nid"] = df["nid"].astype(np.int64)
    stride = np.ceil(df["total"] / per_image).clip(lower=1).astype(np.int64)
    df["sample"] = (df["rank"] % stride) == 0
    df["percentile"] = 1.0 - df["rank"] / (df["total"] - 1).clip(lower=1)
    return df


def top_vs_all(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Rows for "top-k" (rank < k) and "all" (the sample), with a ``group`` column."""
    top = df[df["rank"] < k].assign(group=f"top {k}")
    rest = df[df["sample"]].assign(group="all nuclei")
    return pd.concat([rest, top], ignore_index=True)


def box_stats(df: pd.DataFrame, feature: str, by: list[str]) -> pd.DataFrame:
    """Quartiles and 1.5 IQR whiskers per group, so box plots ship five numbers, not every nucleus."""
    g = df.groupby(by, sort=True)[feature]
    stats = g.quantile([0.25, 0.5, 0.75]).unstack()
    stats.columns = ["q1", "median", "q3"]
    iqr = stats["q3"] - stats["q1"]
    lo, hi = stats["q1"] - 1.5 * iqr, stats["q3"] + 1.5 * iqr
    values = df[[*by, feature]].set_index(by)[feature]
    joined = values.to_frame("v").join(lo.rename("lo")).join(hi.rename("hi"))
    inside = joined[(joined["v"] >= joined["lo"]) & (joined["v"] <= joined["hi"])]["v"]
    stats["lowerfence"] = inside.groupby(level=by).min()
    stats["upperfence"] = inside.groupby(level=by).max()
    stats["n"] = g.size()
    return stats.reset_index()


def effect_sizes(df: pd.DataFrame, k: int, features: list[str]) -> pd.DataFrame:
    """Standardised mean difference (top-k minus all, in units of all nuclei's SD) per class and feature."""
    out = []
    for label, sub in df.groupby("label", sort=True):
        top = sub[sub["rank"] < k]
        base = sub[sub["sample"]]
        for f in features:
            sd = base[f].std()
            d = (top[f].mean() - base[f].mean()) / sd if sd and not math.isnan(sd) else np.nan
            out.append({"label": label, "feature": f, "d": d, "top_median": top[f].median(),
                        "all_median": base[f].median(), "n_top": len(top), "n_all": len(base)})
    return pd.DataFrame(out)


def topk_overlap(a: pd.DataFrame, b: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per image shared by two explanations: the Jaccard overlap of their top-k nuclei."""
    ta = a[a["rank"] < k].groupby("image_id")["nid"].apply(set)
    tb = b[b["rank"] < k].groupby("image_id")["nid"].apply(set)
    labels = a.drop_duplicates("image_id").set_index("image_id")["label"]
    rows = [
        {"image_id": i, "label": labels.get(i), "jaccard": len(ta[i] & tb[i]) / max(1, len(ta[i] | tb[i]))}
        for i in ta.index.intersection(tb.index)
    ]
    return pd.DataFrame(rows, columns=["image_id", "label", "jaccard"])


# --- console ----------------------------------------------------------------------------------------
@st.cache_data(ttl=TTL, show_spinner=False)
def console_read(_driver, uri: str, database: str, query: str, params_json: str, limit: int):
    """A read-only console query (refused by the server if it writes); errors are not cached."""
    from nucleograph.db.console import run_cypher

    return run_cypher(_driver, query, json.loads(params_json), database=database, limit=limit)


def nucleus_points(columns: list[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Nuclei found in console results: rows with ``image_id`` and ``x``/``y`` (or ``centroid_x/_y``)
    columns, or Nucleus nodes anywhere in a row. Empty when the results hold no positions."""
    pts = []
    xk = "x" if "x" in columns else "centroid_x" if "centroid_x" in columns else None
    yk = "y" if "y" in columns else "centroid_y" if "centroid_y" in columns else None
    if "image_id" in columns and xk and yk:
        pts = [{"image_id": r["image_id"], "nid": r.get("nid"), "x": r[xk], "y": r[yk]} for r in rows
               if isinstance(r.get(xk), (int, float)) and isinstance(r.get(yk), (int, float))]
    else:
        for r in rows:
            for v in r.values():
                for node in v if isinstance(v, list) else [v]:
                    if isinstance(node, dict) and "Nucleus" in node.get("_labels", []) and "centroid_x" in node:
                        pts.append({"image_id": node.get("image_id"), "nid": node.get("nid"),
                                    "x": node["centroid_x"], "y": node["centroid_y"]})
    return pd.DataFrame(pts, columns=["image_id", "nid", "x", "y"])


@st.cache_data(ttl=TTL_IMAGE, show_spinner=False)
def image_meta(_driver, uri: str, database: str, image_id: str) -> dict[str, Any] | None:
    rows = _read(_driver, q.IMAGE_BY_ID, database, image_id=image_id)
    return rows[0] if rows else None


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value
