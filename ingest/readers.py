"""Read the pixels of H&E images and whole slides (cohort discovery: :mod:`nucleograph.ingest.cohort`).

Every error a user can cause with an input file is an :class:`nucleograph.errors.InputError`
whose message names the file and says what to do.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from nucleograph.errors import InputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "MIN_SIDE",
    "SLIDE_EXTENSIONS",
    "is_slide",
    "iter_slide_tiles",
    "open_slide",
    "read_image",
    "read_slide_region",
    "read_slide_tile",
    "slide_info",
    "slide_level_for",
    "slide_tile_grid",
    "to_rgb8",
]

#: Largest image :func:`read_image` decodes by default: 2**25 pixels (5,793 x 5,793, 101 MB as RGB).
#: Set by memory, not by decoding (``bench/bench_memory.py``, bench/RESULTS.md): an ingest worker
#: peaks at about 43 MB per megapixel on top of 0.6 GB, watershed and U-Net alike, so
#: ``--workers 2`` at this size peaked at 3.9 GB in all (at 2**26: 6.7 GB); and Neo4j writes an
#: image's graph in one transaction, which at 2**26 pixels (34,000 nuclei, 390,000 edges) outgrew
#: the local server's default 1 GB heap. Larger images are whole slides: read them tile by tile
#: with :func:`iter_slide_tiles` (or save them as tiled TIFFs), or pass ``max_pixels=`` explicitly.
DEFAULT_MAX_PIXELS = 2**25
#: Smallest accepted side in pixels; a nucleus is about 10-20 px wide at 20x.
MIN_SIDE = 32
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
SLIDE_EXTENSIONS = frozenset({".svs", ".ndpi", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide"})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


# ----------------------------------------------------------------------------- pixels


def to_rgb8(array: np.ndarray, *, name: str = "image") -> np.ndarray:
    """Convert a decoded image array to (H, W, 3) uint8 RGB.

    Grayscale is replicated to three channels; an alpha channel is composited on white;
    16-bit (and other integer) images are scaled from their dtype's full range; float
    images are taken as [0, 1] when their maximum is at most 1, else as [0, 255].

    Parameters
    ----------
    array : ndarray
        Shape (H, W), (H, W, 1), (H, W, 2) (gray + alpha), (H, W, 3) or (H, W, 4).
    name : str, optional
        What to call the array in error messages (usually the file name).

    Returns
    -------
    rgb : (H, W, 3) uint8 ndarray
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4):
        raise InputError(
            f"{name}: unsupported image shape {np.asarray(array).shape}; expected (H, W), (H, W, 3) "
            "or (H, W, 4). Save it as an RGB PNG or TIFF."
        )
    if a.dtype == np.uint8 and (a.shape[-1] == 3 or (a.shape[-1] == 4 and (a[..., 3] == 255).all())):
        # what decoders mostly give (JPEG, PNG, slide tiles): already RGB8, or opaque RGBA; only copied
        # (a decoder's array may be read-only), not converted through float (~9 ms per megapixel)
        return np.array(a[..., :3], order="C")
    a = _scale_to_unit(a, name=name)  # float32 in [0, 1]
    channels = a.shape[-1]
    if channels in (2, 4):
        color, alpha = a[..., :-1], a[..., -1:]
        a = color * alpha + (1.0 - alpha)  # composite on white: background reads as glass
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.rint(a * 255.0).astype(np.uint8)


def _scale_to_unit(a: np.ndarray, *, name: str) -> np.ndarray:
    if a.dtype == np.bool_:
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        if info.min < 0:
            a = np.clip(a, 0, None)
        return (a.astype(np.float32) / np.float32(info.max)).clip(0.0, 1.0)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise InputError(f"{name}: image contains NaN or infinite values; re-export it as 8-bit RGB.")
        a = a.astype(np.float32)
        top = float(a.max()) if a.size else 0.0
        return (a if top <= 1.0 else a / 255.0).clip(0.0, 1.0)
    raise InputError(f"{name}: unsupported pixel type {a.dtype}; re-export it as 8-bit RGB.")


# ----------------------------------------------------------------------------- files


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(
            f"{path}: no such file; check the path (relative paths are resolved from {Path.cwd()})."
        )
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image; use nucleograph.ingest.cohort.discover() for folders.")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes); re-copy or re-export the image.")


def _is_tiff(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


def _too_large(path: Path, size: str, pixels: int, max_pixels: int) -> InputError:
    return InputError(
        f"{path}: {size} pixels exceeds max_pixels={max_pixels} ({pixels / 1e6:.1f} megapixels; one image "
        f"may have at most {max_pixels:,} pixels, so that two ingest workers fit in 8 GB of memory and its "
        "graph in one Neo4j transaction). Cut it "
        "into tiles (e.g. 4096x4096) and ingest those, or save it as a tiled TIFF (`vips tiffsave IN OUT.tif "
        "--tile --pyramid`) or keep it as a slide (.svs, .ndpi): ingest reads those tile by tile. From Python, "
        "read slides with ingest.readers.iter_slide_tiles(), or pass read_image(..., max_pixels=N) with a "
        "larger N if you trust the file and have the memory."
    )


def _check_size(path: Path, height: int, width: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise _too_large(path, f"{width}x{height}", height * width, max_pixels)
    if min(height, width) < MIN_SIDE:
        raise InputError(
            f"{path}: image is too small ({width}x{height} pixels); nucleograph needs at least "
            f"{MIN_SIDE}x{MIN_SIDE}. Check that this is the image and not a thumbnail or icon."
        )


def read_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a PNG, JPEG, BMP or TIFF file as (H, W, 3) uint8 RGB.

    The format is taken from the file's content, not its extension. Grayscale becomes RGB,
    RGBA is composited on white and 16-bit images are scaled to 8 bits (see :func:`to_rgb8`).

    Parameters
    ----------
    path : str or Path
        Image file.
    max_pixels : int or None, optional
        Refuse images with more pixels than this before decoding them (decompression-bomb
        guard). ``None`` disables the check for TIFF; PNG/JPEG above Pillow's own limit
        (``PIL.Image.MAX_IMAGE_PIXELS`` x 2) are always refused.

    Returns
    -------
    image : (H, W, 3) uint8 ndarray

    Raises
    ------
    nucleograph.errors.InputError
        Missing, empty, unreadable or truncated file; too many pixels; smaller than 32x32.
    """
    path = Path(path)
    _check_file(path)
    if _is_tiff(path):
        array = _read_tiff(path, max_pixels)
    else:
        array = _read_pil(path, max_pixels)
    return to_rgb8(array, name=str(path))


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            height, width = shape[axes.index("Y")], shape[axes.index("X")]
            _check_size(path, height, width, max_pixels)
            array = series.asarray()
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types for broken files
        raise InputError(
            f"{path}: cannot decode TIFF ({type(exc).__name__}: {exc}); the file is truncated or "
            "corrupt. Re-copy or re-export it."
        ) from exc
    # Keep the first plane of any extra leading dimension (pages, time, z); bring samples last.
    # A channel axis 'C' of 3-4 planes (e.g. ImageJ stacks) is colour, like tifffile's 'S'.
    colour = "S" if "S" in axes else ("C" if "C" in axes and shape[axes.index("C")] in (3, 4) else "")
    keep = [ax for ax in axes if ax in "YX" or ax == colour]
    index = tuple(slice(None) if ax in keep else 0 for ax in axes)
    array = array[index]
    if colour and keep.index(colour) != len(keep) - 1:
        array = np.moveaxis(array, keep.index(colour), -1)
    return array


def _read_pil(path: Path, max_pixels: int | None) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # We enforce our own max_pixels below; Pillow's warning would duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                _check_size(path, height, width, max_pixels)
                im.load()
                return _pil_to_array(im)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses this before we see the size (above 2x its MAX_IMAGE_PIXELS); its message has the count
        found = re.search(r"\((\d+) pixels\)", str(exc))
        if found and max_pixels is not None:
            raise _too_large(path, f"{int(found.group(1)):,}", int(found.group(1)), max_pixels) from exc
        raise InputError(
            f"{path}: {exc}. Convert it to a tiled pyramidal TIFF and read it with "
            "nucleograph.ingest.readers.iter_slide_tiles()."
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise InputError(
            f"{path}: not a readable image (supported: PNG, JPEG, BMP, TIFF; whole slides via "
            "iter_slide_tiles). Check the file type or re-export it."
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(
            f"{path}: cannot decode image ({exc}); the file is truncated or corrupt. Re-copy or re-export it."
        ) from exc


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    elif mode == "I":
        # 32-bit integer container, used by Pillow for 16-bit PNG; values are 16-bit.
        a = np.asarray(im)
        return (
            a.clip(0, 65535).astype(np.uint16) if a.max(initial=0) > 255 else a.clip(0, 255).astype(np.uint8)
        )
    return np.asarray(im)


# ----------------------------------------------------------------------------- slides


def is_slide(path: str | Path) -> bool:
    """True for whole-slide files: a slide extension (.svs, .ndpi, ...) or a tiled pyramidal TIFF.

    A plain TIFF such as a BACH 2048x1536 image is not a slide; read it with :func:`read_image`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_EXTENSIONS:
        return True
    if suffix not in (".tif", ".tiff") or not path.is_file() or path.stat().st_size == 0:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            series = tif.series[0]
            return bool(page.is_tiled) and (
                len(series.levels) > 1 or page.shape[0] * page.shape[1] > DEFAULT_MAX_PIXELS
            )
    except Exception:  # unreadable files are reported by read_image, which callers try next
        return False


def _open_slide(path: Path):
    _check_file(path)
    try:
        import tiffslide

        return tiffslide.TiffSlide(path)
    except Exception as tiff_exc:
        try:
            import openslide  # needs the libopenslide shared library

            return openslide.OpenSlide(str(path))
        except Exception:
            raise InputError(
                f"{path}: cannot open as a whole slide ({type(tiff_exc).__name__}: {tiff_exc}). "
                "tiffslide reads SVS and pyramidal TIFF; for other formats install OpenSlide "
                "(`pip install openslide-bin`)."
            ) from tiff_exc


def slide_info(path: str | Path) -> dict:
    """Level sizes and microns per pixel of a whole slide.

    Returns
    -------
    info : dict
        ``level_dimensions`` (list of (width, height)), ``level_downsamples`` (list of float)
        and ``mpp`` (float or None, microns per pixel at level 0).
    """
    path = Path(path)
    slide = _open_slide(path)
    try:
        props = slide.properties
        mpp = props.get("tiffslide.mpp-x") or props.get("openslide.mpp-x")
        return {
            "level_dimensions": [tuple(map(int, d)) for d in slide.level_dimensions],
            "level_downsamples": [float(d) for d in slide.level_downsamples],
            "mpp": float(mpp) if mpp not in (None, "") else None,
        }
    finally:
        slide.close()


def slide_tile_grid(
    width: int, height: int, *, tile: int = 2048, overlap: int = 0, max_tiles: int | None = None
) -> list[tuple[int, int, int, int]]:
    """The tiles that cover a ``width`` x ``height`` slide level, row by row (what :func:`iter_slide_tiles`
    reads, and what a Dask ingest sends out as one task per tile).

    Parameters
    ----------
    width, height : int
        The level's size in pixels.
    tile, overlap, max_tiles
        As for :func:`iter_slide_tiles`.

    Returns
    -------
    list of (x0, y0, w, h)
        Top-left corners and sizes in level pixels; edge tiles are smaller than ``tile``.

    Raises
    ------
    ValueError
        ``tile`` below :data:`MIN_SIDE`, ``overlap`` outside ``[0, tile)`` or ``max_tiles`` below 1.
    """
    if tile < MIN_SIDE:
        raise ValueError(f"tile must be at least {MIN_SIDE} pixels; got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile); got overlap={overlap}, tile={tile}")
    if max_tiles is not None and max_tiles < 1:
        raise ValueError(f"max_tiles must be a positive integer or None; got {max_tiles}")
    step = tile - overlap
    grid: list[tuple[int, int, int, int]] = []
    for y0 in range(0, height, step):
        for x0 in range(0, width, step):
            grid.append((x0, y0, min(tile, width - x0), min(tile, height - y0)))
            if max_tiles is not None and len(grid) >= max_tiles:
                return grid
            if x0 + tile >= width:
                break
        if y0 + tile >= height:
            break
    return grid


def _check_level(slide, path: Path, level: int) -> None:
    if not 0 <= level < slide.level_count:
        raise ValueError(f"level must be in [0, {slide.level_count}) for {path}; got {level}")


def _read_tile(slide, path: Path, x0: int, y0: int, w: int, h: int, level: int) -> np.ndarray:
    down = float(slide.level_downsamples[level])
    region = slide.read_region((int(round(x0 * down)), int(round(y0 * down))), level, (w, h))
    return to_rgb8(np.asarray(region), name=str(path))


def read_slide_tile(path: str | Path, x0: int, y0: int, w: int, h: int, *, level: int = 0, slide=None) -> np.ndarray:
    """One tile of a whole slide (a tile of :func:`slide_tile_grid`), read on its own: the slide is
    opened and closed around it, so that tiles can be read by different processes or machines.

    Parameters
    ----------
    path : str or Path
    x0, y0, w, h : int
        The tile's top-left corner and size in ``level`` pixels.
    level : int, optional
        Pyramid level; 0 is full resolution.
    slide : optional
        The slide already opened (:func:`open_slide`), kept open; default: opened and closed here.

    Returns
    -------
    (h, w, 3) uint8 ndarray
        RGB pixels, composited on white.
    """
    path = Path(path)
    own = slide is None
    slide = _open_slide(path) if own else slide
    try:
        _check_level(slide, path, level)
        return _read_tile(slide, path, x0, y0, w, h, level)
    finally:
        if own:
            slide.close()


def iter_slide_tiles(
    path: str | Path,
    *,
    tile: int = 2048,
    overlap: int = 0,
    level: int = 0,
    max_tiles: int | None = None,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Read a whole slide as a grid of RGB tiles, row by row (the slide open once for all of them).

    Parameters
    ----------
    path : str or Path
        SVS, pyramidal TIFF or another format tiffslide (or OpenSlide, if installed) reads.
    tile : int, optional
        Tile side in pixels at ``level``.
    overlap : int, optional
        Pixels each tile shares with its right and lower neighbours (tiles step by
        ``tile - overlap``), so objects on a border appear whole in one of them.
    level : int, optional
        Pyramid level; 0 is full resolution.
    max_tiles : int or None, optional
        Stop after this many tiles.

    Yields
    ------
    x0, y0 : int
        Top-left corner of the tile in ``level`` pixel coordinates; add them to tile
        coordinates to get slide coordinates.
    tile : (h, w, 3) uint8 ndarray
        RGB pixels, composited on white; edge tiles are smaller than ``tile``.
    """
    slide_tile_grid(MIN_SIDE, MIN_SIDE, tile=tile, overlap=overlap, max_tiles=max_tiles)  # the arguments, first
    path = Path(path)
    slide = _open_slide(path)
    try:
        _check_level(slide, path, level)
        width, height = slide.level_dimensions[level]
        for x0, y0, w, h in slide_tile_grid(width, height, tile=tile, overlap=overlap, max_tiles=max_tiles):
            yield x0, y0, _read_tile(slide, path, x0, y0, w, h, level)
    finally:
        slide.close()


def open_slide(path: str | Path):
    """A whole slide opened for many reads (tiffslide; OpenSlide where tiffslide cannot read it).

    The caller closes it (``slide.close()``). For one read, :func:`read_slide_tile` and
    :func:`read_slide_region` open and close the slide themselves.

    Raises
    ------
    InputError
        The file is missing, empty, or neither library reads it (the message names the fix).
    """
    return _open_slide(Path(path))


def slide_level_for(downsamples, scale: float) -> int:
    """The pyramid level to read for ``scale`` level-0 pixels per output pixel: the coarsest whose
    downsample is at most ``scale`` (so no level is magnified), level 0 below 1.

    Parameters
    ----------
    downsamples : sequence of float
        Each level's downsample, level 0 (1.0) first, as ``slide.level_downsamples``.
    scale : float
        Level-0 pixels per output pixel (e.g. a viewport's width over the screen's).

    Returns
    -------
    int
    """
    best = 0
    for level, down in enumerate(downsamples):
        if float(down) <= scale * (1 + 1e-9):
            best = level
    return best


def read_slide_region(
    path: str | Path, window: tuple[float, float, float, float], *, level: int = 0,
    max_pixels: int | None = DEFAULT_MAX_PIXELS, slide=None,
) -> np.ndarray:
    """A window of a whole slide read at a pyramid level.

    Parameters
    ----------
    path : str or Path
        The slide (SVS, pyramidal TIFF, ...); named in errors.
    window : (x0, y0, x1, y1)
        The window in level-0 pixels (``x1``, ``y1`` exclusive); clipped to the slide.
    level : int
        The pyramid level to read (0: full resolution).
    max_pixels : int or None
        The most pixels returned; None for no limit.
    slide : optional
        The slide already opened (:func:`open_slide`), kept open; default: opened and closed here.

    Returns
    -------
    (h, w, 3) uint8 ndarray
        RGB on white, ``w = ceil((x1 - x0) / downsample)`` and likewise ``h`` (after clipping).

    Raises
    ------
    InputError
        A level the slide lacks, a window outside it, or an output above ``max_pixels`` (the message
        names a level or window that fits).

    Examples
    --------
    >>> thumb = read_slide_region("s.tif", (0, 0, 40000, 30000), level=3)  # doctest: +SKIP
    >>> thumb.shape  # doctest: +SKIP
    (469, 625, 3)
    """
    path = Path(path)
    own = slide is None
    slide = _open_slide(path) if own else slide
    try:
        if not 0 <= level < slide.level_count:
            raise InputError(f"{path}: no pyramid level {level}; the slide has levels 0-{slide.level_count - 1} "
                             f"(sizes {', '.join(f'{w}x{h}' for w, h in slide.level_dimensions)})")
        width, height = slide.level_dimensions[0]
        x0, y0, x1, y1 = (float(v) for v in window)
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
        if not (x0 < x1 and y0 < y1):
            raise InputError(f"{path}: the window {tuple(window)} lies outside the slide's {width}x{height} "
                             "pixels (x0, y0, x1, y1 in level-0 pixels, top-left corner first)")
        down = float(slide.level_downsamples[level])
        lw, lh = max(1, math.ceil((x1 - x0) / down)), max(1, math.ceil((y1 - y0) / down))
        if max_pixels is not None and lw * lh > max_pixels:
            fits = [lv for lv, d in enumerate(slide.level_downsamples)
                    if math.ceil((x1 - x0) / d) * math.ceil((y1 - y0) / d) <= max_pixels]
            hint = f"read it at level {fits[0]} or above" if fits else "read a smaller window"
            raise InputError(f"{path}: the window {int(x1 - x0)}x{int(y1 - y0)} px at level {level} (downsample "
                             f"{down:g}) is {lw}x{lh} = {lw * lh:,} pixels, over the limit of {max_pixels:,}: "
                             f"{hint}")
        lw = min(lw, slide.level_dimensions[level][0] - int(x0 // down))
        lh = min(lh, slide.level_dimensions[level][1] - int(y0 // down))
        region = slide.read_region((int(x0), int(y0)), level, (max(lw, 1), max(lh, 1)))
        return to_rgb8(np.asarray(region), name=str(path))
    finally:
        if own:
            slide.close()
