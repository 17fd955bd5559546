"""Image preprocessing: the one place that resizes images and their saliency maps together.

Decoding and resizing happen once per image (`image_to_tensor`, `saliency_to_tensor`); random
augmentation happens per batch on the device (`augment_batch`), with the image and its saliency map
stacked so both get exactly the same flip and crop; `normalize` turns uint8 pixels into the float
input every backbone expects.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_to_tensor(image: Image.Image, size: int) -> torch.Tensor:
    """RGB uint8 tensor (3, size, size): the image resized (bilinear, antialiased) to a square."""
    image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def saliency_to_tensor(saliency: Image.Image, size: int) -> torch.Tensor:
    """uint8 tensor (1, size, size) of a grayscale saliency map resized exactly as its image is."""
    saliency = saliency.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(saliency, dtype=np.uint8).copy())[None].contiguous()


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
