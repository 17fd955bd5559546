"""Agreement of two saliency maps: soft IoU and Pearson r, the one definition every score uses.

Annotator agreement (app/services/annotations.py) and heatmap-to-saliency alignment
(`sage.metrics.saliency_alignment`) both call these. Needs numpy only (no torch), so the web
process can use it.

Maps are same-shape arrays: uint8 (0..255, divided by 255) or floats in [0, 1]. Edge cases:

- soft IoU = sum(min(a, b)) / sum(max(a, b)); two empty (all-zero) maps are identical: 1.0.
- Pearson r of the pixel values. It is undefined when a map is constant; then it is 1.0 if the two
  maps are equal (identical maps agree perfectly) and 0.0 otherwise (no linear relation).
- Maps of different shapes: ValueError.
"""

from __future__ import annotations

import numpy as np


def unit_map(m: np.ndarray) -> np.ndarray:
    """A map as float64 in [0, 1]: uint8 divided by 255, anything else as it is."""
    m = np.asarray(m)
    return m.astype(np.float64) / 255.0 if m.dtype == np.uint8 else m.astype(np.float64)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = unit_map(a), unit_map(b)
    if a.shape != b.shape:
        raise ValueError(f"maps of shapes {a.shape} and {b.shape} cannot be compared; they must match")
    return a, b


def soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    """sum(min(a, b)) / sum(max(a, b)): 1 = identical (also two empty maps), 0 = disjoint."""
    a, b = _pair(a, b)
    union = float(np.maximum(a, b).sum())
    if union == 0.0:
        return 1.0
    return float(np.minimum(a, b).sum()) / union


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of the pixel values; for a constant map 1.0 when the maps are equal, else 0.0."""
    a, b = _pair(a, b)
    da, db = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = float(np.sqrt((da * da).sum() * (db * db).sum()))
    if denom == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.clip((da * db).sum() / denom, -1.0, 1.0))
