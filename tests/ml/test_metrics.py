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


def test_sensitivity_at_95_specificity():
    from sage.metrics import sensitivity_at_specificity

    y = np.array([0] * 20 + [1] * 4)
    scores = np.r_[np.linspace(0, 0.5, 19), 0.9, [0.95, 0.92, 0.6, 0.3]]
    # one negative (0.9) may score above the threshold: positives above 0.5 count
    assert sensitivity_at_specificity(y, scores) == pytest.approx(0.75)
    assert sensitivity_at_specificity(y, scores, specificity=1.0) == pytest.approx(0.5)
    assert sensitivity_at_specificity(np.zeros(5), np.zeros(5)) is None


def test_temperature_scaling_fixes_overconfidence():
    from sage.metrics import apply_temperature, expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(size=(600, 3))
    logits[np.arange(600), y] += 1.0  # right about 60% of the time ...
    over = np.exp(5 * logits) / np.exp(5 * logits).sum(1, keepdims=True)  # ... but sure of it
    t = fit_temperature(over, y)
    assert 3.5 < t < 7
    assert expected_calibration_error(apply_temperature(over, t), y) < 0.5 * expected_calibration_error(
        over, y
    )
    assert np.allclose(apply_temperature(over, 1.0), over)
