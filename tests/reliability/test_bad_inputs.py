"""Bad files in a batch: each gets its own clear error (or a valid empty graph); the batch goes on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from nucleograph.cli import main
from nucleograph.db import store
from nucleograph.ingest.cohort import discover
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
    images = {r["path"].rsplit("/", 1)[-1]: r for r in
              store.cohort_images(graphdb, unique_name)}
    assert set(images) == {"good.png", "png-named.tif", "all-white.png", "all-black.png"}
    assert images["all-white.png"]["n_nuclei"] == 0 and images["all-black.png"]["n_nuclei"] == 0
    assert images["good.png"]["n_nuclei"] > 10
    counts = store.cohort_counts(graphdb, unique_name)
    assert counts == {"images": 4, "nuclei": summary["nuclei"], "edges": summary["edges"]}
