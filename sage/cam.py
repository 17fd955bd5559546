"""Class activation maps: CAM (head weights) and Grad-CAM (gradients), batched, for every backbone.

Both read `ModelOutput.features`, the spatial output of the model's `cam_layer`. Maps come back at
that layer's resolution; `upsample` brings them to any size and `normalize_maps` to [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sage.backbones import Classifier, ModelOutput


def class_activation_map(model: Classifier, out: ModelOutput, classes: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al. 2016): sum_d W[c, d] * features[:, d], shape (B, h, w), not normalised.

    Exact for global-average-pool + linear heads (tiny, ResNet, DenseNet, EfficientNet); for
    ConvNeXt (LayerNorm before the head) and ViT (class-token head) it is the usual approximation.
    """
    weights = model.head.weight[classes].to(out.features.dtype)  # (B, D)
    return torch.einsum("bdhw,bd->bhw", out.features, weights)


def grad_cam(out: ModelOutput, classes: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) for each row's class, shape (B, h, w), >= 0, not normalised.

    One backward pass for the whole batch: the per-row class scores are summed, and in eval mode a
    row's score depends only on its own features. create_graph=True keeps the map differentiable
    (GRADIA trains through it).
    """
    score = out.logits.gather(1, classes[:, None].to(out.logits.device)).sum()
    (grads,) = torch.autograd.grad(score, out.features, create_graph=create_graph, retain_graph=create_graph)
    weights = grads.mean(dim=(2, 3))
    return F.relu(torch.einsum("bdhw,bd->bhw", out.features, weights))


def normalize_maps(maps: torch.Tensor, mode: str = "max", eps: float = 1e-8) -> torch.Tensor:
    """Scale each map of (B, h, w) to [0, 1]: by its max ("max") or min-max ("minmax")."""
    flat = maps.flatten(1).float()
    if mode == "minmax":
        lo = flat.min(dim=1, keepdim=True).values
        flat = flat - lo
    elif mode != "max":
        raise ValueError(f"unknown normalisation {mode!r}; use max or minmax")
    hi = flat.max(dim=1, keepdim=True).values
    return (flat / (hi + eps)).clamp(0, 1).reshape(maps.shape)


def upsample(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Bilinear resize of (B, h, w) maps to (B, *size)."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def saliency_at(saliency: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Human saliency (B, 1, H, W) averaged down to a CAM grid of size (..., h, w): (B, h, w)."""
    return F.adaptive_avg_pool2d(saliency.float(), (size[-2], size[-1]))[:, 0]
