"""Batch prediction without the web app: a model (run folder, model.pt or export archive) over a
folder or zip of images, written as predictions.csv (+ heatmap PNGs at each image's own size).

The same writer serves `python -m sage predict` and the application's predict-batch job, so both
produce the same result layout:

    OUT/predictions.csv     image,label,confidence,p_<label>...   (one row per image, input order)
    OUT/heatmaps/<stem>.png 8-bit grayscale Grad-CAM of the predicted class (with heatmaps)
    OUT/errors.csv          image,error   for inputs that could not be decoded (when any)
"""

from __future__ import annotations

import csv
import functools
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import numpy as np
from PIL import UnidentifiedImageError

from sage.imageio import DecodedArray, DecodeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm")
CHUNK = 32
MAX_ZIP_MEMBER_BYTES = 200 * 1024 * 1024


class BatchError(ValueError):
    """Inputs or a model that cannot be used; the message says which and why."""


@dataclass
class BatchResult:
    predicted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def iter_inputs(source: str | Path) -> list[tuple[str, Callable[[], bytes]]]:
    """(name, read) of every image in a folder (recursively, sorted) or a zip (member order
    sorted); names are relative posix paths. Non-image files are skipped."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        return [(p.relative_to(source).as_posix(), p.read_bytes) for p in files]
    if source.is_file() and zipfile.is_zipfile(source):
        zf = zipfile.ZipFile(source)
        out: list[tuple[str, Callable[[], bytes]]] = []
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            name = info.filename
            pure = PurePosixPath(name)
            if info.is_dir() or pure.suffix.lower() not in IMAGE_SUFFIXES or pure.name.startswith("."):
                continue
            if pure.is_absolute() or ".." in pure.parts or "__MACOSX" in pure.parts:
                continue
            if info.file_size > MAX_ZIP_MEMBER_BYTES:
                raise BatchError(f"{source}: {name} is {info.file_size} bytes uncompressed; too large")
            out.append((pure.as_posix(), functools.partial(zf.read, info)))
        return out
    if not source.exists():
        raise FileNotFoundError(f"images not found: {source}")
    raise BatchError(f"{source} is neither a folder nor a zip of images")


def heatmap_name(name: str) -> str:
    """heatmaps/<path without suffix>.png: unique per input name (subfolders kept)."""
    return str(PurePosixPath("heatmaps") / PurePosixPath(name).with_suffix(".png"))


class ProgressBar:
    """A one-line text progress bar on a stream (stderr), redrawn at most every 0.1 s."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.stream, self.width = total, stream or sys.stderr, width
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if done < self.total and now - self._last < 0.1:
            return
        self._last = now
        share = done / self.total if self.total else 1.0
        filled = int(round(share * self.width))
        rate = done / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        self.stream.write(
            f"\r[{'#' * filled}{'.' * (self.width - filled)}] {done}/{self.total} "
            f"{rate:.1f} img/s eta {eta:.0f}s"
        )
        if done >= self.total:
            self.stream.write("\n")
        self.stream.flush()


def load_model(path: str | Path, device: str = "cpu") -> Any:
    """A `sage.inference.Predictor` for a run folder / model.pt / state_dict archive, else the
    `sage.export.ExportedModel` of a TorchScript or ONNX archive (no heatmaps)."""
    from sage.export import read_archive
    from sage.inference import Predictor

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if is_archive(path):
        exported = read_archive(path)
        if exported.fmt != "state_dict":
            return exported
        ckpt = exported.checkpoint
        assert ckpt is not None  # a state_dict archive carries its checkpoint
        return Predictor(exported.runner, ckpt["labels"], ckpt["image_size"], _device(device), {
            k: ckpt[k] for k in ("backbone", "config", "metrics", "sage_version") if k in ckpt})  # fmt: skip
    return Predictor.load(path, device)


def is_archive(path: Path) -> bool:
    """An export archive (a zip holding model.json); a model.pt is a zip too, but without it."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return "model.json" in zf.namelist()


def _device(name: str):
    from sage.training import resolve_device

    return resolve_device(name)


def model_input(image: DecodedArray, size: int, window: str):
    """uint8 (3, size, size): the image through `window` and letterboxed, exactly as training and
    `sage.inference.Predictor` prepare it (sage.transforms.preprocess)."""
    from sage.imageio import window_for
    from sage.transforms import preprocess

    chosen = window_for(window, image.pixels, image.bit_depth, image.header_window)
    return preprocess(image.pixels, size, chosen)[0]


def _predict_chunk(model: Any, images: list[DecodedArray], heatmaps: bool) -> list[tuple[str, dict, Any]]:
    from sage.inference import Predictor

    if not images:
        return []
    if isinstance(model, Predictor):
        return [(p.label, p.probabilities, p.heatmap) for p in model.predict(list(images), heatmaps=heatmaps)]
    import torch

    window = str((model.card.get("training_config") or {}).get("window", "default"))
    pixels = torch.stack([model_input(im, model.image_size, window) for im in images]).float().div(255)
    probs = model.probabilities(pixels.numpy())
    out = []
    for row in probs:
        label = model.labels[int(np.argmax(row))]
        out.append((label, {name: float(p) for name, p in zip(model.labels, row, strict=True)}, None))
    return out


def predict_batch(
    model: Any,
    inputs: list[tuple[str, Callable[[], bytes]]],
    out: str | Path,
    *,
    heatmaps: bool = False,
    decode: Callable[[bytes], DecodedArray] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Predict every input with `model` (see `load_model`) and write the result layout into `out`.

    decode: bytes -> `sage.imageio.DecodedArray` (default: `sage.imageio.decode`, the project's
    one decoder: PNG, JPEG, TIFF, BMP, DICOM at full precision).
    progress(done, total) after each chunk. Inputs that cannot be decoded are listed in errors.csv
    and the rest are still predicted."""
    from sage.heatmaps import heatmap_png
    from sage.inference import Predictor

    if heatmaps and not isinstance(model, Predictor):
        raise BatchError(
            "heatmaps need the model's layers (Grad-CAM): use a run folder, model.pt or a state_dict "
            "archive, or leave --heatmaps out for TorchScript/ONNX archives"
        )
    decode = decode or _decode
    labels = list(model.labels)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if heatmaps:
        (out / "heatmaps").mkdir(exist_ok=True)
    result = BatchResult(labels=labels)
    total = len(inputs)
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "confidence", *[f"p_{name}" for name in labels]])
        for start in range(0, total, CHUNK):
            chunk, names = [], []
            for name, read in inputs[start : start + CHUNK]:
                try:
                    chunk.append(decode(read()))
                    names.append(name)
                except (DecodeError, UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
                    result.failed.append((name, str(exc) or exc.__class__.__name__))
            for name, (label, probs, heat) in zip(names, _predict_chunk(model, chunk, heatmaps), strict=True):
                writer.writerow([name, label, f"{probs[label]:.6f}", *[f"{probs[n]:.6f}" for n in labels]])
                if heatmaps and heat is not None:
                    target = out / heatmap_name(name)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(heatmap_png(heat))
                result.predicted += 1
            if progress is not None:
                progress(min(start + CHUNK, total), total)
    if result.failed:
        with open(out / "errors.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "error"])
            writer.writerows(result.failed)
    return result


def _decode(data: bytes) -> DecodedArray:
    from sage.imageio import decode

    return decode(data, what="the image")


def zip_folder(folder: str | Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of every file under `folder`, sorted."""
    folder = Path(folder)
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            yield p.relative_to(folder).as_posix(), p
