"""The one preprocessing of training and serving: window, channels, letterbox (no squashing), the
saliency map placed exactly as its image, heatmaps back on the original pixel grid, and the
image-size defaults and coarse-CAM check of TrainConfig."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sage import imageio
from sage.config import TrainConfig, default_image_size
from sage.transforms import Letterbox, letterbox_saliency, preprocess


def test_letterbox_geometry_keeps_the_aspect_ratio():
    box = Letterbox(width=90, height=50, size=64)
    assert box.inner == (64, 36) and box.offset == (0, 14)
    tall = Letterbox(width=30, height=120, size=64)
    assert tall.inner == (16, 64) and tall.offset == (24, 0)


def test_preprocess_windows_12_bit_pixels_and_pads_without_squashing():
    pixels = np.full((40, 80), 1000, dtype=np.uint16)
    yy, xx = np.mgrid[:40, :80]
    pixels[(yy - 20) ** 2 + (xx - 40) ** 2 <= 12**2] = 3000  # a circle, 24 px across
    x, box = preprocess(pixels, 64, window=(2000.5, 2000.0))  # 1000 -> black, 3000 -> white
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale -> 3 equal channels
    left, top = box.offset
    assert (left, top) == (0, 16) and x[:, :top].max() == 0 and x[:, top + 32 :].max() == 0  # padding
    bright = (x[0] > 127).nonzero()
    h = bright[:, 0].max() - bright[:, 0].min() + 1
    w = bright[:, 1].max() - bright[:, 1].min() + 1
    assert abs(int(h) - int(w)) <= 1  # still a circle: the same scale on both axes


def test_rgb_keeps_its_channels():
    pixels = np.zeros((10, 10, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    x, _ = preprocess(pixels, 16, window=(128.0, 256.0))
    assert x[0].min() == 255 and x[1].max() == 0 and x[2].max() == 0


def test_mask_and_heatmap_round_trip_through_the_letterbox():
    mask = np.zeros((60, 150), dtype=np.uint8)
    mask[10:40, 100:140] = 255  # a block in the right part of a wide image
    inp = letterbox_saliency(mask, 64)
    box = Letterbox(width=150, height=60, size=64)
    # the map sits where its image sits: padding rows are empty
    left, top = box.offset
    assert inp[0, :top].max() == 0 and inp[0, top + box.inner[1] :].max() == 0
    back = box.to_original(inp.float() / 255.0)[0].numpy()
    assert back.shape == (60, 150)
    iou = ((back > 0.5) & (mask > 0)).sum() / ((back > 0.5) | (mask > 0)).sum()
    assert iou > 0.85
    # a CAM-grid heatmap (coarser than the input) lands on the same original pixels
    cam = torch.nn.functional.adaptive_avg_pool2d(inp.float()[None] / 255.0, (8, 8))[0]
    heat = box.to_original(cam)[0].numpy()
    assert heat.shape == (60, 150)
    assert heat[10:40, 100:140].mean() > 3 * heat[:, :80].mean()


def test_preprocess_matches_display_window_to_unit():
    pixels = np.random.default_rng(0).integers(0, 4096, (32, 32), dtype=np.uint16)
    x, _ = preprocess(pixels, 32, window=(2048.0, 4096.0))
    expected = np.rint(imageio.window_to_unit(pixels, 2048.0, 4096.0) * 255)
    assert np.abs(x[0].numpy().astype(int) - expected).max() <= 1


@pytest.mark.parametrize(
    ("backbone", "size"),
    [("tiny", 64), ("tiny-wide", 64), ("resnet18", 224), ("vit_b_16", 224), ("densenet121", 224)],
)
def test_image_size_defaults_by_backbone(backbone, size):
    assert default_image_size(backbone) == size
    assert TrainConfig.from_dict({"backbone": backbone}).image_size == size


@pytest.mark.parametrize(
    ("backbone", "size", "smallest"), [("resnet18", 64, 224), ("tiny", 16, 28), ("vit_b_16", 96, 112)]
)
def test_coarse_cam_is_refused_naming_the_smallest_size(backbone, size, smallest):
    with pytest.raises(ValueError, match=f"smallest image_size for 7x7 is {smallest}"):
        TrainConfig.from_dict({"backbone": backbone, "image_size": size})
    assert TrainConfig.from_dict({"backbone": backbone, "image_size": size, "allow_coarse_cam": True})
    assert TrainConfig.from_dict({"backbone": backbone, "image_size": smallest}).image_size == smallest


def test_window_choice_is_validated():
    assert TrainConfig.from_dict({"window": "auto"}).window == "auto"
    with pytest.raises(ValueError, match="window"):
        TrainConfig.from_dict({"window": "bone"})
