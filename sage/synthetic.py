"""Synthetic datasets with a shortcut, in the dataset folder format, for demos, tests and the benchmark.

Every kind has a true feature (an object) and a decoy that goes with the class in the train and
val splits and is random in the test split, so test accuracy shows whether a model learned the
object or the decoy. Saliency maps are soft and human-like: the object's mask dilated, blurred and
shifted by a pixel or two, never pixel-exact.

- decoy-shapes: circle/square/triangle/cross on a noisy background, plus a small square patch whose
  corner and colour code the class (a local shortcut).
- decoy-digits: scikit-learn's bundled 8x8 digits, upscaled and placed at random, plus a corner patch
  whose grey level codes the class, as in Decoy MNIST (Ross et al. 2017); here the corner codes it too
  (class mod 4), since at 32 px a grey level alone is too faint a shortcut to dominate.
- decoy-texture: the shapes again, with a background whose stripe orientation and colour cast code
  the class (a global shortcut, like a scanner's texture or a site's colour cast).
- dicom-radiographs: 12-bit chest-radiograph-like DICOM files (non-square, with a header window),
  a faint round or linear opacity as the class and a burned-in laterality marker as the shortcut.

`clean=True` writes the same images with the decoy present but random in every split, so the
shortcut carries no information: training on it gives the ceiling. For a given seed the clean and
decoy datasets have identical objects and an identical test split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "cross")
PATCH_COLOURS = ((255, 40, 40), (40, 255, 40), (60, 90, 255), (255, 255, 40))
TINTS = ((40, 0, 0), (0, 40, 0), (0, 0, 40), (30, 30, 0))
SPLIT_SHARES = (("train", 0.6), ("val", 0.2), ("test", 0.2))


@dataclass
class Drawn:
    image: np.ndarray | None  # (P, P, 3) uint8, written as PNG
    mask: np.ndarray  # (H, W) float in [0, 1]: where the true feature is
    dicom: bytes | None = None  # written as .dcm instead of `image` (dicom-radiographs)


def make_dataset(
    kind: str,
    out_dir: str | Path,
    n: int = 600,
    seed: int = 0,
    clean: bool = False,
    image_size: int = 64,
    val_shortcut: bool = True,
) -> Path:
    """Write a synthetic dataset folder (labels.csv, images/, saliency/) and return its path.

    kind: one of `KINDS`. n: number of images (60% train, 20% val, 20% test, classes balanced).
    clean: the decoy carries no class information in any split (the ceiling). val_shortcut=False
    makes the decoy random in the val split too (a validation split that rewards the object, not
    the shortcut, for choosing hyperparameters); the images are otherwise identical. The folder is
    replaced if it exists and holds a previous synthetic dataset (a labels.csv); a non-empty folder
    without one is refused rather than overwritten.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if n < 10:
        raise ValueError(f"n must be at least 10, got {n}")
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16, got {image_size}")
    out = Path(out_dir)
    if out.exists():
        if any(out.iterdir()) and not (out / "labels.csv").is_file():
            raise ValueError(f"{out} exists, is not empty and is not a dataset folder; choose another path")
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    (out / "saliency").mkdir()
    draw, classes = KINDS[kind]
    rng = np.random.default_rng(seed)
    ys = np.arange(n) % len(classes)
    rng.shuffle(ys)
    splits = _split_names(n)
    digits = _digits() if kind == "decoy-digits" else None
    rows = []
    for i in range(n):
        y = int(ys[i])
        split = splits[i]
        random_class = int(rng.integers(len(classes)))  # the decoy's class when it is uninformative
        coded = split == "train" or (split == "val" and val_shortcut)
        decoy = y if coded and not clean else random_class
        drawn = draw(rng, image_size, y, decoy, digits)
        name = f"{kind}-{i:05d}"
        if drawn.dicom is not None:
            file_name = f"{name}.dcm"
            (out / "images" / file_name).write_bytes(drawn.dicom)
        else:
            assert drawn.image is not None  # a Drawn carries an image or DICOM bytes
            file_name = f"{name}.png"
            Image.fromarray(drawn.image).save(out / "images" / file_name)
        Image.fromarray(_human_saliency(drawn.mask, rng)).save(out / "saliency" / f"{name}.png")
        rows.append((file_name, classes[y], split))
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "split"])
        writer.writerows(rows)
    return out


def _split_names(n: int) -> list[str]:
    names = []
    for name, share in SPLIT_SHARES:
        names += [name] * int(round(share * n))
    return (names + ["train"] * n)[:n]


def _noise_background(rng: np.random.Generator, p: int) -> np.ndarray:
    base = rng.uniform(30, 80)
    noise = rng.normal(0, 24, (p, p, 3))
    return np.clip(base + noise, 0, 255)


def _shape_mask(rng: np.random.Generator, p: int, shape: str, margin: float) -> np.ndarray:
    """Anti-aliased mask (P, P) in [0,1] of one shape with random size, position and rotation."""
    s = 4  # supersampling
    r = rng.uniform(0.15, 0.24) * p
    lo, hi = margin + r, p - margin - r
    cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
    angle = rng.uniform(-0.35, 0.35)
    canvas = Image.new("L", (p * s, p * s), 0)
    d = ImageDraw.Draw(canvas)

    def pts(points):
        c, sn = math.cos(angle), math.sin(angle)
        return [((cx + x * c - y * sn) * s, (cy + x * sn + y * c) * s) for x, y in points]

    if shape == "circle":
        d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    elif shape == "square":
        q = r * 0.85
        d.polygon(pts([(-q, -q), (q, -q), (q, q), (-q, q)]), fill=255)
    elif shape == "triangle":
        d.polygon(pts([(0, -r), (r * 0.95, r * 0.75), (-r * 0.95, r * 0.75)]), fill=255)
    else:  # cross
        t = r * 0.33
        d.polygon(
            pts(
                [
                    (-t, -r),
                    (t, -r),
                    (t, -t),
                    (r, -t),
                    (r, t),
                    (t, t),
                    (t, r),
                    (-t, r),
                    (-t, t),
                    (-r, t),
                    (-r, -t),
                    (-t, -t),
                ]
            ),
            fill=255,
        )
    return np.asarray(canvas.resize((p, p), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _object_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(110, 200, 3)


def _paint(background: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return background * (1 - mask[..., None]) + colour[None, None, :] * mask[..., None]


def _corner_patch(image: np.ndarray, corner: int, colour, size: int) -> None:
    p = image.shape[0]
    y0 = 1 if corner in (0, 1) else p - size - 1
    x0 = 1 if corner in (0, 2) else p - size - 1
    image[y0 : y0 + size, x0 : x0 + size] = colour


def _draw_decoy_shapes(rng, p, y, decoy, digits) -> Drawn:
    patch = max(3, p // 6)
    mask = _shape_mask(rng, p, SHAPES[y], margin=patch + 2)
    image = _paint(_noise_background(rng, p), mask, _object_colour(rng))
    _corner_patch(image, decoy % 4, PATCH_COLOURS[decoy], patch)
    return Drawn(np.clip(image, 0, 255).astype(np.uint8), mask)


def _draw_decoy_texture(rng, p, y, decoy, digits) -> Drawn:
    mask = _shape_mask(rng, p, SHAPES[y], margin=2)
    yy, xx = np.mgrid[0:p, 0:p].astype(np.float32)
    theta = decoy * math.pi / 4 + rng.uniform(-0.15, 0.15)
    period = p / rng.uniform(5.0, 7.0)
    stripes = np.sin(
        2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform(0, 6.3)
    )
    background = _noise_background(rng, p) + 22 * stripes[..., None] + np.array(TINTS[decoy])[None, None, :]
    image = _paint(background, mask, _object_colour(rng))
    return Drawn(np.clip(image, 0, 255).astype(np.uint8), mask)


def _draw_decoy_digits(rng, p, y, decoy, digits) -> Drawn:
    images, targets = digits
    candidates = np.flatnonzero(targets == y)
    glyph = images[candidates[rng.integers(len(candidates))]] / 16.0  # (8, 8) in [0, 1]
    patch = max(3, p // 6)
    side = int(round(rng.uniform(0.45, 0.58) * p))
    glyph_img = Image.fromarray((glyph * 255).astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    glyph_arr = np.asarray(glyph_img, dtype=np.float32) / 255.0
    lo, hi = patch + 2, p - patch - 2 - side
    x0, y0 = int(rng.integers(lo, max(lo, hi) + 1)), int(rng.integers(lo, max(lo, hi) + 1))
    mask = np.zeros((p, p), dtype=np.float32)
    mask[y0 : y0 + side, x0 : x0 + side] = glyph_arr
    gray = np.clip(rng.uniform(20, 50) + rng.normal(0, 22, (p, p)) + rng.uniform(110, 170) * mask, 0, 255)
    image = np.repeat(gray[..., None], 3, axis=2)
    _corner_patch(image, decoy % 4, 255 - 20 * decoy, patch)
    return Drawn(np.clip(image, 0, 255).astype(np.uint8), (mask > 0.25).astype(np.float32))


RADIOGRAPH_CLASSES = ("nodule", "streak")
RADIOGRAPH_WINDOW = (1400.0, 1600.0)  # the "lung window" written into each file's VOI


def _draw_radiograph(rng, p, y, decoy, digits) -> Drawn:
    """A 12-bit chest-radiograph-like DICOM, P high and 5P/4 wide (not square): soft tissue, two
    darker lung fields and ribs; the class is a faint opacity (+300 of 4096, a round nodule or a
    linear streak) somewhere in a lung; the shortcut is a burned-in laterality marker (saturated
    white block) whose corner (top or bottom left) codes the class in train/val and is random in test."""
    h, w = p, (5 * p) // 4
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    body = 1700 + 250 * np.cos((xx / w - 0.5) * math.pi)
    lungs = np.zeros((h, w), np.float32)
    for cx in (0.3 * w, 0.7 * w):
        lungs += np.exp(-((((xx - cx) / (0.17 * w)) ** 2 + ((yy - 0.55 * h) / (0.33 * h)) ** 2) ** 2))
    ribs = 60 * np.sin(yy / h * 7 * math.pi + rng.uniform(0, 6.3)) * np.clip(lungs, 0, 1)
    pixels = body - 650 * np.clip(lungs, 0, 1) + ribs + rng.normal(0, 40, (h, w))
    # the finding: supersampled shape mask inside one lung
    s = 4
    canvas = Image.new("L", (w * s, h * s), 0)
    d = ImageDraw.Draw(canvas)
    cx = rng.uniform(0.22, 0.38) * w + (0.4 * w if rng.random() < 0.5 else 0.0)
    cy = rng.uniform(0.4, 0.7) * h
    if RADIOGRAPH_CLASSES[y] == "nodule":
        r = rng.uniform(0.09, 0.12) * h
        d.ellipse([(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s], fill=255)
    else:
        length, half = rng.uniform(0.22, 0.3) * h, 0.035 * h
        a = rng.uniform(-0.6, 0.6) + math.pi / 2 * (rng.random() < 0.5)
        c, sn = math.cos(a), math.sin(a)
        corners = [(-length, -half), (length, -half), (length, half), (-length, half)]
        d.polygon([((cx + u * c - v * sn) * s, (cy + u * sn + v * c) * s) for u, v in corners], fill=255)
    mask = np.asarray(canvas.resize((w, h), Image.Resampling.BOX), dtype=np.float32) / 255.0
    pixels += 300 * mask
    size = max(3, p // 6)
    y0 = 2 if decoy == 0 else h - size - 2  # top or bottom: a horizontal flip keeps the code
    pixels[y0 : y0 + size, 2 : 2 + size] = 4095  # the burned-in marker
    pixels = np.clip(np.rint(pixels), 0, 4095).astype(np.uint16)
    return Drawn(None, mask, dicom=dicom_bytes(pixels, bits_stored=12, window=RADIOGRAPH_WINDOW))


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target


def _human_saliency(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A soft map like an expert's brush stroke: dilated, blurred, slightly off target."""
    p = mask.shape[0]
    im = Image.fromarray((mask * 255).astype(np.uint8))
    grow = max(3, (p // 16) | 1)
    im = im.filter(ImageFilter.MaxFilter(grow))
    dx, dy = rng.integers(-max(1, p // 32), max(1, p // 32) + 1, size=2)
    im = im.transform(im.size, Image.Transform.AFFINE, (1, 0, -int(dx), 0, 1, -int(dy)), fillcolor=0)
    im = im.filter(ImageFilter.GaussianBlur(max(1.0, p / 32)))
    arr = np.asarray(im, dtype=np.float32)
    return np.clip(arr / max(arr.max(), 1.0) * 255, 0, 255).astype(np.uint8)


KINDS: dict[str, tuple[Callable[..., Drawn], tuple[str, ...]]] = {
    "decoy-shapes": (_draw_decoy_shapes, SHAPES),
    "decoy-digits": (_draw_decoy_digits, tuple(str(d) for d in range(10))),
    "decoy-texture": (_draw_decoy_texture, SHAPES),
    "dicom-radiographs": (_draw_radiograph, RADIOGRAPH_CLASSES),
}


def dicom_bytes(
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    window: tuple[float, float] | None = None,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
) -> bytes:
    """A single-frame DICOM Part 10 file (explicit VR little endian) holding `pixels` (H, W) uint16.

    For synthetic radiograph-like data, demos and tests: BitsAllocated 16, `bits_stored` bits
    stored (values must fit), unsigned, no rescale, and the VOI window `window` (center, width)
    when given. Uses pydicom's writer; nothing here decodes.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = np.asarray(pixels)
    if pixels.ndim != 2 or pixels.min() < 0 or pixels.max() >= 2**bits_stored:
        raise ValueError(f"pixels must be 2-D and fit in {bits_stored} unsigned bits")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(
        entropy_srcs=[hashlib.sha256(pixels.tobytes()).hexdigest()]
    )
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = "SAGE-SYNTH"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = float(window[0]), float(window[1])
    ds.PixelData = np.ascontiguousarray(pixels.astype("<u2")).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
