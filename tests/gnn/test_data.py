import numpy as np
import pytest
import torch

from nucleograph.errors import InputError
from nucleograph.gnn.data import (
    FeatureScaler,
    check_test_split,
    edge_channels,
    standardize,
    stratified_kfold,
    stratified_split,
    to_dgl,
)
from nucleograph.gnn.keys import CENTROID, EFEAT, FEAT, NID
from nucleograph.ingest.graph import edge_weight


def test_to_dgl_bidirected_same_channels():
    e = edge_channels([10.0, 50.0])
    g = to_dgl(np.ones((3, 2)), [0, 1], [1, 2], e, centroids=np.zeros((3, 2)), nucleus_ids=[7, 8, 9])
    assert g.num_edges() == 4
    src, dst = g.edges()
    assert set(zip(src.tolist(), dst.tolist(), strict=True)) == {(0, 1), (1, 0), (1, 2), (2, 1)}
    assert torch.equal(g.edata[EFEAT][:2], g.edata[EFEAT][2:])
    assert g.ndata[FEAT].dtype == torch.float32 and g.ndata[NID].tolist() == [7, 8, 9]
    assert CENTROID in g.ndata
    assert not g.has_edges_between([0, 1, 2], [0, 1, 2]).any()  # no self-loops


def test_edge_channels_values():
    e = edge_channels([0.0, 50.0, 150.0])
    np.testing.assert_allclose(e[:, 0], [1.0, 0.5, 0.0])
    assert e[0, 1] == pytest.approx(1.0) and 0 < e[1, 1] < e[1, 0]


def test_first_edge_channel_is_the_weight_ingest_stores():
    d = np.array([0.0, 12.5, 37.0, 80.0, 99.9, 140.0])
    for threshold in (100.0, 60.0):
        np.testing.assert_array_equal(
            edge_channels(d, max_distance=threshold)[:, 0], edge_weight(d, threshold).astype(np.float32)
        )


@pytest.mark.parametrize(
    ("src", "dst", "match"),
    [([0], [0], "self-loops"), ([0, 1], [1, 0], "given twice"), ([0], [5], "endpoints")],
)
def test_to_dgl_rejects_bad_edges(src, dst, match):
    with pytest.raises(InputError, match=match):
        to_dgl(np.ones((3, 2)), src, dst, np.ones((len(src), 2)))


def test_to_dgl_rejects_nan_features():
    with pytest.raises(InputError, match="NaN"):
        to_dgl(np.array([[np.nan]]), [], [], np.zeros((0, 2)))


def test_scaler_fit_transform_roundtrip(cohort):
    graphs, _ = cohort
    scaler = FeatureScaler.fit(graphs[:10])
    x = torch.cat([g.ndata[FEAT] for g in graphs[:10]])
    z = scaler.transform(x)
    assert torch.allclose(z.mean(0), torch.zeros(z.shape[1]), atol=1e-4)
    assert FeatureScaler.from_dict(scaler.to_dict()).mean.tolist() == scaler.mean.tolist()
    out, _ = standardize(graphs[:2], scaler)
    assert not torch.equal(out[0].ndata[FEAT], graphs[0].ndata[FEAT])  # originals untouched
    assert torch.equal(graphs[0].ndata[FEAT], cohort[0][0].ndata[FEAT])


def test_stratified_split_partitions_and_stratifies():
    y = np.array([0] * 20 + [1] * 10)
    tr, va, te = stratified_split(y, val=0.2, test=0.2, seed=1)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(30))
    assert (y[te] == 1).sum() == 2 and (y[te] == 0).sum() == 4


def test_grouped_split_keeps_patients_together():
    y = np.array([0, 0, 1, 1] * 10)
    groups = np.repeat(np.arange(20), 2)
    tr, va, te = stratified_split(y, groups, val=0.2, test=0.2, seed=0)
    for a, b in ((tr, va), (tr, te), (va, te)):
        assert not set(groups[a]) & set(groups[b])


def test_kfold_partitions():
    y = np.array([0] * 13 + [1] * 7)
    folds = stratified_kfold(y, 5, seed=0)
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests.tolist()) == list(range(20))
    for tr, te in folds:
        assert not set(tr) & set(te)


def test_one_class_cohort_is_a_clear_error():
    with pytest.raises(InputError, match="only one class"):
        stratified_split([1, 1, 1])


def test_a_split_without_test_images_is_refused_with_the_fixes_that_work():
    y = np.array([0, 0, 0, 1, 1, 1])
    one_patient_per_class = ["a", "a", "a", "b", "b", "b"]
    # what a run used to train on: every patient in training, nothing to test on
    assert stratified_split(y, one_patient_per_class)[2].size == 0
    with pytest.raises(InputError, match=r"cohort 'tiny' has 2 patients \(6 images\), at most 1 per class") as exc:
        check_test_split(y, one_patient_per_class, name="cohort 'tiny'")
    msg = str(exc.value)
    # splitting by image leaves a test image of each class: offered; 2-fold CV would train on one class: not
    assert "--split-by image" in msg and "--folds" not in msg and "ingest more patients" in msg
    check_test_split(y, None, name="cohort 'tiny'")  # by image: one test image per class

    two_per_class = ["a", "a", "b", "c", "c", "d"]
    with pytest.raises(InputError, match="4 patients") as exc:
        check_test_split(y, two_per_class, name="cohort 'tiny'")
    assert "--folds 2" in str(exc.value)

    with pytest.raises(InputError, match=r"has 4 images, at most 2 per class") as exc:
        check_test_split([0, 0, 1, 1], name="cohort 'x'")
    assert "--split-by" not in str(exc.value) and "ingest more images" in str(exc.value)
    check_test_split(np.repeat([0, 1], 6), np.repeat(np.arange(6), 2))  # 3 patients per class: fine


def test_too_few_patients_for_the_folds_name_the_fold_count_that_works():
    y = np.repeat([0, 1], 4)
    patients = np.repeat(np.arange(4), 2)  # 2 per class
    with pytest.raises(InputError, match=r"4 patients \(8 images\): too few for 5 folds") as exc:
        check_test_split(y, patients, folds=5, name="cohort 'c'")
    assert "--folds 4 or fewer" in str(exc.value) and "--split-by image" in str(exc.value)
    check_test_split(y, patients, folds=4)
    assert all(t.size for _, t in stratified_kfold(y, 4, patients))
