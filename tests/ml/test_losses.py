import math

import torch
import torch.nn.functional as F

from sage.methods import degraded_confidence_hinge, jensen_shannon, masked_mean, triplet


def test_triplet_is_zero_when_the_margin_holds_and_positive_otherwise():
    anchor = F.normalize(torch.tensor([[1.0, 0.0]]), dim=1)
    near = F.normalize(torch.tensor([[0.99, 0.1]]), dim=1)
    far = F.normalize(torch.tensor([[-1.0, 0.0]]), dim=1)
    assert float(triplet(anchor, near, far, 0.5, "euclidean")) == 0.0
    assert float(triplet(anchor, far, near, 0.5, "euclidean")) > 1.0
    assert float(triplet(anchor, near, far, 0.5, "cosine")) == 0.0
    assert float(triplet(anchor, far, near, 0.5, "cosine")) > 1.0


def test_jsd_is_zero_for_equal_symmetric_and_bounded_by_ln2():
    p = torch.softmax(torch.randn(5, 4), dim=1)
    q = torch.softmax(torch.randn(5, 4), dim=1)
    assert torch.allclose(jensen_shannon(p, p), torch.zeros(5), atol=1e-6)
    assert torch.allclose(jensen_shannon(p, q), jensen_shannon(q, p), atol=1e-6)
    one_hot_a = torch.tensor([[1.0, 0.0]])
    one_hot_b = torch.tensor([[0.0, 1.0]])
    worst = float(jensen_shannon(one_hot_a, one_hot_b))
    assert math.isclose(worst, math.log(2), rel_tol=1e-4)
    assert (jensen_shannon(p, q) <= math.log(2)).all()


def test_hinge_is_zero_at_chance_and_positive_when_confident():
    labels = torch.tensor([0, 1])
    uniform = torch.zeros(2, 4)
    assert float(degraded_confidence_hinge(uniform, labels, 1.0, 0.0).sum()) == 0.0
    confident = torch.tensor([[10.0, 0, 0, 0], [0, 10.0, 0, 0]])
    assert (degraded_confidence_hinge(confident, labels, 1.0, 0.0) > 0.7).all()


def test_masked_mean_ignores_unannotated_rows_and_is_zero_without_any():
    values = torch.tensor([1.0, 100.0, 3.0])
    assert float(masked_mean(values, torch.tensor([True, False, True]))) == 2.0
    assert float(masked_mean(values, torch.tensor([False, False, False]))) == 0.0
