"""The one image decoder and the one saliency-mask codec of the application.

`decode_image` sniffs the type from the bytes (never from a file name or a declared content
type), checks the pixel count from the header before decoding anything (decompression bombs),
then fully decodes with Pillow so truncated or corrupt files are caught at upload time.
`decode_mask`/`encode_mask` convert between 8-bit grayscale PNG saliency maps and uint8 arrays.
Errors are `ImageError(status_code, detail)`: 415 for what is not a supported image at all, 422
for what claims to be one but is broken, too large in pixels or of the wrong size/mode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.exceptions import HTTPException

# Formats accepted for images: sniffed magic bytes -> (our name, Pillow's format name, file suffix).
IMAGE_FORMATS = {
    "png": ("PNG", ".png", "image/png"),
    "jpeg": ("JPEG", ".jpg", "image/jpeg"),
    "tiff": ("TIFF", ".tif", "image/tiff"),
    "bmp": ("BMP", ".bmp", "image/bmp"),
}
DEFAULT_MAX_PIXELS = 50_000_000
SUPPORTED = "PNG, JPEG, TIFF or BMP"


class ImageError(HTTPException):
    """An upload that cannot be used; `status_code` is 415 or 422, `detail` says what to fix.

    A Starlette HTTPException, so a route may let it propagate; elsewhere `str(exc)` is the detail.
    """

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail=detail)

    def __str__(self) -> str:
        return self.detail


@dataclass
class DecodedImage:
    image: Image.Image
    format: str  # png | jpeg | tiff | bmp
    width: int
    height: int

    @property
    def suffix(self) -> str:
        return IMAGE_FORMATS[self.format][1]

    @property
    def media_type(self) -> str:
        return IMAGE_FORMATS[self.format][2]


def sniff_format(data: bytes) -> str | None:
    """The image format from the first bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    return None


def media_type(fmt: str) -> str:
    return IMAGE_FORMATS.get(fmt, ("", "", "application/octet-stream"))[2]


def suffix_for(fmt: str) -> str:
    return IMAGE_FORMATS[fmt][1]


def _open_checked(data: bytes, fmt: str, max_pixels: int, what: str) -> Image.Image:
    """Open, check the header's pixel count, then decode fully. Raises ImageError.

    Pillow's own bomb check (a warning above `Image.MAX_IMAGE_PIXELS`, an error at twice that) is
    left alone: it is process-global. Ours runs on the header size before any pixel is decoded.
    """
    pil_format = IMAGE_FORMATS[fmt][0]
    try:
        img = Image.open(io.BytesIO(data), formats=[pil_format])
    except Image.DecompressionBombError as exc:
        raise ImageError(422, f"{what} has too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise ImageError(422, f"{what} looks like {fmt.upper()} but cannot be read; is it corrupt?") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt headers
        raise ImageError(422, f"{what} is a corrupt {fmt.upper()} file: {exc}") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(422, f"{what} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageError(
            422,
            f"{what} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; downscale it",
        )
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data: OSError, SyntaxError, ...
        raise ImageError(422, f"{what} is truncated or corrupt and cannot be decoded: {exc}") from None
    return img


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "the file"
) -> DecodedImage:
    """Decode and verify an uploaded image.

    The type comes from the content: anything that is not PNG, JPEG, TIFF or BMP is 415 (a text
    file named `.png` included). A file of a known type that does not decode completely
    (truncated, corrupt) is 422, and so is one with more than `max_pixels` pixels, which is
    refused from its header before any pixel is decoded. The returned image is fully loaded.
    """
    if not data:
        raise ImageError(422, f"{what} is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(415, f"{what} is not a {SUPPORTED} image (its content was checked, not its name)")
    img = _open_checked(data, fmt, max_pixels, what)
    return DecodedImage(image=img, format=fmt, width=img.width, height=img.height)


def decode_mask(data: bytes, width: int, height: int, *, what: str = "the saliency map") -> np.ndarray:
    """Decode a saliency map to a (height, width) uint8 array (0 irrelevant ... 255 most salient).

    The map must be a PNG of exactly width x height pixels, 8-bit grayscale (mode L). Browsers'
    canvases export RGB(A): such a PNG is accepted when it is grey (R = G = B) and fully opaque,
    and read as its grey level. Anything else is 422 with what to change.
    """
    if not data:
        raise ImageError(422, f"{what} is empty")
    if sniff_format(data) != "png":
        raise ImageError(422, f"{what} must be an 8-bit grayscale PNG file")
    _check_mask_size(data, width, height, what)  # from the header, before decoding
    img = _open_checked(data, "png", max(width * height, 1), what)
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in ("RGB", "RGBA", "LA"):
        arr = np.asarray(img)
        grey = arr[..., 0]
        if img.mode in ("RGB", "RGBA") and not (
            np.array_equal(arr[..., 1], grey) and np.array_equal(arr[..., 2], grey)
        ):
            raise ImageError(422, f"{what} has colour; send an 8-bit grayscale (mode L) PNG")
        if img.mode in ("RGBA", "LA") and not np.all(arr[..., -1] == 255):
            raise ImageError(422, f"{what} has transparency; send an opaque 8-bit grayscale PNG")
        return grey.astype(np.uint8, copy=True)
    raise ImageError(422, f"{what} is a {img.mode!r} PNG; send an 8-bit grayscale (mode L) PNG")


def _check_mask_size(data: bytes, width: int, height: int, what: str) -> None:
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as probe:
            size = probe.size
    except Exception as exc:  # noqa: BLE001
        raise ImageError(422, f"{what} is not a readable PNG: {exc}") from None
    if size != (width, height):
        raise ImageError(
            422,
            f"{what} is {size[0]}x{size[1]} but the image is {width}x{height}; paint it at the image's size",
        )


def encode_mask(arr: np.ndarray) -> bytes:
    """Encode a (height, width) map as an 8-bit grayscale PNG (deterministic bytes for equal arrays).

    uint8 arrays are written as they are; float arrays are read as values in [0, 1] and rounded.
    """
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"a saliency map is 2-D (height, width), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(np.asarray(arr, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def display_copy(data: bytes, max_side: int) -> Image.Image:
    """A stored (already verified) image as RGB, no larger than `max_side` on its longest side, for
    renders meant for a screen. JPEGs are decoded at a reduced scale (libjpeg's DCT scaling), so a
    40-megapixel photo never occupies its full size in memory."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))
    img = img.convert("RGB")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    return img
