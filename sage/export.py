"""Export a trained model.pt as a self-contained zip archive (TorchScript, ONNX or a state dict) and
read such archives back for prediction.

An archive holds three members:

- the model: `model.torchscript.pt` (a traced `ExportedClassifier`), `model.onnx` (the same module
  through `torch.onnx.export`), or `model_state.pt` (the SAGE checkpoint: state dict, backbone,
  labels, config; rebuilt with `sage.backbones.create_model`);
- `model.json`: labels, preprocessing (channels, window rule, input size, resize/letterbox,
  normalisation and where it is applied), method and training config, sage version, metrics and
  a lineage summary; enough to run the model without this package;
- `SHA256SUMS`: the SHA-256 of the two other members, in `sha256sum -c` format.

TorchScript and ONNX models take `pixels`, float32 (N, 3, S, S) RGB in [0, 1] after the resize,
and return `logits` and `probabilities` (N, K); the ImageNet normalisation is inside the graph,
so a client only resizes and scales.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sage import __version__
from sage.backbones import Classifier, create_model
from sage.transforms import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("torchscript", "onnx", "state_dict")
MODEL_MEMBER = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "state_dict": "model_state.pt"}
CARD = "model.json"
SUMS = "SHA256SUMS"
ARCHIVE_FORMAT = "sage-export/1"
ONNX_OPSET = 18


class ExportError(ValueError):
    """An archive that cannot be written or read (unknown format, bad checksum, missing member)."""


class ExportedClassifier(nn.Module):
    """pixels in [0, 1] -> (logits, probabilities), with the model's normalisation inside and the
    probabilities calibrated with the temperature fitted at training (softmax(logits / T))."""

    def __init__(
        self, model: Classifier, mean: list[float], std: list[float], temperature: float = 1.0
    ) -> None:
        super().__init__()
        self.model = model.eval()
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.temperature: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((pixels - self.mean) / self.std)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def read_checkpoint(model_file: str | Path) -> dict[str, Any]:
    """The SAGE model.pt as a dict; ValueError when it is not one."""
    from sage.training import MODEL_FORMAT

    try:
        ckpt = torch.load(Path(model_file), map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ExportError(f"cannot read model file {model_file}: {exc}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise ExportError(f"{model_file} is not a SAGE model file (expected format {MODEL_FORMAT})")
    return ckpt


def build_model(ckpt: dict[str, Any]) -> Classifier:
    model = create_model(ckpt["backbone"], ckpt["num_classes"], image_size=ckpt["image_size"])
    model.load_state_dict(ckpt["model_state"])
    return model.eval()


def _temperature(ckpt: dict[str, Any]) -> float:
    return float((ckpt.get("metrics") or {}).get("temperature") or 1.0)


def preprocessing_spec(ckpt: dict[str, Any], fmt: str) -> dict[str, Any]:
    """How a client turns an image file into the model's input. A checkpoint that records its own
    `preprocessing` (window rule, letterbox) overrides these defaults key by key."""
    size = int(ckpt["image_size"])
    norm = ckpt.get("normalization") or {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    window = str((ckpt.get("config") or {}).get("window", "default"))
    spec: dict[str, Any] = {
        "channels": "RGB; grayscale images are replicated to three channels",
        "window": {
            "mode": window,
            "rule": {
                "default": "the file's own window (DICOM WindowCenter/Width) if it has one, else the "
                "full range for 8-bit images, else the 0.5-99.5 percentile range of its pixels",
                "header": "as default",
                "auto": "the 0.5-99.5 percentile range of the image's pixels",
                "full": "the full range of the stored bit depth",
            }.get(window, window),
            "maps": "(pixel - (center - width / 2)) / width, clipped to [0, 1]",
        },
        "input_size": [size, size],
        "letterbox": True,
        "resize": "letterbox: scale by input_size / max(width, height) (bilinear, antialiased), "
        "centre, pad with zeros to input_size x input_size; aspect ratio kept",
        "scale": "[0, 1] after the window (the application rounds to 1/255 steps)",
        "normalisation": {
            "mean": list(norm["mean"]),
            "std": list(norm["std"]),
            "applied": "inside the model" if fmt != "state_dict" else "by the caller: (x - mean) / std",
        },
        "input": {"name": "pixels", "dtype": "float32", "shape": ["batch", 3, size, size]},
        "outputs": ["logits", "probabilities"] if fmt != "state_dict" else ["logits"],
        "temperature": _temperature(ckpt),
        "probabilities": "softmax(logits / temperature): calibrated on the validation split",
    }
    spec.update(ckpt.get("preprocessing") or {})
    return spec


def model_card(ckpt: dict[str, Any], fmt: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The archive's model.json."""
    config = ckpt.get("config") or {}
    metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items() if k != "history"}
    card: dict[str, Any] = {
        "format": ARCHIVE_FORMAT,
        "model_format": fmt,
        "model_file": MODEL_MEMBER[fmt],
        "labels": list(ckpt["labels"]),
        "backbone": ckpt["backbone"],
        "method": config.get("method"),
        "preprocessing": preprocessing_spec(ckpt, fmt),
        "training_config": config,
        "sage_version": ckpt.get("sage_version", __version__),
        "exported_with": {"sage": __version__, "torch": torch.__version__},
        "metrics": metrics,
        "lineage": {},
    }
    card.update(extra or {})
    return card


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _torchscript_bytes(wrapper: ExportedClassifier, example: torch.Tensor) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    return buf.getvalue()


def _onnx_bytes(wrapper: ExportedClassifier, example: torch.Tensor) -> tuple[bytes, str]:
    """ONNX through the torch.export-based exporter (dynamo); the TorchScript-based one is the
    fallback for graphs the former cannot capture. Both run offline. Returns (bytes, exporter)."""
    names: dict[str, Any] = {"input_names": ["pixels"], "output_names": ["logits", "probabilities"]}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        try:
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                opset_version=ONNX_OPSET,
                dynamic_shapes={"pixels": {0: batch}},
                verbose=False,
                external_data=False,
                **names,
            )
            assert program is not None  # the dynamo exporter returns its program
            program.save(str(path), external_data=False)
            exporter = "dynamo"
        except Exception:  # noqa: BLE001 - fall back to the TorchScript-based exporter
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
                **names,
            )
            exporter = "torchscript"
        return path.read_bytes(), exporter


def export_archive(
    model_file: str | Path, out: str | Path, fmt: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the archive of `model_file` in format `fmt` to `out` (a temporary file renamed into
    place). `extra` adds or overrides model.json keys (e.g. lineage, model version). Returns the
    model card with `archive_sha256` and `archive_bytes` added."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    ckpt = read_checkpoint(model_file)
    card = model_card(ckpt, fmt, extra)
    if fmt == "state_dict":
        buf = io.BytesIO()
        torch.save({k: v for k, v in ckpt.items() if k != "metrics"} | {"metrics": card["metrics"]}, buf)
        model_bytes = buf.getvalue()
    else:
        size = int(ckpt["image_size"])
        norm = card["preprocessing"]["normalisation"]
        wrapper = ExportedClassifier(build_model(ckpt), norm["mean"], norm["std"], _temperature(ckpt)).eval()
        example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        if fmt == "torchscript":
            model_bytes = _torchscript_bytes(wrapper, example)
        else:
            model_bytes, card["onnx_exporter"] = _onnx_bytes(wrapper, example)
            card["onnx_opset"] = ONNX_OPSET
    card_bytes = json.dumps(card, indent=1, sort_keys=True, default=str).encode()
    member = MODEL_MEMBER[fmt]
    sums = f"{_sha256(model_bytes)}  {member}\n{_sha256(card_bytes)}  {CARD}\n".encode()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name, data in ((member, model_bytes), (CARD, card_bytes), (SUMS, sums)):
                    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # same bytes each time
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    card["archive_sha256"] = _sha256(out.read_bytes())
    card["archive_bytes"] = out.stat().st_size
    return card


# --- reading archives back --------------------------------------------------------------------------


@dataclass
class ExportedModel:
    """A model read from an archive: `probabilities(pixels)` for (N, 3, S, S) float32 in [0, 1]."""

    card: dict[str, Any]
    fmt: str
    runner: Any  # torch.jit.ScriptModule | onnxruntime.InferenceSession | Classifier
    checkpoint: dict[str, Any] | None = None  # state_dict archives: the SAGE checkpoint

    @property
    def labels(self) -> list[str]:
        return list(self.card["labels"])

    @property
    def image_size(self) -> int:
        return int(self.card["preprocessing"]["input_size"][0])

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        if self.fmt == "onnx":
            _, probs = self.runner.run(["logits", "probabilities"], {"pixels": x})
            return np.asarray(probs)
        with torch.inference_mode():
            t = torch.from_numpy(x)
            if self.fmt == "torchscript":
                return self.runner(t)[1].numpy()
            norm = self.card["preprocessing"]["normalisation"]
            mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
            std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
            temperature = float(self.card["preprocessing"].get("temperature") or 1.0)
            return torch.softmax(self.runner((t - mean) / std).float() / temperature, dim=1).numpy()


def read_archive(path: str | Path) -> ExportedModel:
    """Open an archive written by `export_archive`, verifying SHA256SUMS. ONNX needs onnxruntime."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model archive not found: {path}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ExportError(f"{path} is not a model archive (zip): {exc}") from exc
    with zf:
        names = set(zf.namelist())
        for needed in (CARD, SUMS):
            if needed not in names:
                raise ExportError(f"{path} has no {needed}; it is not a SAGE model archive")
        sums = {}
        for line in zf.read(SUMS).decode().splitlines():
            digest, _, name = line.partition("  ")
            sums[name.strip()] = digest.strip()
        members = {}
        for name, digest in sums.items():
            if name not in names:
                raise ExportError(f"{path}: {name} is listed in {SUMS} but missing")
            data = zf.read(name)
            if _sha256(data) != digest:
                raise ExportError(
                    f"{path}: {name} does not match its SHA-256 in {SUMS}; the archive is corrupt"
                )
            members[name] = data
    card = json.loads(members[CARD])
    fmt = card.get("model_format")
    if fmt not in FORMATS or MODEL_MEMBER[fmt] not in members:
        raise ExportError(f"{path}: model.json names format {fmt!r} but its model file is missing")
    data = members[MODEL_MEMBER[fmt]]
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still supported
            runner = torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
        return ExportedModel(card, fmt, runner)
    if fmt == "onnx":
        import onnxruntime

        runner = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return ExportedModel(card, fmt, runner)
    ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    return ExportedModel(card, fmt, build_model(ckpt), checkpoint=ckpt)
