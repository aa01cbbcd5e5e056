"""Bad files in a batch: each gets its own clear error (or a valid empty graph); the batch goes on."""

from __future__ import annotations

import json
import math
import shutil
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleograph.cli import main
from nucleograph.db import store
from nucleograph.errors import InputError
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.readers import DEFAULT_MAX_PIXELS, read_image
from nucleograph.ingest.synth import synthesize_cohort

pytestmark = [pytest.mark.reliability, pytest.mark.neo4j]


def _bad_files(folder):
    good = folder / "_good"
    synthesize_cohort("prostate", n_per_class=1, out_dir=good, seed=606, size=(384, 384))
    goods = [r.path for r in discover([good])]
    png = goods[0].read_bytes()
    tif = folder / "whole.tif"
    tifffile.imwrite(tif, np.asarray(Image.open(goods[1]).convert("RGB")))
    files = {
        "truncated.png": png[: len(png) // 3],
        "truncated.tif": tif.read_bytes()[:2000],
        "empty.png": b"",
        "not-an-image.png": b"this is a text file, not a PNG\n" * 20,
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    tif.unlink()
    shutil.copy(goods[0], folder / "png-named.tif")  # wrong extension, readable content: accepted
    Image.new("RGB", (1, 1), (255, 255, 255)).save(folder / "one-pixel.png")
    Image.new("RGB", (512, 512), (255, 255, 255)).save(folder / "all-white.png")
    Image.new("RGB", (512, 512), (0, 0, 0)).save(folder / "all-black.png")
    Image.new("1", (12_000, 12_000)).save(folder / "bomb.png")  # 144 Mpx in a few kB
    shutil.copy(goods[1], folder / "good.png")
    shutil.rmtree(good)


def test_bad_files_each_fail_alone(tmp_path, test_environ, graphdb, unique_name, capsys):
    _bad_files(tmp_path)
    code = main(["ingest", str(tmp_path), "--cohort", unique_name, "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 3  # some images failed: a non-zero exit, but the batch went on
    failed = {f["path"].rsplit("/", 1)[-1]: f["error"] for f in summary["failures"]}
    assert set(failed) == {"truncated.png", "truncated.tif", "empty.png", "not-an-image.png", "one-pixel.png",
                           "bomb.png"}
    for name, error in failed.items():
        assert name in error, error  # every message names its file
    assert "max_pixels" in failed["bomb.png"] or "pixels" in failed["bomb.png"]
    assert summary["ok"] == 4  # good.png, png-named.tif, all-white.png, all-black.png
    assert summary["no_nuclei"] == 2  # stored with 0 nuclei, and said so
    assert {p.rsplit("/", 1)[-1] for p in summary["no_nuclei_paths"]} == {"all-white.png", "all-black.png"}
    images = {r["path"].rsplit("/", 1)[-1]: r for r in
              store.cohort_images(graphdb, unique_name)}
    assert set(images) == {"good.png", "png-named.tif", "all-white.png", "all-black.png"}
    assert images["all-white.png"]["n_nuclei"] == 0 and images["all-black.png"]["n_nuclei"] == 0
    assert images["good.png"]["n_nuclei"] > 10
    counts = store.cohort_counts(graphdb, unique_name)
    assert counts == {"images": 4, "nuclei": summary["nuclei"], "edges": summary["edges"]}


def test_blank_images_say_no_nuclei_found(tmp_path, test_environ, graphdb, unique_name, capsys):
    """An all-white or all-black image is stored with 0 nuclei (a true, empty graph: training skips it,
    re-ingesting it is a no-op), and the command names each such file instead of saying nothing."""
    synthesize_cohort("prostate", n_per_class=1, out_dir=tmp_path / "good", seed=607, size=(256, 256))
    good = discover([tmp_path / "good"])[0].path
    white, black = tmp_path / "white.png", tmp_path / "black.png"
    Image.new("RGB", (300, 200), (255, 255, 255)).save(white)
    Image.new("RGB", (300, 200), (0, 0, 0)).save(black)
    assert main(["ingest", str(white), str(black), str(good), "--cohort", unique_name]) == 0
    out = capsys.readouterr()
    assert "3/3 images ok" in out.out
    for path in (white, black):
        assert f"no nuclei found: {path}: stored with 0 nuclei" in out.err, out.err
    assert f"no nuclei found: {good}" not in out.err
    stored = {r["path"]: r["n_nuclei"] for r in store.cohort_images(graphdb, unique_name)}
    assert stored[str(white)] == 0 and stored[str(black)] == 0 and stored[str(good)] > 0
    # the second time they are unchanged, and still reported
    assert main(["ingest", str(white), str(black), "--cohort", unique_name, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["no_nuclei"] == 2 and sorted(summary["no_nuclei_paths"]) == sorted([str(white), str(black)])


def _png_header(path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` RGB pixels but holds none (a few dozen bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))


def test_over_limit_image_is_refused_alone(tmp_path, test_environ, unique_name, capsys):
    side = math.isqrt(DEFAULT_MAX_PIXELS) + 1  # one row and column over the limit
    _png_header(tmp_path / "over.png", side, side)
    _png_header(tmp_path / "huge.png", 50_000, 40_000)  # 2 gigapixels: Pillow's own guard answers first
    synthesize_cohort("prostate", n_per_class=1, out_dir=tmp_path / "good", seed=608, size=(256, 256))
    goods = [str(r.path) for r in discover([tmp_path / "good"])]
    paths = [str(tmp_path / "over.png"), str(tmp_path / "huge.png"), *goods]
    code = main(["ingest", *paths, "--cohort", unique_name, "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 3 and summary["ok"] == 2  # the two good images
    failed = {f["path"].rsplit("/", 1)[-1]: f["error"] for f in summary["failures"]}
    assert set(failed) == {"over.png", "huge.png"}
    limit = f"max_pixels={DEFAULT_MAX_PIXELS}"
    assert failed["over.png"].startswith(f"{tmp_path / 'over.png'}: {side}x{side} pixels exceeds {limit}")
    assert failed["huge.png"].startswith(f"{tmp_path / 'huge.png'}: 2,000,000,000 pixels exceeds {limit}")
    for error in failed.values():
        assert f"at most {DEFAULT_MAX_PIXELS:,} pixels" in error
        assert "Cut it into tiles" in error and "tiled TIFF" in error, error
    at_limit = tmp_path / "at-limit.png"
    _png_header(at_limit, DEFAULT_MAX_PIXELS // 4096, 4096)  # exactly the limit: accepted
    with pytest.raises(InputError, match="cannot decode image"):  # past the size check, the pixels are missing
        read_image(at_limit)
