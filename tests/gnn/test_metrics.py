import numpy as np
import pytest

from nucleograph.gnn.metrics import (
    accuracy,
    balanced_accuracy,
    classification_metrics,
    confusion_matrix,
    constant_output_share,
    f1_score,
    roc_auc,
)


def test_metrics_known_values():
    y = [0, 0, 0, 1, 1]
    p = [0, 0, 1, 1, 0]
    assert confusion_matrix(y, p).tolist() == [[2, 1], [1, 1]]
    assert accuracy(y, p) == pytest.approx(0.6)
    assert balanced_accuracy(y, p) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert f1_score(y, p) == pytest.approx(0.5)


def test_auc_with_ties_and_perfect():
    assert roc_auc([0, 1], [[0.9, 0.1], [0.1, 0.9]]) == 1.0
    assert roc_auc([0, 1, 0, 1], np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert roc_auc([0, 0, 1], [0.1, 0.4, 0.35]) == pytest.approx(0.5)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_classification_metrics_dict():
    out = classification_metrics([0, 1, 2], np.eye(3))
    assert (
        out["accuracy"] == 1.0
        and out["roc_auc"] == 1.0
        and out["confusion_matrix"] == np.eye(3, dtype=int).tolist()
    )


def test_constant_output_share_counts_bit_identical_outputs():
    own = np.array([[0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1]], dtype=np.float32)
    assert constant_output_share(own) == 0.0
    bias = np.array([0.45, 0.55], dtype=np.float32)
    dead = np.vstack([own[:2], bias, bias, bias])  # three images answered with the bias
    assert constant_output_share(dead) == pytest.approx(3 / 5)
    # equal to the last bit only: a working model's close outputs are not one output
    near = np.vstack([bias, np.nextafter(bias, np.float32(1))])
    assert constant_output_share(near) == 0.0
    assert constant_output_share(np.zeros((0, 2))) == 0.0
