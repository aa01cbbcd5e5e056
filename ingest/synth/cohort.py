"""A synthetic cohort on disk: tiles, masks, nucleus tables and the manifest that ingest reads."""

from __future__ import annotations

import multiprocessing as mp
import pathlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image

from nucleograph.ingest.synth.tasks import MANIFEST_COLUMNS, MPP, TASKS, check_task, resolve_size
from nucleograph.ingest.synth.tile import synthesize_image
from nucleograph.progress import progress as progress_bar

__all__ = ["image_seed", "synthesize_cohort"]


def image_seed(seed: int, task: str, label: str, k: int) -> np.random.SeedSequence:
    """The seed of tile ``k`` of class ``label`` in the cohort drawn with ``seed``.

    :func:`synthesize_cohort` draws that tile with ``np.random.default_rng(image_seed(...))``, so
    any tile can be redrawn alone (``bench/synth_sanity.py`` does).

    Parameters
    ----------
    seed : int
        The cohort seed.
    task, label : str
    k : int
        Index of the tile within its class.

    Returns
    -------
    numpy.random.SeedSequence
    """
    # stable across processes and Python versions, unlike hash()
    return np.random.SeedSequence([seed, sorted(TASKS).index(task), TASKS[task].index(label), k])


def check_cohort_args(task: str, n_per_class: int, seed: int) -> None:
    """Check a cohort's task, images per class and seed (:func:`synthesize_cohort`, ``synth --slide``).

    Raises
    ------
    ValueError
        An unknown task, ``n_per_class`` not an integer >= 1, or ``seed`` not a non-negative integer.
    """
    check_task(task)
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 1:
        raise ValueError(f"n_per_class must be an integer >= 1, got {n_per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _patient(task: str, label: str, k: int) -> str:
    # alternate patients with 3 and 2 images so grouped splits have something to group
    block, pos = divmod(k, 5)
    return f"{task}-{label}-P{2 * block + (pos >= 3):03d}"


def _write_tile(task: str, label: str, k: int, seed: int, size, out: pathlib.Path) -> dict:
    """Draw tile ``k`` of class ``label`` and write its image, mask and nucleus table under ``out``; returns
    its manifest row."""
    tile = synthesize_image(task, label, rng=np.random.default_rng(image_seed(seed, task, label, k)), size=size)
    stem = f"{task}_{label}_{k:04d}"
    paths = {
        "path": pathlib.Path("images", label, stem + ".png"),
        "mask": pathlib.Path("masks", label, stem + ".png"),
        "nuclei": pathlib.Path("nuclei", label, stem + ".csv"),
    }
    for rel in paths.values():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tile.image, mode="RGB").save(out / paths["path"])
    Image.fromarray(tile.mask.astype(np.uint16)).save(out / paths["mask"])
    tile.nuclei.to_csv(out / paths["nuclei"], index=False, float_format="%.3f", lineterminator="\n")
    return {
        "path": paths["path"].as_posix(),
        "label": label,
        "patient": _patient(task, label, k),
        "mpp": MPP,
        "mask": paths["mask"].as_posix(),
        "nuclei": paths["nuclei"].as_posix(),
        "task": task,
    }


def synthesize_cohort(
    task: str,
    *,
    n_per_class: int,
    out_dir,
    seed: int = 0,
    size: tuple[int, int] | None = None,
    progress: bool = False,
    workers: int = 1,
) -> pathlib.Path:
    """Write a synthetic cohort of ``n_per_class`` tiles per class and its manifest.

    Layout under ``out_dir``::

        images/<Label>/<task>_<Label>_<k>.png   RGB
        masks/<Label>/<same name>.png           16-bit instance labels (1..N)
        nuclei/<Label>/<same stem>.csv          nucleus_id, centroid_x, centroid_y, area, role
        manifest.csv                            path, label, patient, mpp, mask, nuclei, task

    Manifest paths are relative to ``out_dir``; each synthetic patient owns 2-3 consecutive
    tiles of one class. Every tile has its own seed derived from ``(seed, task, label, k)``, so
    the same arguments give byte-identical files and any subset can be regenerated alone.

    Parameters
    ----------
    task : {"breast", "prostate"}
    n_per_class : int
        Tiles per class, at least 1.
    out_dir : path-like
        Created if missing.
    seed : int
        Non-negative cohort seed.
    size : (width, height), optional
        See :func:`~nucleograph.ingest.synth.tile.synthesize_image`.
    progress : bool
        Show a progress bar.
    workers : int
        Processes drawing tiles side by side (each tile's files do not depend on it).

    Returns
    -------
    pathlib.Path
        Path of ``manifest.csv``.
    """
    check_cohort_args(task, n_per_class, seed)
    resolve_size(task, size)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    out = pathlib.Path(out_dir)
    jobs = [(task, label, k, seed, size, out) for label in TASKS[task] for k in range(n_per_class)]
    workers = min(int(workers), len(jobs))
    if workers == 1:
        rows = [_write_tile(*job) for job in progress_bar(jobs, desc=f"synth {task}", unit="image", enabled=progress)]
    else:
        # spawned, as ingest's workers: the tiles are pure numpy, but a caller may hold torch or threads
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            done = pool.map(_write_tile, *zip(*jobs, strict=True))  # in job order, so the manifest is the same
            rows = list(progress_bar(done, total=len(jobs), desc=f"synth {task}", unit="image", enabled=progress))
    manifest = out / "manifest.csv"
    pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)).to_csv(manifest, index=False, lineterminator="\n")
    return manifest
