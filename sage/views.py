"""Degradations D(x) and SAGE's saliency views, built on the device from a normalised batch.

x+ = S*x + (1-S)*D(x) keeps what the expert marked and degrades the rest; x- = (1-S)*x + S*D(x)
degrades what the expert marked and keeps the rest. Each view gets its own draw of D (kind and
strength per image), so the degradation is present in both and cannot tell the views apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEGRADATION_KINDS = ("blur", "noise", "mean")


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (B, C, H, W) with its own Gaussian sigma (B,) in pixels (separable)."""
    b, c, h, w = x.shape
    sigma = sigma.to(device=x.device, dtype=torch.float32).clamp(min=1e-3)
    radius = max(1, min(int(math.ceil(3 * float(sigma.max()))), max(h, w) - 1))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (taps[None, :] / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).to(x.dtype)  # (B, k)
    kernel = kernel.repeat_interleave(c, dim=0)  # (B*C, k): one kernel per image, shared by its channels
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=b * c)
    return flat.reshape(b, c, h, w)


def degrade(
    x: torch.Tensor,
    kind: str = "mix",
    strength_min: float = 1.0,
    strength_max: float = 1.0,
    max_blur_sigma: float = 0.125,
) -> torch.Tensor:
    """D(x): a degraded copy of the normalised batch x (B, C, H, W).

    kind: "blur" (Gaussian, sigma = strength * max_blur_sigma * image side), "noise" (blend towards
    Gaussian noise with the image's per-channel mean and std), "mean" (blend towards the image's
    per-channel mean) or "mix" (one of the three drawn per image). The strength is drawn uniformly
    per image from [strength_min, strength_max]; strength 1 of "noise"/"mean" replaces the pixel.
    """
    b = x.shape[0]
    strength = torch.empty(b, device=x.device).uniform_(strength_min, strength_max)
    s = strength.to(x.dtype)[:, None, None, None]
    if kind == "mix":
        choice = torch.randint(0, len(DEGRADATION_KINDS), (b,), device=x.device)
        out = torch.empty_like(x)
        for i, name in enumerate(DEGRADATION_KINDS):
            rows = (choice == i).nonzero().flatten()
            if len(rows):
                out[rows] = _degrade_one(x[rows], name, strength[rows], s[rows], max_blur_sigma)
        return out
    if kind not in DEGRADATION_KINDS:
        raise ValueError(f"unknown degradation {kind!r}; choose one of: mix, {', '.join(DEGRADATION_KINDS)}")
    return _degrade_one(x, kind, strength, s, max_blur_sigma)


def _degrade_one(x, kind, strength, s, max_blur_sigma):
    if kind == "blur":
        return gaussian_blur(x, strength * max_blur_sigma * max(x.shape[-2:]))
    mean = x.mean(dim=(2, 3), keepdim=True)
    if kind == "mean":
        return x + s * (mean - x)
    std = x.std(dim=(2, 3), keepdim=True)
    return x + s * (mean + std * torch.randn_like(x) - x)


def salient_preserving_view(x: torch.Tensor, saliency: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
    """x+ = S*x + (1-S)*D(x): what the expert marked survives, the rest is degraded."""
    return saliency * x + (1 - saliency) * degraded


def saliency_degrading_view(x: torch.Tensor, saliency: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
    """x- = (1-S)*x + S*D(x): what the expert marked is degraded, the rest survives."""
    return (1 - saliency) * x + saliency * degraded
