import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from sage.metrics import classification_metrics, expected_calibration_error, saliency_alignment


def test_alignment_of_identical_disjoint_and_offset_maps():
    s = np.zeros((10, 10), np.float32)
    s[2:5, 2:5] = 1
    same = saliency_alignment(s, s)
    assert same == {"soft_iou": 1.0, "pearson": pytest.approx(1.0), "pointing_game": 1.0}
    other = np.zeros_like(s)
    other[7:9, 7:9] = 1
    apart = saliency_alignment(other, s)
    assert apart["soft_iou"] == 0.0 and apart["pearson"] < 0 and apart["pointing_game"] == 0.0
    assert saliency_alignment(np.zeros_like(s), s)["pearson"] == 0.0
    with pytest.raises(ValueError):
        saliency_alignment(s, s[:5])


def test_classification_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    probs[np.arange(200), y] += 0.5
    probs /= probs.sum(1, keepdims=True)
    m = classification_metrics(y, probs, ["a", "b", "c"])
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert np.array(m["confusion_matrix"]).sum() == 200 and m["per_class"]["a"]["support"] == int(
        (y == 0).sum()
    )


def test_binary_auc_missing_class_and_calibration():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
    assert classification_metrics(y, probs, ["n", "p"])["roc_auc"] == pytest.approx(0.75)
    assert classification_metrics(np.array([0, 0]), probs[:2], ["n", "p"])["roc_auc"] is None
    perfect = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(perfect, np.array([0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(perfect, np.array([1, 0])) == pytest.approx(1.0)
