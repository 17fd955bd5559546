"""Heatmaps as PNG bytes: 8-bit grayscale maps and colour-mapped overlays on the image."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _as_unit_map(heatmap: np.ndarray) -> np.ndarray:
    h = np.asarray(heatmap, dtype=np.float32)
    if h.ndim != 2:
        raise ValueError(f"a heatmap is a 2-D array, got shape {h.shape}")
    return np.clip(np.nan_to_num(h, nan=0.0), 0.0, 1.0)


def colormap(heatmap: np.ndarray) -> np.ndarray:
    """A jet-style colour map: (H, W) in [0, 1] -> (H, W, 3) uint8 (blue = 0 ... red = 1)."""
    v = _as_unit_map(heatmap)
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255 + 0.5).astype(np.uint8)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def heatmap_png(heatmap: np.ndarray) -> bytes:
    """The heatmap (H, W) in [0, 1] as an 8-bit grayscale PNG of the same size (0 = cold, 255 = hot)."""
    return _png(Image.fromarray((_as_unit_map(heatmap) * 255 + 0.5).astype(np.uint8), mode="L"))


def overlay_png(image: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> bytes:
    """RGB PNG of the image with the colour-mapped heatmap blended over it with weight `alpha`.

    The heatmap is resized to the image when the sizes differ; the PNG has the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = image.convert("RGB")
    h = _as_unit_map(heatmap)
    if h.shape != (base.height, base.width):
        h = np.asarray(
            Image.fromarray(h, mode="F").resize(base.size, Image.Resampling.BILINEAR), dtype=np.float32
        )
    colours = colormap(h).astype(np.float32)
    blended = (1 - alpha) * np.asarray(base, dtype=np.float32) + alpha * colours
    return _png(Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8), mode="RGB"))
