import pytest
import torch

from sage.backbones import ReferenceBatchNorm2d, create_model
from sage.config import METHODS, TrainConfig
from sage.methods import Batch, SageTask, batch_statistics, create_task, input_gradient_penalty

TERMS = {
    "ce": {"ce"}, "blur": {"ce"}, "cyborg": {"ce", "cam_mse"}, "rrr": {"ce", "input_gradient"},
    "gradia": {"ce", "gradcam_l1"}, "sage": {"ce", "triplet", "jsd", "hinge"},
    "sage-inverted": {"ce", "triplet", "jsd", "hinge"}, "sage-paper": {"ce", "triplet", "jsd"},
    "ce-jsd": {"ce", "jsd"}, "ce-swap": {"ce"},
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


class LinearNet(torch.nn.Module):
    def __init__(self, k=3, d=3 * 4 * 4):
        super().__init__()
        torch.manual_seed(1)
        self.linear = torch.nn.Linear(d, k)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_rrr_penalty_per_image_is_the_analytic_input_gradient_of_a_linear_model():
    """For logits W x + b, d/dx sum_k log p_k = sum_k W_k - K * p(x)^T W."""
    net = LinearNet()
    x = torch.randn(5, 3, 4, 4)
    mask = (torch.rand(5, 1, 4, 4) > 0.5).float()
    penalty = input_gradient_penalty(net, x, mask)
    w = net.linear.weight.detach()
    p = torch.softmax(net(x).detach(), dim=1)
    grads = (w.sum(0)[None] - w.shape[0] * p @ w).view(5, 3, 4, 4)
    expected = (mask * grads).pow(2).flatten(1).sum(1)
    assert penalty.shape == (5,)
    assert torch.allclose(penalty, expected, rtol=1e-5, atol=1e-7)


def test_rrr_penalty_of_an_image_does_not_depend_on_the_rest_of_the_batch():
    task = make_task("rrr")
    task.train()  # the training forward uses batch statistics; the gradient pass must not mix images
    a, b = toy_batch(n=8, seed=0), toy_batch(n=8, seed=1)
    record, handles = batch_statistics(task.model)
    task.model(a.images)
    for handle in handles:
        handle.remove()
    before = [m.running_mean.clone() for m in task.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    mask = 1 - a.saliency
    for stats in (record, None):  # the training batch's statistics held constant, or the running ones
        alone = input_gradient_penalty(task.model, a.images[:3], mask[:3], stats)
        mixed = input_gradient_penalty(
            task.model, torch.cat([b.images, a.images[:3]]), torch.cat([1 - b.saliency, mask[:3]]), stats
        )[8:]
        assert torch.allclose(alone, mixed, rtol=1e-5)
    assert task.model.training  # the train/eval switch is restored, and so are the running statistics
    after = [m.running_mean for m in task.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_rrr_weight_makes_the_penalty_equal_to_ce_on_the_first_batch_unless_given():
    batch = toy_batch()
    task = make_task("rrr")
    task.train()
    out = task(batch)
    assert float(task.rrr_lambda) * float(out["input_gradient"]) == pytest.approx(float(out["ce"]), rel=1e-4)
    assert float(out["loss"].detach()) == pytest.approx(2 * float(out["ce"]), rel=1e-4)
    first = float(task.rrr_lambda)
    task(toy_batch(seed=3))
    assert float(task.rrr_lambda) == first  # set once, then kept
    given = make_task("rrr", baselines={"rrr_lambda": 0.5})
    given.train()
    out = given(batch)
    assert float(out["loss"].detach()) == pytest.approx(
        float(out["ce"]) + 0.5 * float(out["input_gradient"]), rel=1e-5
    )


def test_sage_paper_is_ce_plus_triplet_plus_jsd_and_nothing_else():
    batch = toy_batch()
    task = make_task("sage-paper", sage={"lambda_hinge": 50.0, "lambda_trip": 0.7, "lambda_js": 2.0})
    assert task.options.degradation == "blur+noise" and task.options.saliency_mode == "continuous"
    task.train()
    torch.manual_seed(0)
    out = task(batch)
    assert set(out) == {"loss", "output", "ce", "triplet", "jsd"}
    expected = out["ce"] + 0.7 * out["triplet"] + 2.0 * out["jsd"]
    assert torch.allclose(out["loss"].detach(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="sage-paper degrades with blur or noise"):
        TrainConfig.from_dict({"method": "sage-paper", "sage": {"degradation": "swap"}})


def test_controls_drop_the_terms_they_control_for():
    batch = toy_batch()
    swap, jsd = make_task("ce-swap"), make_task("ce-jsd")
    assert swap.options.degradation == "swap" and jsd.options.degradation == "swap"
    swap.train()
    jsd.train()
    out = jsd(batch)
    assert torch.allclose(out["loss"].detach(), out["ce"] + 3.0 * out["jsd"], atol=1e-6)
    seen = []
    swap.model.net.features.register_forward_hook(lambda module, args, o: seen.append(args[0].shape[0]))
    out = swap(batch)
    assert seen == [32]  # the clean rows and one x+ view each, no x-
    assert torch.allclose(out["loss"].detach(), out["ce"])


@pytest.mark.parametrize("method", ["blur", "cyborg", "rrr", "gradia", "ce-swap", "ce-jsd", "sage-paper"])
@pytest.mark.parametrize("mode", ["continuous", "threshold", "ramp"])
def test_every_saliency_method_takes_every_map_preprocessing(method, mode):
    group = "sage" if method in SageTask.TERMS else "baselines"
    task = make_task(method, **{group: {"saliency_mode": mode, "threshold": 0.6}})
    batch = toy_batch()
    batch.saliency[:, :, 0, :3] = torch.tensor([0.3, 0.8, 1.0])
    s = task.saliency(batch) if group == "sage" else task.map_for_loss(batch)
    expected = {"continuous": [0.3, 0.8, 1.0], "threshold": [0.0, 1.0, 1.0], "ramp": [0.0, 0.5, 1.0]}[mode]
    assert s[0, 0, 0, :3].tolist() == pytest.approx(expected)
    task.train()
    assert torch.isfinite(task(batch)["loss"])
