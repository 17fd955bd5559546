"""Backbones behind one factory, each split into CAM features -> pooled embedding -> logits.

`create_model(name, num_classes, pretrained_path=None, image_size=224)` is the only way models are
built (training, inference, benchmark), so a new backbone is one `register` call. Every model is a
`Classifier`: `forward(x)` gives logits, `forward_all(x)` gives a `ModelOutput` with the logits, the
pooled penultimate embedding SAGE's triplet works on, and the spatial CAM features (the output of
the layer named by `cam_layer`) that Grad-CAM, CYBORG and GRADIA read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm
from torchvision.models.vision_transformer import interpolate_embeddings

from sage.config import BACKBONES


@dataclass
class ModelOutput:
    """What one forward pass gives the training methods and Grad-CAM."""

    logits: torch.Tensor  # (B, K)
    embedding: torch.Tensor  # (B, D), pooled penultimate features, not normalised
    features: torch.Tensor  # (B, D, h, w), the CAM layer's output, upstream of the logits


class Classifier(nn.Module):
    """A backbone (`net`, the torchvision module so its state dicts load as they are) cut in three.

    Subclasses implement `features`, `embed` and `head`; `head` must be the final nn.Linear so a
    class activation map is `sum_d head.weight[c, d] * features[:, d]`.
    """

    cam_layer: str = ""

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.net: Any = net  # a torchvision model: subclasses reach its parts by name
        self.num_classes = num_classes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(features, 1), 1)

    @property
    def head(self) -> nn.Linear:
        raise NotImplementedError

    def forward_all(self, x: torch.Tensor) -> ModelOutput:
        features = self.features(x)
        embedding = self.embed(features)
        return ModelOutput(logits=self.head(embedding), embedding=embedding, features=features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).logits


class TinyNet(nn.Module):
    """A small VGG-style CNN that trains in seconds on a CPU at 32-64 px."""

    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        w = width
        self.features = nn.Sequential(
            *block(3, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), *block(4 * w, 4 * w),
        )  # fmt: skip
        self.fc = nn.Linear(4 * w, num_classes)


class TinyClassifier(Classifier):
    cam_layer = "net.features"

    def features(self, x):
        return self.net.features(x)

    @property
    def head(self):
        return self.net.fc


class ResNetClassifier(Classifier):
    cam_layer = "net.layer4"

    def features(self, x):
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    @property
    def head(self):
        return self.net.fc


class DenseNetClassifier(Classifier):
    cam_layer = "net.features"  # followed by the ReLU torchvision applies in forward()

    def features(self, x):
        return F.relu(self.net.features(x))

    @property
    def head(self):
        return self.net.classifier


class EfficientNetClassifier(Classifier):
    cam_layer = "net.features"

    def features(self, x):
        return self.net.features(x)

    def embed(self, features):
        return self.net.classifier[0](super().embed(features))  # dropout, as torchvision does

    @property
    def head(self):
        return self.net.classifier[1]


class ConvNeXtClassifier(Classifier):
    cam_layer = "net.features"

    def features(self, x):
        return self.net.features(x)

    def embed(self, features):
        pooled = self.net.avgpool(features)
        return self.net.classifier[1](self.net.classifier[0](pooled))  # LayerNorm2d, flatten

    @property
    def head(self):
        return self.net.classifier[2]


class ViTClassifier(Classifier):
    """ViT: the CAM features are the patch tokens entering the last encoder block, as a grid.

    The class token after the last block depends on those tokens through attention, so gradients
    (Grad-CAM) reach them; the last block's own patch outputs would not influence the logits.
    """

    cam_layer = "net.encoder.layers[-2]"

    def forward_all(self, x):
        vit = self.net
        n = x.shape[0]
        tokens = vit._process_input(x)
        tokens = torch.cat([vit.class_token.expand(n, -1, -1), tokens], dim=1)
        enc = vit.encoder
        tokens = enc.layers[:-1](enc.dropout(tokens + enc.pos_embedding))
        side = int(round((tokens.shape[1] - 1) ** 0.5))
        grid = tokens[:, 1:].transpose(1, 2).reshape(n, tokens.shape[2], side, side)
        tokens = torch.cat([tokens[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)
        embedding = enc.ln(enc.layers[-1](tokens))[:, 0]
        return ModelOutput(logits=self.head(embedding), embedding=embedding, features=grid)

    @property
    def head(self):
        return self.net.heads.head


@dataclass(frozen=True)
class ModelSpec:
    build: Callable[[int, int], Classifier]  # (num_classes, image_size) -> model
    head_prefixes: tuple[str, ...]  # state-dict keys of the classifier head (skipped on mismatch)
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, spec: ModelSpec) -> None:
    _REGISTRY[name] = spec


def available_models() -> list[str]:
    return list(_REGISTRY)


register(
    "tiny", ModelSpec(lambda k, s: TinyClassifier(TinyNet(k), k), ("fc.",), "6-conv CNN, 16-64 channels")
)
register(
    "tiny-wide",
    ModelSpec(lambda k, s: TinyClassifier(TinyNet(k, 32), k), ("fc.",), "6-conv CNN, 32-128 channels"),
)
register(
    "resnet18",
    ModelSpec(
        lambda k, s: ResNetClassifier(tvm.resnet18(num_classes=k), k), ("fc.",), "torchvision ResNet-18"
    ),
)
register(
    "resnet50",
    ModelSpec(
        lambda k, s: ResNetClassifier(tvm.resnet50(num_classes=k), k), ("fc.",), "torchvision ResNet-50"
    ),
)
register(
    "densenet121",
    ModelSpec(
        lambda k, s: DenseNetClassifier(tvm.densenet121(num_classes=k), k),
        ("classifier.",),
        "torchvision DenseNet-121",
    ),
)
register(
    "efficientnet_b0",
    ModelSpec(
        lambda k, s: EfficientNetClassifier(tvm.efficientnet_b0(num_classes=k), k),
        ("classifier.1.",),
        "torchvision EfficientNet-B0",
    ),
)
register(
    "convnext_tiny",
    ModelSpec(
        lambda k, s: ConvNeXtClassifier(tvm.convnext_tiny(num_classes=k), k),
        ("classifier.2.",),
        "torchvision ConvNeXt-T",
    ),
)
register("vit_b_16", ModelSpec(lambda k, s: ViTClassifier(tvm.vit_b_16(num_classes=k, image_size=s), k), ("heads.",), "torchvision ViT-B/16 (image_size a multiple of 16)"))  # fmt: skip

if set(_REGISTRY) != set(BACKBONES):  # pragma: no cover - a registry edit without its config twin
    raise RuntimeError(f"sage.config.BACKBONES {sorted(BACKBONES)} != registered models {sorted(_REGISTRY)}")


def create_model(
    name: str, num_classes: int, pretrained_path: str | Path | None = None, image_size: int = 224
) -> Classifier:
    """Build a registered backbone with a fresh `num_classes` head.

    pretrained_path: a local file with a torchvision state dict for this backbone (e.g. ImageNet
    weights; the head is skipped when its shape differs) or a SAGE model.pt. Raises FileNotFoundError
    when the file is missing and ValueError when its weights do not fit the backbone.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(_REGISTRY)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if name.startswith("vit") and image_size % 16:
        raise ValueError(f"{name} needs image_size to be a multiple of 16, got {image_size}")
    spec = _REGISTRY[name]
    model = spec.build(num_classes, image_size)
    if pretrained_path is not None:
        load_pretrained(model, spec, Path(pretrained_path), name)
    return model


def load_pretrained(model: Classifier, spec: ModelSpec, path: Path, name: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights not found: {path} (give a local file path)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure means the same thing here
        raise ValueError(f"cannot read pretrained weights {path}: {exc}") from exc
    if isinstance(obj, dict) and "model_state" in obj:  # a SAGE model.pt
        obj = {k.removeprefix("net."): v for k, v in obj["model_state"].items()}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    own = model.net.state_dict()
    state = {}
    for key, value in obj.items():
        if key in own and own[key].shape != value.shape:
            if key.startswith(spec.head_prefixes):
                continue  # a head for another number of classes: keep the fresh one
            if key == "encoder.pos_embedding":
                value = interpolate_embeddings(own_size(own), 16, {key: value})[key]
            else:
                raise ValueError(
                    f"{path} does not fit {name}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}"
                )
        state[key] = value
    missing = [k for k in own if k not in state and not k.startswith(spec.head_prefixes)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit {name}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    model.net.load_state_dict(state, strict=False)


def own_size(state: dict[str, torch.Tensor]) -> int:
    """Image side a ViT state dict was built for, from its position embedding length."""
    tokens = state["encoder.pos_embedding"].shape[1] - 1
    return int(round(tokens**0.5)) * 16


class ReferenceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, while `reference_rows` is set, normalises with the first rows' statistics.

    SAGE runs the clean images and their two degraded views as one batch; with this layer the
    degraded views are normalised exactly as the clean images are and never shift the running
    statistics that inference uses.
    """

    reference_rows: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.reference_rows
        if n is None or not self.training or n >= x.shape[0]:
            return super().forward(x)
        var, mean = torch.var_mean(x[:n], dim=(0, 2, 3), unbiased=False)
        running_mean, running_var, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        if (
            self.track_running_stats
            and running_mean is not None
            and running_var is not None
            and tracked is not None
        ):
            with torch.no_grad():
                tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                count = n * x.shape[2] * x.shape[3]
                running_mean.lerp_(mean.detach().float(), momentum)
                running_var.lerp_(var.detach().float() * count / max(count - 1, 1), momentum)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        # one fused multiply-add over the whole three-view batch
        return torch.addcmul(shift[None, :, None, None], x, scale[None, :, None, None])


def use_reference_batchnorm(model: nn.Module) -> int:
    """Turn every plain BatchNorm2d into a ReferenceBatchNorm2d in place; returns how many.

    The class is swapped rather than the module replaced so parameters, buffers, state-dict keys
    and optimizer references stay exactly the same.
    """
    count = 0
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = ReferenceBatchNorm2d
            count += 1
    return count


@contextlib.contextmanager
def batchnorm_reference(model: nn.Module, rows: int | None) -> Iterator[None]:
    """Within the block, ReferenceBatchNorm2d layers take their statistics from the first `rows`."""
    layers = [m for m in model.modules() if isinstance(m, ReferenceBatchNorm2d)]
    for m in layers:
        m.reference_rows = rows
    try:
        yield
    finally:
        for m in layers:
            m.reference_rows = None
