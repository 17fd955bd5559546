"""The REST API on S3 storage (a real moto server): image files are streamed from the bucket, or
answered with a short-lived presigned URL that only a project member can obtain."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import noise_png, upload


@pytest.fixture
def settings(database_url, tmp_path, s3_storage_url, s3_endpoint):
    from app.settings import Settings

    return Settings(
        env="test",
        data_dir=tmp_path / "data",
        database_url=database_url,
        secret_key="test-secret-key",
        storage_url=s3_storage_url,
        s3_endpoint_url=s3_endpoint,
        s3_presign_ttl_s=120,
    )


def _setup(client, make_user, make_project, auth_headers):
    owner = make_user()
    project = make_project(owner)
    h = auth_headers(owner)
    data = noise_png(seed=21, fmt="JPEG")
    iid = upload(client, h, project.id, [("x.jpg", data)]).json()["images"][0]["id"]
    return h, iid, data


def test_image_file_streams_from_the_bucket(
    client, make_user, make_project, auth_headers, settings, tmp_path
):
    h, iid, data = _setup(client, make_user, make_project, auth_headers)
    r = client.get(f"/api/v1/images/{iid}/file", headers=h)
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-type"] == "image/jpeg" and r.headers["x-content-type-options"] == "nosniff"
    assert not list((tmp_path / "data").rglob("*.jpg")), "the web process keeps no copy on disk"


def test_presigned_download_only_after_the_permission_check(
    client, app, make_user, make_project, auth_headers, settings
):
    app.state.settings = settings.model_copy(update={"s3_presigned_downloads": True})
    h, iid, data = _setup(client, make_user, make_project, auth_headers)
    r = client.get(f"/api/v1/images/{iid}/file", headers=h, follow_redirects=False)
    assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
    url = r.headers["location"]
    assert url.startswith(settings.s3_endpoint_url) and "Signature=" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == data
    assert fetched.headers["content-type"] == "image/jpeg"

    stranger = make_user()
    r = client.get(f"/api/v1/images/{iid}/file", headers=auth_headers(stranger), follow_redirects=False)
    assert r.status_code == 404 and "location" not in r.headers
    r = client.get(f"/api/v1/images/{iid}/file", follow_redirects=False)
    assert r.status_code == 401 and "location" not in r.headers


def _model(db, project, storage, data: bytes, version: int = 1):
    from app.tables import ModelVersion

    key = storage.put_bytes(data, ".pt")
    model = ModelVersion(
        project_id=project.id, version=version, artifact_key=f"models/project-{project.id}/run-1-abc", checksum=key[:64],
        backbone="tiny", labels=["cat", "dog"], metrics={}, active=True,
    )  # fmt: skip
    db.add(model)
    db.commit()
    return model


def test_model_weights_download_for_managers_only(
    client, app, make_user, make_project, auth_headers, settings, db
):
    from app.storage import get_storage

    owner, viewer, stranger = make_user(), make_user(), make_user()
    project = make_project(owner, members={viewer: "viewer"})
    model = _model(db, project, get_storage(settings), b"trained weights" * 1000)
    url = f"/api/v1/models/{model.id}/weights"
    r = client.get(url, headers=auth_headers(owner))
    assert r.status_code == 200 and r.content == b"trained weights" * 1000
    assert r.headers["content-disposition"] == f'attachment; filename="project-{project.id}-model-v1.pt"'
    assert client.get(url, headers=auth_headers(viewer)).status_code == 403
    assert client.get(url, headers=auth_headers(stranger)).json() == {"detail": f"no model {model.id}"}

    app.state.settings = settings.model_copy(update={"s3_presigned_downloads": True})
    r = client.get(url, headers=auth_headers(owner), follow_redirects=False)
    assert r.status_code == 307
    fetched = httpx.get(r.headers["location"])
    assert fetched.status_code == 200 and fetched.content == b"trained weights" * 1000
    assert "project-" in fetched.headers["content-disposition"]
    r = client.get(url, headers=auth_headers(viewer), follow_redirects=False)
    assert r.status_code == 403 and "location" not in r.headers

    get_storage(settings).delete(f"{model.checksum}.pt")
    r = client.get(url, headers=auth_headers(owner), follow_redirects=False)
    assert r.status_code == 404 and "storage migrate" in r.json()["detail"]

    # The local folder backend answers the file itself.
    from app.storage import LocalStorage

    local = LocalStorage(settings.resolved_data_dir / "local-objects")
    local.put_bytes(b"trained weights" * 1000, ".pt")
    app.state.storage = local
    r = client.get(url, headers=auth_headers(owner), follow_redirects=False)
    assert r.status_code == 200 and r.content == b"trained weights" * 1000


def _job(db, project, storage, kind: str, params: dict, data: bytes):
    from app.storage import sha256_hex
    from app.tables import Job

    job = Job(project_id=project.id, kind=kind, status="succeeded", params=params, progress={}, result={},
              result_key=storage.put_bytes(data, ".zip"), result_sha256=sha256_hex(data))  # fmt: skip
    db.add(job)
    db.commit()
    return job


def test_export_archives_and_batch_results_redirect_to_presigned_urls(
    client, app, make_user, make_project, auth_headers, settings, db
):
    from app.storage import get_storage

    owner, viewer, stranger = make_user(), make_user(), make_user()
    project = make_project(owner, members={viewer: "viewer"})
    storage = get_storage(settings)
    model = _model(db, project, storage, b"weights")
    archive, batch = b"PK export archive" * 500, b"PK batch result" * 500
    _job(db, project, storage, "export", {"model_id": model.id, "format": "onnx"}, archive)
    job = _job(db, project, storage, "predict_batch", {"model_id": model.id}, batch)
    download, result = f"/api/v1/models/{model.id}/download?format=onnx", f"/api/v1/jobs/{job.id}/result"
    # without the setting both stream through the web process
    assert client.get(download, headers=auth_headers(owner)).content == archive
    assert client.get(result, headers=auth_headers(viewer)).content == batch

    app.state.settings = settings.model_copy(update={"s3_presigned_downloads": True})
    for url, who, data, name in (
        (download, owner, archive, f"project-{project.id}-model-v1-onnx.zip"),
        (result, viewer, batch, f"job-{job.id}-predict_batch.zip"),
    ):
        r = client.get(url, headers=auth_headers(who), follow_redirects=False)
        assert r.status_code == 307 and r.headers["cache-control"] == "no-store"
        assert (
            r.headers["location"].startswith(settings.s3_endpoint_url)
            and "Signature=" in r.headers["location"]
        )
        fetched = httpx.get(r.headers["location"])
        assert fetched.status_code == 200 and fetched.content == data
        assert name in fetched.headers["content-disposition"]
        assert fetched.headers["content-type"] == "application/zip"
        r = client.get(url, headers=auth_headers(stranger), follow_redirects=False)
        assert r.status_code == 404 and "location" not in r.headers
    r = client.get(download, headers=auth_headers(viewer), follow_redirects=False)  # managers only
    assert r.status_code == 403 and "location" not in r.headers


def test_old_job_results_expire_and_their_objects_are_deleted(
    client, make_user, make_project, auth_headers, settings, db
):
    from datetime import timedelta

    from sqlalchemy import update

    from app.storage import get_storage
    from app.tables import Job, ModelVersion, utcnow
    from worker.context import WorkerContext
    from worker.scheduler import beat_schedule, expire_results

    owner = make_user()
    project = make_project(owner)
    h = auth_headers(owner)
    storage = get_storage(settings)
    model = _model(db, project, storage, b"weights")
    gone = _model(db, project, storage, b"other weights", version=2)
    old = _job(db, project, storage, "predict_batch", {"model_id": model.id}, b"PK old result")
    fresh = _job(db, project, storage, "predict_batch", {"model_id": model.id}, b"PK fresh result")
    shared_old = _job(db, project, storage, "predict_batch", {"model_id": model.id}, b"PK same bytes")
    shared_new = _job(db, project, storage, "predict_batch", {"model_id": model.id}, b"PK same bytes")
    kept_export = _job(db, project, storage, "export", {"model_id": model.id, "format": "onnx"}, b"PK a")
    orphan_export = _job(db, project, storage, "export", {"model_id": gone.id, "format": "onnx"}, b"PK b")
    keys = {j.id: j.result_key for j in (old, fresh, shared_old, kept_export, orphan_export)}
    long_ago = utcnow() - timedelta(seconds=settings.job_result_ttl_s + 60)
    db.execute(
        update(Job).where(Job.id.in_([old.id, shared_old.id, kept_export.id])).values(updated_at=long_ago)
    )
    db.delete(db.get(ModelVersion, gone.id))
    db.commit()

    assert "expire-job-results" in beat_schedule(settings)
    report = expire_results(WorkerContext(settings))
    assert report["expired"] == sorted([old.id, shared_old.id, orphan_export.id])
    assert not storage.exists(keys[old.id]) and not storage.exists(keys[orphan_export.id])
    assert storage.exists(keys[shared_old.id]), "another job still references the same content"
    assert storage.exists(keys[fresh.id]) and storage.exists(keys[kept_export.id])
    assert expire_results(WorkerContext(settings))["expired"] == []  # idempotent

    r = client.get(f"/api/v1/jobs/{old.id}/result", headers=h)
    assert (
        r.status_code == 410
        and "expired" in r.json()["detail"]
        and "SAGE_JOB_RESULT_TTL_S" in r.json()["detail"]
    )
    polled = client.get(f"/api/v1/jobs/{old.id}", headers=h).json()
    assert polled["status"] == "expired" and polled["result_url"] is None
    assert client.get(f"/api/v1/jobs/{fresh.id}/result", headers=h).content == b"PK fresh result"
    assert client.get(f"/api/v1/jobs/{shared_new.id}/result", headers=h).content == b"PK same bytes"
    # an export archive is kept while its model exists, however old
    assert client.get(f"/api/v1/models/{model.id}/download?format=onnx", headers=h).content == b"PK a"
