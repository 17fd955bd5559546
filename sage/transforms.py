"""Image preprocessing: the one place that resizes images and their saliency maps together.

`preprocess` is shared by training and serving: stored pixels -> window -> channels -> letterbox
(aspect kept, zero padding, never squashed); `letterbox_saliency` places a saliency map exactly as
its image, and `Letterbox.to_original` maps heatmaps back onto the original pixel grid.
Decoding and resizing happen once per image; random
augmentation happens per batch on the device (`augment_batch`), with the image and its saliency map
stacked so both get exactly the same flip and crop; `normalize` turns uint8 pixels into the float
input every backbone expects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sage.imageio import window_to_unit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Letterbox:
    """Where an image of width x height sits inside the square model input of side `size`.

    The image is scaled by size / max(width, height) (aspect kept) and centred; the rest is padding
    (zeros: black in the image, "irrelevant" in a saliency map). The same geometry maps an input-
    grid heatmap back onto the original pixel grid (`to_original`).
    """

    width: int
    height: int
    size: int

    @property
    def scale(self) -> float:
        return self.size / max(self.width, self.height)

    @property
    def inner(self) -> tuple[int, int]:
        """(width, height) of the image inside the input."""
        return (
            min(self.size, max(1, round(self.width * self.scale))),
            min(self.size, max(1, round(self.height * self.scale))),
        )

    @property
    def offset(self) -> tuple[int, int]:
        """(left, top) padding."""
        w, h = self.inner
        return (self.size - w) // 2, (self.size - h) // 2

    def to_input(self, planes: torch.Tensor) -> torch.Tensor:
        """(C, height, width) float -> (C, size, size): bilinear (antialiased) resize and zero padding."""
        w, h = self.inner
        left, top = self.offset
        resized = F.interpolate(
            planes[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
        )[0]
        out = torch.zeros(planes.shape[0], self.size, self.size, dtype=resized.dtype)
        out[:, top : top + h, left : left + w] = resized
        return out

    def to_original(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, h, w) maps over the whole square input (any resolution, e.g. a CAM grid) ->
        (B, height, width) over the original image: the padding is cropped away, nothing squashed."""
        maps = maps.float()
        if maps.shape[-2:] != (self.size, self.size):
            maps = F.interpolate(
                maps[:, None], size=(self.size, self.size), mode="bilinear", align_corners=False
            )[:, 0]
        w, h = self.inner
        left, top = self.offset
        inner = maps[:, top : top + h, left : left + w]
        return F.interpolate(
            inner[:, None], size=(self.height, self.width), mode="bilinear", align_corners=False
        )[:, 0]


def preprocess(
    pixels: np.ndarray,
    size: int,
    window: tuple[float, float],
    channels: int = 3,
) -> tuple[torch.Tensor, Letterbox]:
    """The one preprocessing of training and serving: stored pixels -> model input.

    `pixels` (H, W) or (H, W, 3) at full precision (sage.imageio) -> through the display `window`
    (center, width) to [0, 1] -> `channels` (grayscale repeated to 3 for the ImageNet backbones) ->
    letterboxed to (channels, size, size). Returned as uint8 (the [0, 1] values times 255,
    rounded), which keeps decoded splits compact; `normalize` turns it into the model's input.
    """
    unit = torch.from_numpy(window_to_unit(pixels, *window))
    planes = unit[None] if unit.ndim == 2 else unit.permute(2, 0, 1)
    if planes.shape[0] != channels:
        if planes.shape[0] == 1:
            planes = planes.expand(channels, -1, -1)
        elif channels == 1:
            planes = planes.mean(dim=0, keepdim=True)
        else:
            raise ValueError(f"cannot make {channels} channels from {planes.shape[0]}")
    box = Letterbox(width=int(pixels.shape[1]), height=int(pixels.shape[0]), size=size)
    x = box.to_input(planes)
    return (x * 255.0 + 0.5).clamp(0, 255).to(torch.uint8), box


def letterbox_saliency(saliency: np.ndarray, size: int) -> torch.Tensor:
    """A (H, W) uint8 saliency map letterboxed exactly as its image is: uint8 (1, size, size)."""
    box = Letterbox(width=int(saliency.shape[1]), height=int(saliency.shape[0]), size=size)
    x = box.to_input(torch.from_numpy(np.asarray(saliency, dtype=np.float32))[None])
    return (x + 0.5).clamp(0, 255).to(torch.uint8)


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB uint8 tensor (3, size, size) of an 8-bit PIL image, letterboxed by `preprocess`."""
    return preprocess(np.asarray(image.convert("RGB"), dtype=np.uint8), size, (128.0, 256.0))[0]


def saliency_to_tensor(saliency: Image.Image, size: int) -> torch.Tensor:
    """uint8 tensor (1, size, size) of a grayscale saliency map, letterboxed as its image is."""
    return letterbox_saliency(np.asarray(saliency.convert("L"), dtype=np.uint8), size)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] float (B, 3, H, W) -> float32 normalised with the ImageNet statistics."""
    if images.dtype == torch.uint8:
        images = images.float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype)[None, :, None, None]
    return (images - mean) / std


def augment_batch(
    images: torch.Tensor,
    saliency: torch.Tensor,
    mode: str,
    crop_scale: tuple[float, float] = (0.6, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and/or resized crops applied identically to images (B,3,H,W) and maps (B,1,H,W).

    Both are float in [0,1]. mode: none, flip, crop or crop+flip. The crop keeps a random area
    share in `crop_scale` with an aspect ratio in `crop_ratio` and resizes it back to H x W.
    """
    if mode == "none":
        return images, saliency
    b = images.shape[0]
    device = images.device
    sx = torch.ones(b, device=device)
    sy = torch.ones(b, device=device)
    tx = torch.zeros(b, device=device)
    ty = torch.zeros(b, device=device)
    if "crop" in mode:
        area = torch.empty(b, device=device).uniform_(*crop_scale)
        log_ratio = torch.empty(b, device=device).uniform_(np.log(crop_ratio[0]), np.log(crop_ratio[1]))
        ratio = torch.exp(log_ratio)
        sx = torch.sqrt(area * ratio).clamp(max=1.0)
        sy = torch.sqrt(area / ratio).clamp(max=1.0)
        tx = (torch.rand(b, device=device) * 2 - 1) * (1 - sx)
        ty = (torch.rand(b, device=device) * 2 - 1) * (1 - sy)
    if "flip" in mode:
        sx = sx * torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
    stacked = torch.cat([images, saliency], dim=1)
    grid = F.affine_grid(theta.to(stacked.dtype), list(stacked.shape), align_corners=False)
    out = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :3], out[:, 3:]
