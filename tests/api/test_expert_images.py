"""Expert images through the API: DICOM and 16-bit uploads keep their bytes and their precision,
image metadata, display.png through windows (cached per content and window), the lazy backfill of
rows from before migration 0004, and byte-exact export."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom.data import get_testdata_file
from sqlalchemy import select

from app.tables import Image
from sage import imageio
from sage.synthetic import dicom_bytes
from tests.api.conftest import noise_png, stored_objects, upload

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def setup(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner, labels=("normal", "finding"))
    return project, auth_headers(owner)


def radiograph(width: int = 48, height: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(300, 3800, width)[None, :].repeat(height, 0)
    return (base + rng.normal(0, 40, (height, width))).clip(0, 4095).astype(np.uint16)


def png_of(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(PILImage.open(io.BytesIO(response.content)))


def test_dicom_upload_metadata_display_and_file(client, setup, settings):
    project, h = setup
    pixels = radiograph()
    data = dicom_bytes(pixels, bits_stored=12, window=(2000, 1000))
    r = upload(client, h, project.id, [("chest.dcm", data)], label="normal")
    assert r.status_code == 201, r.text
    img = r.json()["images"][0]
    assert (img["format"], img["width"], img["height"]) == ("dicom", 48, 32)
    px = img["pixels"]
    assert (px["bit_depth"], px["photometric"], px["channels"], px["dtype"]) == (
        12,
        "MONOCHROME2",
        1,
        "uint16",
    )
    assert px["default_window"] == {"center": 2000.0, "width": 1000.0} == px["header_window"]
    assert px["auto_window"]["width"] > 1000 and img["display_url"].endswith(
        f"/images/{img['id']}/display.png"
    )

    # the original comes back byte for byte, as DICOM
    f = client.get(img["file_url"], headers=h)
    assert f.content == data and f.headers["content-type"] == "application/dicom"

    # default rendering: the header window at full resolution, not an 8-bit clip of the raw values
    shown = png_of(client.get(img["display_url"], headers=h))
    assert shown.shape == (32, 48) and shown.dtype == np.uint8
    np.testing.assert_array_equal(shown, imageio.render_8bit(pixels, 2000, 1000))
    assert shown.min() == 0 and shown.max() == 255  # the window clips both ends of this ramp

    # an explicit window and inversion
    r = client.get(img["display_url"], params={"center": 2048, "width": 4096, "invert": 1}, headers=h)
    np.testing.assert_array_equal(png_of(r), 255 - imageio.render_8bit(pixels, 2048, 4096))
    assert "immutable" in r.headers["cache-control"] and img["sha256"] in r.headers["etag"]
    again = client.get(
        img["display_url"],
        params={"center": 2048, "width": 4096, "invert": 1},
        headers={**h, "If-None-Match": r.headers["etag"]},
    )
    assert again.status_code == 304 and again.content == b""
    other = client.get(img["display_url"], params={"center": 100, "width": 4096}, headers=h)
    assert other.headers["etag"] != r.headers["etag"]


def test_display_with_half_a_window_takes_the_other_half_from_the_default(client, setup):
    """Every request the schema allows renders: center alone keeps the default width, width
    alone the default center (the schema cannot say "both or neither")."""
    project, h = setup
    pixels = radiograph()
    data = dicom_bytes(pixels, window=(2000, 1000))
    iid = upload(client, h, project.id, [("r.dcm", data)]).json()["images"][0]["id"]
    url = f"/api/v1/images/{iid}/display.png"
    r = client.get(url, params={"center": 2500}, headers=h)
    np.testing.assert_array_equal(png_of(r), imageio.render_8bit(pixels, 2500, 1000))
    assert r.headers["x-window-center"] == "2500" and r.headers["x-window-width"] == "1000"
    assert "immutable" not in r.headers["cache-control"]
    r = client.get(url, params={"width": 300}, headers=h)
    np.testing.assert_array_equal(png_of(r), imageio.render_8bit(pixels, 2000, 300))


@pytest.mark.parametrize(
    "params",
    [{"center": 10, "width": 0}, {"center": 1, "width": 1, "invert": 2}, {"width": -1}],
)
def test_display_refuses_bad_windows(client, setup, params):
    project, h = setup
    iid = upload(client, h, project.id, [("a.png", noise_png())]).json()["images"][0]["id"]
    r = client.get(f"/api/v1/images/{iid}/display.png", params=params, headers=h)
    assert r.status_code == 422 and r.json()["detail"]


def test_pydicom_files_upload_as_their_pixels(client, setup):
    project, h = setup
    names = ["CT_small.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
    files = [(n, Path(get_testdata_file(n)).read_bytes()) for n in names]
    r = upload(client, h, project.id, files)
    assert r.status_code == 201, r.text
    ct, *mrs = r.json()["images"]
    assert ct["pixels"]["header_window"] is None and ct["pixels"]["dtype"] == "int16"
    # CT without a header window: the default is the 0.5-99.5 percentile range of its HU values
    assert ct["pixels"]["default_window"] == ct["pixels"]["auto_window"]
    # the three MR encodings decode to the same pixels: the same rendering
    renders = [client.get(m["display_url"], headers=h).content for m in mrs]
    assert renders[0] == renders[1] == renders[2]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("SC_rgb_rle_2frame.dcm", "2 frames"),
        ("rtplan.dcm", "without pixel data"),
        ("MR_truncated.dcm", "truncated"),
    ],
)
def test_unusable_dicom_is_422_and_nothing_is_stored(client, setup, db, settings, name, words):
    project, h = setup
    r = upload(
        client, h, project.id, [("good.png", noise_png()), (name, Path(get_testdata_file(name)).read_bytes())]
    )
    assert r.status_code == 422 and words in r.json()["detail"] and name in r.json()["detail"]
    assert db.query(Image).count() == 0 and stored_objects(settings) == []


def test_16bit_png_keeps_its_precision(client, setup, settings):
    project, h = setup
    arr = (np.arange(64 * 16).reshape(16, 64) * 61 % 65536).astype(np.uint16)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    img = upload(client, h, project.id, [("i.png", buf.getvalue())]).json()["images"][0]
    assert img["pixels"]["bit_depth"] == 16 and img["pixels"]["dtype"] == "uint16"
    arrays = [p for p in stored_objects(settings) if p.suffix == ".npy"]
    np.testing.assert_array_equal(np.load(arrays[0]), arr)


def test_rows_from_before_0004_are_backfilled_on_first_display(client, setup, db):
    project, h = setup
    data = noise_png(20, 10, seed=5)
    iid = upload(client, h, project.id, [("old.png", data)]).json()["images"][0]["id"]
    row = db.get(Image, iid)
    for column in (
        "array_key",
        "bit_depth",
        "photometric",
        "channels",
        "window_center",
        "window_width",
        "pixel_info",
    ):
        setattr(row, column, None)  # what migration 0004 leaves on an existing row
    db.commit()
    assert client.get(f"/api/v1/images/{iid}", headers=h).json()["pixels"]["bit_depth"] is None
    shown = png_of(client.get(f"/api/v1/images/{iid}/display.png", headers=h))
    np.testing.assert_array_equal(shown, np.asarray(PILImage.open(io.BytesIO(data))))  # 8-bit: as it was
    db.expire_all()
    again = db.get(Image, iid)
    assert again.array_key and again.bit_depth == 8 and again.photometric == "RGB" and again.channels == 3


def test_import_and_export_keep_dicom_byte_exact(client, setup):
    project, h = setup
    files = {
        "labels.csv": b"image,label,split\nchest.dcm,finding,train\nmr.dcm,normal,test\n",
        "images/chest.dcm": dicom_bytes(radiograph(seed=3), window=(1800, 900)),
        "images/mr.dcm": Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes(),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    r = client.post(
        f"/api/v1/projects/{project.id}/import",
        headers=h,
        files={"file": ("d.zip", buf.getvalue(), "application/zip")},
    )
    assert r.status_code == 201, r.text
    listed = client.get(f"/api/v1/projects/{project.id}/images", headers=h).json()["items"]
    assert {i["pixels"]["default_window"]["center"] for i in listed} == {1800.0, 600.0}
    out = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/projects/{project.id}/export", headers=h).content))
    root = f"project-{project.id}/images/"
    assert out.read(root + "chest.dcm") == files["images/chest.dcm"]
    assert out.read(root + "mr.dcm") == files["images/mr.dcm"]


def test_image_size_defaults_by_backbone_and_coarse_cams_are_422(client, make_user, auth_headers):
    admin = make_user(admin=True)
    h = auth_headers(admin)
    r = client.post(
        "/api/v1/projects", headers=h, json={"name": "xr", "labels": ["a", "b"], "backbone": "resnet18"}
    )
    assert r.status_code == 201 and r.json()["image_size"] == 224
    pid = r.json()["id"]
    bad = client.post(
        f"/api/v1/projects/{pid}/training-runs", headers=h, json={"training": {"image_size": 64}}
    )
    assert bad.status_code == 422 and "smallest image_size for 7x7 is 224" in bad.json()["detail"]
    tiny = client.post("/api/v1/projects", headers=h, json={"name": "t", "labels": ["a", "b"]})
    assert tiny.json()["image_size"] == 64


@pytest.mark.parametrize("window", ["default", "auto", "full"])
def test_training_snapshot_carries_the_stored_arrays_and_training_never_decodes(
    client, setup, db, settings, tmp_path, monkeypatch, window
):
    """Decode once: a worker's snapshot holds pixels/<stem>.npy (the array stored at upload), and
    the loader builds exactly the tensors that decoding the originals gives, without decoding."""
    import shutil

    from app.services.datasets import write_dataset_folder
    from app.storage import get_storage
    from app.tables import Project
    from sage import data as sage_data

    project, h = setup
    windowed = dicom_bytes(radiograph(seed=1), bits_stored=12, window=(2000, 1000))
    unwindowed = dicom_bytes(radiograph(40, 56, seed=2), bits_stored=12)  # default: percentile
    buf = io.BytesIO()
    PILImage.fromarray((radiograph(30, 20, seed=3) * 16).astype(np.uint16)).save(buf, format="PNG")
    for name, data, label in (
        ("a.dcm", windowed, "normal"),
        ("b.dcm", unwindowed, "finding"),
        ("c.png", buf.getvalue(), "finding"),
    ):
        assert upload(client, h, project.id, [(name, data)], label=label).status_code == 201
    legacy = db.scalar(select(Image).where(Image.original_name == "c.png"))
    for column in ("array_key", "bit_depth", "pixel_info", "window_center", "window_width"):
        setattr(legacy, column, None)  # a row from before migration 0004: decoded once, here
    db.commit()
    snap = tmp_path / "snap"
    write_dataset_folder(db, get_storage(settings), db.get(Project, project.id), snap, arrays=True)
    db.expire_all()
    assert db.get(Image, legacy.id).array_key and db.get(Image, legacy.id).bit_depth == 16
    assert sorted(p.name for p in (snap / "pixels").iterdir()) == [
        "a.json", "a.npy", "b.json", "b.npy", "c.json", "c.npy",
    ]  # fmt: skip

    plain = tmp_path / "plain"  # the same folder without pixels/: the CLI's case, decoded
    shutil.copytree(snap, plain, ignore=shutil.ignore_patterns("pixels"))
    index = sage_data.read_dataset(plain)
    expected = sage_data.load_split(index, index.samples, 32, cache=False, window=window)

    def no_decoding(*args, **kwargs):
        raise AssertionError("training decoded an original file")

    monkeypatch.setattr(imageio, "decode", no_decoding)
    monkeypatch.setattr(imageio, "decode_file", no_decoding)
    index = sage_data.read_dataset(snap)
    got = sage_data.load_split(index, index.samples, 32, cache=False, window=window)
    assert got.names == expected.names == ["a.dcm", "b.dcm", "c.png"]
    assert torch_equal(got.images, expected.images) and got.images.float().std() > 10
    assert torch_equal(got.labels, expected.labels)


def torch_equal(a, b) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def test_display_goes_through_the_render_limiter(app, client, setup):
    """display.png is a heavy render: with every render slot taken it answers 503 + Retry-After
    (declared in the schema) instead of rendering one more full-size image."""
    from app.hardening import RenderLimiter

    project, h = setup
    iid = upload(client, h, project.id, [("a.png", noise_png(16, 12))]).json()["images"][0]["id"]
    assert client.get(f"/api/v1/images/{iid}/display.png", headers=h).status_code == 200
    app.state.render_limiter = RenderLimiter(slots=0, wait_s=0)  # saturated
    r = client.get(f"/api/v1/images/{iid}/display.png", params={"center": 100, "width": 50}, headers=h)
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
    assert "busy" in r.json()["detail"]
    declared = app.openapi()["paths"]["/api/v1/images/{iid}/display.png"]["get"]["responses"]
    assert "503" in declared
