"""The disk cache of a cohort's graphs, written and read by :func:`nucleograph.gnn.service.load_cohort`.

One version of a cohort is two files under ``home/cache``: ``graphs-V-<fingerprint>.bin`` (DGL's
format) and the ``.json`` beside it (labels, class names, image ids, groups, skipped images, and the
SHA-256 of the ``.bin``). Each is written to a temporary file and renamed, the JSON last, so a
reader sees either a matching pair or a checksum mismatch, never half a file it trusts.

A pair that cannot be trusted (truncated, garbled, half-written, edited) is not an error: it is
reported with a :class:`CacheWarning`, deleted, and the caller reads the database again (and
writes a fresh pair). DGL's loader does not notice every corruption (changed feature bytes load as
other numbers), hence the checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import dgl

#: Part of the file names: caches of another layout are never read (version 2 added the checksum).
CACHE_VERSION = 2
_META_KEYS = ("labels", "class_names", "image_ids", "groups", "skipped", "sha256")


class CacheWarning(UserWarning):
    """The graph cache on disk could not be used; it is rebuilt from Neo4j."""


def cache_paths(home: Path, version: str) -> tuple[Path, Path]:
    """The ``.bin`` (graphs) and ``.json`` (everything else) of a cohort version under ``home``."""
    graphs_file = Path(home) / "cache" / f"graphs-{CACHE_VERSION}-{version}.bin"
    return graphs_file, graphs_file.with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_pair(graphs_file: Path, meta_file: Path) -> tuple[list[dgl.DGLGraph], dict[str, Any]]:
    """The cached graphs and metadata; ValueError (or DGL's, or OS errors) when they cannot be trusted."""
    meta = json.loads(meta_file.read_text())
    if not isinstance(meta, dict) or any(key not in meta for key in _META_KEYS):
        raise ValueError(f"{meta_file.name} lacks some of {', '.join(_META_KEYS)}")
    if meta["sha256"] != _sha256(graphs_file):
        raise ValueError(f"{graphs_file.name} does not match the checksum in {meta_file.name}")
    graphs, _ = dgl.load_graphs(str(graphs_file))
    if not len(graphs) == len(meta["labels"]) == len(meta["image_ids"]) == len(meta["groups"]):
        raise ValueError(f"{graphs_file.name} holds {len(graphs)} graphs but {meta_file.name} "
                         f"{len(meta['labels'])} labels")
    return graphs, meta


def read_cache(home: Path, version: str) -> tuple[list[dgl.DGLGraph], dict[str, Any]] | None:
    """The cached graphs of a cohort version and their metadata, or None when there is no usable cache.

    Parameters
    ----------
    home : Path
        ``Settings.home``.
    version : str
        The cohort's content fingerprint.

    Returns
    -------
    (list of dgl.DGLGraph, dict) or None
        The dict holds ``labels, class_names, image_ids, groups, skipped``.

    Warns
    -----
    CacheWarning
        A cache exists but is corrupt or incomplete; its files are deleted so the next read rebuilds it.
    """
    graphs_file, meta_file = cache_paths(home, version)
    if not (graphs_file.exists() and meta_file.exists()):
        return None  # never written, or a writer is between its two files: it rewrites both
    try:
        return _read_pair(graphs_file, meta_file)
    except (OSError, ValueError, TypeError, dgl.DGLError) as exc:  # JSONDecodeError is a ValueError
        warnings.warn(f"the graph cache {graphs_file} is unusable ({type(exc).__name__}: {str(exc)[:200]}); "
                      "deleted it, reading the cohort from Neo4j again", CacheWarning, stacklevel=3)
        for path in (graphs_file, meta_file):
            path.unlink(missing_ok=True)
        return None


def _replace(path: Path, write) -> None:
    # a name of this process alone, so two trainers caching the same cohort never share a temporary file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_cache(home: Path, version: str, graphs: list[dgl.DGLGraph], meta: dict[str, Any]) -> None:
    """Write a cohort version's graphs and metadata (``labels, class_names, image_ids, groups, skipped``).

    The ``.bin`` is renamed into place first and the ``.json`` (with its checksum) last, so a crash in
    between leaves a ``.bin`` without its ``.json`` (or beside an older one): :func:`read_cache` does
    not use it, and the next write replaces it.
    """
    graphs_file, meta_file = cache_paths(home, version)
    graphs_file.parent.mkdir(parents=True, exist_ok=True)
    _replace(graphs_file, lambda tmp: dgl.save_graphs(str(tmp), graphs))
    full = {**meta, "sha256": _sha256(graphs_file)}
    _replace(meta_file, lambda tmp: tmp.write_text(json.dumps(full)))
