"""Training methods as task objects (timm style): each owns forward + loss for one batch.

`create_task(model, config)` returns an nn.Module whose `forward(batch)` gives
`{"loss": scalar to minimise, "output": clean-image logits, <each term>: detached scalar}`; the
training loop never branches on the method name. A sample without a saliency map
(`batch.has_saliency` False) contributes to cross-entropy only: every saliency term is averaged
over the annotated rows of the batch and is zero when there are none.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sage.backbones import Classifier, batchnorm_reference, use_reference_batchnorm
from sage.cam import class_activation_map, grad_cam, normalize_maps, saliency_at
from sage.config import Method, TrainConfig
from sage.views import degrade, preprocess_saliency, saliency_degrading_view, salient_preserving_view


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
        self.class_weights: torch.Tensor | None = None  # per-label CE weights (`sage.recipes`)
        self.freeze_batchnorm = False  # batch norm stays in eval mode while training

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (class-weighted when `class_weights` is set) of float32 logits."""
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return F.cross_entropy(logits.float(), labels, weight=weight)

    def train(self, mode: bool = True) -> Task:
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def map_for_loss(self, batch: Batch) -> torch.Tensor:
        """S after the baselines' preprocessing (`BaselineOptions.saliency_mode`)."""
        b = self.config.baselines
        return preprocess_saliency(batch.saliency, b.saliency_mode, b.threshold)


class CrossEntropyTask(Task):
    """`ce`: plain cross-entropy; saliency maps are ignored."""

    def forward(self, batch):
        logits = self.model(batch.images)
        ce = self.cross_entropy(logits.float(), batch.labels)
        return {"loss": ce, "output": logits, "ce": ce.detach()}


class BlurTask(Task):
    """`blur`: cross-entropy on x+, the image with its non-salient pixels blurred (Boyd et al. 2022)."""

    def forward(self, batch):
        x = batch.images
        blurred = degrade(x, "blur", 1.0, 1.0, max_blur_sigma=self.config.baselines.blur_sigma)
        x_plus = salient_preserving_view(x, self.map_for_loss(batch).to(x.dtype), blurred)
        inputs = torch.where(batch.has_saliency[:, None, None, None], x_plus, x)
        logits = self.model(inputs)
        ce = self.cross_entropy(logits.float(), batch.labels)
        return {"loss": ce, "output": logits, "ce": ce.detach()}


class CyborgTask(Task):
    """`cyborg`: (1-alpha) CE + alpha MSE(min-max normalised CAM of the true class, S at CAM size)."""

    def forward(self, batch):
        out = self.model.forward_all(batch.images)
        ce = self.cross_entropy(out.logits.float(), batch.labels)
        cam = normalize_maps(class_activation_map(self.model, out, batch.labels), mode="minmax")
        target = saliency_at(self.map_for_loss(batch), cam.shape[-2:])
        mse = masked_mean(((cam - target) ** 2).flatten(1).mean(1), batch.has_saliency)
        alpha = self.config.baselines.cyborg_alpha
        loss = (1 - alpha) * ce + alpha * mse
        return {"loss": loss, "output": out.logits, "ce": ce.detach(), "cam_mse": mse.detach()}


def batch_statistics(model: nn.Module) -> tuple[dict[nn.Module, tuple[torch.Tensor, torch.Tensor]], list]:
    """Forward hooks that record, detached, the (mean, biased var) each batch-norm layer of `model`
    normalises with in the next training forward; returns (the record, the hook handles)."""
    record: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module, args):
        if module.training:
            x = args[0].detach().float()
            dims = [d for d in range(x.ndim) if d != 1]
            var, mean = torch.var_mean(x, dim=dims, unbiased=False)
            record[module] = (mean, var)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, _BatchNorm)]
    return record, handles


@contextmanager
def normalised_with(model: nn.Module, stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] | None):
    """Eval mode (no dropout, per-image batch norm); with `stats`, each batch-norm layer uses those
    constant statistics instead of its running ones. Restores mode and running statistics."""
    modes = [(m, m.training) for m in model.modules()]  # per module: frozen batch norm stays frozen
    saved = []
    model.eval()
    try:
        for layer, (mean, var) in (stats or {}).items():
            module: Any = layer  # a batch-norm layer (torch types its buffers as Tensor | Module)
            saved.append((module, module.running_mean, module.running_var))
            module.running_mean = mean.to(module.running_mean.dtype)
            module.running_var = var.to(module.running_var.dtype)
        yield
    finally:
        for module, mean, var in saved:
            module.running_mean, module.running_var = mean, var
        for module, mode in modes:
            module.training = mode


def input_gradient_penalty(
    model: nn.Module,
    images: torch.Tensor,
    mask: torch.Tensor,
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Per-image RRR penalty sum((mask * d/dx sum_k log p_k(x))^2) (Ross et al. 2017), shape (B,).

    The gradient pass runs the model in eval mode: batch norm normalises with constant statistics
    (`stats` recorded by `batch_statistics` from the training forward, else the running ones) and
    dropout is off, so every image's log-probabilities depend on that image alone and the gradient
    of their sum is exactly each image's own input gradient: no image leaks into another's
    penalty. The graph is kept (create_graph) so the penalty trains the weights.
    """
    with normalised_with(model, stats):
        x = images.detach().requires_grad_(True)
        log_probs = F.log_softmax(model(x).float(), dim=1)
        (grads,) = torch.autograd.grad(log_probs.sum(), x, create_graph=True)
    return (mask.to(grads.dtype) * grads).pow(2).flatten(1).sum(1)


class RRRTask(Task):
    """`rrr`: CE + lambda * mean over annotated images of `input_gradient_penalty` with (1 - S) as
    the mask (Right for the Right Reasons, Ross et al. 2017). The gradient pass normalises with the
    statistics the training forward used on this batch, held constant. With
    `baselines.rrr_lambda` None, lambda is set once, on the first batch with maps, to
    rrr_balance * CE / penalty there (at 1 both terms are of the same size at the start, the
    paper's rule) and kept in the
    `rrr_lambda` buffer (a resumed run sets it again on its first batch)."""

    def __init__(self, model: Classifier, config: TrainConfig) -> None:
        super().__init__(model, config)
        given = config.baselines.rrr_lambda
        self.rrr_lambda: torch.Tensor
        self.register_buffer("rrr_lambda", torch.tensor(float("nan") if given is None else float(given)))

    def forward(self, batch):
        record, handles = batch_statistics(self.model)
        try:
            logits = self.model(batch.images)
        finally:
            for handle in handles:
                handle.remove()
        ce = self.cross_entropy(logits.float(), batch.labels)
        rows = batch.has_saliency.nonzero().flatten()
        if len(rows):
            mask = 1 - self.map_for_loss(batch)[rows]
            rrr = input_gradient_penalty(self.model, batch.images[rows], mask, record or None).mean()
            if torch.isnan(self.rrr_lambda):
                balance = self.config.baselines.rrr_balance
                self.rrr_lambda.fill_(balance * float(ce.detach()) / max(float(rrr.detach()), 1e-12))
        else:
            rrr = ce.new_zeros(())
        weight = 0.0 if torch.isnan(self.rrr_lambda) else float(self.rrr_lambda)
        loss = ce + weight * rrr
        return {"loss": loss, "output": logits, "ce": ce.detach(), "input_gradient": rrr.detach()}


class GradiaTask(Task):
    """`gradia`: CE + lambda * L1(Grad-CAM of the true class normalised to [0,1], S at CAM size)."""

    def forward(self, batch):
        out = self.model.forward_all(batch.images)
        ce = self.cross_entropy(out.logits.float(), batch.labels)
        if batch.has_saliency.any():
            cam = normalize_maps(grad_cam(out, batch.labels, create_graph=True), mode="max")
            target = saliency_at(self.map_for_loss(batch), cam.shape[-2:])
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
    """`sage` and the methods built from its views (DESIGN.md section 4).

    The clean batch and the x+ / x- views of its annotated rows run as one batch; views are built
    here, on the device, with `config.sage.resolved(method)`. The terms each method adds to
    CE(z, y), the saliency terms averaged over annotated rows:
    - sage: l_trip * triplet(e, e+, e-) + l_js * JSD(z/T, z+/T) + l_hinge * hinge on z-;
      sage-inverted the same with S replaced by 1 - S;
    - sage-paper: l_trip * triplet + l_js * JSD, nothing else (blur/noise D, continuous S);
    - ce-jsd: l_js * JSD with the x+ view, no triplet, no x- (a control);
    - ce-swap: CE on the x+ views too, averaged with the clean rows (a control: what the swap
      view alone does as augmentation).
    """

    TERMS: dict[Method, tuple[str, ...]] = {
        Method.SAGE: ("triplet", "jsd", "hinge"),
        Method.SAGE_INVERTED: ("triplet", "jsd", "hinge"),
        Method.SAGE_PAPER: ("triplet", "jsd"),
        Method.CE_JSD: ("jsd",),
        Method.CE_SWAP: (),
    }

    def __init__(self, model: Classifier, config: TrainConfig, inverted: bool = False) -> None:
        super().__init__(model, config)
        self.inverted = inverted or config.method == Method.SAGE_INVERTED
        self.method = config.method if config.method in self.TERMS else Method.SAGE
        self.terms = self.TERMS[self.method]
        self.options = config.sage.resolved(self.method)
        self.needs_minus = "triplet" in self.terms or "hinge" in self.terms
        if self.options.batchnorm == "clean":
            use_reference_batchnorm(model)

    def saliency(self, batch: Batch) -> torch.Tensor:
        o = self.options
        s = preprocess_saliency(batch.saliency, o.saliency_mode, o.threshold)
        return 1 - s if self.inverted else s

    def forward(self, batch):
        o = self.options
        x, y = batch.images, batch.labels
        n = x.shape[0]
        rows = batch.has_saliency.nonzero().flatten()
        cap = max(1, math.ceil(o.view_share * n))
        if len(rows) > cap:  # views for a random subset of the annotated rows
            rows = rows[torch.randperm(len(rows), device=rows.device)[:cap]].sort().values
        if len(rows) == 0:
            logits = self.model(x)
            ce = self.cross_entropy(logits.float(), y)
            zero = ce.new_zeros(())
            return {"loss": ce, "output": logits, "ce": ce.detach(), **{t: zero for t in self.terms}}
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
        views = [salient_preserving_view(xs, s, degrade(xs, **kw))]  # independent draws of D per view
        if self.needs_minus:
            views.append(saliency_degrading_view(xs, s, degrade(xs, **kw)))
        inputs = torch.cat([x, *views])
        if o.batchnorm == "clean":
            with batchnorm_reference(self.model, n):
                out = self.model.forward_all(inputs)
        else:
            out = self.model.forward_all(inputs)
        k = len(rows)
        logits, logits_plus = out.logits[:n], out.logits[n : n + k]
        if self.method == Method.CE_SWAP:
            ce_all = self.cross_entropy(out.logits.float(), torch.cat([y, ys]))
            return {"loss": ce_all, "output": logits, "ce": ce_all.detach()}
        ce = self.cross_entropy(logits.float(), y)
        result = {"output": logits, "ce": ce.detach()}
        loss = ce
        t = o.temperature
        if "jsd" in self.terms:
            p = F.softmax(logits[rows].float() / t, dim=1)
            p_plus = F.softmax(logits_plus.float() / t, dim=1)
            jsd = jensen_shannon(p, p_plus).mean()
            loss = loss + o.lambda_js * jsd
            result["jsd"] = jsd.detach()
        if "triplet" in self.terms:
            emb = out.embedding.float()
            if o.normalize:
                emb = F.normalize(emb, dim=1)
            e, e_plus, e_minus = emb[:n][rows], emb[n : n + k], emb[n + k :]
            trip = triplet(e, e_plus, e_minus, o.margin, o.distance).mean()
            loss = loss + o.lambda_trip * trip
            result["triplet"] = trip.detach()
        if "hinge" in self.terms:
            hinge = degraded_confidence_hinge(out.logits[n + k :], ys, t, o.hinge_margin).mean()
            loss = loss + o.lambda_hinge * hinge
            result["hinge"] = hinge.detach()
        return {"loss": loss, **result}


TASKS: dict[Method, type[Task]] = {
    Method.CE: CrossEntropyTask,
    Method.BLUR: BlurTask,
    Method.CYBORG: CyborgTask,
    Method.RRR: RRRTask,
    Method.GRADIA: GradiaTask,
    Method.CE_SWAP: SageTask,
    Method.CE_JSD: SageTask,
    Method.SAGE_PAPER: SageTask,
    Method.SAGE: SageTask,
    Method.SAGE_INVERTED: SageTask,
}
assert set(TASKS) == set(Method), "every method needs a task object"


def create_task(model: Classifier, config: TrainConfig) -> Task:
    """The task object for `config.method` wrapped around `model`."""
    if config.method not in TASKS:
        raise ValueError(f"unknown method {config.method!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[config.method](model, config)
