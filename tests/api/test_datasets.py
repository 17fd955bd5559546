"""Dataset import (all or nothing, defensive zips) and export (streamed zip), and their round trip."""

from __future__ import annotations

import csv
import io
import zipfile

import pytest
from sqlalchemy import func, select

from app.tables import Image
from tests.api.conftest import mask_png, noise_png, put_annotation, stored_objects


def make_zip(files: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def dataset(
    rows: list[tuple[str, str, str]], *, prefix: str = "", extra: dict[str, bytes] | None = None
) -> dict[str, bytes]:
    lines = "image,label,split\n" + "".join(f"{n},{lab},{s}\n" for n, lab, s in rows)
    files = {f"{prefix}labels.csv": lines.encode()}
    for i, (name, _, _) in enumerate(rows):
        files[f"{prefix}images/{name}"] = noise_png(
            16, 12, seed=1000 + i, fmt="JPEG" if name.endswith(".jpg") else "PNG"
        )
    files.update(extra or {})
    return files


def do_import(client, h, pid, data: bytes):
    return client.post(
        f"/api/v1/projects/{pid}/import", headers=h, files={"file": ("data.zip", data, "application/zip")}
    )


@pytest.fixture
def proj(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner, labels=("cat", "dog"))
    return project, auth_headers(owner)


def test_import_then_export_round_trips_bytes_and_labels(client, proj):
    project, h = proj
    files = dataset(
        [("a.png", "cat", "train"), ("b.jpg", "dog", "val"), ("c.png", "", "test")],
        prefix="mydata/",
        extra={
            "mydata/saliency/a.png": mask_png(16, 12, seed=4),
            "mydata/images/stray.png": noise_png(seed=77),
        },
    )
    r = do_import(client, h, project.id, make_zip(files, zipfile.ZIP_DEFLATED))
    assert r.status_code == 201, r.text
    report = r.json()
    assert report["imported"] == 3 and report["with_saliency"] == 1 and report["existing"] == 0
    assert report["labels"] == {"cat": 1, "dog": 1} and report["splits"] == {"train": 1, "val": 1, "test": 1}
    assert report["ignored_files"] == ["images/stray.png"]

    exp = client.get(f"/api/v1/projects/{project.id}/export", headers=h)
    assert exp.status_code == 200 and exp.headers["content-type"] == "application/zip"
    out = zipfile.ZipFile(io.BytesIO(exp.content))
    root = f"project-{project.id}/"
    for name in ("a.png", "b.jpg", "c.png"):
        assert out.read(root + "images/" + name) == files["mydata/images/" + name]
    assert out.read(root + "saliency/a.png") == files["mydata/saliency/a.png"]
    rows = list(csv.DictReader(io.StringIO(out.read(root + "labels.csv").decode())))
    assert {(r["image"], r["label"], r["split"]) for r in rows} == {
        ("a.png", "cat", "train"),
        ("b.jpg", "dog", "val"),
        ("c.png", "", "test"),
    }
    # importing the export into a fresh project gives the same export again
    r = client.post("/api/v1/projects", headers=h, json={"name": "copy", "labels": ["cat", "dog"]})
    copy_id = r.json()["id"]
    assert do_import(client, h, copy_id, exp.content).json()["imported"] == 3
    again = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/projects/{copy_id}/export", headers=h).content))
    assert sorted(n.split("/", 1)[1] for n in again.namelist()) == sorted(
        n.split("/", 1)[1] for n in out.namelist()
    )
    for name in out.namelist():
        assert again.read(f"project-{copy_id}/" + name.split("/", 1)[1]) == out.read(name)


def test_reimport_is_idempotent(client, proj, db):
    project, h = proj
    data = make_zip(dataset([("a.png", "cat", "train")]))
    assert do_import(client, h, project.id, data).json()["imported"] == 1
    r = do_import(client, h, project.id, data)
    assert r.status_code == 201 and r.json()["imported"] == 0 and r.json()["existing"] == 1
    assert db.scalar(select(func.count()).select_from(Image)) == 1


def test_bad_rows_are_reported_with_file_and_line_and_nothing_is_imported(client, proj, db, settings):
    project, h = proj
    files = dataset(
        [
            ("a.png", "cat", "train"),
            ("b.png", "cat", "train"),
            ("c.png", "dog", "train"),
            ("d.png", "cat", "train"),
        ]
    )
    files["labels.csv"] += (
        b"missing.png,cat,train\nnope.png,horse,train\nx.png,cat,holdout\n../up.png,cat,train\na.png,dog,train\n"
    )
    files["images/b.png"] = b"this is not an image"
    files["images/c.png"] = files["images/c.png"][:60]
    files["saliency/d.png"] = mask_png(8, 8)
    for name in ("nope.png", "x.png"):
        files[f"images/{name}"] = noise_png(seed=hash(name) % 1000)
    r = do_import(client, h, project.id, make_zip(files))
    assert r.status_code == 422, r.text
    body = r.json()
    assert "nothing was imported" in body["detail"]
    got = {(e["file"], e.get("line")) for e in body["errors"]}
    assert got == {
        ("images/b.png", 3),
        ("images/c.png", 4),
        ("saliency/d.png", 5),
        ("labels.csv", 6),
        ("labels.csv", 7),
        ("labels.csv", 8),
        ("labels.csv", 9),
        ("labels.csv", 10),
    }
    errors = {(e["file"], e.get("line")): e["error"] for e in body["errors"]}
    assert "not in the dataset" in errors[("labels.csv", 6)]
    assert "unknown label 'horse'" in errors[("labels.csv", 7)]
    assert "unknown split" in errors[("labels.csv", 8)]
    assert "plain file name" in errors[("labels.csv", 9)]
    assert "listed twice" in errors[("labels.csv", 10)]
    assert "8x8 but the image is 16x12" in errors[("saliency/d.png", 5)]
    assert db.scalar(select(func.count()).select_from(Image)) == 0
    assert stored_objects(settings) == []
    assert not any((settings.resolved_data_dir / "objects" / ".tmp").glob("*")), "no staged file left"


@pytest.mark.parametrize(
    ("files", "status", "words"),
    [
        ({"../evil/labels.csv": b"image,label\n"}, 422, "zip slip"),
        ({"/abs/labels.csv": b"image,label\n"}, 422, "zip slip"),
        ({"images/a.png": b"x"}, 422, "no labels.csv"),
        ({"labels.csv": b"name,class\n"}, 422, "header"),
        ({"labels.csv": b""}, 422, "empty"),
        ({"labels.csv": b"\xff\xfe\x00bad"}, 422, "UTF-8"),
    ],
    ids=["zip slip relative", "zip slip absolute", "no labels.csv", "bad header", "empty csv", "not utf-8"],
)
def test_malformed_archives(client, proj, files, status, words):
    project, h = proj
    r = do_import(client, h, project.id, make_zip(files))
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_not_a_zip_is_415(client, proj):
    project, h = proj
    r = do_import(client, h, project.id, b"plain text, not a zip")
    assert r.status_code == 415
    assert do_import(client, h, project.id, b"PK\x03\x04broken").status_code == 422


def test_zip_bombs_are_refused_before_extraction(client, proj, app, settings):
    project, h = proj
    bomb = make_zip(
        {"labels.csv": b"image,label\na.png,cat\n", "images/a.png": b"\x00" * (8 * 1024 * 1024)},
        zipfile.ZIP_DEFLATED,
    )
    assert len(bomb) < 100_000
    r = do_import(client, h, project.id, bomb)
    assert r.status_code == 413 and "zip bomb" in r.json()["detail"]
    # total uncompressed size and entry count caps
    app.state.settings = settings.model_copy(update={"max_import_uncompressed_bytes": 1000})
    r = do_import(
        client, h, project.id, make_zip(dataset([("a.png", "cat", "train"), ("b.png", "cat", "train")]))
    )
    assert r.status_code == 413 and "expands to more than" in r.json()["detail"]
    app.state.settings = settings.model_copy(update={"max_import_files": 2})
    r = do_import(
        client, h, project.id, make_zip(dataset([("a.png", "cat", "train"), ("b.png", "cat", "train")]))
    )
    assert r.status_code == 413 and "entries" in r.json()["detail"]
    app.state.settings = settings.model_copy(update={"max_import_bytes": 100})
    r = do_import(client, h, project.id, make_zip(dataset([("a.png", "cat", "train")])))
    assert r.status_code == 413


def test_symlink_entries_are_refused(client, proj):
    project, h = proj
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("labels.csv", "image,label\na.png,cat\n")
        link = zipfile.ZipInfo("images/a.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    r = do_import(client, h, project.id, buf.getvalue())
    assert r.status_code == 422 and "symbolic link" in r.json()["detail"]


def test_annotators_cannot_import_but_viewers_can_export(client, proj, make_user, auth_headers, db):
    from app.services.projects import set_member

    project, h = proj
    annotator, viewer = make_user(), make_user()
    set_member(db, project, annotator.username, "annotator")
    set_member(db, project, viewer.username, "viewer")
    data = make_zip(dataset([("a.png", "cat", "train")]))
    assert do_import(client, auth_headers(annotator), project.id, data).status_code == 403
    assert (
        client.get(f"/api/v1/projects/{project.id}/export", headers=auth_headers(viewer)).status_code == 200
    )


def test_export_uses_majority_label_and_consensus(
    client, proj, make_user, auth_headers, db, settings, tmp_path
):
    from app.services.datasets import write_dataset_folder
    from app.services.projects import set_member
    from app.storage import get_storage
    from app.tables import Project

    project, h = proj
    others = [make_user(), make_user()]
    for u in others:
        set_member(db, project, u.username, "annotator")
    do_import(client, h, project.id, make_zip(dataset([("a.png", "cat", "train"), ("b.png", "", "train")])))
    iid = client.get(f"/api/v1/projects/{project.id}/images", headers=h).json()["items"][0]["id"]
    aids = []
    for u, value in zip(others, (0, 255), strict=True):
        aids.append(
            put_annotation(client, auth_headers(u), iid, label="dog", saliency=mask_png(value=value)).json()[
                "id"
            ]
        )
    lineage = write_dataset_folder(db, get_storage(settings), db.get(Project, project.id), tmp_path / "ds")
    assert lineage["images"] == 1 and lineage["with_saliency"] == 1 and lineage["labels"] == {"dog": 1}
    assert lineage["annotations"] == {str(a): 1 for a in aids}
    rows = list(csv.DictReader((tmp_path / "ds" / "labels.csv").read_text().splitlines()))
    assert rows == [{"image": "a.png", "label": "dog", "split": "train"}]
    import numpy as np
    from PIL import Image as PILImage

    # the all-zero map is "label only, no map": the consensus is the one painted map, not half of it
    assert set(np.unique(np.asarray(PILImage.open(tmp_path / "ds" / "saliency" / "a.png")))) == {255}
    assert (tmp_path / "ds" / "images" / "a.png").read_bytes() == client.get(
        f"/api/v1/images/{iid}/file", headers=h
    ).content


def test_group_and_subtype_columns_are_accepted_and_a_group_cut_by_a_split_rejects_the_import(
    client, proj, db
):
    project, h = proj
    files = dataset([("a.png", "cat", "train"), ("b.png", "dog", "test")])
    files["labels.csv"] = b"image,label,subtype,split,group\na.png,cat,print,train,p1\nb.png,dog,,test,p1\n"
    r = do_import(client, h, project.id, make_zip(files))
    assert r.status_code == 422, r.text
    assert [(e["file"], e["line"]) for e in r.json()["errors"]] == [("labels.csv", 3)]
    assert "splits never cut a group" in r.json()["errors"][0]["error"]
    assert db.scalar(select(func.count()).select_from(Image)) == 0
    files["labels.csv"] = b"image,label,subtype,split,group\na.png,cat,print,train,p1\nb.png,dog,,test,p2\n"
    r = do_import(client, h, project.id, make_zip(files))
    assert r.status_code == 201, r.text
    assert r.json()["imported"] == 2 and r.json()["splits"] == {"train": 1, "test": 1}


def test_an_unknown_column_rejects_the_import(client, proj):
    project, h = proj
    files = dataset([("a.png", "cat", "train")])
    files["labels.csv"] = b"image,label,spilt\na.png,cat,train\n"
    r = do_import(client, h, project.id, make_zip(files))
    assert r.status_code == 422 and "unknown column(s) ['spilt']" in r.json()["detail"]


def test_groups_round_trip_through_import_and_export_and_an_existing_group_keeps_its_split(client, proj, db):
    project, h = proj
    files = dataset([("a.png", "cat", "train"), ("b.png", "dog", "train"), ("c.png", "dog", "test")])
    files["labels.csv"] = (
        b"image,label,split,group\na.png,cat,train,p1\nb.png,dog,train,p1\nc.png,dog,test,\n"
    )
    assert do_import(client, h, project.id, make_zip(files)).status_code == 201
    assert sorted(db.scalars(select(Image.group)).all(), key=str) == [None, "p1", "p1"]
    out = zipfile.ZipFile(io.BytesIO(client.get(f"/api/v1/projects/{project.id}/export", headers=h).content))
    root = out.namelist()[0].split("/", 1)[0] + "/"
    rows = list(csv.DictReader(io.StringIO(out.read(root + "labels.csv").decode())))
    assert {(r["image"], r["split"], r["group"]) for r in rows} == {
        ("a.png", "train", "p1"),
        ("b.png", "train", "p1"),
        ("c.png", "test", ""),
    }
    more = dataset([("d.png", "cat", "test")], extra={})
    more["images/d.png"] = noise_png(16, 12, seed=77)
    more["labels.csv"] = b"image,label,split,group\nd.png,cat,test,p1\n"
    r = do_import(client, h, project.id, make_zip(more))
    assert r.status_code == 422, r.text
    assert (
        r.json()["errors"][0]["line"] == 2
        and "is in split train in the project" in r.json()["errors"][0]["error"]
    )
    assert db.scalar(select(func.count()).select_from(Image)) == 3


def test_imported_groups_are_stored_and_exported_and_a_file_without_splits_leaves_them_to_draw(
    client, proj, db
):
    project, h = proj
    files = dataset([("a.png", "cat", "train"), ("b.png", "dog", "test")])
    files["labels.csv"] = b"image,label,group\na.png,cat,patient-1\nb.png,dog,patient-2\n"
    r = do_import(client, h, project.id, make_zip(files))
    assert r.status_code == 201, r.text
    assert r.json()["splits"] == {"unassigned": 2}
    rows = {img.original_name: (img.group, img.split) for img in db.scalars(select(Image))}
    assert rows == {"a.png": ("patient-1", None), "b.png": ("patient-2", None)}
    exported = client.get(f"/api/v1/projects/{project.id}/export", headers=h)
    assert exported.status_code == 200
    with zipfile.ZipFile(io.BytesIO(exported.content)) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith("labels.csv"))).decode()
    assert text.splitlines()[0] == "image,label,split,group" and "patient-1" in text
