import pytest
import torch

from sage.config import METHODS, TrainConfig
from sage.methods import Batch, SageTask, create_task
from sage.models import ReferenceBatchNorm2d, create_model

TERMS = {
    "ce": {"ce"}, "blur": {"ce"}, "cyborg": {"ce", "cam_mse"}, "rrr": {"ce", "input_gradient"},
    "gradia": {"ce", "gradcam_l1"}, "sage": {"ce", "triplet", "jsd", "hinge"},
    "sage-inverted": {"ce", "triplet", "jsd", "hinge"},
}  # fmt: skip


def toy_batch(n=16, annotated=True, seed=0):
    """Class = which half (left/right) holds a bright square; saliency marks the square."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 16, 16, generator=g) * 0.3
    saliency = torch.zeros(n, 1, 16, 16)
    labels = torch.arange(n) % 2
    for i in range(n):
        x0 = 2 if labels[i] == 0 else 10
        images[i, :, 5:10, x0 : x0 + 4] += 2.0
        saliency[i, :, 4:11, x0 - 1 : x0 + 5] = 1.0
    return Batch(images, saliency, torch.full((n,), annotated), labels)


def make_task(method, **options):
    torch.manual_seed(0)
    config = TrainConfig.from_dict({"method": method, "image_size": 16, "allow_coarse_cam": True, **options})
    return create_task(create_model("tiny", 2, image_size=16), config)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_its_terms_and_its_loss_falls(method):
    task = make_task(method)
    batch = toy_batch()
    optimizer = torch.optim.Adam(task.parameters(), lr=3e-3)
    task.train()
    losses = []
    for _ in range(25):
        result = task(batch)
        assert set(result) == {"loss", "output"} | TERMS[method]
        assert result["output"].shape == (16, 2)
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()
        losses.append(float(result["loss"].detach()))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("method", METHODS)
def test_gradients_reach_the_first_layer(method):
    task = make_task(method)
    task.train()
    task(toy_batch())["loss"].backward()
    first = task.model.net.features[0].weight
    assert first.grad is not None and float(first.grad.abs().sum()) > 0


@pytest.mark.parametrize("method", METHODS)
def test_without_saliency_every_method_is_cross_entropy(method):
    batch = toy_batch(annotated=False)
    ref = make_task("ce")
    task = make_task(method)
    task.model.load_state_dict(ref.model.state_dict())
    ref.eval()
    task.eval()  # dropout/batch-norm identical, so the losses must match exactly
    expected = ref(batch)["loss"]
    result = task(batch)
    for term in TERMS[method] - {"ce"}:
        assert float(result[term]) == 0.0
    scale = 1 - task.config.baselines.cyborg_alpha if method == "cyborg" else 1.0  # (1 - alpha) * CE
    assert torch.allclose(result["loss"], scale * expected, atol=1e-6)


def test_sage_inverted_uses_the_complement_of_the_map():
    batch = toy_batch()
    normal, inverted = make_task("sage"), make_task("sage-inverted")
    assert torch.equal(inverted.saliency(batch), 1 - normal.saliency(batch))


def test_sage_threshold_mode_binarises_the_map():
    batch = toy_batch()
    batch.saliency[:, :, 0, 0] = 0.3
    task = make_task("sage", sage={"saliency_mode": "threshold", "threshold": 0.5})
    assert set(task.saliency(batch).unique().tolist()) <= {0.0, 1.0}


def test_sage_ramp_mode_drops_the_faint_rim_and_keeps_the_core_graded():
    batch = toy_batch()
    batch.saliency[:, :, 0, :4] = torch.tensor([0.2, 0.5, 0.75, 1.0])
    task = make_task("sage", sage={"saliency_mode": "ramp", "threshold": 0.5})
    assert task.saliency(batch)[:, :, 0, :4].tolist()[0][0] == [0.0, 0.0, 0.5, 1.0]
    inverted = make_task("sage-inverted", sage={"saliency_mode": "ramp", "threshold": 0.5})
    assert torch.equal(inverted.saliency(batch), 1 - task.saliency(batch))


def test_view_share_caps_the_rows_that_get_views():
    seen = []
    for share, expected in ((1.0, 16 * 3), (0.5, 16 + 2 * 8), (0.01, 16 + 2)):
        task = make_task("sage", sage={"view_share": share})
        task.model.net.features.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
        task(toy_batch(n=16))
        assert seen[-1] == expected


def test_clean_batchnorm_keeps_running_stats_of_the_clean_view_only():
    batch = toy_batch()
    task = make_task("sage", sage={"batchnorm": "clean", "degradation": "mean"})
    assert any(isinstance(m, ReferenceBatchNorm2d) for m in task.model.modules())
    plain = create_model("tiny", 2, image_size=16)
    plain.load_state_dict(task.model.state_dict())
    task.train()
    plain.train()
    task(batch)
    with torch.no_grad():
        plain(batch.images)
    for a, b in zip(task.model.modules(), plain.modules(), strict=True):
        if isinstance(a, torch.nn.BatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean, atol=1e-5)
            assert torch.allclose(a.running_var, b.running_var, atol=1e-4)


def test_joint_batchnorm_keeps_plain_layers():
    task = make_task("sage", sage={"batchnorm": "joint"})
    assert isinstance(task, SageTask)
    assert not any(isinstance(m, ReferenceBatchNorm2d) for m in task.model.modules())


def test_saliency_terms_vanish_when_their_constraint_holds():
    """A model that ignores the input entirely satisfies every saliency constraint: same output and
    embedding for x, x+ and x-, zero input gradients."""
    batch = toy_batch()
    for method, term in [("rrr", "input_gradient"), ("sage", "jsd")]:
        task = make_task(method, sage={"lambda_hinge": 0.0})
        with torch.no_grad():
            for p in task.model.net.features.parameters():
                p.zero_()
        task.eval()
        assert float(task(batch)[term]) == pytest.approx(0.0, abs=1e-7)
