"""Reader for the dataset folder format (DESIGN.md section 3) and the tensors training reads.

DATASET/labels.csv (image,label[,split][,group][,subtype], parsed by sage.labels_csv with the
rules every reader shares), DATASET/images/<image>, DATASET/saliency/<stem>.png, and optionally
DATASET/pixels/<stem>.npy with pixels/<stem>.json ({"bit_depth", "header_window"}): the image
already decoded (SAGE Studio's training snapshots carry the array stored at upload), read instead
of decoding images/<image> again.
`read_dataset` checks every row and raises one `DatasetError` listing each bad row with its file
and line; nothing is dropped silently. `load_split` decodes a split once into uint8 tensors at the
training size; an image without a saliency map gets an all-zero map and `has_saliency = False`,
which the methods use as a per-sample weight.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from sage import imageio
from sage.labels_csv import HEADER_HELP, LABELS_CSV, read_labels_csv
from sage.transforms import preprocess, saliency_to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom")


class DatasetError(ValueError):
    """A dataset folder that cannot be used; `errors` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        shown = "\n  ".join(self.errors[:20])
        more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
        super().__init__(f"{len(self.errors)} problem(s) in the dataset:\n  {shown}{more}")


@dataclass(frozen=True)
class Sample:
    image: str  # file name under images/
    label: str
    split: str
    line: int  # line in labels.csv, for error messages
    saliency: str | None = None  # file name under saliency/, when the image has a map
    group: str | None = None  # patient, subject or device; a split never cuts a group
    subtype: str | None = None  # for example an attack type, for leave-subtype-out evaluation


@dataclass
class DatasetIndex:
    root: Path
    samples: list[Sample]
    labels: list[str]  # ordered class names; a sample's class index is labels.index(sample.label)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]


def read_dataset(root: str | Path, labels: list[str] | None = None, check_files: bool = True) -> DatasetIndex:
    """Parse and check DATASET/labels.csv.

    labels: the ordered class names to use; a row with a label outside them is an error. When not
    given, the sorted set of labels in the file. check_files: open each image and map header to
    check it is decodable and that the map has the image's size.
    """
    root = Path(root)
    csv_path = root / LABELS_CSV
    if not csv_path.is_file():
        raise DatasetError(
            [f"{csv_path}: missing (a dataset folder needs labels.csv with header {HEADER_HELP})"]
        )
    parsed = read_labels_csv(csv_path, labels=labels)
    problems = [(p.line, p.message) for p in parsed.problems]
    samples: list[Sample] = []
    for row in parsed.rows:
        image_path = root / "images" / row.image
        if not image_path.is_file():
            problems.append((row.line, f"image file {image_path} not found"))
            continue
        saliency_path = root / "saliency" / f"{Path(row.image).stem}.png"
        saliency = saliency_path.name if saliency_path.is_file() else None
        if check_files:
            problem = _check_files(image_path, saliency_path if saliency else None)
            if problem:
                problems.append((row.line, problem))
                continue
        assert row.label is not None  # parsed without allow_unlabelled
        samples.append(
            Sample(row.image, row.label, row.split or "train", row.line, saliency, row.group, row.subtype)
        )
    if problems:
        raise DatasetError([f"{csv_path}:{line}: {message}" for line, message in sorted(problems)])
    if not samples:
        raise DatasetError([f"{csv_path}: no rows"])
    names = list(labels) if labels else sorted({s.label for s in samples})
    if len(names) < 2:
        raise DatasetError([f"{csv_path}: needs at least 2 classes, found {names}"])
    return DatasetIndex(root, samples, names)


def _check_files(image_path: Path, saliency_path: Path | None) -> str | None:
    """A problem with an image or its map found from their headers (the decoder's probe), or None."""
    try:
        size = imageio.probe_size(image_path.read_bytes())
    except OSError as exc:
        return f"cannot read image {image_path}: {exc}"
    if size is None:
        return f"cannot decode image {image_path}: not a readable {imageio.SUPPORTED} file"
    if saliency_path is None:
        return None
    try:
        with Image.open(saliency_path) as sm:
            if sm.size != size:
                return f"saliency map {saliency_path} is {sm.size[0]}x{sm.size[1]}, its image is {size[0]}x{size[1]}"
            sm.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"cannot decode saliency map {saliency_path}: {exc}"
    return None


def load_image(path: str | Path) -> imageio.DecodedArray:
    """The one image decoder (sage.imageio): pixels at full precision with their metadata."""
    return imageio.decode_file(path)


def load_pixels(root: str | Path, image: str) -> tuple[np.ndarray, int, tuple[float, float] | None]:
    """(pixels, bit_depth, header_window) of images/<image>: from pixels/<stem>.npy and its .json
    when the folder carries them (no decoding), else decoded from the file (sage.imageio)."""
    root = Path(root)
    stem = Path(image).stem
    npy, meta_path = root / "pixels" / f"{stem}.npy", root / "pixels" / f"{stem}.json"
    if npy.is_file() and meta_path.is_file():
        pixels = imageio.npy_to_array(npy)
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
            raise ValueError(f"{npy}: array of shape {pixels.shape}, expected (H, W) or (H, W, 3)")
        meta = json.loads(meta_path.read_text())
        header = meta.get("header_window")
        bit_depth = meta.get("bit_depth") or (8 if pixels.dtype == np.uint8 else 16)
        return pixels, int(bit_depth), (float(header[0]), float(header[1])) if header else None
    decoded = load_image(root / "images" / image)
    return decoded.pixels, decoded.bit_depth, decoded.header_window


def load_saliency(path: str | Path) -> Image.Image:
    """A saliency PNG as an 8-bit grayscale image (0 = irrelevant, 255 = most salient)."""
    with Image.open(path) as im:
        im.load()
        return im.convert("L")


@dataclass
class SplitTensors:
    """A split decoded at the training size; everything stays uint8 until the device."""

    images: torch.Tensor  # (N, 3, P, P) uint8
    saliency: torch.Tensor  # (N, 1, P, P) uint8, zeros where has_saliency is False
    has_saliency: torch.Tensor  # (N,) bool
    labels: torch.Tensor  # (N,) int64
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray | list[int]) -> SplitTensors:
        idx = torch.as_tensor(np.asarray(rows, dtype=np.int64))
        return SplitTensors(
            self.images[idx], self.saliency[idx], self.has_saliency[idx], self.labels[idx],
            [self.names[i] for i in idx.tolist()],
        )  # fmt: skip


_CACHE: OrderedDict[tuple, SplitTensors] = OrderedDict()
_CACHE_SIZE = 8


def load_split(
    index: DatasetIndex, samples: list[Sample], image_size: int, cache: bool = True, window: str = "default"
) -> SplitTensors:
    """Decode `samples` into uint8 tensors at image_size through `preprocess` (window, channels,
    letterbox; memoised per file set, size and window choice)."""
    root = index.root
    key = (
        str(root.resolve()), image_size, window, tuple(index.labels),
        tuple((s.image, s.saliency, _mtime(root / "images" / s.image)) for s in samples),
    )  # fmt: skip
    if cache and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    n = len(samples)
    images = torch.zeros(n, 3, image_size, image_size, dtype=torch.uint8)
    saliency = torch.zeros(n, 1, image_size, image_size, dtype=torch.uint8)
    has = torch.zeros(n, dtype=torch.bool)
    labels = torch.tensor([index.labels.index(s.label) for s in samples], dtype=torch.int64)
    errors = []
    for i, s in enumerate(samples):
        where = f"{root / 'labels.csv'}:{s.line}"
        try:
            pixels, bit_depth, header_window = load_pixels(root, s.image)
            pixel_window = imageio.window_for(window, pixels, bit_depth, header_window)
            images[i] = preprocess(pixels, image_size, pixel_window)[0]
        except (imageio.DecodeError, OSError, ValueError) as exc:
            errors.append(f"{where}: cannot decode image {s.image}: {exc}")
            continue
        if s.saliency:
            try:
                saliency[i] = saliency_to_tensor(load_saliency(root / "saliency" / s.saliency), image_size)
                has[i] = True
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                errors.append(f"{where}: cannot decode saliency map {s.saliency}: {exc}")
    if errors:
        raise DatasetError(errors)
    tensors = SplitTensors(images, saliency, has, labels, [s.image for s in samples])
    if cache:
        _CACHE[key] = tensors
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return tensors


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int, groups: list[str | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (keep, held_out): `fraction` of each class held out, at least one per class
    that has two or more rows. Seeded and independent of row order within a class. With `groups`
    (one per row; None: a group of its own) whole groups are held out, never part of one: each
    group counts for the class most of its rows have."""
    if groups is not None and any(g is not None for g in groups):
        return _group_holdout(np.asarray(labels), fraction, seed, groups)
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        rows = rows[rng.permutation(len(rows))]
        k = int(round(fraction * len(rows)))
        if fraction > 0 and len(rows) >= 2:
            k = min(max(k, 1), len(rows) - 1)
        held.extend(rows[:k].tolist())
        keep.extend(rows[k:].tolist())
    return np.sort(np.array(keep, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def _group_holdout(labels: np.ndarray, fraction: float, seed: int, groups: list[str | None]):
    rng = np.random.default_rng(seed)
    units: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        units.setdefault(f"g:{g}" if g is not None else f"r:{i}", []).append(i)
    by_class: dict[int, list[list[int]]] = {}
    for rows in sorted(units.values()):
        values, counts = np.unique(labels[rows], return_counts=True)
        by_class.setdefault(int(values[counts.argmax()]), []).append(rows)
    keep, held = [], []
    for c in sorted(by_class):
        members = [by_class[c][j] for j in rng.permutation(len(by_class[c]))]
        target = fraction * sum(len(r) for r in members)
        taken = 0
        for j, rows in enumerate(members):
            if (
                fraction > 0
                and taken < target
                and j < len(members) - 1
                and (taken == 0 or taken + len(rows) <= target + 0.5)
            ):
                held.extend(rows)
                taken += len(rows)
            else:
                keep.extend(rows)
    return np.sort(np.array(keep, dtype=np.int64)), np.sort(np.array(held, dtype=np.int64))


def limit_saliency(tensors: SplitTensors, fraction: float, seed: int) -> SplitTensors:
    """A copy in which only a seeded `fraction` of the images that have maps keep them."""
    if fraction >= 1.0:
        return tensors
    rows = np.flatnonzero(tensors.has_saliency.numpy())
    rng = np.random.default_rng(seed + 7919)
    keep = set(rows[rng.permutation(len(rows))][: int(round(fraction * len(rows)))].tolist())
    drop = torch.tensor([i for i in rows.tolist() if i not in keep], dtype=torch.int64)
    has = tensors.has_saliency.clone()
    saliency = tensors.saliency.clone()
    if len(drop):
        has[drop] = False
        saliency[drop] = 0
    return SplitTensors(tensors.images, saliency, has, tensors.labels, tensors.names)
