"""The one image decoder of SAGE and SAGE Studio: bytes -> a full-precision pixel array and its metadata.

Torch-free (numpy, Pillow, pydicom, tifffile), so the web process (upload, import, display) and
sage's dataset reader, training and prediction decode every file the same way.

- The type comes from the content, never from a name: PNG, JPEG, TIFF, BMP, and DICOM ('DICM' at
  offset 128, the DICOM Part 10 file format).
- The pixel count is checked from the header before any pixel is decoded (decompression bombs).
- DICOM (pydicom with the pylibjpeg plugins: JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000,
  RLE): the modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence; pydicom's
  `apply_modality_lut`) is applied, BitsStored and the signed PixelRepresentation are respected
  by pydicom's decoder, MONOCHROME1 is inverted to MONOCHROME2 (v -> lo + hi - v over the range
  the header allows, the header window mirrored with it), and the VOI window (WindowCenter/Width,
  the first when several are given; a VOI LUT Sequence as the window spanning its input range) is
  the default display window. Multi-frame files are refused (422 naming the frame count): a study
  of frames is several images, and choosing one silently would annotate something else than the
  expert thinks. Colour DICOM (RGB, YBR_*, PALETTE COLOR) is converted to RGB.
- TIFF with tifffile (8/16-bit integer and float, grayscale or RGB), PNG (16-bit grayscale
  included), JPEG (EXIF orientation applied) and BMP with Pillow.

The decoded `pixels` keep their precision: uint8/uint16/int16/int32/float32 (H, W) for one
channel, uint8/uint16 (H, W, 3) for colour. Display and training map them to [0, 1] through a
window (`window_to_unit`); `default_window` is the header's window, else the 0.5 to 99.5
percentile range for images deeper than 8 bits, else the full 8-bit range (an ordinary photo
looks as its author saw it).

Errors are `DecodeError(status, detail)`: 415 for what is not a supported image at all, 422 for a
file of a known type that is broken, too large, multi-frame or undecodable.
"""

from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
SUPPORTED = "PNG, JPEG, TIFF, BMP or DICOM"
FORMATS = ("png", "jpeg", "tiff", "bmp", "dicom")
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "dicom": ".dcm"}
MEDIA_TYPES = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "dicom": "application/dicom",
}
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP"}
AUTO_PERCENTILES = (0.5, 99.5)
WINDOW_MODES = ("default", "header", "auto", "full")


class DecodeError(ValueError):
    """A file that cannot be used as an image; `status_code` 415 or 422, `detail` says what to fix."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass
class DecodedArray:
    """A decoded image at full precision, with what display and training need to know about it."""

    pixels: np.ndarray  # (H, W) or (H, W, 3); see the module docstring for the dtypes
    format: str  # png | jpeg | tiff | bmp | dicom
    bit_depth: int  # bits per sample that carry information (DICOM BitsStored; 32 for float)
    photometric: str  # MONOCHROME2 (after MONOCHROME1 inversion) or RGB, as stored in `pixels`
    header_window: tuple[float, float] | None = None  # (center, width) from the file, if any
    info: dict = field(default_factory=dict)  # source details (original photometric, frames, ...)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return 1 if self.pixels.ndim == 2 else int(self.pixels.shape[2])

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.format]

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def auto_window(self) -> tuple[float, float]:
        return percentile_window(self.pixels)

    def full_window(self) -> tuple[float, float]:
        return full_range_window(self.pixels, self.bit_depth)

    def default_window(self) -> tuple[float, float]:
        return default_window(self.pixels, self.bit_depth, self.header_window)


def sniff_format(data: bytes) -> str | None:
    """The image format from the first bytes, or None."""
    if len(data) >= 132 and data[128:132] == b"DICM":  # first: a DICOM preamble may look like TIFF
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    return None


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "the file") -> DecodedArray:
    """Decode image bytes of any supported format. Raises DecodeError (415 / 422)."""
    if not data:
        raise DecodeError(422, f"{what} is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise DecodeError(415, f"{what} is not a {SUPPORTED} image (its content was checked, not its name)")
    if fmt == "dicom":
        return _decode_dicom(data, max_pixels, what)
    if fmt == "tiff":
        return _decode_tiff(data, max_pixels, what)
    return _decode_pillow(data, fmt, max_pixels, what)


def decode_file(path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedArray:
    """`decode` of a file's bytes."""
    with open(path, "rb") as f:
        return decode(f.read(), max_pixels=max_pixels, what=str(path))


def probe_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when it cannot be read cheaply."""
    fmt = sniff_format(data)
    try:
        if fmt in _PIL_FORMATS:
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]]) as im:
                w, h = im.size
                if fmt == "jpeg" and _exif_orientation(im) in (5, 6, 7, 8):
                    w, h = h, w
                return w, h
        if fmt == "tiff":
            import tifffile

            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                page = tif.pages.first
                return int(page.imagewidth), int(page.imagelength)
        if fmt == "dicom":
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
    except Exception:  # noqa: BLE001 - a probe answers None for anything unreadable
        return None
    return None


# --- windows ----------------------------------------------------------------------------------------


def percentile_window(pixels: np.ndarray, percentiles=AUTO_PERCENTILES) -> tuple[float, float]:
    """(center, width) spanning the 0.5 to 99.5 percentile range (a subsample of big images)."""
    flat = pixels.reshape(-1)
    if flat.size > 1_000_000:  # a regular subsample: the percentiles of 1M samples are exact enough
        flat = flat[:: flat.size // 1_000_000 + 1]
    lo, hi = np.percentile(flat.astype(np.float64), percentiles)
    return _window_from_range(float(lo), float(hi))


def full_range_window(pixels: np.ndarray, bit_depth: int) -> tuple[float, float]:
    """(center, width) of the whole range: 0..255 for 8-bit data, else the data's min..max."""
    if pixels.dtype == np.uint8:
        return 128.0, 256.0
    return _window_from_range(float(np.min(pixels)), float(np.max(pixels)))


def default_window(
    pixels: np.ndarray, bit_depth: int, header_window: tuple[float, float] | None
) -> tuple[float, float]:
    """The header window, else the full range for 8-bit data, else the percentile window."""
    if header_window is not None:
        return header_window
    if pixels.dtype == np.uint8:
        return 128.0, 256.0
    return percentile_window(pixels)


def window_for(
    mode: str,
    pixels: np.ndarray,
    bit_depth: int,
    header_window: tuple[float, float] | None,
) -> tuple[float, float]:
    """The window of a named choice: default, header (falls back to default), auto, full."""
    if mode == "auto":
        return percentile_window(pixels)
    if mode == "full":
        return full_range_window(pixels, bit_depth)
    if mode in ("default", "header"):
        return default_window(pixels, bit_depth, header_window)
    raise ValueError(f"unknown window {mode!r}; choose one of: {', '.join(WINDOW_MODES)}")


def _window_from_range(lo: float, hi: float) -> tuple[float, float]:
    """The DICOM window (center, width) that maps lo to black and hi to white."""
    if not hi > lo:
        hi = lo + 1.0
    return (lo + hi) / 2.0 + 0.5, hi - lo + 1.0


def window_to_unit(pixels: np.ndarray, center: float, width: float, invert: bool = False) -> np.ndarray:
    """float32 in [0, 1] through DICOM's LINEAR window (PS3.3 C.11.2.1.2): values up to
    c - 0.5 - (w - 1)/2 are black, from c - 0.5 + (w - 1)/2 on white, linear in between."""
    span = max(float(width) - 1.0, 1e-6)
    lo = float(center) - 0.5 - span / 2.0
    out = pixels.astype(np.float32)  # the one float copy; everything after is in place
    out -= np.float32(lo)
    out *= np.float32(1.0 / span)
    np.clip(out, 0.0, 1.0, out=out)
    if invert:
        np.subtract(1.0, out, out=out)
    return out


RENDER_CHUNK_PIXELS = 1 << 18  # values per float32 block: 1 MiB of scratch whatever the image size


def render_8bit(pixels: np.ndarray, center: float, width: float, invert: bool = False) -> np.ndarray:
    """uint8 rendering of `pixels` through the window (same shape).

    Rendered a block of rows at a time into the uint8 result, so the float32 scratch stays at
    `RENDER_CHUNK_PIXELS` values instead of a full-size copy (a 2048x2048 16-bit image costs its
    4 MiB result plus a block or two of 1 MiB, not 16 MiB of floats on top); `pixels` may be a
    memory-mapped array.
    """
    out = np.empty(pixels.shape, dtype=np.uint8)
    if pixels.size == 0:
        return out
    per_row = max(1, pixels.size // max(1, pixels.shape[0]))
    step = max(1, RENDER_CHUNK_PIXELS // per_row)
    for start in range(0, pixels.shape[0], step):
        unit = window_to_unit(pixels[start : start + step], center, width, invert)
        unit *= 255.0
        unit += 0.5
        out[start : start + step] = unit  # float to uint8 by truncation, as astype did
    return out


def encode_png(rendered: np.ndarray, compress_level: int = 1) -> bytes:
    """An 8-bit (H, W) or (H, W, 3) array as PNG bytes, fast: a display image is rendered per window.

    zlib level 1 with the run-length strategy (Z_RLE): the PNG row filters do the modelling, and
    the deflate step, which dominates the render time (bench/ingest.md), does the least work.
    """
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rendered)).save(
        buf, format="PNG", compress_level=compress_level, compress_type=zlib.Z_RLE
    )
    return buf.getvalue()


def array_to_npy(pixels: np.ndarray) -> bytes:
    """The array as .npy bytes (deterministic for equal arrays)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(pixels), allow_pickle=False)
    return buf.getvalue()


def npy_to_array(data_or_path, mmap: bool = False) -> np.ndarray:
    """An array written by `array_to_npy`, from bytes or a path (read-only memory-mapped with
    `mmap`, for a path: a render then reads the rows it needs instead of a full copy)."""
    if isinstance(data_or_path, bytes | bytearray):
        return np.load(io.BytesIO(data_or_path), allow_pickle=False)
    return np.load(data_or_path, allow_pickle=False, mmap_mode="r" if mmap else None)


# --- Pillow formats ---------------------------------------------------------------------------------


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block means "no rotation"
        return 1


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError(422, f"{what} has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise DecodeError(
            422,
            f"{what} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}; downscale it",
        )


def _decode_pillow(data: bytes, fmt: str, max_pixels: int, what: str) -> DecodedArray:
    """PNG / JPEG / BMP with Pillow; the header's size is checked before decoding."""
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
    except Image.DecompressionBombError as exc:
        raise DecodeError(422, f"{what} has too many pixels: {exc}") from None
    except UnidentifiedImageError:
        raise DecodeError(
            422, f"{what} looks like {fmt.upper()} but cannot be read; is it corrupt?"
        ) from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt headers
        raise DecodeError(422, f"{what} is a corrupt {fmt.upper()} file: {exc}") from None
    _check_pixels(img.width, img.height, max_pixels, what)
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt data: OSError, SyntaxError, ...
        raise DecodeError(422, f"{what} is truncated or corrupt and cannot be decoded: {exc}") from None
    info: dict = {"mode": img.mode}
    if fmt == "jpeg":
        orientation = _exif_orientation(img)
        if orientation != 1:
            info["exif_orientation"] = orientation
            img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L"):
        pixels, depth, photometric = np.asarray(img, dtype=np.uint16), 16, "MONOCHROME2"
    elif mode == "I":
        arr = np.asarray(img)
        if arr.min() >= 0 and arr.max() <= 65535:
            pixels, depth = arr.astype(np.uint16), 16
        else:
            pixels, depth = arr.astype(np.int32), 32
        photometric = "MONOCHROME2"
    elif mode == "F":
        pixels, depth, photometric = np.asarray(img, dtype=np.float32), 32, "MONOCHROME2"
    elif mode in ("L", "1", "P", "LA", "PA") and (mode not in ("P", "PA") or _palette_is_grey(img)):
        pixels, depth, photometric = np.asarray(img.convert("L"), dtype=np.uint8), 8, "MONOCHROME2"
    else:
        pixels, depth, photometric = np.asarray(img.convert("RGB"), dtype=np.uint8), 8, "RGB"
    img.close()
    return DecodedArray(np.ascontiguousarray(pixels), fmt, depth, photometric, None, info)


def _palette_is_grey(img: Image.Image) -> bool:
    rgb = np.asarray(img.convert("RGB"))
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


# --- TIFF ---------------------------------------------------------------------------------------------


def _decode_tiff(data: bytes, max_pixels: int, what: str) -> DecodedArray:
    """TIFF with tifffile: the first page (series), integer or float, grayscale or RGB(A)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages.first
            _check_pixels(int(page.imagewidth), int(page.imagelength), max_pixels, what)
            frames = len(tif.pages)
            arr = page.asarray()
            photometric_tag = int(getattr(page, "photometric", 1) or 1)
    except DecodeError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types on broken files
        raise DecodeError(422, f"{what} is a TIFF file that cannot be decoded: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar RGB
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3]
    if arr.ndim not in (2, 3):
        raise DecodeError(422, f"{what} has an unsupported TIFF layout (array shape {arr.shape})")
    info = {"pages": frames, "dtype": str(arr.dtype)}
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise DecodeError(422, f"{what} has NaN or infinite pixel values")
        depth = 32
    elif arr.dtype == np.uint8:
        depth = 8
    elif arr.dtype in (np.uint16, np.int16):
        depth = 16
    else:
        arr = arr.astype(np.float32) if arr.dtype.itemsize > 4 else arr.astype(np.int32)
        depth = 32
    if arr.ndim == 2 and photometric_tag == 0:  # MINISWHITE: invert like DICOM MONOCHROME1
        lo, hi = (0, 255) if arr.dtype == np.uint8 else (float(arr.min()), float(arr.max()))
        arr = (lo + hi - arr.astype(np.float64)).astype(arr.dtype)
        info["inverted"] = "MINISWHITE"
    photometric = "RGB" if arr.ndim == 3 else "MONOCHROME2"
    if arr.ndim == 3 and arr.dtype not in (np.uint8, np.uint16):
        arr = arr.astype(np.float32)
    return DecodedArray(np.ascontiguousarray(arr), "tiff", depth, photometric, None, info)


# --- DICOM ----------------------------------------------------------------------------------------------


def _first(value) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, list | tuple) or hasattr(value, "__len__") and not isinstance(value, str):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _decode_dicom(data: bytes, max_pixels: int, what: str) -> DecodedArray:
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on broken files
        raise DecodeError(422, f"{what} is a DICOM file that cannot be read: {exc}") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DecodeError(422, f"{what} is a DICOM file without pixel data (a report or structure set?)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except Exception:  # noqa: BLE001
        raise DecodeError(422, f"{what} is a DICOM image without Rows/Columns") from None
    frames = 1
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise DecodeError(
            422,
            f"{what} is a multi-frame DICOM with {frames} frames; SAGE Studio annotates single images: "
            "export each frame as its own DICOM file",
        )
    _check_pixels(cols, rows, max_pixels, what)
    photometric_in = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = ds.pixel_array  # pydicom converts YBR to RGB and applies BitsStored/sign
    except NotImplementedError as exc:
        raise DecodeError(
            422,
            f"{what} uses transfer syntax {syntax or '(unknown)'} that no installed decoder handles: {exc}",
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
        raise DecodeError(
            422, f"{what} has pixel data that cannot be decoded (truncated or corrupt?): {exc}"
        ) from None
    raw = np.asarray(raw)
    if raw.shape[:2] != (rows, cols):
        raise DecodeError(422, f"{what} decodes to {raw.shape}, not its header's {rows}x{cols}")
    bits = int(ds.get("BitsStored", raw.dtype.itemsize * 8) or 8)
    info = {"photometric_in": photometric_in, "transfer_syntax": syntax, "bits_stored": bits}
    if photometric_in == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(raw, ds))
        if rgb.dtype != np.uint8:
            rgb = (rgb.astype(np.float64) / max(float(rgb.max()), 1.0) * 255.0 + 0.5).astype(np.uint8)
        return DecodedArray(np.ascontiguousarray(rgb), "dicom", 8, "RGB", None, info)
    if raw.ndim == 3:  # colour: RGB after pydicom's YBR conversion; no modality LUT for colour
        if raw.dtype not in (np.uint8, np.uint16):
            raw = raw.astype(np.float32)
        return DecodedArray(np.ascontiguousarray(raw), "dicom", bits, "RGB", None, info)
    pixels = np.asarray(apply_modality_lut(raw, ds))
    lo, hi = _modality_range(ds, bits)
    pixels = _compact(pixels)
    header_window = _dicom_window(ds)
    if photometric_in == "MONOCHROME1":
        # Make higher mean brighter everywhere downstream: mirror the pixels and the window over the
        # range the header allows (so a window from the header keeps framing the same tissue).
        pixels = _compact(np.float64(lo + hi) - pixels.astype(np.float64))
        if header_window is not None:
            header_window = (lo + hi - header_window[0] + 1.0, header_window[1])
        info["inverted"] = "MONOCHROME1"
    return DecodedArray(np.ascontiguousarray(pixels), "dicom", bits, "MONOCHROME2", header_window, info)


def _modality_range(ds, bits: int) -> tuple[float, float]:
    """The range of modality values the header allows (stored range through the rescale)."""
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    smin, smax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    a, b = smin * slope + intercept, smax * slope + intercept
    return float(min(a, b)), float(max(a, b))


def _compact(values: np.ndarray) -> np.ndarray:
    """The smallest exact dtype: uint8/uint16/int16/int32 for integral values, else float32."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.integer):
        ints = values
    else:
        rounded = np.rint(values)
        if not np.array_equal(rounded, values):
            return values.astype(np.float32)
        ints = rounded
    lo, hi = (float(ints.min()), float(ints.max())) if ints.size else (0.0, 0.0)
    for dtype in (np.uint8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return ints.astype(dtype)
    return values.astype(np.float32)


def _dicom_window(ds) -> tuple[float, float] | None:
    """(center, width) in modality units: WindowCenter/Width, else the input span of a VOI LUT."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        return center, width
    seq = ds.get("VOILUTSequence")
    if seq:
        try:
            n, first_mapped = int(seq[0].LUTDescriptor[0]) or 65536, float(seq[0].LUTDescriptor[1])
            return _window_from_range(first_mapped, first_mapped + n - 1)
        except Exception:  # noqa: BLE001 - a malformed LUT: no header window
            return None
    return None
