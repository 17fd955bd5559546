"""PAD and ROC metrics against values computed by hand on fixed score lists."""

from __future__ import annotations

import numpy as np
import pytest

from sage.pad import (
    auroc,
    bootstrap_auroc,
    bpcer_at_apcer,
    equal_error_rate,
    error_rates,
    pad_report,
    roc_curve,
    roc_summary,
)

# 4 attacks (label 1) and 4 bona fide presentations (label 0); score = P(attack)
ATTACK = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
SCORES = np.array([0.9, 0.8, 0.7, 0.3, 0.6, 0.4, 0.2, 0.1])


def test_error_rates_at_a_threshold():
    # t = 0.5: attacks below it: 0.3 -> APCER 1/4; bona fide at or above it: 0.6 -> BPCER 1/4
    assert error_rates(ATTACK, SCORES, 0.5) == {"threshold": 0.5, "apcer": 0.25, "bpcer": 0.25}
    # t = 0.75: attacks 0.7 and 0.3 pass as bona fide; no bona fide rejected
    assert error_rates(ATTACK, SCORES, 0.75) == {"threshold": 0.75, "apcer": 0.5, "bpcer": 0.0}


def test_bpcer_at_fixed_apcer():
    # APCER <= 5%: every attack must be caught, so t <= 0.3; the best such t is 0.3, where bona
    # fide 0.6 and 0.4 are rejected: BPCER 2/4
    assert bpcer_at_apcer(ATTACK, SCORES, 0.05) == {
        "apcer_target": 0.05,
        "threshold": 0.3,
        "apcer": 0.0,
        "bpcer": 0.5,
    }
    # APCER <= 25%: one attack may pass; t = 0.7 lets 0.3 through and rejects no bona fide
    assert bpcer_at_apcer(ATTACK, SCORES, 0.25) == {
        "apcer_target": 0.25,
        "threshold": 0.7,
        "apcer": 0.25,
        "bpcer": 0.0,
    }


def test_equal_error_rate_exact_and_interpolated():
    # at t = 0.6: APCER 1/4 (0.3), BPCER 1/4 (0.6): they meet exactly
    assert equal_error_rate(ATTACK, SCORES) == {"eer": 0.25, "threshold": 0.6}
    # attacks 0.8 0.7 0.3, bona fide 0.6 0.5: at t=0.6 APCER 1/3 BPCER 1/2; at t=0.7 APCER 1/3
    # BPCER 0; APCER - BPCER goes -1/6 -> 1/3, crossing a third of the way: EER 1/3, t 0.6333
    eer = equal_error_rate(np.array([1, 1, 1, 0, 0], bool), np.array([0.8, 0.7, 0.3, 0.6, 0.5]))
    assert eer["eer"] == pytest.approx(1 / 3) and eer["threshold"] == pytest.approx(0.6 + 0.1 / 3)


def test_roc_and_auroc():
    # pairs (attack, bona fide) ranked correctly: 0.9, 0.8, 0.7 beat all 4; 0.3 beats 0.2 and 0.1
    assert auroc(ATTACK, SCORES) == pytest.approx(14 / 16)
    assert auroc([1, 0], [0.5, 0.5]) == 0.5  # a tie counts one half
    fpr, tpr, thresholds = roc_curve(ATTACK, SCORES)
    # descending scores: A A A B B A B B
    assert fpr.tolist() == [0, 0, 0, 0, 0.25, 0.5, 0.5, 0.75, 1.0]
    assert tpr.tolist() == [0, 0.25, 0.5, 0.75, 0.75, 0.75, 1.0, 1.0, 1.0]
    assert np.trapezoid(tpr, fpr) == pytest.approx(14 / 16)
    assert thresholds[0] == np.inf
    summary = roc_summary(ATTACK, SCORES, n_boot=200)
    assert summary["auroc"] == pytest.approx(0.875) and len(summary["fpr"]) == 101
    assert summary["tpr"][0] == 0.75 and summary["tpr"][-1] == 1.0
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 1], [0.2, 0.3])


def test_bootstrap_interval_brackets_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small_y = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    small = np.r_[rng.normal(1, 1, 20), rng.normal(0, 1, 20)]
    big_y = np.r_[np.ones(400, bool), np.zeros(400, bool)]
    big = np.r_[rng.normal(1, 1, 400), rng.normal(0, 1, 400)]
    lo, hi = bootstrap_auroc(small_y, small, n_boot=300)
    assert lo <= auroc(small_y, small) <= hi
    blo, bhi = bootstrap_auroc(big_y, big, n_boot=300)
    assert bhi - blo < hi - lo
    assert bootstrap_auroc(small_y, small, n_boot=300) == (lo, hi)  # seeded


def test_threshold_chosen_on_validation_is_applied_to_test():
    test_attack = np.array([1, 1, 0, 0], bool)
    test_scores = np.array([0.65, 0.2, 0.7, 0.1])
    report = pad_report(ATTACK, SCORES, test_attack, test_scores, apcer_targets=(0.05,))
    assert report["val"]["eer"]["threshold"] == 0.6
    # val's EER threshold 0.6 on test: attack 0.2 passes (APCER 1/2), bona fide 0.7 rejected (BPCER 1/2)
    assert report["test"]["at_val_eer_threshold"] == {"threshold": 0.6, "apcer": 0.5, "bpcer": 0.5}
    # val's APCER<=5% threshold 0.3 on test: attack 0.2 passes, bona fide 0.7 rejected
    assert report["test"]["at_val_apcer_thresholds"] == [
        {"apcer_target": 0.05, "threshold": 0.3, "apcer": 0.5, "bpcer": 0.5}
    ]
