import pytest
import torch

from sage.backbones import available_models, create_model
from sage.cam import class_activation_map, grad_cam

SIZES = {"vit_b_16": 32}


@pytest.mark.slow
@pytest.mark.parametrize("name", available_models())
def test_every_backbone_gives_logits_embedding_and_cam_features(name):
    torch.manual_seed(0)
    model = create_model(name, 3, image_size=SIZES.get(name, 64)).eval()
    x = torch.randn(2, 3, SIZES.get(name, 64), SIZES.get(name, 64))
    out = model.forward_all(x)
    assert out.logits.shape == (2, 3)
    assert out.embedding.shape[0] == 2 and out.embedding.shape[1] == model.head.in_features
    assert out.features.ndim == 4 and out.features.shape[:2] == (2, model.head.in_features)
    assert model.cam_layer
    assert torch.allclose(model(x), out.logits, atol=1e-5)
    cam = grad_cam(out, torch.tensor([0, 2]))
    assert cam.shape == (2, *out.features.shape[-2:]) and (cam >= 0).all()
    assert class_activation_map(model, model.forward_all(x), torch.tensor([1, 1])).shape == cam.shape


def test_unknown_backbone_and_bad_vit_size_are_clear():
    with pytest.raises(ValueError, match="unknown backbone"):
        create_model("resnet9000", 2)
    with pytest.raises(ValueError, match="multiple of 16"):
        create_model("vit_b_16", 2, image_size=40)


def test_pretrained_weights_load_skip_a_mismatched_head_and_fail_clearly(tmp_path):
    torch.manual_seed(0)
    source = create_model("resnet18", 10)
    path = tmp_path / "r18.pth"
    torch.save(source.net.state_dict(), path)  # a torchvision-style state dict with a 10-class head
    model = create_model("resnet18", 3, pretrained_path=path)
    assert torch.equal(model.net.conv1.weight, source.net.conv1.weight)
    assert model.net.fc.out_features == 3
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model("resnet18", 3, pretrained_path=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="does not fit resnet50"):
        create_model("resnet50", 3, pretrained_path=path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        create_model("resnet18", 3, pretrained_path=tmp_path / "junk.pth")


def test_a_sage_model_file_can_seed_a_new_run(trained_model):
    model = create_model("tiny", 4, pretrained_path=trained_model, image_size=32)
    state = torch.load(trained_model, weights_only=False)["model_state"]
    assert torch.equal(model.net.features[0].weight, state["net.features.0.weight"])
