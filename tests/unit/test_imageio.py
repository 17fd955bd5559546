"""The one decoder (sage.imageio) on files nobody here wrote: pydicom's bundled DICOM test files,
checked against pydicom's own modality and VOI LUTs, plus 16-bit PNG, TIFF and EXIF-rotated JPEG
files generated here."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from sage import imageio

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def dicom_bytes(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as f:
        return f.read()


def pydicom_reference(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(get_testdata_file(name))
        return ds, ds.pixel_array


# Uncompressed, RLE, JPEG-LS lossless, JPEG 2000 lossless, JPEG extended (12-bit), JPEG 2000 (signed).
MR_VARIANTS = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_bigendian.dcm",
]


@pytest.mark.parametrize("name", [*MR_VARIANTS, "CT_small.dcm", "JPGExtended.dcm", "JPEG2000.dcm"])
def test_dicom_pixels_equal_pydicoms_modality_lut(name):
    decoded = imageio.decode(dicom_bytes(name))
    ds, raw = pydicom_reference(name)
    expected = apply_modality_lut(raw, ds)
    assert decoded.format == "dicom" and decoded.photometric == "MONOCHROME2"
    assert decoded.pixels.shape == (int(ds.Rows), int(ds.Columns))
    assert decoded.bit_depth == int(ds.BitsStored)
    np.testing.assert_array_equal(decoded.pixels.astype(np.float64), expected.astype(np.float64))


def test_ct_keeps_signed_hounsfield_values_at_full_precision():
    decoded = imageio.decode(dicom_bytes("CT_small.dcm"))
    assert decoded.pixels.dtype == np.int16 and decoded.pixels.min() < 0  # air is negative HU
    assert decoded.pixels.max() > 255  # not squeezed into 8 bits


@pytest.mark.parametrize("name", [*MR_VARIANTS, "examples_overlay.dcm"])
def test_default_window_is_the_header_voi_and_matches_pydicom(name):
    decoded = imageio.decode(dicom_bytes(name))
    ds, raw = pydicom_reference(name)
    center, width = (
        float(ds.WindowCenter if not ds["WindowCenter"].VM > 1 else ds.WindowCenter[0]),
        float(ds.WindowWidth if not ds["WindowWidth"].VM > 1 else ds.WindowWidth[0]),
    )
    assert decoded.default_window() == (center, width)
    # pydicom's VOI output spans the stored value range; ours is [0, 1] through the same function.
    voi = apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float64)
    bits = int(ds.BitsStored)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if ds.PixelRepresentation else (0, 2**bits - 1)
    ours = imageio.window_to_unit(decoded.pixels, center, width)
    np.testing.assert_allclose(ours, (voi - lo) / (hi - lo), atol=1e-5)


def test_monochrome1_is_inverted_with_its_window():
    ds, raw = pydicom_reference("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    mono1 = imageio.decode(buf.getvalue())
    mono2 = imageio.decode(dicom_bytes("MR_small.dcm"))
    assert mono1.photometric == "MONOCHROME2" and mono1.info["inverted"] == "MONOCHROME1"
    # Rendered through their default windows, MONOCHROME1 is the exact negative of MONOCHROME2.
    shown1 = imageio.window_to_unit(mono1.pixels, *mono1.default_window())
    shown2 = imageio.window_to_unit(mono2.pixels, *mono2.default_window())
    np.testing.assert_allclose(shown1, 1.0 - shown2, atol=1e-5)
    # and against pydicom: apply_voi_lut does not invert, so 1 - its output is what a viewer shows
    voi = (apply_voi_lut(apply_modality_lut(raw, ds), ds).astype(np.float64) + 32768) / 65535.0  # signed
    np.testing.assert_allclose(shown1, 1.0 - voi, atol=1e-5)


def test_colour_dicom_is_rgb():
    decoded = imageio.decode(dicom_bytes("SC_rgb_jpeg_dcmtk.dcm"))  # YBR_FULL JPEG baseline
    _, raw = pydicom_reference("SC_rgb_jpeg_dcmtk.dcm")
    assert decoded.photometric == "RGB" and decoded.channels == 3
    np.testing.assert_array_equal(decoded.pixels, raw)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("SC_rgb_rle_2frame.dcm", "multi-frame DICOM with 2 frames"),
        ("examples_ybr_color.dcm", "30 frames"),
        ("rtplan.dcm", "without pixel data"),
        ("MR_truncated.dcm", "truncated"),
    ],
)
def test_unusable_dicom_is_422_with_the_reason(name, words):
    with pytest.raises(imageio.DecodeError) as e:
        imageio.decode(dicom_bytes(name))
    assert e.value.status_code == 422 and words in e.value.detail


def test_transfer_syntax_without_decoder_is_422():
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes("MR_small_RLE.dcm")))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder installed
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with pytest.raises(imageio.DecodeError) as e:
        imageio.decode(buf.getvalue())
    assert e.value.status_code == 422 and "1.2.840.10008.1.2.4.100" in e.value.detail


def test_dicom_pixel_cap_comes_from_the_header():
    with pytest.raises(imageio.DecodeError) as e:
        imageio.decode(dicom_bytes("CT_small.dcm"), max_pixels=128 * 128 - 1)
    assert e.value.status_code == 422 and "128x128" in e.value.detail


def _png16(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def test_16bit_png_keeps_every_value():
    arr = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 53 % 65536).astype(np.uint16)
    decoded = imageio.decode(_png16(arr))
    assert decoded.pixels.dtype == np.uint16 and decoded.bit_depth == 16
    np.testing.assert_array_equal(decoded.pixels, arr)
    # the default window is the percentile range, not 0..255 (which would saturate to white)
    center, width = decoded.default_window()
    assert width > 60000


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiff_8_16_bit_and_float(dtype):
    rng = np.random.default_rng(0)
    if dtype == np.float32:
        arr = rng.normal(size=(20, 24)).astype(np.float32)
    else:
        arr = rng.integers(0, np.iinfo(dtype).max, (20, 24), dtype=dtype)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr)
    decoded = imageio.decode(buf.getvalue())
    assert decoded.format == "tiff" and decoded.pixels.dtype == arr.dtype
    np.testing.assert_array_equal(decoded.pixels, arr)
    assert decoded.bit_depth == {np.uint8: 8, np.uint16: 16, np.float32: 32}[dtype]


def test_rgb_tiff():
    arr = np.random.default_rng(1).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb")
    decoded = imageio.decode(buf.getvalue())
    assert decoded.photometric == "RGB"
    np.testing.assert_array_equal(decoded.pixels, arr)


def test_jpeg_exif_orientation_is_applied():
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10] = 255  # white stripe on the left of a landscape image
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = imageio.decode(buf.getvalue())
    assert (decoded.width, decoded.height) == (20, 40)  # portrait, as a viewer shows it
    assert decoded.pixels[:10].mean() > 200 and decoded.pixels[-10:].mean() < 50  # stripe now on top
    assert imageio.probe_size(buf.getvalue()) == (20, 40)


def test_eight_bit_images_display_unchanged_by_default():
    arr = np.random.default_rng(2).integers(0, 256, (8, 9), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    decoded = imageio.decode(buf.getvalue())
    np.testing.assert_array_equal(imageio.render_8bit(decoded.pixels, *decoded.default_window()), arr)


def test_dicom_is_sniffed_by_content_even_with_a_tiff_like_preamble():
    data = bytearray(dicom_bytes("CT_small.dcm"))
    data[:4] = b"II*\x00"  # the preamble is free-form; DICM at 128 decides
    assert imageio.sniff_format(bytes(data)) == "dicom"
    with pytest.raises(imageio.DecodeError) as e:
        imageio.decode(b"not an image at all" * 10)
    assert e.value.status_code == 415
