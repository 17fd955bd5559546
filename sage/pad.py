"""Evaluation protocols experts report, on plain numpy arrays (no torch): ROC curves, AUROC with a
bootstrap confidence interval, and presentation-attack-detection error rates (ISO/IEC 30107-3).

Conventions. `positive` marks the class scored (for PAD: an attack presentation), `scores` is the
model's probability of that class, and a presentation is decided positive when score >= t.

- APCER(t): share of attack presentations decided bona fide (score < t).
- BPCER(t): share of bona fide presentations decided attack (score >= t).
- BPCER@APCER=a: the lowest BPCER over thresholds whose APCER <= a (e.g. "BPCER20" is a = 5%).
- EER: the error rate where APCER and BPCER cross, interpolated linearly between the two
  neighbouring thresholds around the crossing.
- A threshold chosen on validation (at the EER, or at APCER <= a) and applied unchanged to test
  gives the error rates a deployed system would have.
"""

from __future__ import annotations

from typing import Any

import numpy as np

DEFAULT_APCER_TARGETS = (0.01, 0.05, 0.10)
ROC_POINTS = 101  # stored curves are resampled to this many FPR points


def _check(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(positive, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must have the same length")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def roc_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), from (0, 0) at threshold +inf to (1, 1); ties share one point."""
    y, s = _check(positive, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both classes present")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.flatnonzero(np.diff(s)) if len(s) > 1 else np.array([], dtype=np.int64)
    ends = np.r_[distinct, len(s) - 1]
    tps = np.cumsum(y)[ends]
    fps = (ends + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s[ends]]
    return fpr, tpr, thresholds


def auroc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (= P(score of a positive > score of a negative), ties count 1/2)."""
    y, s = _check(positive, scores)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both classes present")
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_values)) + 1]
    ends = np.r_[starts[1:], len(values)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0  # mean of ranks a+1..b
    return ranks


def bootstrap_auroc(
    positive: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC: resample positives and negatives separately
    (stratified, so every resample has both classes), `n_boot` times, seeded."""
    y, s = _check(positive, scores)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs both classes present")
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    labels = np.r_[np.ones(len(pos), dtype=bool), np.zeros(len(neg), dtype=bool)]
    for i in range(n_boot):
        sample = np.r_[pos[rng.integers(0, len(pos), len(pos))], neg[rng.integers(0, len(neg), len(neg))]]
        values[i] = auroc(labels, sample)
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def error_rates(attack: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """APCER and BPCER when score >= threshold is decided attack."""
    y, s = _check(attack, scores)
    decided_attack = s >= threshold
    apcer = float((~decided_attack[y]).mean()) if y.any() else float("nan")
    bpcer = float(decided_attack[~y].mean()) if (~y).any() else float("nan")
    return {"threshold": float(threshold), "apcer": apcer, "bpcer": bpcer}


def _operating_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct decision: thresholds (ascending, then +inf), APCER and BPCER at each."""
    thresholds = np.r_[np.unique(s), np.inf]
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    apcer = np.asarray(np.searchsorted(pos, thresholds, side="left") / len(pos))  # attacks with score < t
    bpcer = np.asarray(
        1.0 - np.searchsorted(neg, thresholds, side="left") / len(neg)
    )  # bona fide with score >= t
    return thresholds, apcer, bpcer


def bpcer_at_apcer(attack: np.ndarray, scores: np.ndarray, target: float) -> dict[str, float]:
    """The lowest BPCER among thresholds whose APCER <= target, with that threshold."""
    y, s = _check(attack, scores)
    if not y.any() or y.all():
        raise ValueError("APCER/BPCER need attack and bona fide presentations")
    thresholds, apcer, bpcer = _operating_points(y, s)
    # APCER rises and BPCER falls with t, so the best is the highest threshold within the target;
    # t = min(score) has APCER 0, so there always is one
    best = int(np.flatnonzero(apcer <= target + 1e-12)[-1])
    return {"apcer_target": float(target), "threshold": float(thresholds[best]),
            "apcer": float(apcer[best]), "bpcer": float(bpcer[best])}  # fmt: skip


def equal_error_rate(attack: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """EER and its threshold: where APCER (rising with t) crosses BPCER (falling), interpolated
    between the last threshold with APCER <= BPCER and the next one."""
    y, s = _check(attack, scores)
    if not y.any() or y.all():
        raise ValueError("the EER needs attack and bona fide presentations")
    thresholds, apcer, bpcer = _operating_points(y, s)
    diff = apcer - bpcer  # non-decreasing in t
    i = int(np.flatnonzero(diff <= 0)[-1])  # diff at the lowest threshold is -1 + 0 <= 0
    if diff[i] == 0 or i + 1 == len(thresholds):
        return {"eer": float(apcer[i]), "threshold": float(thresholds[i])}
    w = -diff[i] / (diff[i + 1] - diff[i])  # linear interpolation to diff == 0
    eer = (1 - w) * apcer[i] + w * apcer[i + 1]
    threshold = (
        thresholds[i]
        if not np.isfinite(thresholds[i + 1])
        else (1 - w) * thresholds[i] + w * thresholds[i + 1]
    )
    return {"eer": float(eer), "threshold": float(threshold)}


def resample_roc(fpr: np.ndarray, tpr: np.ndarray, points: int = ROC_POINTS) -> dict[str, list[float]]:
    """The ROC curve on an even FPR grid (the upper envelope at each FPR), small enough to store."""
    grid = np.linspace(0.0, 1.0, points)
    # for a step ROC, the TPR reached at FPR <= x is the max TPR among points with fpr <= x
    idx = np.searchsorted(fpr, grid, side="right") - 1
    running = np.maximum.accumulate(tpr)
    return {"fpr": [round(float(x), 4) for x in grid], "tpr": [round(float(running[i]), 4) for i in idx]}


def roc_summary(
    positive: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """ROC (resampled), AUROC and its bootstrap 95% interval, and n per class."""
    y, s = _check(positive, scores)
    fpr, tpr, _ = roc_curve(y, s)
    lo, hi = bootstrap_auroc(y, s, n_boot=n_boot, seed=seed)
    return {"auroc": auroc(y, s), "auroc_ci95": [lo, hi], "n_positive": int(y.sum()),
            "n_negative": int((~y).sum()), **resample_roc(fpr, tpr)}  # fmt: skip


def pad_report(
    val_attack: np.ndarray,
    val_scores: np.ndarray,
    test_attack: np.ndarray | None = None,
    test_scores: np.ndarray | None = None,
    apcer_targets: tuple[float, ...] = DEFAULT_APCER_TARGETS,
) -> dict[str, Any]:
    """PAD error rates: on validation (EER, BPCER@APCER for each target) and, with a test split,
    the validation thresholds applied unchanged to test, beside test's own EER."""
    report: dict[str, Any] = {
        "val": {
            "eer": equal_error_rate(val_attack, val_scores),
            "bpcer_at_apcer": [bpcer_at_apcer(val_attack, val_scores, a) for a in apcer_targets],
        }
    }
    if test_attack is None or test_scores is None or len(test_scores) == 0:
        return report
    eer_t = report["val"]["eer"]["threshold"]
    report["test"] = {
        "at_val_eer_threshold": error_rates(test_attack, test_scores, eer_t),
        "at_val_apcer_thresholds": [
            {"apcer_target": op["apcer_target"], **error_rates(test_attack, test_scores, op["threshold"])}
            for op in report["val"]["bpcer_at_apcer"]
        ],
    }
    y = np.asarray(test_attack, dtype=bool)
    if y.any() and not y.all():
        report["test"]["eer"] = equal_error_rate(test_attack, test_scores)
        report["test"]["bpcer_at_apcer"] = [
            bpcer_at_apcer(test_attack, test_scores, a) for a in apcer_targets
        ]
    return report
