"""Evaluation protocols of a trained model, in the run's metrics: ROC with AUROC and its bootstrap
interval, PAD error rates (ISO/IEC 30107-3) for a two-class project whose positive ("attack")
label is set, and open-set evaluation with one subtype left out of training.

Leave-subtype-out (`TrainConfig.leave_out_subtype` = X): every image whose labels.csv subtype is X
is removed from train and val (a val split held out of train is drawn after the removal), and the
test images of X are scored apart, as presentations of an attack type never seen in training.
The closed-set numbers are the test split without X; the unseen numbers are X's test images
(with the test split's bona fide images for the rates and curves that need both classes).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from sage.data import DatasetIndex, Sample
from sage.pad import auroc, bootstrap_auroc, equal_error_rate, error_rates, pad_report, roc_summary


def leave_subtype_out(index: DatasetIndex, subtype: str) -> tuple[DatasetIndex, list[Sample]]:
    """(the index without any image of `subtype`, that subtype's test samples). ValueError when
    no image has the subtype (a typo would otherwise train a plain closed-set model)."""
    held = [s for s in index.samples if s.subtype == subtype]
    if not held:
        known = sorted({s.subtype for s in index.samples if s.subtype})
        raise ValueError(
            f"leave_out_subtype {subtype!r}: no image has this subtype; "
            f"the dataset's subtypes are {known or 'none (add a subtype column to labels.csv)'}"
        )
    kept = [s for s in index.samples if s.subtype != subtype]
    return replace(index, samples=kept), [s for s in held if s.split == "test"]


def _accuracy(y: np.ndarray, probs: np.ndarray) -> float | None:
    return float((probs.argmax(1) == y).mean()) if len(y) else None


def _binary_summary(
    attack: np.ndarray, scores: np.ndarray, threshold: float | None, seed: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if threshold is not None:
        rates = error_rates(attack, scores, threshold)
        out["apcer"] = rates["apcer"] if attack.any() else None
        out["bpcer"] = rates["bpcer"] if (~attack).any() else None
    if attack.any() and (~attack).any():
        out["auroc"] = auroc(attack, scores)
        out["auroc_ci95"] = list(bootstrap_auroc(attack, scores, n_boot=500, seed=seed))
        out["eer"] = equal_error_rate(attack, scores)["eer"]
    return out


def evaluation_protocols(
    labels: list[str],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    *,
    positive_label: str | None = None,
    unseen: tuple[np.ndarray, np.ndarray] | None = None,
    unseen_subtype: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Protocol metrics from (true class indices, probabilities) per split.

    roc: for two classes (positive = `positive_label`, else the second label) or a positive label,
        per split with both classes present: resampled ROC, AUROC, bootstrap 95% interval.
    pad: with a positive label in a two-class project, `sage.pad.pad_report` (thresholds chosen
        on validation, applied to test).
    open_set: with `unseen`: closed-set (test) and unseen-subtype numbers side by side."""
    if positive_label is not None and positive_label not in labels:
        raise ValueError(f"positive_label {positive_label!r} is not one of the labels {labels}")
    out: dict[str, Any] = {}
    splits = {"val": val, **({"test": test} if test is not None and len(test[0]) else {})}
    binary = positive_label is not None or len(labels) == 2
    pos = labels.index(positive_label) if positive_label is not None else 1
    threshold = None
    if binary:
        roc: dict[str, Any] = {"positive_label": labels[pos]}
        for name, (y, probs) in splits.items():
            hit = y == pos
            if hit.any() and (~hit).any():
                roc[name] = roc_summary(hit, probs[:, pos], n_boot=1000, seed=seed)
        out["roc"] = roc
        v_hit = val[0] == pos
        if positive_label is not None and len(labels) == 2 and v_hit.any() and (~v_hit).any():
            t = splits.get("test")
            report = pad_report(v_hit, val[1][:, pos], None if t is None else t[0] == pos,
                                None if t is None else t[1][:, pos])  # fmt: skip
            out["pad"] = {"attack_label": labels[pos], "bona_fide_label": labels[1 - pos], **report}
            threshold = report["val"]["eer"]["threshold"]
    if unseen is not None:
        out["open_set"] = _open_set(labels, splits.get("test"), unseen, unseen_subtype, pos if binary else None,
                                    threshold, seed)  # fmt: skip
    return out


def _open_set(labels, test, unseen, subtype, pos, threshold, seed) -> dict[str, Any]:
    y_u, p_u = unseen
    closed: dict[str, Any] = {"n": 0, "accuracy": None}
    unseen_out: dict[str, Any] = {
        "n": int(len(y_u)),
        "accuracy": _accuracy(y_u, p_u),
        "labels": {labels[i]: int((y_u == i).sum()) for i in np.unique(y_u)},
    }
    if test is not None:
        y_t, p_t = test
        closed = {"n": int(len(y_t)), "accuracy": _accuracy(y_t, p_t)}
        if pos is not None:
            closed.update(_binary_summary(y_t == pos, p_t[:, pos], threshold, seed))
    if pos is not None and len(y_u):
        # the unseen presentations against the test split's other class (bona fide)
        if test is not None:
            others = test[0] != pos
            y_mix = np.r_[y_u, test[0][others]]
            p_mix = np.r_[p_u, test[1][others]]
        else:
            y_mix, p_mix = y_u, p_u
        summary = _binary_summary(y_mix == pos, p_mix[:, pos], threshold, seed)
        summary.pop("bpcer", None)  # the bona fide presentations are the closed set's
        unseen_out.update(summary)
        if threshold is not None:
            attacks = y_u == pos
            unseen_out["apcer"] = float((p_u[attacks, pos] < threshold).mean()) if attacks.any() else None
    note = None if len(y_u) else f"no test image has subtype {subtype!r}: nothing to report as unseen"
    return {"subtype": subtype, "threshold": threshold, "closed_set": closed, "unseen": unseen_out,
            **({"note": note} if note else {})}  # fmt: skip
