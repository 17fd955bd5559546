"""sage.agreement: the one soft IoU and Pearson r that annotator agreement and model alignment share."""

from __future__ import annotations

import numpy as np
import pytest

from app.services.annotations import agreement
from sage.agreement import pearson, soft_iou
from sage.metrics import saliency_alignment


def test_soft_iou_and_pearson_of_ordinary_maps():
    a = np.zeros((4, 4))
    a[:2] = 1.0
    b = np.zeros((4, 4))
    b[1:3] = 1.0
    assert soft_iou(a, a) == 1.0 and soft_iou(a, b) == pytest.approx(4 / 12)
    assert soft_iou(a, 1.0 - a) == 0.0
    assert pearson(a, a) == pytest.approx(1.0) and pearson(a, 1.0 - a) == pytest.approx(-1.0)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_uint8_maps_are_read_as_0_to_1():
    a = np.full((3, 3), 51, np.uint8)
    assert soft_iou(a, np.full((3, 3), 0.2)) == pytest.approx(1.0)
    assert soft_iou(a, np.full((3, 3), 255, np.uint8)) == pytest.approx(0.2)


def test_edge_cases_empty_and_constant_maps():
    empty, full = np.zeros((5, 5)), np.ones((5, 5))
    varied = np.linspace(0, 1, 25).reshape(5, 5)
    assert soft_iou(empty, empty) == 1.0  # identical, even with nothing painted
    assert soft_iou(empty, varied) == 0.0
    assert pearson(empty, empty) == 1.0 and pearson(full * 0.3, full * 0.3) == 1.0
    assert pearson(empty, full) == 0.0 and pearson(empty, varied) == 0.0 and pearson(varied, full) == 0.0
    with pytest.raises(ValueError, match="must match"):
        soft_iou(empty, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="must match"):
        pearson(empty, np.zeros((4, 5)))


def test_annotator_agreement_and_model_alignment_give_the_same_numbers():
    rng = np.random.default_rng(0)
    maps = [rng.random((6, 6)), np.zeros((6, 6)), np.zeros((6, 6)), np.full((6, 6), 0.5)]
    for a, b in [(maps[0], maps[1]), (maps[1], maps[2]), (maps[0], maps[3]), (maps[0], maps[0] ** 2)]:
        pair = agreement([a, b])
        aligned = saliency_alignment(a, b)
        assert pair.iou == pytest.approx(aligned["soft_iou"]) and pair.pearson == pytest.approx(
            aligned["pearson"]
        )
    three = agreement(maps[:3])
    assert three.pairs == 3 and three.iou == pytest.approx((0 + 0 + 1) / 3)
    assert three.pearson == pytest.approx((0 + 0 + 1) / 3)
