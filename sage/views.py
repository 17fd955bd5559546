"""Degradations D(x) and SAGE's saliency views, built on the device from a normalised batch.

x+ = S*x + (1-S)*D(x) keeps what the expert marked and degrades the rest; x- = (1-S)*x + S*D(x)
degrades what the expert marked and keeps the rest. Each view gets its own draw of D (kind and
strength per image), so the degradation is present in both and cannot tell the views apart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEGRADATION_KINDS = ("blur", "noise", "mean", "swap")


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
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel[:, None, None, :], groups=b * c
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel[:, None, :, None], groups=b * c
    )
    return flat.reshape(b, c, h, w)


def degrade(
    x: torch.Tensor,
    kind: str = "mix",
    strength_min: float = 1.0,
    strength_max: float = 1.0,
    max_blur_sigma: float = 0.125,
    fill: str = "image",
    donors: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """D(x): a degraded copy of the normalised batch x (B, C, H, W).

    kind: "blur" (Gaussian, sigma = strength * max_blur_sigma * image side), "noise" (blend towards
    Gaussian noise with the image's per-channel mean and std), "mean" (blend towards the image's
    per-channel mean), "swap" (blend towards another image of the batch), "mix" (one of the four
    drawn per image) or several joined by "+" ("blur+noise+mean": one of those drawn per image).
    The strength is drawn uniformly per image from [strength_min, strength_max]; strength 1 of
    "noise"/"mean"/"swap" replaces the pixel.
    fill: the per-channel mean and std that "mean" and "noise" fill with: "image" (each image's
    own) or "batch" (the whole batch's). An image's own statistics keep a global cue such as a
    colour cast in the degraded pixels; the batch's do not.
    donors: for "swap", (pool, own) draws each image's replacement uniformly from `pool` (N, C, H, W)
    minus its own row `own[i]` (e.g. the whole batch, annotated or not); by default a random cycle
    over x itself.
    """
    b = x.shape[0]
    strength = torch.empty(b, device=x.device).uniform_(strength_min, strength_max)
    s = strength.to(x.dtype)[:, None, None, None]
    kinds = degradation_kinds(kind)
    if fill not in ("image", "batch"):
        raise ValueError(f"unknown fill {fill!r}; choose image or batch")
    stats = None
    if fill == "batch" and any(k in ("mean", "noise") for k in kinds):
        std, mean = torch.std_mean(x, dim=(0, 2, 3), keepdim=True)
        stats = (mean, std)
    if len(kinds) == 1:
        return _degrade_one(x, kinds[0], strength, s, max_blur_sigma, stats, donors)
    choice = torch.randint(0, len(kinds), (b,), device=x.device)
    out = torch.empty_like(x)
    for i, name in enumerate(kinds):
        rows = (choice == i).nonzero().flatten()
        if len(rows):
            sub = None if donors is None else (donors[0], donors[1][rows])
            out[rows] = _degrade_one(x[rows], name, strength[rows], s[rows], max_blur_sigma, stats, sub)
    return out


def degradation_kinds(kind: str) -> tuple[str, ...]:
    """ "mix" -> every kind; "blur+mean" -> those kinds (one drawn per image); "blur" -> itself."""
    kinds = DEGRADATION_KINDS if kind == "mix" else tuple(kind.split("+"))
    bad = [k for k in kinds if k not in DEGRADATION_KINDS]
    if bad or not kinds:
        raise ValueError(
            f"unknown degradation {kind!r}; choose mix, one of {', '.join(DEGRADATION_KINDS)}, or several joined by '+'"
        )
    return kinds


def _degrade_one(x, kind, strength, s, max_blur_sigma, stats=None, donors=None):
    if kind == "blur":
        return gaussian_blur(x, strength * max_blur_sigma * max(x.shape[-2:]))
    if kind == "swap":
        # content of other images of the batch: a non-salient decoy then disagrees with the salient
        # object as it does at test time, which blur/noise/mean (that only remove it) never show
        if donors is not None and donors[0].shape[0] >= 2:
            pool, own = donors
            pick = torch.randint(0, pool.shape[0] - 1, (x.shape[0],), device=x.device)
            pick = pick + (pick >= own).long()  # uniform over the pool without the image itself
            return x + s * (pool[pick] - x)
        if x.shape[0] < 2:
            return x + s * (x.mean(dim=(2, 3), keepdim=True) - x)
        order = torch.randperm(x.shape[0], device=x.device)
        source = torch.empty_like(order)
        source[order] = order.roll(1)  # a random cycle: every image gets another one's pixels
        return x + s * (x[source] - x)
    if stats is None:
        std, mean = torch.std_mean(x, dim=(2, 3), keepdim=True)
    else:
        mean, std = stats
    if kind == "mean":
        return x + s * (mean - x)
    return x + s * (mean + std * torch.randn_like(x) - x)


def salient_preserving_view(x: torch.Tensor, saliency: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
    """x+ = S*x + (1-S)*D(x): what the expert marked survives, the rest is degraded."""
    return saliency * x + (1 - saliency) * degraded


def saliency_degrading_view(x: torch.Tensor, saliency: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
    """x- = (1-S)*x + S*D(x): what the expert marked is degraded, the rest survives."""
    return (1 - saliency) * x + saliency * degraded


def preprocess_saliency(saliency: torch.Tensor, mode: str, threshold: float) -> torch.Tensor:
    """The map a method trains with, from the painted S in [0, 1]: "continuous" keeps S, "threshold"
    gives S >= threshold, "ramp" gives clamp((S - threshold) / (1 - threshold), 0, 1) (graded, but
    a brush stroke's faint rim counts as non-salient). Every saliency method offers the three."""
    if mode == "continuous":
        return saliency
    if mode == "threshold":
        return (saliency >= threshold).to(saliency.dtype)
    if mode == "ramp":
        if threshold >= 1:
            return (saliency >= 1).to(saliency.dtype)
        return ((saliency - threshold) / (1 - threshold)).clamp(0, 1)
    raise ValueError(f"unknown saliency mode {mode!r}; choose continuous, threshold or ramp")
