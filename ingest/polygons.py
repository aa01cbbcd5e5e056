"""A segmentation without its image: nuclei measured from their polygons alone, no pixels.

A manifest row (or a path given alone to ``nucleograph ingest``) whose ``path`` is a segmentation file
(:data:`~nucleograph.ingest.cohort.SEGMENTATION_EXTENSIONS`) is ingested as an image of its own:

* which format: ``.parquet``/``.geoparquet`` is GeoParquet; a ``.json``/``.geojson`` file is told apart by
  its content, as for sidecars (:func:`~nucleograph.ingest.importers.nuclei_format`: a top-level ``"nuc"``
  map is HoVer-Net, QuPath's object types make QuPath GeoJSON, anything else plain GeoJSON). A file with
  these extensions is a segmentation only where a row's ``path`` (or the command line) names it; inside a
  folder it is the nuclei of the image beside it (a sidecar), and label masks (.png, .tif) are always
  images, so no file is read both ways.
* its id is the content hash of the file; its size is the manifest's ``width`` and ``height`` when given
  (polygons beyond are clipped or skipped, as for an image), else the polygons' extent from (0, 0); its
  mpp is the manifest's. Coordinates are full-resolution pixels with the image's top-left corner at
  (0, 0) (QuPath's convention): a negative coordinate is refused. The segmentation's detector is
  ``import:<format>``.
* its nuclei get the morphology features (:data:`~nucleograph.ingest.features.MORPHOLOGY_COLUMNS`) with
  the definitions of detected nuclei: polygons are painted a tile at a time into label images of at most
  twice :data:`POLYGON_TILE` pixels a side and measured by :func:`~nucleograph.ingest.features.shape_features`
  (regionprops' definitions, vectorised), so memory does not grow with the slide (no full-slide raster).
* its stain and texture features (:data:`~nucleograph.ingest.features.PIXEL_COLUMNS`) are absent, not
  zero: its nuclei have no such property, and its Segmentation's ``feature_names`` (the order of every
  nucleus's ``features`` vector) lists the morphology features only. A cohort of such files trains on
  them; a cohort mixing them with images (whose vectors also hold stain and texture) is refused by
  :func:`nucleograph.gnn.service.load_cohort`, naming the images of each kind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely

from nucleograph.errors import InputError
from nucleograph.ingest.cohort import ImageRecord
from nucleograph.ingest.features import concat_features, shape_features
from nucleograph.ingest.importers import (
    POLYGON_TOLERANCE,
    ImportParams,
    clean_geometries,
    describe_notes,
    nuclei_format,
    read_nuclei,
)
from nucleograph.ingest.outlines import EDGE_OFFSET, compact_rings, rasterise

__all__ = ["POLYGON_TILE", "SegmentationParams", "import_segmentation", "polygon_features"]

#: Side (pixels) of the tiles polygons are painted in; a polygon wider or taller than this is not a nucleus.
POLYGON_TILE = 1024


@dataclass(frozen=True)
class SegmentationParams(ImportParams):
    """:class:`~nucleograph.ingest.importers.ImportParams` of a segmentation ingested without its image.

    Parameters
    ----------
    width, height : int or None
        The image's size in pixels when the manifest gives it; None: the polygons' extent. Part of
        :meth:`key` (they decide what is clipped).
    """

    width: int | None = None
    height: int | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.format == "mask":
            raise InputError(f"{self.nuclei}: a label mask cannot be ingested without its image; give the image as "
                             "the manifest's path and the mask in its nuclei column")

    @classmethod
    def for_record(cls, params, record: ImageRecord, *, sha: str) -> SegmentationParams:
        """The import of ``record.path`` (a segmentation file) with the edge options of ``params``.

        Parameters
        ----------
        params : IngestParams
        record : ImageRecord
            Its ``meta`` may hold the manifest's ``width`` and ``height`` (both or neither).
        sha : str
            The file's content hash.

        Returns
        -------
        SegmentationParams

        Raises
        ------
        InputError
            The row also names a nuclei file, or its width/height are not positive integers.
        """
        path = Path(record.path)
        meta = record.meta or {}
        if meta.get("nuclei"):
            raise InputError(f"{path}: the row's path is a segmentation (ingested without an image) but it also "
                             f"names the nuclei file {meta['nuclei']}: put the image in the path column, or empty the "
                             "nuclei column")
        width, height = (_pixels(path, name, meta.get(name)) for name in ("width", "height"))
        if (width is None) != (height is None):
            raise InputError(f"{path}: the manifest gives only one of width and height; give both (the image's size "
                             "in pixels) or neither (the polygons' extent is used)")
        return cls(format=nuclei_format(path), nuclei=str(path), nuclei_sha=sha, threshold=params.threshold,
                   threshold_unit=params.threshold_unit, slide_tile=params.slide_tile, width=width, height=height)


def _pixels(path: Path, name: str, value) -> int | None:
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and number >= 1 and number == int(number)):
        raise InputError(f"{path}: the manifest's {name} is {value!r}; give the image's {name} in pixels as a "
                         "positive integer, or leave it empty to use the polygons' extent")
    return int(number)


def polygon_features(geometries: Sequence, *, tile: int = POLYGON_TILE) -> dict[str, np.ndarray]:
    """Morphology of polygons without pixels, a tile at a time.

    Polygons are grouped by the tile (``tile`` pixels a side) holding their bounding box's top-left
    corner; each group is painted by :func:`~nucleograph.ingest.outlines.rasterise` into a label image
    just covering it and measured by :func:`~nucleograph.ingest.features.shape_features`. Where no two
    polygons of different tiles overlap, the result equals ``shape_features(rasterise(geometries, shape))``
    on the whole image, with one label image of at most ``(tile + s)`` pixels a side at a time (``s``:
    the largest polygon's extent).

    Parameters
    ----------
    geometries : sequence of shapely Polygon
        In :mod:`nucleograph.ingest.outlines` coordinates (pixel centres at integers). Where polygons
        of one tile overlap the later one wins, as in :func:`~nucleograph.ingest.outlines.rasterise`.
    tile : int, optional

    Returns
    -------
    features : dict of str to (M,) ndarray
        As :func:`~nucleograph.ingest.features.shape_features`, with ``nucleus_id`` the 1-based index of
        each polygon in ``geometries``, in increasing order; a polygon covering no pixel centre (smaller
        than a pixel, or hidden under a later one of its tile) has no row.

    Examples
    --------
    >>> import shapely
    >>> f = polygon_features([shapely.box(0, 0, 9, 4), shapely.Point(30, 30).buffer(6)])
    >>> f["nucleus_id"].tolist(), f["area"].tolist()
    ([1, 2], [50.0, 113.0])
    """
    geoms = np.asarray(geometries, dtype=object)
    if tile < 1:
        raise ValueError(f"tile must be a positive number of pixels; got {tile}")
    if not len(geoms):
        return shape_features(np.zeros((0, 0), np.int32))
    bounds = shapely.bounds(geoms)
    if not np.isfinite(bounds).all():
        raise ValueError("every geometry must be a non-empty polygon; drop empty ones and None first")
    corner = np.floor(bounds[:, :2] / tile).astype(np.int64)
    corner -= corner.min(axis=0)
    key = corner[:, 1] * (int(corner[:, 0].max()) + 1) + corner[:, 0]
    order = np.argsort(key, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(key[order]) != 0])
    parts = []
    for members in np.split(order, starts[1:]):
        x0, y0 = np.floor(bounds[members, :2].min(axis=0)).astype(np.int64)
        x1, y1 = np.ceil(bounds[members, 2:].max(axis=0)).astype(np.int64) + 1
        local = shapely.transform(geoms[members], lambda c, x0=x0, y0=y0: c - (x0, y0))
        feats = shape_features(rasterise(local, (int(y1 - y0), int(x1 - x0))))
        feats["nucleus_id"] = members[feats["nucleus_id"] - 1] + 1
        feats["centroid_x"] = feats["centroid_x"] + x0
        feats["centroid_y"] = feats["centroid_y"] + y0
        parts.append(feats)
    out = concat_features(parts)
    by_id = np.argsort(out["nucleus_id"], kind="stable")
    return {k: v[by_id] for k, v in out.items()}


def _extent(path: Path, parsed) -> tuple[int, int]:
    """The polygons' extent from (0, 0), in whole pixels; refuses negative coordinates."""
    bounds = shapely.bounds(np.asarray(parsed.geometries, dtype=object))
    bounds = bounds[np.isfinite(bounds).all(axis=1)]
    if not len(bounds):
        raise InputError(f"{path}: none of its {len(parsed.geometries)} objects has coordinates (every geometry is "
                         "empty or unreadable); export the nuclei again as polygons")
    lo, hi = bounds[:, :2].min(axis=0), bounds[:, 2:].max(axis=0)
    if (lo < 0).any():
        raise InputError(f"{path}: its polygons reach negative coordinates (x = {lo[0]:.1f}, y = {lo[1]:.1f}); "
                         "a segmentation without its image needs full-resolution pixel coordinates with the image's "
                         "top-left corner at (0, 0): export it again in those coordinates, or shift every polygon")
    grow = EDGE_OFFSET if parsed.pixel_centres else 0.0  # HoVer-Net contours grow by half a pixel
    return max(1, math.ceil(hi[0] + grow)), max(1, math.ceil(hi[1] + grow))


def import_segmentation(
    params: SegmentationParams, *, tile: int = POLYGON_TILE
) -> tuple[int, int, dict[str, np.ndarray], dict[str, int]]:
    """Nuclei of a segmentation file without its image: morphology only (see the module's docstring).

    Parameters
    ----------
    params : SegmentationParams
    tile : int, optional
        Tile side for :func:`polygon_features`; larger polygons are skipped (counted as ``too_large``).

    Returns
    -------
    width, height : int
        The manifest's, else the polygons' extent.
    nuclei : dict of str to ndarray
        ``nucleus_id`` (1..N), ``centroid_x``, ``centroid_y``, the morphology columns, ``outline``,
        ``source_id`` and, when the file has classes, ``type``; in the file's order.
    notes : dict of str to int
        Objects repaired, clipped or skipped, by reason (zeros left out).

    Raises
    ------
    InputError
        The file is empty, malformed or holds no usable polygon, or a coordinate is negative.
    """
    path = Path(params.nuclei)
    parsed = read_nuclei(path, params.format, without_image=True)
    if parsed.geometries is None:
        raise InputError(f"{path}: a label mask cannot be ingested without its image; give the image as the "
                         "manifest's path and the mask in its nuclei column")
    width, height = _extent(path, parsed)
    if params.width is not None:
        width, height = params.width, params.height
    geoms, kept, notes = clean_geometries(parsed, width=width, height=height)
    geoms = np.asarray(geoms, dtype=object)
    if len(geoms):
        bounds = shapely.bounds(geoms)
        small = ((bounds[:, 2:] - bounds[:, :2]) <= tile).all(axis=1)
        notes["too_large"] += int((~small).sum())
        geoms, kept = geoms[small], np.asarray(kept, dtype=np.int64)[small]
    feats = polygon_features(geoms, tile=tile)
    notes["empty"] += len(geoms) - len(feats["nucleus_id"])
    if not len(feats["nucleus_id"]):
        raise InputError(f"{path}: none of its {len(parsed.geometries)} objects is a usable nucleus "
                         f"({describe_notes(notes)}); export the nuclei again as polygons in full-resolution pixels")
    rows = feats["nucleus_id"] - 1
    source = [int(kept[j]) for j in rows]
    feats["outline"] = compact_rings([shapely.get_coordinates(geoms[j].exterior)[:-1] for j in rows],
                                     tolerance=POLYGON_TOLERANCE)
    feats["source_id"] = _objects([parsed.ids[i] if parsed.ids[i] is not None else str(i + 1) for i in source])
    if any(t is not None for t in parsed.types):
        feats["type"] = _objects([parsed.types[i] for i in source])
    feats["nucleus_id"] = np.arange(1, len(rows) + 1, dtype=np.int64)
    return width, height, feats, {k: int(v) for k, v in notes.items() if v}


def _objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out

