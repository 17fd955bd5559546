"""Reader workflow (issue 12): label-only annotations (no map), statuses, k readers, blind reading."""

from __future__ import annotations

import csv
import shutil
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa

from app.services.datasets import write_dataset_folder
from app.storage import get_storage
from app.tables import Annotation, AnnotationRevision, Project
from tests.api.conftest import mask_png, noise_png, put_annotation, upload


@pytest.fixture
def team(client, make_user, make_project, auth_headers):
    """A manager, two readers (annotators) and a project with four images."""
    manager, r1, r2 = make_user(), make_user(), make_user()
    project = make_project(manager, members={r1: "annotator", r2: "annotator"})
    h = {u: auth_headers(u) for u in (manager, r1, r2)}
    ids = [
        im["id"]
        for im in upload(
            client, h[manager], project.id, [(f"{i}.png", noise_png(16, 12, seed=i)) for i in range(4)]
        ).json()["images"]
    ]
    return project, manager, r1, r2, h, ids


# --- label only, no map -------------------------------------------------------------------------------


def test_label_only_save_stores_no_map_and_an_all_zero_map_is_no_map_too(
    client, team, db, settings, tmp_path
):
    project, manager, r1, r2, h, ids = team
    iid = ids[0]
    r = put_annotation(client, h[r1], iid, label="cat")  # the browser sends no map when nothing was painted
    assert r.status_code == 201 and r.json()["has_saliency"] is False and r.json()["saliency_url"] is None
    # an explicit all-zero PNG through the API is "no map" as well: nothing stored, nothing diluted
    r = put_annotation(client, h[r2], iid, label="cat", saliency=mask_png(value=0))
    assert r.status_code == 201 and r.json()["has_saliency"] is False
    assert client.get(f"/api/v1/images/{iid}/saliency.png", headers=h[manager]).status_code == 404
    listing = client.get(f"/api/v1/images/{iid}/annotations", headers=h[manager]).json()
    assert listing["consensus"] == {"available": False, "maps": 0, "source": "none", "url": None}
    assert [a["has_saliency"] for a in listing["annotations"]] == [False, False]
    # a zero map with no label is refused with a clear reason, and writes nothing
    r = put_annotation(client, h[r1], iid, saliency=mask_png(value=0), if_match=1)
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    # one reader paints later: the consensus is that map, not half of it
    r = put_annotation(client, h[r2], iid, label="cat", saliency=mask_png(value=200), if_match=1)
    png = client.get(f"/api/v1/images/{iid}/saliency.png", headers=h[manager])
    import io

    from PIL import Image as PILImage

    assert (np.asarray(PILImage.open(io.BytesIO(png.content))) == 200).all()
    # training's snapshot: the label-only image has a label and no saliency file
    put_annotation(client, h[r1], ids[1], label="dog")
    out = tmp_path / "snap"
    lineage = write_dataset_folder(db, get_storage(settings), db.get(Project, project.id), out)
    assert lineage["with_saliency"] == 1
    rows = {r["image"]: r["label"] for r in csv.DictReader((out / "labels.csv").read_text().splitlines())}
    assert rows["1.png"] == "dog"
    assert sorted(p.name for p in (out / "saliency").iterdir()) == ["0.png"]


def test_an_imported_all_zero_map_is_no_map(client, team, make_zip_dataset):
    project, manager, *_, h, _ = team
    r = client.post(
        f"/api/v1/projects/{project.id}/import",
        headers=h[manager],
        files={"file": ("d.zip", make_zip_dataset(mask_png(value=0)), "application/zip")},
    )
    assert r.status_code in (200, 201), r.text
    assert r.json()["with_saliency"] == 0


@pytest.fixture
def make_zip_dataset():
    import io
    import zipfile

    def make(mask: bytes) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("labels.csv", "image,label\nz.png,cat\n")
            zf.writestr("images/z.png", noise_png(16, 12, seed=99))
            zf.writestr("saliency/z.png", mask)
        return buf.getvalue()

    return make


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request, tmp_path):
    """An empty database with no tables: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    import uuid

    from sqlalchemy import text

    from app.db import make_engine
    from tests.conftest import POSTGRES_ADMIN_URL, POSTGRES_HOST, POSTGRES_PORT, require_service

    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"sage_migrate_{uuid.uuid4().hex[:10]}"
    admin = make_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_migration_0005_turns_stored_all_zero_maps_into_no_map(tmp_path, empty_database_url):
    """Populate a database at 0003 with zero and painted maps, upgrade, and read what is left."""
    from alembic import command

    from app.db import alembic_config, make_engine, upgrade_to_head
    from app.imaging import encode_mask
    from app.settings import Settings

    url = empty_database_url
    settings = Settings(env="test", data_dir=tmp_path / "data", database_url=url, secret_key="k")
    make_engine(url).dispose()
    command.upgrade(alembic_config(url), "0003")
    storage = get_storage(settings)
    zero = storage.put_bytes(encode_mask(np.zeros((12, 16), np.uint8)), ".png")
    half = storage.put_bytes(encode_mask(np.full((12, 16), 128, np.uint8)), ".png")
    full = storage.put_bytes(encode_mask(np.full((12, 16), 255, np.uint8)), ".png")
    now = datetime.now(UTC)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO users (id, username, password_hash, is_admin, is_active, created_at) VALUES (1, 'a', 'x', :f, :y, :t), (2, 'b', 'x', :f, :y, :t)"
            ),
            {"t": now, "f": False, "y": True},
        )
        conn.execute(
            sa.text(
                "INSERT INTO projects (id, name, description, labels, backbone, image_size, training, retrain_enabled,"
                " retrain_min_new, activation_policy, next_policy, created_at, updated_at)"
                " VALUES (1, 'p', '', '[\"cat\"]', 'tiny', 64, '{}', :y, 20, 'auto', 'sequential', :t, :t)"
            ),
            {"t": now, "y": True},
        )
        for iid in (1, 2):
            conn.execute(
                sa.text(
                    "INSERT INTO images (id, project_id, sha256, storage_key, original_name, format, width, height,"
                    " size_bytes, annotation_count, label, agreement_iou, agreement_r, import_saliency_key, created_at)"
                    " VALUES (:i, 1, :s, :k, 'x.png', 'png', 16, 12, 1, 2, 'cat', 0.0, NULL, :imp, :t)"
                ),
                {
                    "i": iid,
                    "s": f"{iid:064d}",
                    "k": f"{iid:064d}.png",
                    "imp": zero if iid == 2 else None,
                    "t": now,
                },
            )
        # image 1: reader a painted nothing (zero map), reader b painted a half map; a's first revision was full
        maps = {(1, 1): [full, zero], (1, 2): [half], (2, 1): [full]}
        for aid, ((iid, uid), keys) in enumerate(maps.items(), 1):
            conn.execute(
                sa.text(
                    "INSERT INTO annotations (id, project_id, image_id, author_id, label, saliency_key, revision,"
                    " created_at, updated_at) VALUES (:a, 1, :i, :u, 'cat', :k, :r, :t, :t)"
                ),
                {"a": aid, "i": iid, "u": uid, "k": keys[-1], "r": len(keys), "t": now},
            )
            for rev, key in enumerate(keys, 1):
                conn.execute(
                    sa.text(
                        "INSERT INTO annotation_revisions (annotation_id, revision, label, saliency_key, author_id,"
                        " created_at) VALUES (:a, :r, 'cat', :k, :u, :t)"
                    ),
                    {"a": aid, "r": rev, "k": key, "u": uid, "t": now},
                )
    upgrade_to_head(url, settings)
    with engine.connect() as conn:
        current = dict(conn.execute(sa.select(Annotation.id, Annotation.saliency_key)).all())
        assert current == {1: None, 2: half, 3: full}
        revs = conn.execute(
            sa.select(
                AnnotationRevision.annotation_id, AnnotationRevision.revision, AnnotationRevision.saliency_key
            ).order_by(AnnotationRevision.annotation_id, AnnotationRevision.revision)
        ).all()
        assert [tuple(r) for r in revs] == [(1, 1, full), (1, 2, None), (2, 1, half), (3, 1, full)]
        images = conn.execute(
            sa.text("SELECT id, agreement_iou, import_saliency_key FROM images ORDER BY id")
        ).all()
        # image 1 has one map left: no pairs, no agreement; image 2's zero import map is gone
        assert [tuple(r) for r in images] == [(1, None, None), (2, None, None)]
        statuses = set(conn.scalars(sa.select(Annotation.status)))
        assert statuses == {"done"}
    engine.dispose()
    shutil.rmtree(tmp_path / "data")


# --- statuses -----------------------------------------------------------------------------------------


def _next(client, h, pid, **params):
    r = client.get(f"/api/v1/projects/{pid}/next", headers=h, params=params)
    assert r.status_code == 200, r.text
    return r.json()["image"]["id"] if r.json()["image"] else None


def test_statuses_skip_comes_back_last_and_unsure_flagged_are_listed_for_managers(client, team):
    project, manager, r1, r2, h, ids = team
    pid = project.id
    assert _next(client, h[r1], pid) == ids[0]
    r = put_annotation(client, h[r1], ids[0], label=None)
    assert r.status_code == 422  # neither label nor map
    skip = client.put(f"/api/v1/images/{ids[0]}/annotation", headers=h[r1], data={"status": "skipped"})
    assert skip.status_code == 201 and skip.json()["status"] == "skipped"
    # a skip is not a read: the image still needs a reader, and comes back to r1 at the end
    assert _next(client, h[r1], pid, after=ids[0]) == ids[1]
    assert client.get(f"/api/v1/images/{ids[0]}", headers=h[manager]).json()["annotation_count"] == 0
    bad = client.put(
        f"/api/v1/images/{ids[1]}/annotation", headers=h[r1], data={"status": "unsure", "label": "cat"}
    )
    assert bad.status_code == 422 and "comment" in bad.json()["detail"]
    bad = client.put(
        f"/api/v1/images/{ids[1]}/annotation", headers=h[r1], data={"status": "skipped", "label": "cat"}
    )
    assert bad.status_code == 422
    assert (
        client.put(f"/api/v1/images/{ids[1]}/annotation", headers=h[r1], data={"status": "maybe"}).status_code
        == 422
    )
    r = client.put(
        f"/api/v1/images/{ids[1]}/annotation",
        headers=h[r1],
        data={"status": "unsure", "label": "cat", "comment": "  faint lesion?  "},
    )
    assert r.status_code == 201 and r.json()["comment"] == "faint lesion?"
    r = client.put(
        f"/api/v1/images/{ids[2]}/annotation",
        headers=h[r1],
        data={"status": "flagged", "comment": "wrong modality"},
    )
    assert r.status_code == 201 and r.json()["label"] is None
    put_annotation(client, h[r1], ids[3], label="dog")
    # everything else read: the skipped image comes back
    assert _next(client, h[r1], pid) == ids[0]
    # readings needing attention, for managers only
    listed = client.get(f"/api/v1/projects/{pid}/attention", headers=h[manager])
    assert listed.status_code == 200
    assert [
        (i["image_id"], i["annotation"]["status"], i["annotation"]["comment"]) for i in listed.json()
    ] == [
        (ids[2], "flagged", "wrong modality"),
        (ids[1], "unsure", "faint lesion?"),
    ]
    assert client.get(f"/api/v1/projects/{pid}/attention", headers=h[r2]).status_code == 403
    # the revision history keeps status and comment
    aid = r.json()["id"]
    revs = client.get(f"/api/v1/annotations/{aid}/revisions", headers=h[r1]).json()
    assert [(x["status"], x["comment"]) for x in revs] == [("flagged", "wrong modality")]
    # the skip is replaced by a reading with If-Match like any revision
    done = put_annotation(client, h[r1], ids[0], label="cat", if_match=1)
    assert done.status_code == 200 and done.json()["status"] == "done"
    assert _next(client, h[r1], pid) is None


def test_k_readers_next_and_coverage(client, team):
    project, manager, r1, r2, h, ids = team
    pid = project.id
    r = client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"readers_per_image": 2})
    assert r.status_code == 200 and r.json()["readers_per_image"] == 2 and r.json()["blind"] is True
    assert (
        client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"readers_per_image": 0}).status_code
        == 422
    )
    for iid in ids[:2]:
        put_annotation(client, h[r1], iid, label="cat")
        put_annotation(client, h[r2], iid, label="dog")
    put_annotation(client, h[r1], ids[2], label="cat")
    cov = client.get(f"/api/v1/projects/{pid}/coverage", headers=h[r1]).json()
    assert cov["images_by_readers"] == [1, 1, 2] and cov["complete"] == 2 and cov["blind"] is True
    # r2 gets only images still needing readers that r2 has not read: ids[2] then ids[3]
    assert _next(client, h[r2], pid) == ids[2]
    assert _next(client, h[r2], pid, after=ids[2]) == ids[3]
    # a manager who has not read anything is not given the images that already have two readers
    assert _next(client, h[manager], pid) == ids[2]


# --- blind reading ------------------------------------------------------------------------------------


def test_blind_mode_hides_other_readers_work_until_you_saved_yours(client, team, make_user, auth_headers, db):
    from app.services.projects import set_member

    project, manager, r1, r2, h, ids = team
    pid = project.id
    client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"readers_per_image": 2})
    iid = ids[0]
    mine = put_annotation(client, h[r1], iid, label="dog", saliency=mask_png(value=180)).json()
    aid = mine["id"]
    routes = [
        f"/api/v1/images/{iid}/annotations",
        f"/api/v1/images/{iid}/saliency.png",
        f"/api/v1/annotations/{aid}/revisions",
        f"/api/v1/annotations/{aid}/saliency.png",
        f"/api/v1/annotations/{aid}/saliency.png?revision=1",
        f"/api/v1/projects/{pid}/export",
    ]
    for url in routes:
        r = client.get(url, headers=h[r2])
        assert r.status_code == 403, (url, r.status_code)
        assert "blind reading" in r.json()["detail"]
    # the image's derived label (r1's "dog") is not shown to r2, nor findable by filtering
    assert client.get(f"/api/v1/images/{iid}", headers=h[r2]).json()["label"] is None
    page = client.get(f"/api/v1/projects/{pid}/images", headers=h[r2], params={"label": "dog"}).json()
    assert page["items"] == []
    assert client.get(f"/api/v1/projects/{pid}/next", headers=h[r2]).json()["image"]["label"] is None
    # r1 sees their own work; managers see everything; so does an annotator made adjudicator
    assert client.get(f"/api/v1/annotations/{aid}/saliency.png", headers=h[r1]).status_code == 200
    for url in routes:
        assert client.get(url, headers=h[manager]).status_code == 200, url
    judge = make_user()
    set_member(db, project, judge.username, "annotator")
    hj = auth_headers(judge)
    assert client.get(routes[0], headers=hj).status_code == 403
    r = client.post(
        f"/api/v1/projects/{pid}/members",
        headers=h[manager],
        json={"username": judge.username, "role": "annotator", "adjudicator": True},
    )
    assert r.status_code == 200 and r.json()["adjudicator"] is True
    for url in routes:
        assert client.get(url, headers=hj).status_code == 200, url
    # a skip does not unlock the image; saving a reading does
    skip = client.put(f"/api/v1/images/{iid}/annotation", headers=h[r2], data={"status": "skipped"})
    assert skip.status_code == 201
    assert client.get(routes[0], headers=h[r2]).status_code == 403
    put_annotation(client, h[r2], iid, label="cat", saliency=mask_png(value=60), if_match=1)
    for url in routes[:5]:
        assert client.get(url, headers=h[r2]).status_code == 200, url
    assert client.get(f"/api/v1/images/{iid}", headers=h[r2]).json()["label"] is not None
    # export stays managers' and adjudicators' in a blind project; blind off opens it
    assert client.get(routes[5], headers=h[r2]).status_code == 403
    client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"blind_mode": "off"})
    assert client.get(routes[5], headers=h[r2]).status_code == 200
    assert client.get(f"/api/v1/images/{ids[1]}/annotations", headers=h[r2]).status_code == 200


def test_blind_review_page_is_403_until_you_read_the_image(client, team):
    project, manager, r1, r2, h, ids = team
    client.patch(f"/api/v1/projects/{project.id}", headers=h[manager], json={"readers_per_image": 2})
    put_annotation(client, h[r1], ids[0], label="dog")
    r = client.post(
        "/login",
        data={"username": r2.username, "password": "correct horse battery", "csrf_token": _csrf(client)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    page = client.get(f"/projects/{project.id}/review/{ids[0]}")
    assert page.status_code == 403 and "Blind reading" in page.text
    put_annotation(client, h[r2], ids[0], label="cat")
    assert client.get(f"/projects/{project.id}/review/{ids[0]}").status_code == 200
    overview = client.get(f"/projects/{project.id}")
    assert 'id="coverage"' in overview.text and "blind" in overview.text
    assert f"/api/v1/projects/{project.id}/export" not in overview.text


def test_blind_prediction_alignment_is_hidden_until_you_read_the_image(
    client, team, make_user, auth_headers, db
):
    """A stored prediction's alignment compares the model with the other readers' consensus map and
    its image label is their majority: both stay hidden from a blind reader until they have read
    the image (single prediction and gallery); managers and adjudicators see them."""
    from app.services.projects import set_member
    from app.tables import ModelVersion, Prediction

    project, manager, r1, r2, h, ids = team
    pid = project.id
    client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"readers_per_image": 2})
    put_annotation(client, h[r1], ids[0], label="dog", saliency=mask_png(value=200))
    model = ModelVersion(
        project_id=pid, version=1, artifact_key="x", checksum="0" * 64, backbone="tiny", active=True
    )
    db.add(model)
    db.flush()
    detail = {"soft_iou": 0.42, "pearson": 0.3}
    for iid in ids[:2]:
        db.add(
            Prediction(
                image_id=iid, model_id=model.id, label="dog", confidence=0.8, uncertainty=0.2,
                alignment=0.42, alignment_detail=detail,
            )
        )  # fmt: skip
    db.commit()

    def shown(headers, iid=ids[0]) -> list[dict]:
        r = client.get(f"/api/v1/images/{iid}/prediction", headers=headers)
        g = client.get(f"/api/v1/projects/{pid}/predictions", headers=headers)
        assert r.status_code == 200 and g.status_code == 200, (r.text, g.text)
        return [r.json(), {p["image_id"]: p for p in g.json()}[iid]]

    def visible(p: dict) -> bool:
        return (p["alignment"], p["alignment_detail"], p["alignment_hidden"]) == (0.42, detail, False)

    for p in shown(h[r2]) + shown(h[r2], ids[1]):
        assert (p["alignment"], p["alignment_detail"], p["alignment_hidden"]) == (None, {}, True)
        assert p["image_label"] is None  # r1's "dog" (the readers' majority) is not revealed either
        assert p["label"] == "dog" and p["confidence"] == 0.8  # the model's own answer stays
    # the reader who read the image, the manager and an adjudicator see the alignment
    assert all(visible(p) for p in shown(h[r1]) + shown(h[manager]))
    assert shown(h[r1])[0]["image_label"] == "dog"
    judge = make_user()
    set_member(db, project, judge.username, "annotator", adjudicator=True)
    assert all(visible(p) for p in shown(auth_headers(judge)))
    # r2 reads the image: its alignment shows; blind mode off shows every image's
    put_annotation(client, h[r2], ids[0], label="cat")
    assert all(visible(p) for p in shown(h[r2]))
    assert not any(visible(p) for p in shown(h[r2], ids[1]))
    client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"blind_mode": "off"})
    assert all(visible(p) for p in shown(h[r2], ids[1]))


def _csrf(client) -> str:
    import re

    page = client.get("/login")
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)


# --- adjudication -------------------------------------------------------------------------------------


def _png_values(data: bytes) -> set[int]:
    import io

    from PIL import Image as PILImage

    return set(np.unique(np.asarray(PILImage.open(io.BytesIO(data)))).tolist())


def test_disagreements_are_ordered_label_first_then_lowest_iou(client, team):
    project, manager, r1, r2, h, ids = team
    pid = project.id
    client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"readers_per_image": 2})
    # ids[0]: same label, maps agree a little; ids[1]: same label, maps agree fully; ids[2]: labels differ
    put_annotation(client, h[r1], ids[0], label="cat", saliency=mask_png(value=200))
    put_annotation(client, h[r2], ids[0], label="cat", saliency=mask_png(value=20))
    put_annotation(client, h[r1], ids[1], label="dog", saliency=mask_png(value=100))
    put_annotation(client, h[r2], ids[1], label="dog", saliency=mask_png(value=100))
    put_annotation(client, h[r1], ids[2], label="cat")
    put_annotation(client, h[r2], ids[2], label="dog")
    put_annotation(client, h[r1], ids[3], label="dog")  # one reader: not a disagreement yet
    r = client.get(f"/api/v1/projects/{pid}/disagreements", headers=h[manager])
    assert r.status_code == 200
    rows = r.json()
    assert [x["image_id"] for x in rows] == [ids[2], ids[0], ids[1]]
    assert rows[0]["label_disagreement"] is True and rows[0]["labels"] == {"cat": 1, "dog": 1}
    assert rows[1]["agreement_iou"] == pytest.approx(20 / 200, abs=0.01)
    assert client.get(f"/api/v1/projects/{pid}/disagreements", headers=h[r1]).status_code == 403


def test_adjudication_is_a_revision_and_training_uses_it_instead_of_the_mean(
    client, team, db, settings, tmp_path, make_user, auth_headers
):
    from app.services.projects import set_member

    project, manager, r1, r2, h, ids = team
    pid = project.id
    client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"readers_per_image": 2})
    iid = ids[0]
    put_annotation(client, h[r1], iid, label="cat", saliency=mask_png(value=200))
    put_annotation(client, h[r2], iid, label="dog", saliency=mask_png(value=100))
    url = f"/api/v1/images/{iid}/adjudication"
    assert client.get(url, headers=h[manager]).status_code == 404
    # readers cannot adjudicate; an annotator with the adjudicator flag can
    r = client.put(
        url,
        headers=h[r1],
        data={"label": "dog"},
        files={"saliency": ("m.png", mask_png(value=40), "image/png")},
    )
    assert r.status_code == 403
    judge = make_user()
    set_member(db, project, judge.username, "annotator")
    client.post(
        f"/api/v1/projects/{pid}/members",
        headers=h[manager],
        json={"username": judge.username, "role": "annotator", "adjudicator": True},
    )
    hj = auth_headers(judge)
    assert client.put(url, headers=hj, data={"label": "bird"}).status_code == 409  # not a project label
    r = client.put(
        url, headers=hj, data={"label": "dog"}, files={"saliency": ("m.png", mask_png(value=40), "image/png")}
    )
    assert r.status_code == 201 and r.headers["etag"] == '"1"' and r.json()["has_saliency"] is True
    # the image's label is the adjudicated one
    assert client.get(f"/api/v1/images/{iid}", headers=h[manager]).json()["label"] == "dog"
    # If-Match like any revision
    r = client.put(url, headers=h[manager], data={"label": "cat"})
    assert r.status_code == 409 and r.headers["etag"] == '"1"'
    r = client.put(
        url,
        headers={**h[manager], "If-Match": "1"},
        data={"label": "cat"},
        files={"saliency": ("m.png", mask_png(value=60), "image/png")},
    )
    assert r.status_code == 200 and r.json()["revision"] == 2 and r.json()["author"] == manager.username
    stale = client.put(url, headers={**hj, "If-Match": "1"}, data={"label": "dog"})
    assert stale.status_code == 409
    revs = client.get(f"{url}/revisions", headers=h[r1]).json()
    assert [(x["revision"], x["label"]) for x in revs] == [(1, "dog"), (2, "cat")]
    assert _png_values(client.get(f"{url}/saliency.png?revision=1", headers=h[manager]).content) == {40}
    assert _png_values(client.get(f"{url}/saliency.png", headers=h[manager]).content) == {60}
    # the readers' consensus is still the mean; training's snapshot uses the adjudicated map and label
    assert _png_values(client.get(f"/api/v1/images/{iid}/saliency.png", headers=h[manager]).content) == {150}
    out = tmp_path / "snap"
    lineage = write_dataset_folder(db, get_storage(settings), db.get(Project, pid), out)
    from PIL import Image as PILImage

    assert set(np.unique(np.asarray(PILImage.open(out / "saliency" / "0.png")))) == {60}
    rows = {r["image"]: r["label"] for r in csv.DictReader((out / "labels.csv").read_text().splitlines())}
    assert rows["0.png"] == "cat"
    assert list(lineage["adjudications"].values()) == [2]
    # a later reading does not overturn the adjudicated label
    third = make_user()
    set_member(db, project, third.username, "annotator")
    put_annotation(client, auth_headers(third), iid, label="dog")
    assert client.get(f"/api/v1/images/{iid}", headers=h[manager]).json()["label"] == "cat"
    # blind: a reader who has not read the image cannot see the adjudication either
    reader3 = make_user()
    set_member(db, project, reader3.username, "annotator")
    for path in (url, f"{url}/revisions", f"{url}/saliency.png"):
        assert client.get(path, headers=auth_headers(reader3)).status_code == 403, path


def test_reader_agreement_pairs_and_against_the_adjudication(client, team):
    project, manager, r1, r2, h, ids = team
    pid = project.id
    client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"readers_per_image": 2})
    labels1 = ["cat", "cat", "dog", "dog"]
    labels2 = ["cat", "dog", "dog", "dog"]
    for iid, a, b in zip(ids, labels1, labels2, strict=True):
        put_annotation(client, h[r1], iid, label=a, saliency=mask_png(value=200))
        put_annotation(client, h[r2], iid, label=b, saliency=mask_png(value=100))
    client.put(
        f"/api/v1/images/{ids[1]}/adjudication",
        headers=h[manager],
        data={"label": "dog"},
        files={"saliency": ("m.png", mask_png(value=100), "image/png")},
    )
    assert client.get(f"/api/v1/projects/{pid}/reader-agreement", headers=h[r1]).status_code == 403
    report = client.get(f"/api/v1/projects/{pid}/reader-agreement", headers=h[manager]).json()
    (pair,) = report["pairs"]
    assert sorted(pair["readers"]) == sorted([r1.username, r2.username])
    # observed 3/4; chance: p(cat)=2/4*1/4 + p(dog)=2/4*3/4 = 0.5 -> kappa 0.5
    assert pair["kappa"] == pytest.approx(0.5) and pair["images"] == 4
    assert pair["iou"] == pytest.approx(0.5, abs=0.01) and pair["maps"] == 4
    vs = {x["reader"]: x for x in report["vs_adjudication"]}
    assert vs[r2.username]["iou"] == pytest.approx(1.0) and vs[r1.username]["iou"] == pytest.approx(
        0.5, abs=0.01
    )
    assert vs[r1.username]["images"] == 1


def test_cohen_kappa_edge_cases():
    from app.services.adjudication import cohen_kappa

    assert cohen_kappa([], []) is None
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # no variation: kappa undefined
    assert cohen_kappa(["a", "b"], ["a", "b"]) == pytest.approx(1.0)
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)


# --- export and import of a reading study -------------------------------------------------------------


def test_export_writes_readers_and_adjudication_and_import_reads_them_back(
    client, team, make_project, db, settings, tmp_path
):
    import io
    import zipfile

    from app.services.study_io import reader_folder

    project, manager, r1, r2, h, ids = team
    pid = project.id
    client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"readers_per_image": 2})
    put_annotation(client, h[r1], ids[0], label="cat", saliency=mask_png(value=200))
    put_annotation(client, h[r2], ids[0], label="dog", saliency=mask_png(value=100))
    client.put(
        f"/api/v1/images/{ids[1]}/annotation",
        headers=h[r1],
        data={"status": "unsure", "label": "dog", "comment": "blurry"},
    )
    client.put(
        f"/api/v1/images/{ids[0]}/adjudication",
        headers=h[manager],
        data={"label": "dog"},
        files={"saliency": ("m.png", mask_png(value=50), "image/png")},
    )
    r = client.get(f"/api/v1/projects/{pid}/export", headers=h[manager])
    assert r.status_code == 200
    zf = zipfile.ZipFile(io.BytesIO(r.content))
    folder = f"project-{pid}/"
    names = set(zf.namelist())
    f1, f2 = reader_folder(r1.username), reader_folder(r2.username)
    for path in (
        "saliency/0.png",
        "consensus/0.png",
        "adjudicated/0.png",
        f"readers/{f1}/0.png",
        f"readers/{f2}/0.png",
        "readings.csv",
        "adjudications.csv",
    ):
        assert folder + path in names, path
    assert f"{folder}readers/{f1}/1.png" not in names  # the unsure reading has no map
    assert _png_values(zf.read(folder + "saliency/0.png")) == {50}  # the map training uses
    assert _png_values(zf.read(folder + "consensus/0.png")) == {150}
    readings = list(csv.DictReader(io.StringIO(zf.read(folder + "readings.csv").decode())))
    assert {(x["image"], x["reader"], x["label"], x["status"], x["comment"]) for x in readings} == {
        ("0.png", r1.username, "cat", "done", ""),
        ("0.png", r2.username, "dog", "done", ""),
        ("1.png", r1.username, "dog", "unsure", "blurry"),
    }
    # import into a fresh project: readings and the adjudication come back
    other = make_project(manager)
    r = client.post(
        f"/api/v1/projects/{other.id}/import",
        headers=h[manager],
        files={"file": ("d.zip", r.content, "application/zip")},
    )
    assert r.status_code == 201, r.text
    report = r.json()
    assert (report["readings"], report["adjudications"], report["readings_of_unknown_readers"]) == (3, 1, 0)
    page = client.get(f"/api/v1/projects/{other.id}/images", headers=h[manager]).json()["items"]
    by_name = {im["original_name"]: im for im in page}
    new0 = by_name["0.png"]
    assert new0["label"] == "dog" and new0["annotation_count"] == 2
    listing = client.get(f"/api/v1/images/{new0['id']}/annotations", headers=h[manager]).json()
    assert sorted((a["author"], a["label"]) for a in listing["annotations"]) == sorted(
        [(r1.username, "cat"), (r2.username, "dog")]
    )
    assert _png_values(
        client.get(f"/api/v1/images/{new0['id']}/saliency.png", headers=h[manager]).content
    ) == {150}
    adj = client.get(f"/api/v1/images/{new0['id']}/adjudication", headers=h[manager]).json()
    assert adj["label"] == "dog" and adj["author"] == manager.username
    assert _png_values(client.get(adj["saliency_url"], headers=h[manager]).content) == {50}
    unsure = client.get(f"/api/v1/images/{by_name['1.png']['id']}/annotations", headers=h[manager]).json()
    assert [(a["status"], a["comment"], a["has_saliency"]) for a in unsure["annotations"]] == [
        ("unsure", "blurry", False)
    ]


def test_import_rejects_a_bad_reading_and_imports_nothing(client, team, make_project):
    import io
    import zipfile

    project, manager, r1, r2, h, ids = team
    other = make_project(manager)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.csv", "image,label\nq.png,cat\n")
        zf.writestr("images/q.png", noise_png(16, 12, seed=77))
        zf.writestr("readings.csv", f"image,reader,label,status,comment\nq.png,{r1.username},cat,sure,\n")
    r = client.post(
        f"/api/v1/projects/{other.id}/import",
        headers=h[manager],
        files={"file": ("d.zip", buf.getvalue(), "application/zip")},
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["file"] == "readings.csv" and r.json()["errors"][0]["line"] == 2
    assert client.get(f"/api/v1/projects/{other.id}/images", headers=h[manager]).json()["items"] == []


# --- settings: labels ---------------------------------------------------------------------------------


def test_rename_and_retire_labels(client, team):
    project, manager, r1, r2, h, ids = team
    pid = project.id
    put_annotation(client, h[r1], ids[0], label="cat", saliency=mask_png(value=90))
    put_annotation(client, h[r1], ids[0], label="cat", saliency=mask_png(value=91), if_match=1)
    client.patch(f"/api/v1/images/{ids[1]}", headers=h[manager], json={"import_label": "cat"})
    client.put(f"/api/v1/images/{ids[0]}/adjudication", headers=h[manager], data={"label": "cat"})
    url = f"/api/v1/projects/{pid}/labels/rename"
    assert client.post(url, headers=h[r1], json={"from": "cat", "to": "feline"}).status_code == 403
    assert client.post(url, headers=h[manager], json={"from": "cow", "to": "x"}).status_code == 404
    assert client.post(url, headers=h[manager], json={"from": "cat", "to": "dog"}).status_code == 409
    r = client.post(url, headers=h[manager], json={"from": "cat", "to": "feline"})
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == ["feline", "dog"]
    assert r.json()["changed"]["annotations"] == 1 and r.json()["changed"]["annotation_revisions"] == 2
    mine = client.get(f"/api/v1/images/{ids[0]}/annotation", headers=h[r1]).json()
    assert mine["label"] == "feline"
    aid = mine["id"]
    assert {x["label"] for x in client.get(f"/api/v1/annotations/{aid}/revisions", headers=h[r1]).json()} == {
        "feline"
    }
    assert client.get(f"/api/v1/images/{ids[1]}", headers=h[manager]).json()["import_label"] == "feline"
    assert client.get(f"/api/v1/images/{ids[0]}/adjudication", headers=h[manager]).json()["label"] == "feline"
    # retire: no new readings with it, existing ones keep it; unknown labels cannot be retired
    assert (
        client.patch(
            f"/api/v1/projects/{pid}", headers=h[manager], json={"retired_labels": ["cow"]}
        ).status_code
        == 422
    )
    r = client.patch(f"/api/v1/projects/{pid}", headers=h[manager], json={"retired_labels": ["feline"]})
    assert r.status_code == 200 and r.json()["retired_labels"] == ["feline"]
    r = put_annotation(client, h[r2], ids[2], label="feline")
    assert r.status_code == 422 and "retired" in r.json()["detail"]
    assert put_annotation(client, h[r2], ids[2], label="dog").status_code == 201
    assert client.get(f"/api/v1/images/{ids[0]}/annotation", headers=h[r1]).json()["label"] == "feline"


# --- image browser: filters and bulk actions ----------------------------------------------------------


def _ids(client, h, pid, **params):
    r = client.get(f"/api/v1/projects/{pid}/images", headers=h, params=params)
    assert r.status_code == 200, r.text
    return [i["id"] for i in r.json()["items"]]


def test_browser_filters_and_bulk_actions(client, team, db):
    from app.tables import ModelVersion, Prediction

    project, manager, r1, r2, h, ids = team
    pid = project.id
    hm = h[manager]
    client.patch(f"/api/v1/projects/{pid}", headers=hm, json={"readers_per_image": 2})
    put_annotation(client, h[r1], ids[0], label="cat", saliency=mask_png(value=200))
    put_annotation(client, h[r2], ids[0], label="dog", saliency=mask_png(value=20))
    put_annotation(client, h[r1], ids[1], label="dog", saliency=mask_png(value=100))
    put_annotation(client, h[r2], ids[1], label="dog", saliency=mask_png(value=100))
    client.put(
        f"/api/v1/images/{ids[2]}/annotation", headers=h[r2], data={"status": "flagged", "comment": "x"}
    )
    assert _ids(client, hm, pid, reader=r1.username) == ids[:2]
    assert _ids(client, hm, pid, reader="nobody") == []
    assert _ids(client, hm, pid, status="flagged") == [ids[2]]
    assert _ids(client, hm, pid, label_disagreement=True) == [ids[0]]
    assert _ids(client, hm, pid, max_agreement=0.5) == [ids[0]]
    assert _ids(client, hm, pid, annotated=False) == [ids[3]]  # a flagged reading is a read
    # blind project: a reader may not filter on others' work, only on their own
    assert (
        client.get(f"/api/v1/projects/{pid}/images", headers=h[r1], params={"status": "flagged"}).status_code
        == 403
    )
    assert _ids(client, h[r1], pid, reader=r1.username) == ids[:2]
    # predictions of the active model: right or wrong against the image label, uncertainty
    model = ModelVersion(
        project_id=pid, version=1, artifact_key="x", checksum="0" * 64, backbone="tiny", active=True
    )
    db.add(model)
    db.flush()
    db.add_all(
        [
            Prediction(image_id=ids[1], model_id=model.id, label="dog", confidence=0.9, uncertainty=0.2),
            Prediction(image_id=ids[0], model_id=model.id, label="dog", confidence=0.6, uncertainty=0.8),
        ]
    )
    db.commit()
    image0_label = client.get(f"/api/v1/images/{ids[0]}", headers=hm).json()["label"]
    assert image0_label == "cat"  # a tie goes to the first project label
    assert _ids(client, hm, pid, prediction="correct") == [ids[1]]
    assert _ids(client, hm, pid, prediction="wrong") == [ids[0]]
    assert _ids(client, hm, pid, min_uncertainty=0.5) == [ids[0]]
    # paging through the whole project with the cursor
    first = client.get(f"/api/v1/projects/{pid}/images", headers=hm, params={"limit": 3}).json()
    second = client.get(
        f"/api/v1/projects/{pid}/images", headers=hm, params={"limit": 3, "cursor": first["next_cursor"]}
    ).json()
    assert [i["id"] for i in first["items"] + second["items"]] == ids and second["next_cursor"] is None
    # bulk: split, label, re-queue, delete (managers only)
    bulk = f"/api/v1/projects/{pid}/images/bulk"
    assert client.post(bulk, headers=h[r1], json={"image_ids": ids, "action": "delete"}).status_code == 403
    assert client.post(bulk, headers=hm, json={"image_ids": ids, "action": "set_split"}).status_code == 422
    assert client.post(bulk, headers=hm, json={"image_ids": [], "action": "delete"}).status_code == 422
    r = client.post(
        bulk, headers=hm, json={"image_ids": [ids[0], ids[1], 999999], "action": "set_split", "split": "test"}
    )
    assert r.status_code == 200 and (r.json()["changed"], r.json()["missing"]) == (2, 1)
    assert _ids(client, hm, pid, split="test") == ids[:2]
    r = client.post(bulk, headers=hm, json={"image_ids": [ids[3]], "action": "set_label", "label": "dog"})
    assert (
        r.status_code == 200 and client.get(f"/api/v1/images/{ids[3]}", headers=hm).json()["label"] == "dog"
    )
    assert (
        client.post(
            bulk, headers=hm, json={"image_ids": [ids[3]], "action": "set_label", "label": "cow"}
        ).status_code
        == 409
    )
    # re-queue: an image with its two readers is offered to a third reader again
    nxt = client.get(f"/api/v1/projects/{pid}/next", headers=hm).json()["image"]["id"]
    assert nxt != ids[1]
    client.post(bulk, headers=hm, json={"image_ids": [ids[1]], "action": "requeue"})
    assert client.get(f"/api/v1/projects/{pid}/next", headers=hm).json()["image"]["id"] == ids[1]
    r = client.post(bulk, headers=hm, json={"image_ids": [ids[2], ids[3]], "action": "delete"})
    assert r.status_code == 200 and _ids(client, hm, pid) == ids[:2]


def test_project_training_options_are_validated_like_a_run(client, team):
    project, manager, r1, r2, h, ids = team
    url = f"/api/v1/projects/{project.id}"
    r = client.patch(url, headers=h[manager], json={"training": {"epochs_typo": 3}})
    assert r.status_code == 422 and "epochs_typo" in r.json()["detail"]
    r = client.patch(url, headers=h[manager], json={"training": {"method": "ce", "epochs": 2}})
    assert r.status_code == 200 and r.json()["training"] == {"method": "ce", "epochs": 2}


def test_the_cli_export_folder_has_the_study_files_and_the_training_snapshot_does_not(
    client, team, db, settings, tmp_path
):
    project, manager, r1, r2, h, ids = team
    put_annotation(client, h[r1], ids[0], label="cat", saliency=mask_png(value=200))
    snap = tmp_path / "snap"
    write_dataset_folder(db, get_storage(settings), db.get(Project, project.id), snap)
    assert not (snap / "readings.csv").exists() and not (snap / "readers").exists()
    export = tmp_path / "export"
    write_dataset_folder(db, get_storage(settings), db.get(Project, project.id), export, study=True)
    assert (export / "readings.csv").is_file()
    assert len(list((export / "readers").rglob("*.png"))) == 1


def test_retraining_counts_readings_and_adjudications_not_skips(client, team, db):
    from app.services.runs import changed_annotations

    project, manager, r1, r2, h, ids = team
    client.put(f"/api/v1/images/{ids[0]}/annotation", headers=h[r1], data={"status": "skipped"})
    assert changed_annotations(db, project.id, None) == 0
    put_annotation(client, h[r1], ids[1], label="cat")
    client.put(f"/api/v1/images/{ids[2]}/adjudication", headers=h[manager], data={"label": "dog"})
    assert changed_annotations(db, project.id, None) == 2
