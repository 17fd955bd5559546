"""Image upload, listing, files and deletion, with every kind of bad upload."""

from __future__ import annotations

import io
import re
import struct
import zlib

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from app.tables import Image
from tests.api.conftest import noise_png, png_bytes, stored_objects, upload


@pytest.fixture
def setup(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner)
    return project, auth_headers(owner), owner


def test_multi_upload_with_label_and_split(client, setup, settings):
    project, h, _ = setup
    r = upload(
        client,
        h,
        project.id,
        [("a.png", noise_png(seed=1)), ("b.jpg", noise_png(seed=2, fmt="JPEG"))],
        label="cat",
        split="val",
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] == 2 and body["existing"] == 0
    a, b = body["images"]
    assert (a["format"], a["width"], a["height"], a["label"], a["split"]) == ("png", 16, 12, "cat", "val")
    assert b["format"] == "jpeg" and b["original_name"] == "b.jpg" and a["created"] is True
    # each image: its original bytes and its decoded array
    assert sorted(p.suffix for p in stored_objects(settings)) == [".jpg", ".npy", ".npy", ".png"]


def test_reupload_is_idempotent(client, setup, db):
    project, h, _ = setup
    data = noise_png(seed=3)
    first = upload(client, h, project.id, [("a.png", data)]).json()["images"][0]
    r = upload(client, h, project.id, [("renamed.png", data), ("again.png", data)])
    assert r.status_code == 200
    again = r.json()
    assert again["created"] == 0 and again["existing"] == 2
    assert {img["id"] for img in again["images"]} == {first["id"]}
    assert db.scalar(select(func.count()).select_from(Image)) == 1


def test_file_answers_the_bytes_with_their_type(client, setup):
    project, h, _ = setup
    data = noise_png(seed=4, fmt="JPEG")
    iid = upload(client, h, project.id, [("x.jpg", data)]).json()["images"][0]["id"]
    r = client.get(f"/api/v1/images/{iid}/file", headers=h)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/jpeg" and r.headers["x-content-type-options"] == "nosniff"
    assert (
        client.get(f"/api/v1/images/{iid}", headers=h).json()["sha256"]
        == __import__("hashlib").sha256(data).hexdigest()
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _truncated_png() -> bytes:
    data = noise_png(64, 64, seed=5)
    return data[: len(data) // 2]


BAD_UPLOADS = [
    ("text named .png", b"hello, I am not an image", 415, "not a PNG, JPEG"),
    ("html spoofing png", b"<html><script>alert(1)</script></html>", 415, "content was checked"),
    ("pdf", b"%PDF-1.4\n...", 415, "not a PNG"),
    ("empty", b"", 422, "empty"),
    ("truncated png", None, 422, "truncated"),
    ("png magic then garbage", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, 422, "PNG"),
    ("decompression bomb", _png_header_only(100_000, 100_000), 422, "pixels"),
]


@pytest.mark.parametrize(("case", "data", "status", "words"), BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
def test_bad_uploads_are_refused_and_leave_nothing(client, setup, db, settings, case, data, status, words):
    project, h, _ = setup
    if data is None:
        data = _truncated_png()
    good = noise_png(seed=6)
    r = upload(client, h, project.id, [("good.png", good), ("bad.png", data)])
    assert r.status_code == status, (case, r.text)
    detail = r.json()["detail"]
    assert words in detail and "bad.png" in detail
    assert db.scalar(select(func.count()).select_from(Image)) == 0
    assert stored_objects(settings) == []


def test_upload_size_cap_is_413(client, setup, app, db, settings):
    project, h, _ = setup
    app.state.settings = settings.model_copy(update={"max_upload_bytes": 1000})
    r = upload(client, h, project.id, [("big.png", noise_png(64, 64, seed=7))])
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert db.scalar(select(func.count()).select_from(Image)) == 0


def test_pixel_cap_is_configurable(client, setup, app, settings):
    project, h, _ = setup
    app.state.settings = settings.model_copy(update={"max_image_pixels": 100})
    r = upload(client, h, project.id, [("a.png", noise_png(16, 12, seed=8))])
    assert r.status_code == 422 and "over the limit of 100" in r.json()["detail"]


def test_unknown_label_is_409_and_unknown_split_422(client, app, setup):
    """A label is valid by the schema's rules but may not be one of the project's (labels are the
    project's own data): 409, declared on every route that takes a label; a split is an enum: 422."""
    project, h, _ = setup
    r = upload(client, h, project.id, [("a.png", noise_png())], label="horse")
    assert r.status_code == 409 and "unknown label" in r.json()["detail"]
    iid = upload(client, h, project.id, [("b.png", noise_png(seed=5))]).json()["images"][0]["id"]
    r = client.patch(f"/api/v1/images/{iid}", json={"import_label": "horse"}, headers=h)
    assert r.status_code == 409 and "['cat', 'dog']" in r.json()["detail"]
    assert client.get(f"/api/v1/images/{iid}", headers=h).json()["import_label"] is None
    paths = app.openapi()["paths"]
    for path, method in [
        ("/api/v1/projects/{pid}/images", "post"),
        ("/api/v1/images/{iid}", "patch"),
        ("/api/v1/projects/{pid}/images/bulk", "post"),
        ("/api/v1/images/{iid}/annotation", "put"),
        ("/api/v1/images/{iid}/adjudication", "put"),
    ]:
        assert "409" in paths[path][method]["responses"], (path, method)
    assert upload(client, h, project.id, [("a.png", noise_png())], split="holdout").status_code == 422
    assert upload(client, h, project.id, []).status_code == 422


def test_names_with_paths_are_reduced_to_a_file_name(client, setup, settings):
    project, h, _ = setup
    r = upload(
        client,
        h,
        project.id,
        [("../../etc/passwd.png", noise_png(seed=9)), ("..\\..\\win.png", noise_png(seed=10))],
    )
    assert r.status_code == 201
    assert [img["original_name"] for img in r.json()["images"]] == ["passwd.png", "win.png"]
    names = [p.name for p in stored_objects(settings) if p.suffix == ".png"]
    assert len(names) == 2 and all(re.fullmatch(r"[0-9a-f]{64}\.png", n) for n in names)  # no user names


def test_tiff_bmp_and_grayscale_images(client, setup):
    project, h, _ = setup
    files = [
        ("t.tif", png_bytes(fmt="TIFF")),
        ("b.bmp", png_bytes(fmt="BMP")),
        ("g.png", png_bytes(mode="L", colour=7)),
    ]
    r = upload(client, h, project.id, files)
    assert r.status_code == 201, r.text
    assert [i["format"] for i in r.json()["images"]] == ["tiff", "bmp", "png"]


def test_list_pagination_and_filters(client, setup, make_user, auth_headers, db):
    from app.services.projects import set_member
    from tests.api.conftest import put_annotation

    project, h, _ = setup
    ids = [
        img["id"]
        for img in upload(
            client, h, project.id, [(f"{i}.png", noise_png(seed=100 + i)) for i in range(7)]
        ).json()["images"]
    ]
    upload(client, h, project.id, [("t.png", noise_png(seed=200))], split="test", label="dog")
    other = make_user()
    set_member(db, project, other.username, "annotator")
    put_annotation(client, h, ids[1], label="cat")
    put_annotation(client, auth_headers(other), ids[2], label="dog")
    url = f"/api/v1/projects/{project.id}/images"
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get(url, headers=h, params=params).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 8 and seen == sorted(seen)

    def ids_for(**params):
        return [i["id"] for i in client.get(url, headers=h, params=params | {"limit": 100}).json()["items"]]

    assert ids_for(labelled=True) == [ids[1], ids[2], seen[-1]]
    assert len(ids_for(labelled=False)) == 5
    assert ids_for(annotated=True) == [ids[1], ids[2]]
    assert ids_for(annotated_by_me=True) == [ids[1]]
    assert ids[1] not in ids_for(annotated_by_me=False) and ids[2] in ids_for(annotated_by_me=False)
    assert ids_for(split="test") == [seen[-1]]
    assert ids_for(label="dog") == [ids[2], seen[-1]]
    # the cursor's format is in the schema (422 otherwise); any cursor of that format is a page
    assert client.get(url, headers=h, params={"cursor": "not a cursor!"}).status_code == 422
    forged = client.get(url, headers=h, params={"cursor": "0" * 10})
    assert forged.status_code == 200 and len(forged.json()["items"]) == 8
    after_all = client.get(url, headers=h, params={"cursor": "9" * 10})
    assert after_all.status_code == 200 and after_all.json() == {"items": [], "next_cursor": None}
    assert client.get(url, headers=h, params={"limit": 0}).status_code == 422
    assert client.get(url, headers=h, params={"split": "nope"}).status_code == 422


@pytest.mark.parametrize("role", ["viewer", "annotator"])
def test_only_managers_delete_images_and_viewers_cannot_upload(
    client, setup, make_user, auth_headers, db, role
):
    from app.services.projects import set_member

    project, h, _ = setup
    iid = upload(client, h, project.id, [("a.png", noise_png())]).json()["images"][0]["id"]
    member = make_user()
    set_member(db, project, member.username, role)
    hm = auth_headers(member)
    assert client.delete(f"/api/v1/images/{iid}", headers=hm).status_code == 403
    assert client.get(f"/api/v1/images/{iid}", headers=hm).status_code == 200
    up = upload(client, hm, project.id, [("b.png", noise_png(seed=11))])
    assert up.status_code == (403 if role == "viewer" else 201)


def test_images_of_other_projects_are_404(client, setup, make_user, make_project, auth_headers):
    project, h, _ = setup
    iid = upload(client, h, project.id, [("a.png", noise_png())]).json()["images"][0]["id"]
    stranger = make_user()
    make_project(stranger)
    hs = auth_headers(stranger)
    for method, path in [
        ("GET", ""),
        ("GET", "/file"),
        ("DELETE", ""),
        ("GET", "/annotations"),
        ("GET", "/saliency.png"),
    ]:
        r = client.request(method, f"/api/v1/images/{iid}{path}", headers=hs)
        assert r.status_code == 404 and r.json() == {"detail": f"no image {iid}"}, (method, path)


def test_delete_removes_rows_and_files_after_commit_but_keeps_shared_ones(
    client, setup, make_project, db, settings
):
    from tests.api.conftest import mask_png, put_annotation

    project, h, owner = setup
    shared = noise_png(seed=12)
    other_project = make_project(owner)
    a = upload(client, h, project.id, [("a.png", shared)]).json()["images"][0]["id"]
    b = upload(client, h, project.id, [("b.png", noise_png(seed=13))]).json()["images"][0]["id"]
    upload(client, h, other_project.id, [("same.png", shared)])
    put_annotation(client, h, b, label="cat", saliency=mask_png(value=9))
    assert len(stored_objects(settings)) == 5  # shared image, b, their arrays, b's map
    assert client.delete(f"/api/v1/images/{b}", headers=h).status_code == 204
    assert len(stored_objects(settings)) == 2  # b, its array and its map are gone
    assert client.delete(f"/api/v1/images/{a}", headers=h).status_code == 204
    assert len(stored_objects(settings)) == 2  # still used by the other project
    assert client.get(f"/api/v1/images/{a}", headers=h).status_code == 404
    assert db.scalar(select(func.count()).select_from(Image)) == 1


def test_patch_image_split_and_import_label(client, setup):
    project, h, _ = setup
    iid = upload(client, h, project.id, [("a.png", noise_png())]).json()["images"][0]["id"]
    r = client.patch(f"/api/v1/images/{iid}", headers=h, json={"split": "test", "import_label": "dog"})
    assert r.status_code == 200 and (r.json()["split"], r.json()["label"]) == ("test", "dog")
    assert client.patch(f"/api/v1/images/{iid}", headers=h, json={"import_label": "cow"}).status_code == 409
    assert (
        client.patch(f"/api/v1/images/{iid}", headers=h, json={"clear_import_label": True}).json()["label"]
        is None
    )


def test_decoder_unit_cases():
    from app.imaging import ImageError, decode_image

    buf = io.BytesIO()
    PILImage.new("RGB", (4, 4)).save(buf, format="PNG")
    assert decode_image(buf.getvalue()).format == "png"
    with pytest.raises(ImageError) as e:
        decode_image(b"GIF89a" + b"\x00" * 20)
    assert e.value.status_code == 415
