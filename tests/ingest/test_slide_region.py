"""Reading a window of a pyramidal slide at a level (``read_slide_region``), as ``render`` and the
Slide viewer do."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from nucleograph.errors import InputError
from nucleograph.ingest.readers import open_slide, read_slide_region


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """A 2048 x 1536 two-level tiled TIFF whose pixels encode their position (red = x // 8, green = y // 8)."""
    path = tmp_path_factory.mktemp("pyr") / "p.tif"
    y, x = np.mgrid[0:1536, 0:2048]
    full = np.stack([(x // 8) % 256, (y // 8) % 256, np.full_like(x, 128)], -1).astype(np.uint8)
    half = full[::4, ::4]
    with tifffile.TiffWriter(path) as tw:
        tw.write(full, tile=(256, 256), subifds=1, photometric="rgb")
        tw.write(half, tile=(256, 256), subfiletype=1, photometric="rgb")
    return path


def test_a_window_at_each_level(pyramid):
    win = read_slide_region(pyramid, (512, 256, 1024, 512), level=0)
    assert win.shape == (256, 512, 3) and win[0, 0, 0] == 64 and win[0, 0, 1] == 32
    low = read_slide_region(pyramid, (512, 256, 1024, 512), level=1)
    assert low.shape == (64, 128, 3) and abs(int(low[0, 0, 0]) - 64) <= 1
    clipped = read_slide_region(pyramid, (1900, 1400, 3000, 3000), level=0)  # clipped to the slide
    assert clipped.shape == (136, 148, 3)
    slide = open_slide(pyramid)
    try:
        again = read_slide_region(pyramid, (512, 256, 1024, 512), level=0, slide=slide)
        assert np.array_equal(again, win)
    finally:
        slide.close()


def test_bad_levels_windows_and_sizes_are_named(pyramid):
    with pytest.raises(InputError, match="no pyramid level 2; the slide has levels 0-1"):
        read_slide_region(pyramid, (0, 0, 10, 10), level=2)
    with pytest.raises(InputError, match="outside the slide"):
        read_slide_region(pyramid, (5000, 0, 6000, 10))
    with pytest.raises(InputError, match="read it at level 1 or above"):
        read_slide_region(pyramid, (0, 0, 2048, 1536), level=0, max_pixels=200_000)
    with pytest.raises(InputError, match="read a smaller window"):
        read_slide_region(pyramid, (0, 0, 2048, 1536), level=1, max_pixels=1000)
