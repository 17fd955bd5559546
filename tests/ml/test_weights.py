"""Pretrained weights by name: the registry folder, hash checks, clear errors (sage.weights)."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch

from sage import weights as registry
from sage.backbones import create_model
from sage.weights import WeightsError, add_weights, list_weights, resolve, weights_path


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SAGE_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.delenv("SAGE_ALLOW_DOWNLOAD", raising=False)
    return tmp_path / "weights"


def saved_state(tmp_path, backbone="tiny", name="mine.pth", seed=0):
    torch.manual_seed(seed)
    model = create_model(backbone, 3, image_size=16)
    path = tmp_path / name
    torch.save(model.net.state_dict(), path)  # a torchvision-format state dict
    return model, path


def test_known_names_are_torchvisions_own_file_names():
    import torchvision.models as tvm

    for name, (backbone, file) in registry.TORCHVISION_WEIGHTS.items():
        enum_name, member = name.split(".")
        weights = getattr(tvm, enum_name)[member]
        assert weights.url.rsplit("/", 1)[1] == file
        assert file.startswith(backbone)


def test_custom_weights_load_by_name_with_their_hash_checked(tmp_path, folder):
    model, path = saved_state(tmp_path)
    entry = add_weights(path, name="tiny-bench", backbone="tiny")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry.file == f"tiny-{digest[:8]}.pth" and (folder / entry.file).is_file()
    assert [e.name for e in list_weights()] == ["tiny-bench"]
    loaded = create_model("tiny", 3, weights_path("tiny-bench", "tiny"), image_size=16)
    first = next(iter(model.state_dict()))
    assert torch.equal(loaded.state_dict()[first], model.state_dict()[first])


def test_torchvision_names_need_the_exact_file(tmp_path, folder, monkeypatch):
    _, path = saved_state(tmp_path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(
        registry.TORCHVISION_WEIGHTS, "Tiny_Weights.TEST_V1", ("tiny", f"tiny-{digest[:8]}.pth")
    )
    with pytest.raises(
        WeightsError, match="not torchvision's ResNet18_Weights.IMAGENET1K_V1.*expected f37072fd"
    ):
        add_weights(path, name="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(WeightsError, match="not a torchvision weights file name; give --name"):
        add_weights(path)
    named = tmp_path / f"tiny-{digest[:8]}.pth"
    named.write_bytes(path.read_bytes())
    entry = add_weights(named)  # the name is inferred from torchvision's file name
    assert entry.name == "Tiny_Weights.TEST_V1" and entry.source == "torchvision"
    assert weights_path("Tiny_Weights.TEST_V1", "tiny") == folder / named.name


def test_wrong_missing_or_unknown_weights_fail_clearly(tmp_path, folder):
    _, path = saved_state(tmp_path)
    entry = add_weights(path, name="mine", backbone="tiny")
    with pytest.raises(WeightsError, match="for backbone 'tiny', not 'resnet18'"):
        resolve("mine", "resnet18")
    with pytest.raises(WeightsError, match="unknown weights 'nope'; registered: mine"):
        resolve("nope")
    with pytest.raises(WeightsError, match="a torchvision name whose file is not in the folder"):
        resolve("ResNet18_Weights.IMAGENET1K_V1")
    stored = folder / entry.file
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")  # corrupted on disk
    with pytest.raises(WeightsError, match="corrupt or not the file its name says"):
        weights_path("mine", "tiny")
    stored.unlink()
    with pytest.raises(WeightsError, match="missing; add it with `sage-studio weights add FILE`"):
        weights_path("mine", "tiny")
    with pytest.raises(WeightsError, match="no such file"):
        add_weights(tmp_path / "absent.pth", name="x", backbone="tiny")


def test_download_switch_lists_every_torchvision_name(folder, monkeypatch):
    assert list_weights() == []
    monkeypatch.setenv("SAGE_ALLOW_DOWNLOAD", "1")
    names = {e.name for e in list_weights()}
    assert "ResNet50_Weights.IMAGENET1K_V2" in names
    assert resolve("ResNet50_Weights.IMAGENET1K_V2", "resnet50").present is False


def test_a_missing_torchvision_file_is_fetched_only_when_allowed_and_still_hash_checked(folder, monkeypatch):
    """Workers fetch a torchvision file through the callback the training loop passes (torch.hub);
    without SAGE_ALLOW_DOWNLOAD nothing is fetched, and a fetched file must match its name's hash."""
    calls = []

    def fake_download(url, into, file_name):
        calls.append((url, file_name))
        (into / file_name).write_bytes(b"not the real weights")

    name, file = "ResNet18_Weights.IMAGENET1K_V1", "resnet18-f37072fd.pth"
    with pytest.raises(WeightsError):
        weights_path(name, "resnet18", download=fake_download)
    assert calls == []
    monkeypatch.setenv("SAGE_ALLOW_DOWNLOAD", "1")
    with pytest.raises(WeightsError, match="SHA-256"):
        weights_path(name, "resnet18", download=fake_download)
    assert calls == [(registry.DOWNLOAD_URL + file, file)]


def test_training_uses_weights_by_name_and_refuses_both_ways(tmp_path, folder):
    from sage.config import TrainConfig
    from sage.training import pretrained_file

    _, path = saved_state(tmp_path)
    add_weights(path, name="mine", backbone="tiny")
    config = TrainConfig.from_dict({"backbone": "tiny", "weights": "mine"})
    assert pretrained_file(config).parent == folder
    with pytest.raises(ValueError, match="not both"):
        TrainConfig.from_dict({"weights": "mine", "pretrained_path": str(path)})


def test_registry_validation_does_not_import_torch(tmp_path):
    (tmp_path / "registry.json").write_text(
        json.dumps({"mine": {"backbone": "tiny", "file": "tiny-00000000.pth"}})
    )
    code = (
        "import sys\nfrom sage.weights import resolve, list_weights\n"
        "print(resolve('mine', 'tiny').name, 'torch' in sys.modules)\n"
    )
    env = {"SAGE_WEIGHTS_DIR": str(tmp_path), "PATH": "/usr/bin"}
    import os

    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["mine", "False"]


def test_sage_studio_weights_add_and_list(tmp_path, folder, capsys, settings, monkeypatch):
    import app.cli
    from app.cli import main

    monkeypatch.setattr(app.cli, "get_settings", lambda: settings)
    _, path = saved_state(tmp_path)
    assert main(["weights", "list"]) == 0
    assert "no weights registered" in capsys.readouterr().out
    assert main(["weights", "add", str(path), "--name", "ResNet18_Weights.IMAGENET1K_V1"]) == 1
    assert "expected f37072fd" in capsys.readouterr().err
    assert main(["weights", "add", str(path), "--name", "bench-tiny", "--backbone", "tiny"]) == 0
    from app.storage import get_storage

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert get_storage(settings).exists(f"{digest}.pth"), "stored for workers on other machines"
    assert main(["weights", "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("bench-tiny\ttiny\ttiny-")
