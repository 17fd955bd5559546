"""Every training knob in one validated, JSON-serialisable dataclass (`TrainConfig`).

The worker, the CLI and the benchmark all build a `TrainConfig` through `TrainConfig.from_dict`, so a
typo in a project's training options fails loudly with the offending key instead of silently
training with a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# The backbones sage.backbones registers. Listed here, without importing torch, so that the web process
# can validate training options before it queues a run (sage.backbones asserts the two agree).
BACKBONES = (
    "tiny",
    "tiny-wide",
    "resnet18",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
)

# Input pixels per CAM cell of each backbone (tiny: two 2x poolings; ImageNet CNNs: 32; ViT-B/16:
# its 16 px patches), for the coarse-CAM check done without torch. ImageNet models default to the
# 224 px they were trained at; `tiny` to 64 px, its scale on the synthetic suites.
CAM_STRIDE = {
    "tiny": 4,
    "tiny-wide": 4,
    "resnet18": 32,
    "resnet50": 32,
    "densenet121": 32,
    "efficientnet_b0": 32,
    "convnext_tiny": 32,
    "vit_b_16": 16,
}
MIN_CAM_GRID = 7
WINDOWS = ("default", "header", "auto", "full")


def default_image_size(backbone: str) -> int:
    """The input side a backbone trains at unless told otherwise."""
    return 64 if backbone.startswith("tiny") else 224


def cam_grid(backbone: str, image_size: int) -> int:
    """The side of the CAM grid (cells) at this input size."""
    return image_size // CAM_STRIDE.get(backbone, 32)


def check_cam_grid(backbone: str, image_size: int) -> None:
    """ValueError naming the smallest image_size that gives a 7x7 CAM grid, when this one does not."""
    grid = cam_grid(backbone, image_size)
    if grid < MIN_CAM_GRID:
        smallest = MIN_CAM_GRID * CAM_STRIDE.get(backbone, 32)
        raise ValueError(
            f"image_size {image_size} gives {backbone} a {grid}x{grid} CAM grid, too coarse for heatmaps "
            f"and saliency terms; the smallest image_size for {MIN_CAM_GRID}x{MIN_CAM_GRID} is {smallest} "
            "(or set allow_coarse_cam: true)"
        )


class Method(StrEnum):
    """A training method: ce (cross-entropy); the baselines blur, cyborg, rrr and gradia; the
    controls ce-swap and ce-jsd; sage-paper (SAGE as published), sage (the tuned default) and
    sage-inverted (sage with the maps inverted, a sanity check)."""

    # The docstring is the API's description of the schema. `TrainConfig.method`, the web API's
    # training option and the CLI's --method take these names; `sage.methods.TASKS` maps each to its task.

    CE = "ce"
    BLUR = "blur"
    CYBORG = "cyborg"
    RRR = "rrr"
    GRADIA = "gradia"
    CE_SWAP = "ce-swap"
    CE_JSD = "ce-jsd"
    SAGE_PAPER = "sage-paper"
    SAGE = "sage"
    SAGE_INVERTED = "sage-inverted"


METHODS = tuple(Method)
# Methods whose loss reads the saliency maps (every method but plain cross-entropy).
SALIENCY_METHODS = tuple(m for m in Method if m is not Method.CE)
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
DEVICES = ("auto", "cpu", "cuda")
AUGMENTATIONS = ("auto", "none", "flip", "crop", "crop+flip")
RECIPES = ("auto", "finetune", "as-given")
CLASS_BALANCE = ("auto", "weighted", "none")
FREEZE_BATCHNORM = ("auto", "yes", "no")
DEGRADATIONS = ("blur", "noise", "mean", "swap", "mix")
DISTANCES = ("euclidean", "cosine")
SALIENCY_MODES = ("continuous", "threshold", "ramp")
PAPER_DEGRADATIONS = ("blur", "noise", "blur+noise", "noise+blur")
BATCHNORM_MODES = ("clean", "joint")


@dataclass
class SageOptions:
    """Knobs of SAGE (DESIGN.md section 4) and of the methods built from its views (`sage-inverted`,
    `sage-paper`, the controls `ce-swap` and `ce-jsd`). How the defaults were chosen: bench/tuning.md.

    degradation: D(x) used to build the views: "blur", "noise", "mean" (fill with channel means),
        "swap" (another image of the batch), "mix" (one of the four drawn per image), or kinds joined
        by "+" ("blur+noise"). "auto" (default) is the method's own: "swap" for sage, sage-inverted,
        ce-swap and ce-jsd; "blur+noise" for sage-paper, which only accepts blur and noise.
    fill: statistics "mean" and "noise" fill with, "image" (each image's own channel mean/std) or
        "batch" (default, the batch's), see `sage.views.degrade`.
    swap_from_batch: "swap" takes the replacement from any image of the batch (default) instead of
        only from the other annotated images.
    strength_min/strength_max: D's strength is drawn uniformly per image from this range (default
        0.8-1.0).
    saliency_mode, threshold: how S is preprocessed before building the views (`sage.views.
        preprocess_saliency`): "continuous" as painted, "threshold" S >= threshold, "ramp"
        clamp((S - threshold) / (1 - threshold), 0, 1). "auto" (default) is "ramp" for sage,
        sage-inverted, ce-swap and ce-jsd and "continuous" for sage-paper. threshold default 0.5.
    margin, distance, normalize: the triplet max(0, d(e,e+) - d(e,e-) + margin) on the pooled
        embedding (default margin 0.5, euclidean, L2-normalised embeddings).
    temperature: T of the logit check softmax(z/T) (default 1).
    lambda_trip, lambda_js: weights of the triplet and Jensen-Shannon terms (defaults 1 and 3).
    lambda_hinge, hinge_margin: hinge relu(softmax(z-/T)[y] - 1/K - hinge_margin) that stops the
        saliency-degraded view from still answering confidently (defaults 1 and 0); sage and
        sage-inverted only (sage-paper has no such term).
    view_share: at most this share of a batch's rows get the views (a random subset of its
        annotated rows); 1 (default) gives every annotated row its views.
    batchnorm: "joint" (default) normalises the clean rows and the views with the statistics of the
        whole batch; "clean" uses the clean rows' statistics for all of them (slower).
    """

    degradation: str = "auto"
    strength_min: float = 0.8
    strength_max: float = 1.0
    fill: str = "batch"
    swap_from_batch: bool = True
    saliency_mode: str = "auto"
    threshold: float = 0.5
    margin: float = 0.5
    distance: str = "euclidean"
    normalize: bool = True
    temperature: float = 1.0
    lambda_trip: float = 1.0
    lambda_js: float = 3.0
    lambda_hinge: float = 1.0
    hinge_margin: float = 0.0
    batchnorm: str = "joint"
    view_share: float = 1.0

    def resolved(self, method: str) -> SageOptions:
        """A copy with "auto" degradation and saliency_mode replaced by `method`'s defaults."""
        paper = method == Method.SAGE_PAPER
        return dataclasses.replace(
            self,
            degradation=self.degradation
            if self.degradation != "auto"
            else ("blur+noise" if paper else "swap"),
            saliency_mode=(
                self.saliency_mode if self.saliency_mode != "auto" else ("continuous" if paper else "ramp")
            ),
        )


@dataclass
class BaselineOptions:
    """Knobs of the baselines (how the defaults were chosen: bench/tuning.md, bench/ml.md).

    blur_sigma: Gaussian sigma, as a fraction of the image side, that degrades non-salient pixels
        for `blur` (Boyd et al. 2022); default 0.125.
    cyborg_alpha: CYBORG's loss is (1 - alpha) * CE + alpha * MSE(CAM, S) (Boyd et al. 2023);
        default 0.75.
    rrr_lambda: weight of RRR's squared input-gradient penalty on non-salient pixels (Ross et al.
        2017). None (default) sets it on the first batch with maps so that the weighted penalty
        equals `rrr_balance` times the cross-entropy there (default 1: the paper's rule of terms
        of the same size).
    rrr_balance: the ratio penalty / CE at the start that sets rrr_lambda when it is None.
    gradia_lambda: weight of GRADIA's L1 between Grad-CAM and S; default 3.
    saliency_mode, threshold: how blur, cyborg, rrr and gradia preprocess S (same options as
        `SageOptions.saliency_mode`); default "continuous" (as painted), threshold 0.5.
    """

    blur_sigma: float = 0.125
    cyborg_alpha: float = 0.75
    rrr_lambda: float | None = None
    rrr_balance: float = 1.0
    gradia_lambda: float = 3.0
    saliency_mode: str = "continuous"
    threshold: float = 0.5


@dataclass
class TrainConfig:
    """One training run, fully specified.

    method: a `Method`: ce; the baselines blur, cyborg, rrr, gradia; the controls ce-swap
        (CE on the clean images and on their swap x+ views) and ce-jsd (CE + JSD with the swap
        view, no triplet); sage-paper (the method as published: x+ and x- with a blur or noise
        degradation, continuous S, CE + triplet + JSD); sage (the product's tuned default) and
        sage-inverted (sage with S replaced by 1 - S, a sanity check).
    backbone: a name from `BACKBONES` (each registered in `sage.backbones`).
    image_size: square input side in pixels (default by backbone: 224, 64 for tiny); images and
        saliency maps are letterboxed to it (aspect kept, padded), see `sage.transforms.preprocess`.
    window, allow_coarse_cam: see the fields.
    labels: ordered class names; when empty, the sorted labels found in labels.csv.
    epochs, batch_size, lr, weight_decay, momentum (SGD only), optimizer, schedule,
    warmup_epochs: the optimisation recipe (schedules step per batch).
    seed, deterministic: one seed for everything; `deterministic` also asks PyTorch for
        deterministic kernels (slower on CUDA).
    device: auto (CUDA when available), cpu or cuda. amp: bf16 autocast on CUDA (ignored on CPU).
    grad_clip: max global gradient norm, 0 disables.
    early_stopping_patience: stop after this many epochs without a better validation loss and
        keep the best epoch's weights; 0 disables.
    val_fraction: share of the train split held out (stratified, seeded) when labels.csv has no
        val split.
    saliency_fraction: keep saliency maps on only this seeded share of the training images
        (the rest train with cross-entropy alone); 1.0 keeps all.
    annotated_share: when fewer than this share of the training images have a saliency map, each
        batch draws this share from them, revisiting them more often within an epoch (an epoch
        keeps its number of steps, so some images without a map sit an epoch out); when more
        have one, or at 0, batches are shuffled plainly (see `sage.training.batches`).
        Method-independent: it changes which images a batch holds, not the loss. With maps on
        10% of the images and plain shuffling a batch of 32 holds about 3 annotated images and
        the saliency terms barely act; bench/tuning.md has the evidence behind 0.5.
    augment: auto (default: a random resized crop, no flip, safe for medical images), none,
        flip, crop, crop+flip (applied identically to image and saliency map); flips only when
        the project asks for them.
    recipe: auto (default: the backbone family's fine-tuning recipe when the run starts from
        pretrained weights, else the values given here), finetune, or as-given (see
        `sage.recipes`: AdamW, warm-up + cosine, backbone at 0.1x the head's learning rate,
        batch norm frozen at small batches; the recipe's lr/weight_decay replace the config's).
    class_balance: auto (default: a class-weighted loss when the largest class has 1.5x the
        smallest's training images), weighted, none.
    freeze_batchnorm: auto (default: frozen running statistics when fine-tuning a batch-norm
        backbone with batches under 32), yes, no.
    weights: pretrained weights by registered name (`sage.weights`: a torchvision name such as
        "ResNet18_Weights.IMAGENET1K_V1", or a name given to `sage-studio weights add`); None
        (default) starts from random weights.
    pretrained_path: a local weights file (torchvision state dict or a SAGE model.pt); for the
        `python -m sage` CLI only; the web API refuses it (a web user must not make a worker open
        an arbitrary server file).
    checkpoint: also write out_dir/checkpoint.pt after every epoch, for exact resume.
    progress_every: call `progress` every this many steps (and at each epoch end).
    positive_label: the class scored by the ROC and, in a two-class project, the attack label of
        the PAD error rates (APCER, BPCER, EER; `sage.protocols`); None: ROC of the second label.
    leave_out_subtype: open-set evaluation: images of this labels.csv subtype are removed from
        train and val and their test images reported apart (`sage.protocols.leave_subtype_out`).
    """

    method: Method = Method.SAGE
    backbone: str = "tiny"
    image_size: int | None = None  # None: by backbone (`default_image_size`)
    labels: list[str] = field(default_factory=list)
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    optimizer: str = "adamw"
    schedule: str = "cosine"
    warmup_epochs: int = 0
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: bool = True
    grad_clip: float = 5.0
    early_stopping_patience: int = 0
    val_fraction: float = 0.2
    saliency_fraction: float = 1.0
    annotated_share: float = 0.5
    augment: str = "auto"
    recipe: str = "auto"
    class_balance: str = "auto"
    freeze_batchnorm: str = "auto"
    weights: str | None = None
    pretrained_path: str | None = None
    checkpoint: bool = False
    progress_every: int = 10
    positive_label: str | None = None
    leave_out_subtype: str | None = None
    sage: SageOptions = field(default_factory=SageOptions)
    baselines: BaselineOptions = field(default_factory=BaselineOptions)

    # Preprocessing (sage.transforms.preprocess): the display window that maps stored pixels to
    # [0, 1] (default: the file's window, else the 0.5-99.5 percentile range, else 8-bit full
    # range; auto: percentile; full: the whole range), and whether a CAM grid under 7x7 is allowed.
    window: str = "default"
    allow_coarse_cam: bool = False

    def __post_init__(self) -> None:
        if self.image_size is None:
            self.image_size = default_image_size(self.backbone)
        self.validate()
        self.method = Method(self.method)  # "sage" from a dict or the command line becomes Method.SAGE

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first bad value and what is allowed."""
        _choice("method", self.method, METHODS)
        _choice("backbone", self.backbone, BACKBONES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        _choice("augment", self.augment, AUGMENTATIONS)
        _choice("recipe", self.recipe, RECIPES)
        _choice("class_balance", self.class_balance, CLASS_BALANCE)
        _choice("freeze_batchnorm", self.freeze_batchnorm, FREEZE_BATCHNORM)
        assert self.image_size is not None  # __post_init__ sets it by backbone
        _at_least("image_size", self.image_size, 8)
        _choice("window", self.window, WINDOWS)
        if not self.allow_coarse_cam:
            check_cam_grid(self.backbone, self.image_size)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("warmup_epochs", self.warmup_epochs, 0)
        _at_least("early_stopping_patience", self.early_stopping_patience, 0)
        _at_least("progress_every", self.progress_every, 1)
        _positive("lr", self.lr)
        _at_least("weight_decay", self.weight_decay, 0)
        _at_least("grad_clip", self.grad_clip, 0)
        _in_range("val_fraction", self.val_fraction, 0.0, 0.9)
        _in_range("saliency_fraction", self.saliency_fraction, 0.0, 1.0)
        _in_range("annotated_share", self.annotated_share, 0.0, 1.0)
        if self.weights is not None and self.pretrained_path is not None:
            raise ValueError("give weights (a registered name) or pretrained_path (a file), not both")
        if self.weights is not None and not self.weights:
            raise ValueError("weights must be a registered name, got an empty string")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        if any(not isinstance(x, str) or not x for x in self.labels):
            raise ValueError(f"labels must be non-empty strings, got {self.labels}")
        s = self.sage
        if s.degradation not in ("auto", *DEGRADATIONS) and not all(
            k in DEGRADATIONS[:-1] for k in s.degradation.split("+")
        ):
            _choice("sage.degradation", s.degradation, ("auto", *DEGRADATIONS))
        if self.method == Method.SAGE_PAPER and s.degradation not in ("auto", *PAPER_DEGRADATIONS):
            raise ValueError(
                f"sage-paper degrades with blur or noise only; got sage.degradation {s.degradation!r} "
                f"(choose auto, {', '.join(PAPER_DEGRADATIONS[:3])}, or use method sage)"
            )
        _choice("sage.distance", s.distance, DISTANCES)
        _choice("sage.saliency_mode", s.saliency_mode, ("auto", *SALIENCY_MODES))
        _choice("sage.batchnorm", s.batchnorm, BATCHNORM_MODES)
        _choice("sage.fill", s.fill, ("image", "batch"))
        _in_range("sage.strength_min", s.strength_min, 0.0, 1.0)
        _in_range("sage.strength_max", s.strength_max, s.strength_min, 1.0)
        _in_range("sage.threshold", s.threshold, 0.0, 1.0)
        _positive("sage.view_share", s.view_share)
        _in_range("sage.view_share", s.view_share, 0.0, 1.0)
        _positive("sage.temperature", s.temperature)
        for name in ("margin", "lambda_trip", "lambda_js", "lambda_hinge", "hinge_margin"):
            _at_least(f"sage.{name}", getattr(s, name), 0)
        b = self.baselines
        _in_range("baselines.blur_sigma", b.blur_sigma, 0.0, 1.0)
        _in_range("baselines.cyborg_alpha", b.cyborg_alpha, 0.0, 1.0)
        if b.rrr_lambda is not None:
            _at_least("baselines.rrr_lambda", b.rrr_lambda, 0)
        _positive("baselines.rrr_balance", b.rrr_balance)
        _choice("baselines.saliency_mode", b.saliency_mode, SALIENCY_MODES)
        _in_range("baselines.threshold", b.threshold, 0.0, 1.0)
        _at_least("baselines.gradia_lambda", b.gradia_lambda, 0)

    # -- (de)serialisation ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> TrainConfig:
        """Build a config from a plain dict, rejecting unknown keys, wrong types and bad values.

        SAGE and baseline knobs may be nested (`{"sage": {"margin": 0.3}}`) or flat with their
        group as prefix (`{"sage_margin": 0.3, "baselines_cyborg_alpha": 0.3}`). Missing keys take
        their defaults.
        """
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"training options must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        nested: dict[str, dict[str, Any]] = {}
        for group in ("sage", "baselines"):
            value = data.pop(group, None) or {}
            if not isinstance(value, dict):
                raise ValueError(f"'{group}' must be an object of options, got {value!r}")
            nested[group] = dict(value)
            for key in list(data):
                if key.startswith(group + "_"):
                    nested[group][key[len(group) + 1 :]] = data.pop(key)
        kwargs = _typed_kwargs(cls, data, "")
        kwargs["sage"] = SageOptions(**_typed_kwargs(SageOptions, nested["sage"], "sage."))
        kwargs["baselines"] = BaselineOptions(
            **_typed_kwargs(BaselineOptions, nested["baselines"], "baselines.")
        )
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A dict of plain JSON values that `from_dict` turns back into an equal config (the method
        as its name, so model.pt files that hold it load with `torch.load(weights_only=True)`)."""
        return dataclasses.asdict(self) | {"method": str(self.method)}

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some top-level fields changed."""
        return dataclasses.replace(self, **changes)


def _typed_kwargs(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)} - {"sage", "baselines"}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ValueError(
            f"unknown training option(s) {', '.join(prefix + k for k in unknown)}; "
            f"known: {', '.join(prefix + k for k in sorted(fields))}"
        )
    return {key: _coerce(prefix + key, value, hints[key]) for key, value in data.items()}


def _coerce(name: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name} must be a list, got {value!r}")
        return [_coerce(f"{name}[]", v, typing.get_args(hint)[0]) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        return value
    return value


def _choice(name: str, value: Any, allowed: typing.Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
