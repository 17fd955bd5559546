"""Image subtypes (labels.csv `subtype`, e.g. an attack type): stored on upload and import, shown
on the image, written back on export, so leave-subtype-out training can read them."""

from __future__ import annotations

import csv
import io
import zipfile

from tests.api.conftest import noise_png, upload


def test_subtype_is_stored_shown_and_exported(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner, labels=("attack", "bona fide"))
    headers = auth_headers(owner)
    up = upload(client, headers, project.id, [("a.png", noise_png(seed=1))], label="attack", subtype="print")
    assert up.status_code == 201, up.text
    assert up.json()["images"][0]["subtype"] == "print"

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(
            "labels.csv", "image,label,split,subtype\nb.png,attack,test,replay\nc.png,bona fide,train,\n"
        )
        zf.writestr("images/b.png", noise_png(seed=2))
        zf.writestr("images/c.png", noise_png(seed=3))
    imported = client.post(
        f"/api/v1/projects/{project.id}/import", headers=headers, files={"file": ("d.zip", buf.getvalue())}
    )
    assert imported.status_code == 201, imported.text
    items = client.get(f"/api/v1/projects/{project.id}/images", headers=headers).json()["items"]
    assert {i["original_name"]: i["subtype"] for i in items} == {
        "a.png": "print",
        "b.png": "replay",
        "c.png": None,
    }

    exported = client.get(f"/api/v1/projects/{project.id}/export", headers=headers)
    assert exported.status_code == 200
    with zipfile.ZipFile(io.BytesIO(exported.content)) as zf:
        name = next(n for n in zf.namelist() if n.endswith("labels.csv"))
        rows = list(csv.DictReader(io.StringIO(zf.read(name).decode())))
    assert {r["image"]: r["subtype"] for r in rows} == {"a.png": "print", "b.png": "replay", "c.png": ""}
