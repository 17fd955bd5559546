"""Fine-tuning recipes chosen automatically when a run starts from pretrained weights."""

import numpy as np
import pytest
import torch

from sage.backbones import create_model
from sage.config import TrainConfig
from sage.methods import create_task
from sage.recipes import class_weights, plan_training
from sage.training import build_optimizer, fit


def config(**options):
    return TrainConfig.from_dict({"method": "ce", "image_size": 32, "allow_coarse_cam": True, **options})


def test_pretrained_runs_get_their_familys_finetuning_recipe():
    plan = plan_training(config(backbone="resnet18", batch_size=16, lr=0.05, optimizer="sgd"), True, [40, 40])
    assert (plan.recipe, plan.optimizer, plan.schedule) == ("finetune/batchnorm-cnn", "adamw", "cosine")
    assert plan.warmup_epochs >= 1 and plan.backbone_lr_scale == 0.1 and plan.lr == 1e-3
    assert plan.freeze_batchnorm  # 16 images per batch: the pretrained statistics are kept
    assert not plan_training(config(backbone="resnet18", batch_size=64), True, [40, 40]).freeze_batchnorm
    vit = plan_training(config(backbone="convnext_tiny", batch_size=8), True, [40, 40])
    assert vit.recipe == "finetune/layernorm-cnn" and not vit.freeze_batchnorm and vit.weight_decay == 0.05
    scratch = plan_training(config(lr=0.05, optimizer="sgd"), False, [40, 40])
    assert (scratch.recipe, scratch.optimizer, scratch.lr, scratch.backbone_lr_scale) == (
        "as-given",
        "sgd",
        0.05,
        1.0,
    )
    assert plan_training(config(recipe="as-given"), True, [40, 40]).recipe == "as-given"


def test_default_augmentation_never_flips_unless_asked():
    assert plan_training(config(), True, [5, 5]).augment == "crop"
    assert plan_training(config(), False, [5, 5]).augment == "crop"
    assert plan_training(config(augment="crop+flip"), True, [5, 5]).augment == "crop+flip"


def test_imbalanced_classes_get_a_weighted_loss():
    weights = class_weights(np.array([30, 10]), "auto")
    assert weights == pytest.approx([0.5, 1.5])  # inverse frequency, mean 1
    assert class_weights(np.array([12, 10]), "auto") is None
    assert class_weights(np.array([12, 10]), "weighted") is not None
    assert class_weights(np.array([30, 10]), "none") is None
    task = create_task(create_model("tiny", 2, image_size=16), config())
    task.class_weights = torch.tensor(weights)
    logits, labels = torch.randn(6, 2), torch.tensor([0, 0, 0, 1, 1, 0])
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(weights))
    assert torch.allclose(task.cross_entropy(logits, labels), expected)


def test_backbone_trains_at_a_lower_learning_rate_than_the_head():
    model = create_model("tiny", 3, image_size=16)
    optimizer, _ = build_optimizer(config(lr=1e-3), model, 10, backbone_lr_scale=0.1)
    head = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        is_head = {id(p) in head for p in group["params"]}
        assert len(is_head) == 1
        assert group["lr"] == pytest.approx(1e-3 if is_head.pop() else 1e-4, rel=0.2)  # warm-up free


@pytest.mark.parametrize("method", ["ce", "rrr", "sage"])
def test_frozen_batchnorm_keeps_the_pretrained_statistics(method):
    torch.manual_seed(0)
    task = create_task(create_model("tiny", 2, image_size=16), config(method=method))
    task.freeze_batchnorm = True
    task.train()
    bn = [m for m in task.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bn]
    from tests.ml.test_methods import toy_batch

    task(toy_batch())["loss"].backward()
    assert all(not m.training for m in bn) and task.model.training
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bn, strict=True))


def test_fit_from_pretrained_weights_uses_the_finetuning_recipe(shapes_dir, tiny_config, tmp_path):
    torch.save(create_model("tiny", 4, image_size=32).net.state_dict(), tmp_path / "tiny.pth")
    metrics = fit(tiny_config(pretrained_path=str(tmp_path / "tiny.pth")), shapes_dir, tmp_path / "run")
    assert metrics["recipe"]["recipe"] == "finetune/batchnorm-cnn" and metrics["recipe"]["freeze_batchnorm"]
    scratch = fit(tiny_config(), shapes_dir, tmp_path / "run2")
    assert scratch["recipe"]["recipe"] == "as-given"
