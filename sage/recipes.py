"""Training recipes: how a run is optimised once we know whether it starts from pretrained weights.

`plan_training(config, pretrained, class_counts)` turns a `TrainConfig` into a `TrainingPlan`. With
`recipe` "auto" a run that starts from pretrained weights gets its backbone family's fine-tuning
recipe (`FINETUNE`): AdamW, linear warm-up then cosine decay, the backbone at a tenth of the head's
learning rate, batch norm frozen at small batches (its pretrained statistics are better than those
of 8 or 16 images), and a moderate learning rate and weight decay for the family. A run from
random weights ("as-given") trains with the config's own values. Both get medical-safe
augmentation by default (`augment` "auto" is a random resized crop, never a horizontal flip:
left/right carries meaning in many medical images; a project enables flips with "flip" or
"crop+flip") and, when the classes are imbalanced, a class-weighted loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sage.config import TrainConfig

# Backbone -> family; each family has one fine-tuning recipe.
FAMILIES = {
    "tiny": "batchnorm-cnn",
    "tiny-wide": "batchnorm-cnn",
    "resnet18": "batchnorm-cnn",
    "resnet50": "batchnorm-cnn",
    "densenet121": "batchnorm-cnn",
    "efficientnet_b0": "batchnorm-cnn",
    "convnext_tiny": "layernorm-cnn",
    "vit_b_16": "transformer",
}


@dataclass(frozen=True)
class FinetuneRecipe:
    lr: float  # the head's peak learning rate
    backbone_lr_scale: float  # the backbone trains at lr * this
    weight_decay: float
    warmup_epochs: int
    freeze_batchnorm_below: int  # batch norm frozen when the batch is smaller than this (0: never)


FINETUNE = {
    "batchnorm-cnn": FinetuneRecipe(lr=1e-3, backbone_lr_scale=0.1, weight_decay=1e-4, warmup_epochs=1,
                                    freeze_batchnorm_below=32),
    "layernorm-cnn": FinetuneRecipe(lr=5e-4, backbone_lr_scale=0.1, weight_decay=0.05, warmup_epochs=1,
                                    freeze_batchnorm_below=0),
    "transformer": FinetuneRecipe(lr=3e-4, backbone_lr_scale=0.1, weight_decay=0.05, warmup_epochs=2,
                                  freeze_batchnorm_below=0),
}  # fmt: skip

# Class weights are used when the largest class has at least this many times the smallest's images.
IMBALANCE_RATIO = 1.5


@dataclass(frozen=True)
class TrainingPlan:
    recipe: str  # "finetune/<family>" or "as-given"
    optimizer: str
    schedule: str
    lr: float
    backbone_lr_scale: float
    weight_decay: float
    warmup_epochs: int
    augment: str
    freeze_batchnorm: bool
    class_weights: list[float] | None  # per label, mean 1; None: plain cross-entropy

    def config_for_training(self, config: TrainConfig) -> TrainConfig:
        """`config` with the plan's optimisation values, for the loop's internals."""
        return config.replace(
            optimizer=self.optimizer, schedule=self.schedule, lr=self.lr, weight_decay=self.weight_decay,
            warmup_epochs=min(self.warmup_epochs, config.epochs), augment=self.augment,
        )  # fmt: skip


def plan_training(
    config: TrainConfig, pretrained: bool, class_counts: np.ndarray | list[int]
) -> TrainingPlan:
    """The recipe a run trains with (see the module docstring)."""
    finetune = config.recipe == "finetune" or (config.recipe == "auto" and pretrained)
    augment = "crop" if config.augment == "auto" else config.augment
    weights = class_weights(np.asarray(class_counts), config.class_balance)
    if finetune:
        family = FAMILIES[config.backbone]
        r = FINETUNE[family]
        freeze = config.freeze_batchnorm == "yes" or (
            config.freeze_batchnorm == "auto" and config.batch_size < r.freeze_batchnorm_below
        )
        return TrainingPlan(f"finetune/{family}", "adamw", "cosine", r.lr, r.backbone_lr_scale, r.weight_decay,
                            max(r.warmup_epochs, config.warmup_epochs), augment, freeze, weights)  # fmt: skip
    return TrainingPlan("as-given", config.optimizer, config.schedule, config.lr, 1.0, config.weight_decay,
                        config.warmup_epochs, augment, config.freeze_batchnorm == "yes", weights)  # fmt: skip


def class_weights(counts: np.ndarray, mode: str) -> list[float] | None:
    """Inverse-frequency weights (mean 1 over the classes present) when `mode` is "weighted", or
    "auto" and the classes are imbalanced (ratio >= IMBALANCE_RATIO); else None."""
    counts = counts.astype(np.float64)
    present = counts > 0
    if mode == "none" or present.sum() < 2:
        return None
    if mode == "auto" and counts[present].max() < IMBALANCE_RATIO * counts[present].min():
        return None
    weights = np.zeros_like(counts)
    weights[present] = 1.0 / counts[present]
    weights *= present.sum() / weights.sum()
    return [float(w) for w in weights]
