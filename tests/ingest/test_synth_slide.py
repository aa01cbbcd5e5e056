"""Synthetic whole slides (issue 15 item 6): written tile by tile, read back by tiffslide at every level."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tiffslide

from nucleograph.cli import main
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.importers import find_nuclei_file
from nucleograph.ingest.readers import is_slide, slide_info
from nucleograph.ingest.synth import MPP, ROLES, TASKS, synthesize_slide, synthesize_slide_cohort
from nucleograph.ingest.synth.slide import (
    FIELD_STEP,
    LABEL_RULE,
    MARGIN,
    SLIDE_MANIFEST_COLUMNS,
    SLIDE_NUCLEI_COLUMNS,
    _reduce,
    slide_levels,
)

SIZE = (8000, 6000)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """One 8000 x 6000 prostate slide of the high class (regions of both classes may occur)."""
    out = tmp_path_factory.mktemp("slide")
    path = out / "s.tif"
    truth = synthesize_slide("prostate", "Gleason4", path, nuclei_path=out / "s.csv", truth_path=out / "truth.json",
                             rng=np.random.default_rng(4), size=SIZE, high_share=0.5)
    return path, out / "s.csv", out / "truth.json", truth


@pytest.mark.slow
def test_every_level_reads_back_through_tiffslide(slide):
    path, _, _, truth = slide
    s = tiffslide.TiffSlide(path)
    assert s.level_dimensions == tuple(truth.levels) == tuple(slide_levels(*SIZE)) == ((8000, 6000), (2000, 1500),
                                                                                          (500, 375))
    assert float(s.properties["tiffslide.mpp-x"]) == pytest.approx(MPP)
    assert is_slide(path) and slide_info(path)["mpp"] == pytest.approx(MPP)
    level0 = s.read_region((0, 0), 0, SIZE, as_array=True)[..., :3]
    assert level0.shape == (6000, 8000, 3) and level0.dtype == np.uint8
    expected = level0
    for level in (1, 2):
        w, h = s.level_dimensions[level]
        got = s.read_region((0, 0), level, (w, h), as_array=True)[..., :3].astype(int)
        # the level is the area mean of the one above (exact before JPEG): read back within JPEG's error
        rows = -(-expected.shape[0] // 4) * 4
        expected = _reduce(np.concatenate([expected, np.repeat(expected[-1:], rows - expected.shape[0], 0)]))
        assert got.shape == expected.shape == (h, w, 3)
        assert np.abs(got - expected).mean() < 3.0, level
    s.close()


@pytest.mark.slow
def test_glass_around_the_tissue_and_nuclei_where_the_table_says(slide):
    path, nuclei_csv, _, truth = slide
    s = tiffslide.TiffSlide(path)
    rgb = s.read_region((0, 0), 0, SIZE, as_array=True)[..., :3].astype(float)
    s.close()
    grey = rgb.mean(2)
    border = MARGIN - FIELD_STEP
    assert grey[:border].mean() > 230 and grey[:, :border].mean() > 230 and grey[:, -border:].mean() > 230
    assert 0.1 < truth.tissue_fraction < 0.8
    tissue = (grey < 220).mean()  # stroma and nuclei are darker than glass
    assert abs(tissue - truth.tissue_fraction) < 0.1
    nuclei = pd.read_csv(nuclei_csv)
    assert list(nuclei.columns) == list(SLIDE_NUCLEI_COLUMNS) and len(nuclei) == truth.n_nuclei > 1000
    assert (nuclei.nucleus_id == np.arange(1, len(nuclei) + 1)).all()
    x, y = nuclei.centroid_x.to_numpy(), nuclei.centroid_y.to_numpy()
    assert x.min() > border and y.min() > border and x.max() < SIZE[0] - border and y.max() < SIZE[1] - border
    # a nucleus's centre is haematoxylin, darker than the tissue around it; glass is bright
    at = grey[np.rint(y).astype(int), np.rint(x).astype(int)]
    assert np.median(at) < np.median(grey[grey < 220]) - 20 and (at < 200).mean() > 0.95
    assert set(nuclei.role) <= set(ROLES["prostate"])


@pytest.mark.slow
def test_regions_and_the_label_rule(slide):
    _, nuclei_csv, truth_json, truth = slide
    saved = json.loads(truth_json.read_text())
    assert saved == truth.to_dict() and saved["label_rule"] == LABEL_RULE
    assert saved["classes"] == list(TASKS["prostate"]) and saved["label"] == "Gleason4"
    regions = saved["regions"]
    assert {r["label"] for r in regions} <= set(TASKS["prostate"])
    # the slide is labelled by its highest class: at least one high region; every region has nuclei
    assert any(r["label"] == "Gleason4" for r in regions) and all(r["nuclei"] > 0 for r in regions)
    nuclei = pd.read_csv(nuclei_csv)
    assert sum(r["nuclei"] for r in regions) == len(nuclei)
    by_region = nuclei.groupby("region").size().to_dict()
    assert by_region == {r["id"]: r["nuclei"] for r in regions if r["nuclei"]}
    for r in regions:
        mine = nuclei[nuclei.region == r["id"]]
        assert (mine.region_label == r["label"]).all()
        x0, y0, x1, y1 = r["bbox"]
        assert mine.centroid_x.between(x0, x1).all() and mine.centroid_y.between(y0, y1).all()


def test_same_seed_same_files_and_a_low_slide_is_all_low(tmp_path):
    written = []
    for k in range(2):
        d = tmp_path / str(k)
        d.mkdir()
        truth = synthesize_slide("prostate", "Gleason3", d / "s.tif", nuclei_path=d / "s.csv",
                                 truth_path=d / "t.json", rng=np.random.default_rng(9), size=(2304, 2048))
        written.append([(d / n).read_bytes() for n in ("s.tif", "s.csv", "t.json")])
        assert {r["label"] for r in truth.regions} == {"Gleason3"} and truth.n_nuclei > 0
        assert not list(d.glob("*.part")) and not list(d.glob(".synth-slide-*"))  # nothing half-written left
    assert written[0] == written[1]


def test_slide_cohort_is_a_manifest_ingest_reads(tmp_path):
    manifest = synthesize_slide_cohort("prostate", n_per_class=1, out_dir=tmp_path, seed=2, size=(2048, 2048))
    df = pd.read_csv(manifest, keep_default_na=False)
    assert list(df.columns) == list(SLIDE_MANIFEST_COLUMNS) and list(df.label) == list(TASKS["prostate"])
    assert (df["mask"] == "").all() and df.patient.is_unique and (df.mpp == MPP).all()
    records = discover([tmp_path])
    assert [r.label for r in records] == ["Gleason3", "Gleason4"]
    for r in records:
        assert is_slide(r.path) and r.mpp == MPP
        # the truth tables are named, not taken for segmentations: ingest detects the nuclei
        assert find_nuclei_file(r) is None
        truth = json.loads((tmp_path / r.meta["regions"]).read_text())
        assert truth["label"] == r.label and truth["width"] == truth["height"] == 2048


def test_bad_sizes_and_labels_are_refused(tmp_path, capsys):
    kwargs = {"nuclei_path": tmp_path / "n.csv", "truth_path": tmp_path / "t.json", "rng": np.random.default_rng(0)}
    with pytest.raises(ValueError, match="too small: both sides must be >= 2048"):
        synthesize_slide("breast", "InSitu", tmp_path / "s.tif", size=(4000, 1000), **kwargs)
    with pytest.raises(ValueError, match="unknown label"):
        synthesize_slide("breast", "Gleason3", tmp_path / "s.tif", size=(4000, 4000), **kwargs)
    with pytest.raises(ValueError, match="high_share"):
        synthesize_slide("breast", "Invasive", tmp_path / "s.tif", size=(4000, 4000), high_share=0, **kwargs)
    assert not list(tmp_path.iterdir())
    assert main(["synth", "prostate", "--slide", "--n", "1", "--size", "1024x1024", "--out", str(tmp_path)]) == 1
    assert "without --slide" in capsys.readouterr().err
    assert main(["synth", "prostate", "--slide", "--n", "1", "--workers", "2", "--out", str(tmp_path)]) == 1
    assert "with --slide leave it out" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_reduce_is_the_area_mean():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    out = _reduce(rows)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[:, :2], np.rint(rows[:, :8].reshape(2, 4, 2, 4, 3).mean(axis=(1, 3)) + 1e-9))
    np.testing.assert_array_equal(out[:, 2], np.rint(rows[:, 8:].reshape(2, 4, 2, 3).mean(axis=(1, 2))))
