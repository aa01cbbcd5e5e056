"""The synthetic tasks: classes, tile sizes, roles, table columns, and the checks on them."""

from __future__ import annotations

__all__ = [
    "DEFAULT_SIZE",
    "MANIFEST_COLUMNS",
    "MIN_SIDE",
    "MPP",
    "NUCLEI_COLUMNS",
    "ROLES",
    "TASKS",
    "check_label",
    "check_task",
    "resolve_size",
]

TASKS: dict[str, tuple[str, str]] = {
    "breast": ("InSitu", "Invasive"),
    "prostate": ("Gleason3", "Gleason4"),
}
#: Default tile size per task as (width, height) in pixels.
DEFAULT_SIZE: dict[str, tuple[int, int]] = {"breast": (2048, 1536), "prostate": (1024, 1024)}
#: Microns per pixel written to the manifest (BACH's scale).
MPP = 0.42
#: Roles a nucleus can carry, per task.
ROLES: dict[str, tuple[str, ...]] = {
    "breast": (
        "duct_outer",
        "duct_inner",
        "lumen",
        "cord",
        "single_file",
        "cluster",
        "infiltrating",
        "stroma",
    ),
    "prostate": ("gland_boundary", "cribriform", "fused", "poorly_formed", "stroma"),
}
NUCLEI_COLUMNS = ("nucleus_id", "centroid_x", "centroid_y", "area", "role")
MANIFEST_COLUMNS = ("path", "label", "patient", "mpp", "mask", "nuclei", "task")
MIN_SIDE = 256


def check_task(task: str) -> None:
    """Raise unless ``task`` is one of :data:`TASKS`.

    Parameters
    ----------
    task : str

    Raises
    ------
    ValueError
        Unknown task; the message lists the known ones.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}")


def check_label(task: str, label: str) -> None:
    """Raise unless ``label`` is a class of ``task``.

    Parameters
    ----------
    task, label : str

    Raises
    ------
    ValueError
        Unknown task or label; the message lists the known ones.
    """
    check_task(task)
    if label not in TASKS[task]:
        raise ValueError(f"unknown label {label!r} for task {task!r}; choose one of {list(TASKS[task])}")


def resolve_size(task: str, size) -> tuple[int, int]:
    """The tile size to draw: ``size`` checked, or the task's :data:`DEFAULT_SIZE`.

    Parameters
    ----------
    task : str
    size : (width, height) or None

    Returns
    -------
    (width, height) : tuple of int

    Raises
    ------
    ValueError
        ``size`` is not a pair of ints, or a side is under :data:`MIN_SIDE` pixels.
    """
    if size is None:
        return DEFAULT_SIZE[task]
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be a (width, height) pair of ints, got {size!r}") from None
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"size {size!r} is too small; both width and height must be >= {MIN_SIDE} px")
    return width, height
