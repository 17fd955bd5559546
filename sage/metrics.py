"""Metrics on plain arrays: classification quality, calibration, and heatmap-to-saliency alignment."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from sage import agreement


def saliency_alignment(heatmap: np.ndarray, saliency: np.ndarray) -> dict[str, float]:
    """How well a model heatmap matches human saliency; both same-size float arrays in [0, 1].

    soft_iou and pearson: `sage.agreement` (one definition, with its edge cases: two empty maps
    have IoU 1; a constant map has r 0, or 1 when both maps are equal).
    pointing_game: 1.0 when the heatmap's peak falls where saliency >= half its maximum, else 0.0.
    """
    h = np.asarray(heatmap, dtype=np.float64)
    s = np.asarray(saliency, dtype=np.float64)
    if h.shape != s.shape:
        raise ValueError(f"heatmap {h.shape} and saliency {s.shape} must have the same shape")
    soft_iou, pearson = agreement.soft_iou(h, s), agreement.pearson(h, s)
    peak = np.unravel_index(int(np.argmax(h)), h.shape)
    pointing = float(s.max() > 0 and s[peak] >= 0.5 * s.max())
    return {"soft_iou": soft_iou, "pearson": pearson, "pointing_game": pointing}


def mean_alignment(heatmaps: np.ndarray, saliency: np.ndarray) -> dict[str, float]:
    """`saliency_alignment` averaged over (N, H, W) stacks."""
    if len(heatmaps) == 0:
        return {}
    rows = [saliency_alignment(h, s) for h, s in zip(heatmaps, saliency, strict=True)]
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE with equal-width confidence bins (Guo et al. 2017)."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def classification_metrics(y: np.ndarray, probs: np.ndarray, labels: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support, confusion
    matrix (rows = true, columns = predicted), ROC AUC (binary, or macro one-vs-rest; None when a
    class is absent from y), sensitivity at 95% specificity (two classes, the second positive),
    expected calibration error and mean negative log-likelihood."""
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    pred = probs.argmax(1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    per_class = {}
    recalls, f1s = [], []
    for c, name in enumerate(labels):
        tp = confusion[c, c]
        support = int(confusion[c].sum())
        predicted = int(confusion[:, c].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": support,
        }
        if support:
            recalls.append(recall)
        f1s.append(f1)
    present = np.unique(y)
    auc = None
    if len(present) == k and len(y) > 0:
        try:
            auc = float(
                roc_auc_score(y, probs[:, 1])
                if k == 2
                else roc_auc_score(y, probs, multi_class="ovr", labels=list(range(k)))
            )
        except ValueError:
            auc = None
    nll = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1)))) if len(y) else math.nan
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else math.nan,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "macro_f1": float(np.mean(f1s)),
        "roc_auc": auc,
        "sens_at_95_spec": sensitivity_at_specificity(y, probs[:, 1]) if k == 2 and len(y) else None,
        "ece": expected_calibration_error(probs, y) if len(y) else math.nan,
        "loss": nll,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def sensitivity_at_specificity(
    y: np.ndarray, positive_scores: np.ndarray, specificity: float = 0.95
) -> float | None:
    """Two-class: the share of positives (y == 1) caught at the best threshold that still keeps at
    least `specificity` of the negatives below it (ties broken against the threshold). None when a
    class is missing."""
    y = np.asarray(y)
    scores = np.asarray(positive_scores, dtype=np.float64)
    pos, neg = scores[y == 1], scores[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    allowed = int(np.floor((1 - specificity) * len(neg) + 1e-9))  # negatives that may score above
    ranked = np.sort(neg)[::-1]
    # a positive counts when it scores strictly above every negative but the `allowed` highest
    threshold = ranked[allowed] if allowed < len(ranked) else -np.inf
    return float(np.mean(pos > threshold))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T): temperature scaling of probabilities (the same as of their logits)."""
    logits = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1)) / temperature
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature T in [0.05, 20] that minimises the negative log-likelihood of
    softmax(log p / T) on (probs, y) (Guo et al. 2017); 1 when there is nothing to fit."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    if len(y) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        p = apply_temperature(probs, math.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1))))

    result = minimize_scalar(nll, bounds=(math.log(0.05), math.log(20)), method="bounded")
    return float(math.exp(result.x)) if result.success else 1.0
