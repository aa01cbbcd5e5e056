"""What the dashboard pages read, cached: the driver once per server, query results for ``TTL`` seconds.

Pages call :func:`connect` once for a :class:`Reader` and pass it to the reads below; nothing here
draws and nothing here computes statistics (that is :mod:`nucleograph.dashboard.stats`). Every read is
declared with :func:`cached_read`, which keys Streamlit's cache on the server (Neo4j URI, database,
SQL URL) and the read's parameters, and passes the reader itself unhashed. Results are plain Python
values or DataFrames (what ``st.cache_data`` pickles). All Cypher lives in :mod:`nucleograph.db.queries`.
"""

from __future__ import annotations

import base64
import io
import json
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from nucleograph.config import Settings
from nucleograph.dashboard.viewport import tiles_for
from nucleograph.db import queries as q
from nucleograph.db import store
from nucleograph.db.console import run_cypher
from nucleograph.db.graphdb import GraphDB
from nucleograph.db.records import ModelRunRecord, ingest_records, mark_dead_runs, open_engine
from nucleograph.db.records import evaluations as evaluation_records
from nucleograph.db.runs import DEFAULT_METHOD, explanation_title
from nucleograph.errors import NucleographError
from nucleograph.ingest.readers import is_slide, open_slide, read_image, read_slide_tile

TTL = 60  # seconds a listing stays cached: new ingests and runs show up within a minute
TTL_IMAGE = 600  # one image's graph and pixels change only when it is re-ingested
DISPLAY_MAX_SIDE = 1200  # image pixels sent to the browser (nuclei keep full-resolution coordinates)
PATTERN_TOP_MAX = 50  # the pattern query keeps up to this many top nuclei per image; pages filter to k

T = TypeVar("T")


# --- connection -------------------------------------------------------------------------------------
@st.cache_resource(show_spinner=False)
def _graph_for(uri: str, user: str, database: str, _settings: Settings) -> GraphDB:
    return GraphDB.open(_settings)


@st.cache_resource(show_spinner=False)
def _engine_for(sql_url: str, _settings: Settings) -> Engine:
    return open_engine(_settings)


@dataclass(frozen=True)
class Reader:
    """The server the pages read: typed settings and the shared graph (one object, not three arguments).

    Attributes
    ----------
    settings : Settings
        Where Neo4j and the SQL records live; its URI, database and SQL URL key every cached read.
    db : GraphDB
        The driver and database, shared by all sessions of this server (``st.cache_resource``); its
        ``read`` runs a Cypher constant from :mod:`nucleograph.db.queries` in a READ transaction.
    """

    settings: Settings
    db: GraphDB

    @property
    def engine(self) -> Engine:
        """The SQL engine of the ingest and run records, shared like the driver."""
        return _engine_for(self.settings.sql_url, _settings=self.settings)


def connect() -> Reader:
    """The reader of the server the environment names; stops the page with the fix on failure.

    Returns
    -------
    Reader
        Settings from the environment and the driver shared by every session of this server.
    """
    try:
        settings = Settings.from_env()
        graph = _graph_for(settings.neo4j_uri, settings.neo4j_user, settings.neo4j_database, _settings=settings)
    except NucleographError as exc:
        st.error(f"Cannot reach the database: {exc}")
        st.stop()
    return Reader(settings, graph)


def cached_read(*, ttl: int = TTL) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Declare a read ``fn(reader, **params)`` whose result Streamlit caches for ``ttl`` seconds.

    The reader goes to ``st.cache_data`` as ``_reader`` (a leading underscore: not hashed, it holds the
    driver); the server's Neo4j URI, database and SQL URL go in as plain arguments, so two servers
    never share an entry. Call the read with keyword parameters: ``cohort_images(reader, cohort="x")``.

    Parameters
    ----------
    ttl : int
        Seconds a result stays cached.

    Returns
    -------
    callable
        A decorator; the decorated read has the cache's ``clear()``.
    """

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        def cached(_reader: Reader, uri: str, database: str, sql_url: str, **params: Any) -> T:
            return fn(_reader, **params)

        # Streamlit names a cache by the function's module, qualified name and source; this closure has
        # one source for every read, so it takes the read's own name to get a cache of its own
        # (nested functions of one name share a cache: streamlit issue 11157).
        cached.__module__, cached.__name__, cached.__qualname__ = fn.__module__, fn.__name__, fn.__qualname__
        store = st.cache_data(ttl=ttl, show_spinner=False)(cached)

        def read(reader: Reader, **params: Any) -> T:
            s = reader.settings
            # sorted: the cache key follows keyword order, and the same read should hit however it is called
            return store(reader, s.neo4j_uri, s.neo4j_database, s.sql_url, **dict(sorted(params.items())))

        read.__module__, read.__name__, read.__qualname__, read.__doc__ = (
            fn.__module__, fn.__name__, fn.__qualname__, fn.__doc__)
        read.clear = store.clear  # type: ignore[attr-defined]
        return read

    return decorate


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


# --- cohorts ----------------------------------------------------------------------------------------
@cached_read()
def cohorts(reader: Reader) -> list[dict[str, Any]]:
    """Every cohort with its task, image count and run count, by name."""
    return reader.db.read(q.DASH_COHORTS)


@cached_read()
def cohort_images(reader: Reader, *, cohort: str) -> pd.DataFrame:
    """The cohort's images with the summaries stored at ingest (one row per image) and the key of the
    segmentation the cohort holds for each (a nucleus's ``uid`` is ``f"{segmentation}:{nid}"``)."""
    cols = ["id", "path", "label", "patient", "width", "height", "detector", "n_nuclei", "n_edges", "ingested_at",
            "segmentation"]
    return pd.DataFrame(reader.db.read(q.DASH_COHORT_IMAGES, cohort=cohort), columns=cols)


@cached_read()
def ingest_log(reader: Reader, *, cohort: str) -> pd.DataFrame:
    """The cohort's ingest attempts as recorded in SQL, newest first."""
    rows = ingest_records(reader.engine, cohort=cohort)
    cols = ["created_at", "path", "image_id", "label", "status", "error", "detector", "nuclei", "edges", "seconds"]
    return pd.DataFrame(rows, columns=[*cols, "id"])[cols] if rows else pd.DataFrame(columns=cols)


# --- runs and explanations ---------------------------------------------------------------------------
@cached_read()
def runs(reader: Reader, *, cohort: str) -> list[dict[str, Any]]:
    """The cohort's finished runs (newest first) with metrics, history and params decoded from JSON."""
    out = []
    for r in reader.db.read(q.DASH_RUNS, cohort=cohort):
        run = dict(r["run"])
        for key in ("metrics", "history", "params"):
            run[key] = _json(run.get(key))
        out.append(run)
    return out


@cached_read()
def sql_runs(reader: Reader, *, cohort: str) -> pd.DataFrame:
    """Runs as recorded in SQL (also those still running or failed, which Neo4j does not hold); a run
    whose training process died (kill -9) is shown, and recorded, as interrupted."""
    mark_dead_runs(reader.engine, cohort=cohort)
    stmt = select(ModelRunRecord).where(ModelRunRecord.cohort == cohort).order_by(ModelRunRecord.created_at.desc())
    with Session(reader.engine) as session:
        rows = [
            {"id": r.id, "model": r.model, "status": r.status, "created_at": r.created_at, "error": r.error}
            for r in session.scalars(stmt)
        ]
    return pd.DataFrame(rows, columns=["id", "model", "status", "created_at", "error"])


@cached_read()
def explanations(reader: Reader, *, cohort: str) -> list[dict[str, Any]]:
    """The explanations of the cohort's runs (key, run, model, method, hops, score property, images):
    newest run first and, within a run, the default method (:data:`nucleograph.db.runs.DEFAULT_METHOD`)
    first, so the pages open at the newest run's default explanation."""
    rows = reader.db.read(q.DASH_EXPLANATIONS, cohort=cohort)
    run_rank: dict[str, int] = {}
    for row in rows:
        run_rank.setdefault(row["run_id"], len(run_rank))
    return sorted(rows, key=lambda r: (run_rank[r["run_id"]], r["method"] != DEFAULT_METHOD))


#: Columns of :func:`evaluations` besides one ``AUROC <role>`` column per ground-truth role.
EVALUATION_COLUMNS = ["evaluated", "explanation", "images", "deletion", "insertion", "sparsity", "ties", "stability",
                      "structure AUROC", "stability vs", "truth"]


@cached_read()
def evaluations(reader: Reader, *, run_id: str) -> pd.DataFrame:
    """The run's explanation evaluations recorded in SQL (``nucleograph evaluate``), newest first: overall
    means, and the AUROC of each ground-truth role above stroma as ``AUROC <role>`` columns."""
    rows = []
    for r in evaluation_records(reader.engine, run_id=run_id):
        summary = r["summary"] or {}
        roles = (summary.get("overall") or {}).get("role_auroc") or {}
        rows.append({
            "evaluated": str(r["created_at"])[:19], "explanation": explanation_title(r["method"], r["hops"], r["output"]),
            "images": r["n_images"], "deletion": r["deletion_ratio"], "insertion": r["insertion_ratio"],
            "sparsity": r["sparsity"], "ties": r["tie_share"], "stability": r["stability"],
            "structure AUROC": r["structure_auroc"], "stability vs": summary.get("stability_from"),
            "truth": summary.get("truth"), **{f"AUROC {role}": v.get("mean") for role, v in sorted(roles.items())},
        })
    return pd.DataFrame(rows).reindex(columns=list(dict.fromkeys(
        EVALUATION_COLUMNS + [c for r in rows for c in r if c.startswith("AUROC ")])))


@cached_read()
def run_predictions(reader: Reader, *, run_id: str) -> pd.DataFrame:
    """The run's stored prediction per image, with its split and fold."""
    rows = reader.db.read(q.DASH_RUN_PREDICTIONS, run_id=run_id)
    return pd.DataFrame(rows, columns=["image_id", "label", "pred", "prob", "split", "fold"])


@cached_read()
def image_prediction(reader: Reader, *, run_id: str, image_id: str) -> dict[str, Any] | None:
    """The run's prediction for one image (class probabilities included), or None."""
    return reader.db.read_one(q.DASH_IMAGE_PREDICTION, run_id=run_id, image_id=image_id)


# --- one image --------------------------------------------------------------------------------------
@cached_read(ttl=TTL_IMAGE)
def image_graph(reader: Reader, *, cohort: str, image_id: str, prop: str | None) -> dict[str, Any] | None:
    """One image's nuclei in ``cohort`` (DataFrame ``nid, x, y, area, score``), edges as row-index
    arrays, metadata (with ``segmentation``, the key that nucleus uids start with)."""
    r = reader.db.read_one(q.DASH_IMAGE_GRAPH, cohort=cohort, image_id=image_id, property=prop)
    if r is None:
        return None
    table = np.asarray([[np.nan if v is None else v for v in row] for row in r["nuclei"]], dtype=float).reshape(-1, 5)
    nuclei = pd.DataFrame(table, columns=["nid", "x", "y", "area", "score"]).astype({"nid": np.int64})
    index = pd.Series(np.arange(len(nuclei)), index=nuclei["nid"].to_numpy())
    src = index.reindex(np.asarray(r["src"], dtype=np.int64)).to_numpy()
    dst = index.reindex(np.asarray(r["dst"], dtype=np.int64)).to_numpy()
    meta = {k: r[k] for k in ("id", "path", "label", "patient", "width", "height", "detector", "n_nuclei", "n_edges",
                              "segmentation")}
    return {"meta": meta, "nuclei": nuclei, "src": src, "dst": dst}


@cached_read(ttl=TTL_IMAGE)
def image_meta(reader: Reader, *, image_id: str, cohort: str | None = None) -> dict[str, Any] | None:
    """One image's properties (path, label, ... as ``cohort`` holds it, or its first cohort), or None."""
    return reader.db.read_one(q.IMAGE_BY_ID, image_id=image_id, cohort=cohort)


@st.cache_data(ttl=TTL_IMAGE, show_spinner=False, max_entries=64)
def image_source(path: str, max_side: int = DISPLAY_MAX_SIDE) -> tuple[str | None, str | None]:
    """The image as a JPEG data URI at most ``max_side`` pixels wide, or (None, why) if it is unreadable.

    JPEG, not PNG: Plotly would PNG-encode a PIL image on every draw, which takes seconds for a
    2048 x 1536 tile; a cached JPEG string is sent as it is.

    Parameters
    ----------
    path : str
        The image file (as stored on the Image node).
    max_side : int
        The longest side sent to the browser.

    Returns
    -------
    (str or None, str or None)
        The data URI and None, or None and why the pixels could not be read.
    """
    try:
        with Image.open(path) as im:
            im.draft("RGB", (max_side, max_side))  # JPEG decodes at a reduced scale directly
            rgb = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        try:
            rgb = Image.fromarray(read_image(path))  # TIFF variants, 16-bit, and a clear message otherwise
        except NucleographError as exc:
            return None, str(exc)
    rgb.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), None


@cached_read()
def nucleus(reader: Reader, *, uid: str, prop: str | None) -> dict[str, Any] | None:
    """One nucleus: its properties (importance scores left out), its score under ``prop`` and degree."""
    out = reader.db.read_one(q.DASH_NUCLEUS, uid=uid, property=prop)
    if out is None:
        return None
    out["props"] = {k: v for k, v in (out["props"] or {}).items() if v is not None and not k.startswith("imp_")}
    return out


@cached_read()
def neighbours(reader: Reader, *, uid: str, prop: str | None) -> pd.DataFrame:
    """A nucleus's NEAR neighbours, nearest first, with distance, weight, size, stain and score."""
    rows = reader.db.read(q.DASH_NEIGHBOURS, uid=uid, property=prop)
    return pd.DataFrame(rows, columns=["nid", "dist", "weight", "area", "hematoxylin", "score"])


# How the pages show :func:`neighbours`' measured columns (``st.dataframe(..., column_config=...)``).
NEIGHBOUR_COLUMNS = {c: st.column_config.NumberColumn(format="%.3g")
                     for c in ("dist", "weight", "area", "hematoxylin", "score")}


# --- slides -----------------------------------------------------------------------------------------
class _Slide:
    """An open slide (or a plain image held in memory, as one level) shared by every session of the
    server. A tiffslide handle is not documented as thread-safe, so each read takes a handle of its own
    from a pool of up to :data:`SLIDE_READERS` (JPEG decoding releases the GIL: tiles read side by side).
    Decoded tiles go to the server's tile LRU (:data:`TILE_CACHE` tiles of all slides)."""

    def __init__(self, path: str):
        self.path = path
        self.lock, self.idle, self.opened = threading.Lock(), queue.SimpleQueue(), 0
        if is_slide(path):
            self.slide, self.pixels = open_slide(path), None
            self.idle.put(self.slide)
            self.opened = 1
            self.dimensions = [tuple(map(int, d)) for d in self.slide.level_dimensions]
            self.downsamples = [float(d) for d in self.slide.level_downsamples]
        else:
            self.slide, self.pixels = None, read_image(path)
            self.dimensions = [(int(self.pixels.shape[1]), int(self.pixels.shape[0]))]
            self.downsamples = [1.0]

    def _handle(self):
        with self.lock:
            if self.idle.empty() and self.opened < SLIDE_READERS:
                self.opened += 1
                return open_slide(self.path)
        return self.idle.get()  # waits for a handle another read is using

    def region(self, x0: int, y0: int, w: int, h: int, level: int) -> np.ndarray:
        """``w`` x ``h`` pixels of ``level`` from its pixel (x0, y0) (level pixels)."""
        if self.pixels is not None:
            return self.pixels[y0:y0 + h, x0:x0 + w]
        handle = self._handle()
        try:
            return read_slide_tile(self.path, x0, y0, w, h, level=level, slide=handle)
        finally:
            self.idle.put(handle)

    def close(self) -> None:
        """Close the slide's handles (a server keeps them open while the slide is cached)."""
        with self.lock:
            while not self.idle.empty():
                self.idle.get().close()
                self.opened -= 1

    def tile(self, level: int, col: int, row: int, tile: int) -> np.ndarray:
        """One ``tile``-px tile (column ``col``, row ``row``) of a pyramid level, as RGB, from the LRU or
        read; edge tiles are smaller."""
        key = (self.path, level, col, row, tile)
        with _TILES_LOCK:
            if key in _TILES:
                _TILES.move_to_end(key)
                return _TILES[key]
        w, h = self.dimensions[level]
        x0, y0 = col * tile, row * tile
        pixels = np.ascontiguousarray(self.region(x0, y0, min(tile, w - x0), min(tile, h - y0), level))
        with _TILES_LOCK:
            _TILES[key] = pixels
            while len(_TILES) > TILE_CACHE:
                _TILES.popitem(last=False)
        return pixels

    def tiles_of(self, level: int, keys: list[tuple[int, int]], tile: int) -> list[np.ndarray]:
        """The tiles ``keys`` ((column, row) pairs) of a level, in order; those not cached read side by side."""
        if self.pixels is not None or len(keys) < 2:
            return [self.tile(level, c, r, tile) for c, r in keys]
        return list(_READ_POOL.map(lambda key: self.tile(level, key[0], key[1], tile), keys))


# Tiles are the unit of the cache (deep zoom): a pan re-reads only the tiles it uncovers. Kept as arrays,
# shared by all slides and sessions, at most 256 of them (~200 MB of 512-px RGB tiles), least recently used
# dropped first; keyed by (path, level, column, row, tile side).
TILE_CACHE = 256
_TILES: OrderedDict[tuple[str, int, int, int, int], np.ndarray] = OrderedDict()
_TILES_LOCK = threading.Lock()
SLIDE_READERS = 2  # handles per slide, and threads reading tiles (the machine's 2 cores)
_READ_POOL = ThreadPoolExecutor(max_workers=SLIDE_READERS, thread_name_prefix="slide-tiles")


@st.cache_resource(show_spinner=False, max_entries=16)
def _slide(path: str) -> _Slide:
    return _Slide(path)


def slide_levels(path: str) -> tuple[list[tuple[int, int]] | None, list[float] | str]:
    """The slide's level sizes and downsamples (a plain image: one level), or (None, why) if unreadable."""
    try:
        src = _slide(path)
    except NucleographError as exc:
        return None, str(exc)
    return src.dimensions, src.downsamples


@st.cache_data(ttl=TTL_IMAGE, show_spinner=False, max_entries=64)
def viewport_image(path: str, bounds: tuple[float, float, float, float], level: int, out_width: int,
                   tile: int) -> str:
    """The viewport's pixels as a JPEG data URI ``out_width`` pixels wide: the level's tiles that cover
    it (:meth:`_Slide.tiles_of`), cropped and resized. Its size is set by ``out_width``, not by the slide."""
    src = _slide(path)
    down, (lw, lh) = src.downsamples[level], src.dimensions[level]
    x0, y0, x1, y1 = (v / down for v in bounds)
    keys = tiles_for(bounds, down, (lw, lh), tile=tile)
    out_height = max(1, round(out_width * (y1 - y0) / (x1 - x0)))
    canvas = Image.new("RGB", (out_width, out_height), (255, 255, 255))  # a view beside the slide: white
    if keys:
        c0, r0 = min(c for c, _ in keys), min(r for _, r in keys)
        c1, r1 = max(c for c, _ in keys), max(r for _, r in keys)
        mosaic = np.full(((r1 - r0 + 1) * tile, (c1 - c0 + 1) * tile, 3), 255, np.uint8)
        for (c, r), t in zip(keys, src.tiles_of(level, keys, tile), strict=True):
            mosaic[(r - r0) * tile:(r - r0) * tile + t.shape[0], (c - c0) * tile:(c - c0) * tile + t.shape[1]] = t
        ox, oy = c0 * tile, r0 * tile  # the mosaic's corner in level pixels
        # the viewport's box in mosaic pixels; parts outside the slide stay white
        box = (x0 - ox, y0 - oy, x1 - ox, y1 - oy)
        canvas = Image.fromarray(mosaic).transform((out_width, out_height), Image.Transform.EXTENT, box,
                                                   resample=Image.Resampling.BILINEAR, fillcolor=(255, 255, 255))
    buf = io.BytesIO()
    canvas.save(buf, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@cached_read(ttl=TTL_IMAGE)
def nucleus_grid(reader: Reader, *, cohort: str, image_id: str, prop: str | None, cell: int) -> dict[str, Any] | None:
    """The image's nuclei and score sums per ``cell``-px cell (:func:`nucleograph.db.store.nucleus_grid`),
    read once per image and score property; the slide viewer aggregates every zoomed-out view from it."""
    return store.nucleus_grid(reader.db, cohort, image_id, cell=cell, score_property=prop)


@cached_read(ttl=TTL_IMAGE)
def score_scale(reader: Reader, *, cohort: str, image_id: str, prop: str) -> float | None:
    """The 99th percentile of |score| over the image's nuclei: one colour scale for all its viewports."""
    return store.score_scale(reader.db, cohort, image_id, prop)


@cached_read(ttl=TTL_IMAGE)
def score_quantiles(reader: Reader, *, cohort: str, image_id: str, prop: str) -> np.ndarray | None:
    """1,001 evenly spaced quantiles of the image's scores: one rank scale for all its viewports."""
    return store.score_quantiles(reader.db, cohort, image_id, prop)


@cached_read()
def viewport_nuclei(reader: Reader, *, cohort: str, image_id: str, prop: str | None,
                    bounds: tuple[float, float, float, float], limit: int) -> pd.DataFrame:
    """At most ``limit`` nuclei in the viewport ``bounds`` (point index): ``nid, x, y, area, score``."""
    return pd.DataFrame(store.viewport_nuclei(reader.db, cohort, image_id, *bounds, score_property=prop, limit=limit))


# --- cohort patterns --------------------------------------------------------------------------------
@cached_read()
def patterns(reader: Reader, *, cohort: str, key: str, per_image: int = 100) -> pd.DataFrame:
    """Ranked nuclei of every explained image: the top ``PATTERN_TOP_MAX`` plus an even sample.

    One row per kept nucleus with ``rank`` (0 = most important), ``percentile`` (1 = most important),
    ``sample`` (True for the systematic sample that stands for all nuclei) and its features.
    """
    rows = reader.db.read(q.DASH_PATTERNS, cohort=cohort, key=key, k=PATTERN_TOP_MAX, per_image=per_image,
                       nan=float("nan"))
    cols = list(q.PATTERN_COLUMNS)
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


# --- console ----------------------------------------------------------------------------------------
@cached_read()
def console_read(reader: Reader, *, query: str, params_json: str, limit: int):
    """A read-only console query (refused by the server if it writes); errors are not cached."""
    return run_cypher(reader.db, query, json.loads(params_json), limit=limit)
