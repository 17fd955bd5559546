"""The one image decoder and the one saliency-mask codec of the application.

`decode_image` is `sage.imageio.decode` (torch-free, shared with sage's dataset reader): it sniffs
the type from the bytes (never from a file name or a declared content type), checks the pixel
count from the header before decoding anything (decompression bombs), then fully decodes to a
full-precision array (DICOM, 16-bit PNG/TIFF included) so broken files are caught at upload time.
`decode_mask`/`encode_mask` convert between 8-bit grayscale PNG saliency maps and uint8 arrays.
Errors are `ImageError(status_code, detail)`: 415 for what is not a supported image at all, 422
for what claims to be one but is broken, too large in pixels or of the wrong size/mode.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image as PILImage
from starlette.exceptions import HTTPException

from sage import imageio

IMAGE_FORMATS = {fmt: (imageio.SUFFIXES[fmt], imageio.MEDIA_TYPES[fmt]) for fmt in imageio.FORMATS}
DEFAULT_MAX_PIXELS = imageio.DEFAULT_MAX_PIXELS
SUPPORTED = imageio.SUPPORTED
DecodedImage = imageio.DecodedArray
sniff_format = imageio.sniff_format


class ImageError(HTTPException):
    """An upload that cannot be used; `status_code` is 415 or 422, `detail` says what to fix.

    A Starlette HTTPException, so a route may let it propagate; elsewhere `str(exc)` is the detail.
    """

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail=detail)

    def __str__(self) -> str:
        return self.detail


def media_type(fmt: str) -> str:
    return IMAGE_FORMATS.get(fmt, ("", "application/octet-stream"))[1]


def suffix_for(fmt: str) -> str:
    return IMAGE_FORMATS[fmt][0]


def _open_checked(data: bytes, fmt: str, max_pixels: int, what: str) -> PILImage.Image:
    """Open a PNG (saliency maps), check the header's pixel count, then decode fully."""
    try:
        img = PILImage.open(io.BytesIO(data), formats=["PNG"])
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt headers
        raise ImageError(422, f"{what} is a corrupt PNG file: {exc}") from None
    width, height = img.size
    if width * height > max_pixels or width <= 0 or height <= 0:
        raise ImageError(422, f"{what} is {width}x{height}, over the limit of {max_pixels:,} pixels")
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data: OSError, SyntaxError, ...
        raise ImageError(422, f"{what} is truncated or corrupt and cannot be decoded: {exc}") from None
    return img


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "the file"
) -> imageio.DecodedArray:
    """Decode and verify an uploaded image with `sage.imageio.decode` (the project's one decoder).

    The type comes from the content: anything that is not PNG, JPEG, TIFF, BMP or DICOM is 415
    (a text file named `.png` included). A file of a known type that does not decode completely
    (truncated, corrupt, multi-frame DICOM, a transfer syntax without a decoder) is 422, and so
    is one with more than `max_pixels` pixels, refused from its header before decoding.
    """
    try:
        return imageio.decode(data, max_pixels=max_pixels, what=what)
    except imageio.DecodeError as exc:
        raise ImageError(exc.status_code, exc.detail) from None


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
        with PILImage.open(io.BytesIO(data), formats=["PNG"]) as probe:
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
    PILImage.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
