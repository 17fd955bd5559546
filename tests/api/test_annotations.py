"""Annotations: optimistic concurrency with If-Match, history, masks, consensus and agreement."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select

from app.tables import AnnotationRevision
from tests.api.conftest import mask_png, noise_png, put_annotation, stored_objects, upload


@pytest.fixture
def image(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner)
    h = auth_headers(owner)
    iid = upload(client, h, project.id, [("a.png", noise_png(16, 12))]).json()["images"][0]["id"]
    return iid, h, project, owner


def _png_array(data: bytes) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(data)))


def test_first_put_then_revisions_with_if_match(client, image):
    iid, h, _, owner = image
    r = put_annotation(client, h, iid, label="cat", saliency=mask_png(value=10))
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["revision"] == 1 and first["has_saliency"] and first["author"] == owner.username
    assert r.headers["etag"] == '"1"'
    r = put_annotation(client, h, iid, label="dog", saliency=mask_png(value=20), if_match=1)
    assert r.status_code == 200 and r.json()["revision"] == 2
    r = put_annotation(client, h, iid, label="dog", saliency=mask_png(value=30), if_match='W/"2"')
    assert r.status_code == 200 and r.json()["revision"] == 3
    mine = client.get(f"/api/v1/images/{iid}/annotation", headers=h)
    assert mine.json()["revision"] == 3 and mine.headers["etag"] == '"3"'
    assert client.get(f"/api/v1/images/{iid}", headers=h).json()["label"] == "dog"


def test_put_without_if_match_on_an_existing_annotation_is_409(client, image):
    iid, h, _, _ = image
    put_annotation(client, h, iid, label="cat")
    r = put_annotation(client, h, iid, label="dog")
    assert r.status_code == 409 and "If-Match: 1" in r.json()["detail"]
    r = put_annotation(client, h, iid, label="dog", if_match=7)  # no such revision
    assert r.status_code == 409
    assert put_annotation(client, h, iid + 0, label="dog", if_match="abc").status_code == 422


def test_two_conflicting_puts_give_exactly_one_409_and_both_revisions_are_recoverable(client, image, db):
    iid, h, _, _ = image
    aid = put_annotation(client, h, iid, label="cat", saliency=mask_png(value=50)).json()["id"]
    # two tabs both loaded revision 1 and both save
    a = put_annotation(client, h, iid, label="dog", saliency=mask_png(value=100), if_match=1)
    b = put_annotation(client, h, iid, label="cat", saliency=mask_png(value=200), if_match=1)
    assert sorted([a.status_code, b.status_code]) == [200, 409]
    assert "stale revision" in b.json()["detail"] and b.headers["etag"] == '"2"'
    # nothing of the losing write landed
    current = client.get(f"/api/v1/images/{iid}/annotation", headers=h).json()
    assert (current["revision"], current["label"]) == (2, "dog")
    revs = client.get(f"/api/v1/annotations/{aid}/revisions", headers=h).json()
    assert [(r["revision"], r["label"]) for r in revs] == [(1, "cat"), (2, "dog")]
    for rev, value in ((1, 50), (2, 100)):
        png = client.get(f"/api/v1/annotations/{aid}/saliency.png", headers=h, params={"revision": rev})
        assert png.status_code == 200 and (_png_array(png.content) == value).all()
    assert (
        client.get(f"/api/v1/annotations/{aid}/saliency.png", headers=h, params={"revision": 9}).status_code
        == 404
    )
    # the current map changes with every save, so a browser must revalidate it; a named revision is immutable
    current_png = client.get(f"/api/v1/annotations/{aid}/saliency.png", headers=h)
    assert (_png_array(current_png.content) == 100).all() and current_png.headers[
        "cache-control"
    ] == "no-cache"
    assert db.scalar(select(func.count()).select_from(AnnotationRevision)) == 2


def test_concurrent_puts_from_threads(client, image):
    """Real concurrency: N simultaneous saves of revision 1, exactly one wins."""
    iid, h, _, _ = image
    put_annotation(client, h, iid, label="cat")
    barrier = threading.Barrier(4)
    codes: list[int] = []

    def save(i: int) -> None:
        barrier.wait()
        codes.append(
            put_annotation(client, h, iid, label="dog", saliency=mask_png(value=i), if_match=1).status_code
        )

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200, 409, 409, 409]
    assert client.get(f"/api/v1/images/{iid}/annotation", headers=h).json()["revision"] == 2


def _rgb_png(w=16, h=12, colour=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (w, h), colour).save(buf, format="PNG")
    return buf.getvalue()


def _png16(w=16, h=12) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.zeros((h, w), dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


BAD_MASKS = [
    ("wrong size", mask_png(15, 12), "15x12 but the image is 16x12"),
    ("colour", _rgb_png(), "colour"),
    ("16-bit", _png16(), "8-bit grayscale"),
    ("jpeg", noise_png(16, 12, fmt="JPEG"), "PNG"),
    ("text", b"not a png at all", "PNG"),
    ("truncated", mask_png(16, 12, seed=3)[:40], "PNG"),
]


@pytest.mark.parametrize(("case", "data", "words"), BAD_MASKS, ids=[c[0] for c in BAD_MASKS])
def test_bad_masks_are_422_and_write_nothing(client, image, settings, case, data, words):
    iid, h, _, _ = image
    before = stored_objects(settings)
    r = put_annotation(client, h, iid, label="cat", saliency=data)
    assert r.status_code == 422, (case, r.text)
    assert words in r.json()["detail"]
    assert stored_objects(settings) == before
    assert client.get(f"/api/v1/images/{iid}/annotation", headers=h).status_code == 404


def test_grey_opaque_rgba_from_a_browser_canvas_is_accepted(client, image):
    iid, h, _, _ = image
    arr = np.zeros((12, 16, 4), dtype=np.uint8)
    arr[..., :3] = 77
    arr[..., 3] = 255
    buf = io.BytesIO()
    PILImage.fromarray(arr, "RGBA").save(buf, format="PNG")
    assert put_annotation(client, h, iid, label="cat", saliency=buf.getvalue()).status_code == 201
    png = client.get(f"/api/v1/images/{iid}/saliency.png", headers=h)
    assert (_png_array(png.content) == 77).all()


def test_unknown_label_is_409_and_empty_put_422(client, image):
    iid, h, _, _ = image
    r = put_annotation(client, h, iid, label="horse")
    assert r.status_code == 409 and "unknown label" in r.json()["detail"]
    assert put_annotation(client, h, iid).status_code == 422


def test_viewer_cannot_annotate_and_strangers_get_404(client, image, make_user, auth_headers, db):
    from app.services.projects import set_member

    iid, _, project, _ = image
    viewer, stranger = make_user(), make_user()
    set_member(db, project, viewer.username, "viewer")
    assert put_annotation(client, auth_headers(viewer), iid, label="cat").status_code == 403
    assert put_annotation(client, auth_headers(stranger), iid, label="cat").status_code == 404
    assert client.get(f"/api/v1/images/{iid}/annotations", headers=auth_headers(viewer)).status_code == 200


def test_all_annotations_consensus_and_agreement(client, image, make_user, auth_headers, db):
    from app.services.projects import set_member

    iid, h, project, _ = image
    other = make_user()
    set_member(db, project, other.username, "annotator")
    ho = auth_headers(other)
    assert client.get(f"/api/v1/images/{iid}/saliency.png", headers=h).status_code == 404
    left = np.zeros((12, 16), dtype=np.uint8)
    left[:, :8] = 255
    half = np.zeros((12, 16), dtype=np.uint8)
    half[:, :4] = 255

    def enc(arr):
        buf = io.BytesIO()
        PILImage.fromarray(arr).save(buf, format="PNG")
        return buf.getvalue()

    put_annotation(client, h, iid, label="cat", saliency=enc(left))
    put_annotation(client, ho, iid, label="dog", saliency=enc(half))
    body = client.get(f"/api/v1/images/{iid}/annotations", headers=h).json()
    assert len(body["annotations"]) == 2 and body["pairs"] == 1
    assert body["consensus"]["available"] and body["consensus"]["maps"] == 2
    assert body["agreement"]["iou"] == pytest.approx(0.5)
    expected_r = np.corrcoef(left.ravel().astype(float), half.ravel().astype(float))[0, 1]
    assert body["agreement"]["pearson"] == pytest.approx(expected_r)
    consensus = _png_array(client.get(body["consensus"]["url"], headers=h).content)
    assert consensus[0, 0] == 255 and consensus[0, 6] == 128 and consensus[0, 12] == 0
    # a tie between cat and dog goes to the label listed first in the project
    assert body["label"] == "cat"


def test_service_consensus_map_and_agreement_functions(client, image, db, settings):
    from app.services.annotations import agreement, consensus_map
    from app.storage import get_storage
    from app.tables import Image

    iid, h, _, _ = image
    put_annotation(client, h, iid, label="cat", saliency=mask_png(value=51))
    img = db.get(Image, iid)
    arr = consensus_map(db, get_storage(settings), img)
    assert arr.dtype == np.float32 and arr.shape == (12, 16) and np.allclose(arr, 0.2)
    a = np.zeros((4, 4), dtype=np.uint8)
    b = np.full((4, 4), 255, dtype=np.uint8)
    s = agreement([a, b])
    assert s.iou == 0.0 and s.pearson == 0.0 and s.pairs == 1  # sage.agreement: constant, unequal maps
    assert agreement([a]).iou is None
