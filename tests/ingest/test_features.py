import numpy as np
import pandas as pd
import pytest
from skimage.color import rgb2hed
from skimage.draw import disk, ellipse
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops_table

from nucleograph.ingest.features import (
    ALL_COLUMNS,
    FEATURE_ALIASES,
    FEATURE_COLUMNS,
    TEXTURE_LEVELS,
    TEXTURE_MAX_OD,
    concat_features,
    nucleus_features,
)
from nucleograph.ingest.stain import hematoxylin_od, optical_density, separate_hed


def _image(shape=(128, 160), seed=0):
    return np.random.default_rng(seed).integers(30, 250, size=(*shape, 3), dtype=np.uint8)


def _labels(shape=(128, 160)):
    lab = np.zeros(shape, np.int32)
    lab[disk((30, 40), 12, shape=shape)] = 3  # non-sequential ids are kept
    lab[ellipse(80, 100, 10, 25, shape=shape, rotation=0.6)] = 7
    lab[100:110, 10:30] = 9
    return lab


def test_columns_and_types():
    f = nucleus_features(_image(), _labels())
    assert tuple(f) == ALL_COLUMNS
    assert set(FEATURE_COLUMNS) <= set(f) and "nucleus_id" not in FEATURE_COLUMNS
    assert set(FEATURE_ALIASES) == set(ALL_COLUMNS)
    np.testing.assert_array_equal(f["nucleus_id"], [3, 7, 9])
    assert f["nucleus_id"].dtype == np.int64
    assert all(f[c].dtype == np.float64 and f[c].shape == (3,) for c in ALL_COLUMNS[1:])
    df = pd.DataFrame(f)
    assert len(df) == 3 and np.isfinite(df[list(FEATURE_COLUMNS)].to_numpy()).all()


def test_matches_regionprops():
    lab = _labels()
    f = nucleus_features(_image(), lab)
    ref = regionprops_table(
        lab,
        properties=(
            "centroid",
            "area",
            "perimeter",
            "eccentricity",
            "solidity",
            "axis_major_length",
            "axis_minor_length",
            "orientation",
        ),
    )
    np.testing.assert_allclose(f["centroid_x"], ref["centroid-1"])  # x is the column
    np.testing.assert_allclose(f["centroid_y"], ref["centroid-0"])
    for ours, theirs in [
        ("area", "area"),
        ("perimeter", "perimeter"),
        ("eccentricity", "eccentricity"),
        ("solidity", "solidity"),
        ("major_axis", "axis_major_length"),
        ("minor_axis", "axis_minor_length"),
        ("orientation", "orientation"),
    ]:
        np.testing.assert_allclose(f[ours], ref[theirs], err_msg=ours)


def test_disc_shape():
    lab = np.zeros((101, 101), np.int32)
    lab[disk((50, 50), 30)] = 1
    f = nucleus_features(np.full((101, 101, 3), 128, np.uint8), lab)
    assert f["area"][0] == pytest.approx(np.pi * 30**2, rel=0.01)
    assert f["circularity"][0] > 0.9
    assert f["eccentricity"][0] < 0.1
    assert (f["centroid_x"][0], f["centroid_y"][0]) == pytest.approx((50.0, 50.0))


def test_stain_columns_are_per_nucleus_means():
    img, lab = _image(), _labels()
    f = nucleus_features(img, lab)
    hed = separate_hed(img)
    for i, k in enumerate(f["nucleus_id"]):
        m = lab == k
        assert f["hematoxylin_od_mean"][i] == pytest.approx(hed[..., 0][m].mean(), rel=1e-5)
        assert f["hematoxylin_od_std"][i] == pytest.approx(hed[..., 0][m].std(), rel=1e-4, abs=1e-6)
        assert f["eosin_od_mean"][i] == pytest.approx(hed[..., 1][m].mean(), rel=1e-5)


def test_texture_equals_glcm_on_full_box():
    img = _image((40, 40), seed=3)
    lab = np.zeros((40, 40), np.int32)
    lab[5:25, 8:28] = 1  # square nucleus: the bounding box is all nucleus
    f = nucleus_features(img, lab)
    q = np.clip(np.floor(hematoxylin_od(img) * TEXTURE_LEVELS / TEXTURE_MAX_OD), 0, TEXTURE_LEVELS - 1)
    q = q[5:25, 8:28].astype(np.uint8)
    glcm = graycomatrix(q, [1], [0, np.pi / 2], levels=TEXTURE_LEVELS, symmetric=True, normed=True)
    # Both angles have 20*19 pairs, so pooling equals the mean over angles.
    assert f["texture_contrast"][0] == pytest.approx(graycoprops(glcm, "contrast").mean())
    assert f["texture_homogeneity"][0] == pytest.approx(graycoprops(glcm, "homogeneity").mean())


def test_uniform_nucleus_has_no_texture():
    lab = np.zeros((50, 50), np.int32)
    lab[10:30, 10:30] = 1
    lab[40, 40] = 2  # single pixel: no pairs
    f = nucleus_features(np.full((50, 50, 3), 90, np.uint8), lab)
    np.testing.assert_allclose(f["texture_contrast"], [0, 0])
    np.testing.assert_allclose(f["texture_homogeneity"], [1, 1])


def test_empty_labels():
    f = nucleus_features(_image(), np.zeros((128, 160), np.int32))
    assert tuple(f) == ALL_COLUMNS and all(len(v) == 0 for v in f.values())
    assert len(pd.DataFrame(f)) == 0


def test_concat_features():
    a = nucleus_features(_image(), _labels())
    both = concat_features([a, a])
    assert all(len(v) == 6 for v in both.values())
    assert tuple(concat_features([])) == ALL_COLUMNS


@pytest.mark.parametrize(
    ("image", "labels", "error", "match"),
    [
        (np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.int32), ValueError, r"shape \(H, W, 3\)"),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10, 1), np.int32), ValueError, "labels must be 2-D"),
        (
            np.zeros((10, 10, 3), np.uint8),
            np.zeros((10, 12), np.int32),
            ValueError,
            "does not match image shape",
        ),
        (np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), np.float32), TypeError, "integer array"),
        (np.zeros((10, 10, 3), np.uint8), -np.ones((10, 10), np.int32), ValueError, ">= 0"),
    ],
)
def test_bad_input(image, labels, error, match):
    with pytest.raises(error, match=match):
        nucleus_features(image, labels)


def test_stain_matches_rgb2hed():
    img = _image((64, 64), seed=5)
    np.testing.assert_allclose(separate_hed(img), 6.0 * rgb2hed(img), atol=1e-5)
    np.testing.assert_allclose(hematoxylin_od(img), separate_hed(img)[..., 0], atol=1e-6)
    assert optical_density(np.full((2, 2, 3), 255, np.uint8)).max() == 0.0
    with pytest.raises(TypeError, match="uint8"):
        separate_hed(img.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        separate_hed(img[..., :2])
