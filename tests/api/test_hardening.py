"""Hardening: body limits before authentication, security headers, local API docs, bounded metrics."""

from __future__ import annotations

import re

import pytest

from app.settings import Settings
from tests.api.conftest import png_bytes


@pytest.fixture
def settings(database_url, tmp_path) -> Settings:
    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key="test-secret-key",
        max_json_bytes=4096,
        max_anonymous_body_bytes=1024,
        max_upload_bytes=8192,
        max_import_bytes=64 * 1024,
    )


def _chunks(total: int, size: int = 1000):
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"x" * n


def test_chunked_json_over_the_limit_is_413_before_authentication(client):
    # No Content-Length (a generator body is sent chunked) and a bearer token that is not valid:
    # the limit answers before authentication would have said 401.
    response = client.post(
        "/api/v1/projects",
        content=_chunks(20_000),
        headers={"Authorization": "Bearer not-a-token", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert "limit of 4,096 bytes" in response.json()["detail"]


def test_content_length_over_the_limit_is_refused_without_reading(client):
    response = client.post(
        "/api/v1/projects",
        content=b"{" + b" " * 10_000 + b"}",
        headers={"Authorization": "Bearer x", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"


def test_anonymous_bodies_are_small(client):
    # The sign-in form fits; a large anonymous form (e.g. to make the server spool it) does not.
    response = client.post("/api/v1/auth/token", data={"username": "a", "password": "b" * 5000})
    assert response.status_code == 413
    ok = client.post("/api/v1/auth/token", data={"username": "nobody", "password": "wrong password"})
    assert ok.status_code == 401


def test_chunked_multipart_over_one_file_limit_is_413(client):
    boundary = "sageboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="saliency"; filename="m.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():
        yield head
        yield from _chunks(8192 + 2 * 1024 * 1024, 64 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    response = client.put(
        "/api/v1/images/1/annotation",
        content=body(),
        headers={"Authorization": "Bearer x", "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413


def test_upload_batch_is_bounded_by_the_import_limit(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner)
    headers = auth_headers(owner)
    files = [
        ("files", (f"{i}.png", png_bytes(colour=(i, 0, 0)) + b"\0" * 7000, "image/png")) for i in range(12)
    ]
    response = client.post(f"/api/v1/projects/{project.id}/images", headers=headers, files=files)
    assert response.status_code == 413
    small = client.post(
        f"/api/v1/projects/{project.id}/images",
        headers=headers,
        files=[("files", ("a.png", png_bytes(), "image/png"))],
    )
    assert small.status_code == 201


def test_security_headers_on_pages_api_and_errors(client):
    for url in ("/healthz", "/login", "/api/v1/projects", "/no-such-page"):
        response = client.get(url)
        csp = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"


def test_api_docs_are_served_from_local_files(client):
    for url in ("/docs", "/redoc"):
        page = client.get(url).text
        assert "cdn" not in page.lower() and "https://" not in page
        scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
        assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
        for src in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
            assert client.get(src).status_code == 200, src


def test_templates_have_no_inline_script():
    from pathlib import Path

    for template in Path("templates").glob("*.html"):
        text = template.read_text()
        for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", text, re.S):
            assert "src=" in attrs or "application/json" in attrs, (template, body[:80])
        assert not re.search(r"\son[a-z]+\s*=", text), template


def test_metrics_labels_are_bounded(client):
    for i in range(5):
        client.request("FOO" + str(i), "/healthz")
        client.get(f"/random/path/{i}")
    text = client.get("/metrics").text
    methods = set(re.findall(r'sage_http_requests_total\{method="([^"]+)"', text))
    routes = set(re.findall(r'route="([^"]+)"', text))
    assert not any(m.startswith("FOO") for m in methods) and "OTHER" in methods
    assert not any(r.startswith("/random") for r in routes) and "unmatched" in routes


def test_metrics_token(settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings.model_copy(update={"metrics_token": "s3cret"}))) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


# --- training options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "training",
    [{"no_such_option": 1}, {"sage": {"bogus": 2}}, {"epochs": 10_001}, {"batch_size": 2048}],
)
def test_project_training_options_are_checked_on_create_and_update(
    client, make_user, make_project, auth_headers, training
):
    owner = make_user()
    headers = auth_headers(owner)
    body = {"name": "p-options", "labels": ["a", "b"], "training": training}
    response = client.post("/api/v1/projects", headers=headers, json=body)
    assert response.status_code == 422, response.text
    project = make_project(owner)
    response = client.patch(f"/api/v1/projects/{project.id}", headers=headers, json={"training": training})
    assert response.status_code == 422, response.text
    assert client.get(f"/api/v1/projects/{project.id}", headers=headers).json()["training"] == {}


def test_run_options_have_upper_bounds(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner)
    headers = auth_headers(owner)
    for options in ({"epochs": 20_000}, {"image_size": 1024 + 8}, {"batch_size": 2048}):
        response = client.post(
            f"/api/v1/projects/{project.id}/training-runs", headers=headers, json={"training": options}
        )
        assert response.status_code == 422, (options, response.text)
        assert "limit" in response.json()["detail"]


def test_image_size_bound_applies_to_projects(client, make_user, auth_headers, settings):
    from fastapi.testclient import TestClient

    from app.main import create_app

    owner = make_user()
    with TestClient(create_app(settings.model_copy(update={"max_train_image_size": 128}))) as c:
        body = {"name": "big", "labels": ["a", "b"], "image_size": 256}
        assert c.post("/api/v1/projects", headers=auth_headers(owner), json=body).status_code == 422


# --- file names and exports ------------------------------------------------------------------------


def test_file_names_are_nfc_and_byte_limited(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner)
    headers = auth_headers(owner)
    long_name = "é" * 300 + ".png"
    files = [
        ("files", (long_name, png_bytes(colour=(1, 2, 3)), "image/png")),
        ("files", ("e\u0301t\u00e9.png", png_bytes(colour=(4, 5, 6)), "image/png")),
        ("files", ("../../etc/passwd.png", png_bytes(colour=(7, 8, 9)), "image/png")),
    ]
    images = client.post(f"/api/v1/projects/{project.id}/images", headers=headers, files=files).json()[
        "images"
    ]
    names = [image["original_name"] for image in images]
    assert len(names[0].encode()) <= 255 and names[0].endswith(".png") and names[0].startswith("éé")
    assert names[1] == "\u00e9t\u00e9.png"
    assert names[2] == "passwd.png"


def test_export_csv_escapes_formula_cells_and_import_undoes_it(client, make_user, make_project, auth_headers):
    import csv
    import io
    import zipfile

    owner = make_user()
    project = make_project(owner, labels=("=cmd|' /C calc'!A0", "@sum", "plain"))
    headers = auth_headers(owner)
    files = [("files", ("+evil.png", png_bytes(colour=(9, 9, 9)), "image/png"))]
    data = {"label": "=cmd|' /C calc'!A0"}
    assert (
        client.post(
            f"/api/v1/projects/{project.id}/images", headers=headers, files=files, data=data
        ).status_code
        == 201
    )
    export = client.get(f"/api/v1/projects/{project.id}/export", headers=headers).content
    archive = zipfile.ZipFile(io.BytesIO(export))
    text = archive.read(f"project-{project.id}/labels.csv").decode()
    row = list(csv.DictReader(io.StringIO(text)))[0]
    assert row["image"] == "'+evil.png" and row["label"] == "'=cmd|' /C calc'!A0"
    # the escaped export imports back to the same names and labels
    target = make_project(owner, labels=("=cmd|' /C calc'!A0", "@sum", "plain"))
    response = client.post(
        f"/api/v1/projects/{target.id}/import",
        headers=headers,
        files={"file": ("d.zip", export, "application/zip")},
    )
    assert response.status_code == 201, response.text
    image = client.get(f"/api/v1/projects/{target.id}/images", headers=headers).json()["items"][0]
    assert image["original_name"] == "+evil.png" and image["label"] == "=cmd|' /C calc'!A0"
