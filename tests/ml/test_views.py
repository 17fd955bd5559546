import math

import pytest
import torch

from sage.views import degrade, gaussian_blur, saliency_degrading_view, salient_preserving_view


def test_views_follow_the_saliency_map():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    d = torch.randn(2, 3, 8, 8)
    s = torch.zeros(2, 1, 8, 8)
    s[:, :, :4] = 1.0  # top half salient
    plus = salient_preserving_view(x, s, d)
    minus = saliency_degrading_view(x, s, d)
    assert torch.equal(plus[:, :, :4], x[:, :, :4]) and torch.equal(plus[:, :, 4:], d[:, :, 4:])
    assert torch.equal(minus[:, :, :4], d[:, :, :4]) and torch.equal(minus[:, :, 4:], x[:, :, 4:])
    half = torch.full_like(s, 0.5)
    assert torch.allclose(salient_preserving_view(x, half, d), 0.5 * (x + d))


@pytest.mark.parametrize("kind", ["mean", "noise", "blur"])
def test_full_strength_degradation_removes_local_detail(kind):
    torch.manual_seed(0)
    x = torch.zeros(4, 3, 16, 16)
    x[:, :, 2:5, 2:5] = 5.0  # a bright patch, like a decoy
    out = degrade(x, kind, 1.0, 1.0, max_blur_sigma=0.25)
    assert out.shape == x.shape
    patch_contrast = (out[:, :, 2:5, 2:5].mean() - out[:, :, 10:, 10:].mean()).abs()
    assert patch_contrast < 0.5 * 5.0
    if kind == "mean":
        assert torch.allclose(out, x.mean(dim=(2, 3), keepdim=True).expand_as(x))


def test_zero_strength_is_identity_and_strength_is_random_per_image():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 8, 8)
    assert torch.allclose(degrade(x, "mean", 0.0, 0.0), x)
    out = degrade(x, "mean", 0.0, 1.0)
    ratios = (out - x).flatten(1).norm(dim=1) / (x.mean(dim=(2, 3), keepdim=True) - x).flatten(1).norm(dim=1)
    assert ratios.std() > 0.05  # strengths differ between images


def test_mix_uses_several_degradations():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    out = degrade(x, "mix", 1.0, 1.0)
    constant = (out.flatten(2).std(dim=2) < 1e-5).all(dim=1)  # mean fill gives flat images
    assert 0 < int(constant.sum()) < 64


def test_gaussian_blur_preserves_mean_and_uses_per_image_sigma():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    out = gaussian_blur(x, torch.tensor([0.5, 4.0]))
    assert out.std(dim=(1, 2, 3))[1] < out.std(dim=(1, 2, 3))[0]
    assert math.isclose(
        float(gaussian_blur(torch.ones(1, 1, 9, 9), torch.tensor([2.0])).mean()), 1.0, rel_tol=1e-5
    )


def test_swap_takes_non_salient_content_from_another_image():
    torch.manual_seed(0)
    x = torch.arange(8, dtype=torch.float32)[:, None, None, None].expand(8, 3, 4, 4).clone()
    out = degrade(x, "swap", 1.0, 1.0)
    sources = out[:, 0, 0, 0]
    assert sorted(sources.tolist()) == list(range(8))  # a permutation of the batch
    assert (sources != x[:, 0, 0, 0]).all()  # never the image itself
    x_plus = salient_preserving_view(x, torch.zeros(8, 1, 4, 4), out)
    assert torch.equal(x_plus, out)  # with S = 0 the whole image comes from another one


def test_joined_degradations_draw_only_those_kinds():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 8, 8)
    out = degrade(x, "mean+swap", 1.0, 1.0)
    flat = (out.flatten(2).std(dim=2) < 1e-5).all(dim=1)  # mean fill
    assert 0 < int(flat.sum()) < 32
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(x, "mean+fog", 1.0, 1.0)


def test_batch_fill_removes_a_global_colour_cast():
    x = torch.zeros(4, 3, 8, 8)
    x[0, 0] = 2.0  # image 0 has a red cast everywhere
    own = degrade(x, "mean", 1.0, 1.0, fill="image")
    batch = degrade(x, "mean", 1.0, 1.0, fill="batch")
    assert float(own[0, 0].mean()) == pytest.approx(2.0)  # its own mean keeps the cast
    assert float(batch[0, 0].mean()) == pytest.approx(0.5)  # the batch mean does not
    assert torch.allclose(batch[0], batch[1])


def test_swap_donors_come_from_the_pool_but_never_the_image_itself():
    torch.manual_seed(0)
    pool = torch.arange(10, dtype=torch.float32)[:, None, None, None].expand(10, 1, 2, 2).clone()
    own = torch.tensor([2, 5])
    for _ in range(20):
        out = degrade(pool[own], "swap", 1.0, 1.0, donors=(pool, own))
        picked = out[:, 0, 0, 0].long()
        assert (picked != own).all() and ((picked >= 0) & (picked < 10)).all()
