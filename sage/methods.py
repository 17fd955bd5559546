"""Training methods as task objects (timm style): each owns forward + loss for one batch.

`create_task(model, config)` returns an nn.Module whose `forward(batch)` gives
`{"loss": scalar to minimise, "output": clean-image logits, <each term>: detached scalar}`; the
training loop never branches on the method name. A sample without a saliency map
(`batch.has_saliency` False) contributes to cross-entropy only: every saliency term is averaged
over the annotated rows of the batch and is zero when there are none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sage.cam import class_activation_map, grad_cam, normalize_maps, saliency_at
from sage.config import TrainConfig
from sage.models import Classifier, batchnorm_reference, use_reference_batchnorm
from sage.views import degrade, saliency_degrading_view, salient_preserving_view


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, H, W) normalised float
    saliency: torch.Tensor  # (B, 1, H, W) float in [0, 1]; zeros where there is no map
    has_saliency: torch.Tensor  # (B,) bool
    labels: torch.Tensor  # (B,) int64


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample `values` over rows where `mask` is True (0 when there are none)."""
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1)


class Task(nn.Module):
    """Base class: holds the model; subclasses implement `forward(batch) -> dict`."""

    def __init__(self, model: Classifier, config: TrainConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class CrossEntropyTask(Task):
    """`ce`: plain cross-entropy; saliency maps are ignored."""

    def forward(self, batch):
        logits = self.model(batch.images)
        ce = F.cross_entropy(logits.float(), batch.labels)
        return {"loss": ce, "output": logits, "ce": ce.detach()}


class BlurTask(Task):
    """`blur`: cross-entropy on x+, the image with its non-salient pixels blurred (Boyd et al. 2022)."""

    def forward(self, batch):
        x = batch.images
        blurred = degrade(x, "blur", 1.0, 1.0, max_blur_sigma=self.config.baselines.blur_sigma)
        x_plus = salient_preserving_view(x, batch.saliency.to(x.dtype), blurred)
        inputs = torch.where(batch.has_saliency[:, None, None, None], x_plus, x)
        logits = self.model(inputs)
        ce = F.cross_entropy(logits.float(), batch.labels)
        return {"loss": ce, "output": logits, "ce": ce.detach()}


class CyborgTask(Task):
    """`cyborg`: (1-alpha) CE + alpha MSE(min-max normalised CAM of the true class, S at CAM size)."""

    def forward(self, batch):
        out = self.model.forward_all(batch.images)
        ce = F.cross_entropy(out.logits.float(), batch.labels)
        cam = normalize_maps(class_activation_map(self.model, out, batch.labels), mode="minmax")
        target = saliency_at(batch.saliency, cam.shape[-2:])
        mse = masked_mean(((cam - target) ** 2).flatten(1).mean(1), batch.has_saliency)
        alpha = self.config.baselines.cyborg_alpha
        loss = (1 - alpha) * ce + alpha * mse
        return {"loss": loss, "output": out.logits, "ce": ce.detach(), "cam_mse": mse.detach()}


class RRRTask(Task):
    """`rrr`: CE + lambda * sum of squared input gradients of sum(log p) on non-salient pixels
    (Right for the Right Reasons, Ross et al. 2017), with (1 - S) as the soft annotation mask."""

    def forward(self, batch):
        x = batch.images.detach().requires_grad_(True)
        logits = self.model(x)
        ce = F.cross_entropy(logits.float(), batch.labels)
        if batch.has_saliency.any():
            log_probs = F.log_softmax(logits.float(), dim=1)
            (grads,) = torch.autograd.grad(log_probs.sum(), x, create_graph=True)
            penalty = ((1 - batch.saliency) * grads).pow(2).flatten(1).sum(1)
            rrr = masked_mean(penalty, batch.has_saliency)
        else:
            rrr = ce.new_zeros(())
        loss = ce + self.config.baselines.rrr_lambda * rrr
        return {"loss": loss, "output": logits, "ce": ce.detach(), "input_gradient": rrr.detach()}


class GradiaTask(Task):
    """`gradia`: CE + lambda * L1(Grad-CAM of the true class normalised to [0,1], S at CAM size)."""

    def forward(self, batch):
        out = self.model.forward_all(batch.images)
        ce = F.cross_entropy(out.logits.float(), batch.labels)
        if batch.has_saliency.any():
            cam = normalize_maps(grad_cam(out, batch.labels, create_graph=True), mode="max")
            target = saliency_at(batch.saliency, cam.shape[-2:])
            l1 = masked_mean((cam - target).abs().flatten(1).mean(1), batch.has_saliency)
        else:
            l1 = ce.new_zeros(())
        loss = ce + self.config.baselines.gradia_lambda * l1
        return {"loss": loss, "output": out.logits, "ce": ce.detach(), "gradcam_l1": l1.detach()}


def jensen_shannon(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-row Jensen-Shannon divergence (natural log) of two (B, K) distributions, in [0, ln 2]."""
    m = 0.5 * (p + q)
    kl_pm = (p * (torch.log(p + eps) - torch.log(m + eps))).sum(1)
    kl_qm = (q * (torch.log(q + eps) - torch.log(m + eps))).sum(1)
    return (0.5 * (kl_pm + kl_qm)).clamp(0, math.log(2))


def embedding_distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-row distance: euclidean ||a - b|| or cosine 1 - cos(a, b)."""
    if kind == "cosine":
        return 1 - F.cosine_similarity(a, b, dim=1)
    return (a - b).pow(2).sum(1).add(1e-12).sqrt()


def triplet(anchor, positive, negative, margin: float, kind: str) -> torch.Tensor:
    """Per-row max(0, d(anchor, positive) - d(anchor, negative) + margin)."""
    return F.relu(
        embedding_distance(anchor, positive, kind) - embedding_distance(anchor, negative, kind) + margin
    )


def degraded_confidence_hinge(logits_minus, labels, temperature: float, margin: float) -> torch.Tensor:
    """Per-row relu(softmax(z-/T)[y] - 1/K - margin): x- may not still pick the class confidently."""
    probs = F.softmax(logits_minus.float() / temperature, dim=1)
    chance = 1.0 / probs.shape[1]
    return F.relu(probs.gather(1, labels[:, None])[:, 0] - chance - margin)


class SageTask(Task):
    """`sage` (and `sage-inverted` with S replaced by 1 - S): DESIGN.md section 4.

    The clean batch and the x+ / x- views of its annotated rows run as one batch; views are built
    here, on the device. loss = CE(z, y) + l_trip * triplet(e, e+, e-) + l_js * JSD(z/T, z+/T)
    [+ l_hinge * hinge on z-], the saliency terms averaged over annotated rows.
    """

    def __init__(self, model: Classifier, config: TrainConfig, inverted: bool = False) -> None:
        super().__init__(model, config)
        self.inverted = inverted
        if config.sage.batchnorm == "clean":
            use_reference_batchnorm(model)

    def saliency(self, batch: Batch) -> torch.Tensor:
        s = batch.saliency
        o = self.config.sage
        if o.saliency_mode == "threshold":
            s = (s >= o.threshold).to(s.dtype)
        elif o.saliency_mode == "ramp":
            s = (
                ((s - o.threshold) / (1 - o.threshold)).clamp(0, 1)
                if o.threshold < 1
                else (s >= 1).to(s.dtype)
            )
        return 1 - s if self.inverted else s

    def forward(self, batch):
        o = self.config.sage
        x, y = batch.images, batch.labels
        n = x.shape[0]
        rows = batch.has_saliency.nonzero().flatten()
        cap = max(1, math.ceil(o.view_share * n))
        if len(rows) > cap:  # views for a random subset of the annotated rows
            rows = rows[torch.randperm(len(rows), device=rows.device)[:cap]].sort().values
        if len(rows) == 0:
            logits = self.model(x)
            ce = F.cross_entropy(logits.float(), y)
            zero = ce.new_zeros(())
            return {
                "loss": ce,
                "output": logits,
                "ce": ce.detach(),
                "triplet": zero,
                "jsd": zero,
                "hinge": zero,
            }
        xs, ys = x[rows], y[rows]
        s = self.saliency(batch)[rows].to(x.dtype)
        donors = (x, rows) if o.swap_from_batch else None  # swap may take any image, annotated or not
        kw: dict[str, Any] = dict(
            kind=o.degradation,
            strength_min=o.strength_min,
            strength_max=o.strength_max,
            fill=o.fill,
            donors=donors,
        )
        x_plus = salient_preserving_view(xs, s, degrade(xs, **kw))  # independent draws of D per view
        x_minus = saliency_degrading_view(xs, s, degrade(xs, **kw))
        inputs = torch.cat([x, x_plus, x_minus])
        if o.batchnorm == "clean":
            with batchnorm_reference(self.model, n):
                out = self.model.forward_all(inputs)
        else:
            out = self.model.forward_all(inputs)
        k = len(rows)
        logits, logits_plus, logits_minus = out.logits[:n], out.logits[n : n + k], out.logits[n + k :]
        emb = out.embedding.float()
        if o.normalize:
            emb = F.normalize(emb, dim=1)
        e, e_plus, e_minus = emb[:n][rows], emb[n : n + k], emb[n + k :]
        ce = F.cross_entropy(logits.float(), y)
        trip = triplet(e, e_plus, e_minus, o.margin, o.distance).mean()
        t = o.temperature
        p = F.softmax(logits[rows].float() / t, dim=1)
        p_plus = F.softmax(logits_plus.float() / t, dim=1)
        jsd = jensen_shannon(p, p_plus).mean()
        hinge = degraded_confidence_hinge(logits_minus, ys, t, o.hinge_margin).mean()
        loss = ce + o.lambda_trip * trip + o.lambda_js * jsd + o.lambda_hinge * hinge
        return {
            "loss": loss, "output": logits, "ce": ce.detach(),
            "triplet": trip.detach(), "jsd": jsd.detach(), "hinge": hinge.detach(),
        }  # fmt: skip


TASKS: dict[str, type[Task]] = {
    "ce": CrossEntropyTask,
    "blur": BlurTask,
    "cyborg": CyborgTask,
    "rrr": RRRTask,
    "gradia": GradiaTask,
    "sage": SageTask,
}


def create_task(model: Classifier, config: TrainConfig) -> Task:
    """The task object for `config.method` wrapped around `model`."""
    if config.method == "sage-inverted":
        return SageTask(model, config, inverted=True)
    if config.method not in TASKS:
        raise ValueError(
            f"unknown method {config.method!r}; choose one of: {', '.join([*TASKS, 'sage-inverted'])}"
        )
    return TASKS[config.method](model, config)


def uses_saliency(method: str) -> bool:
    return method != "ce"
