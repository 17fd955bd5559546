"""Storage integrity: files in place before their rows commit, a failed transaction leaves no
orphan, the sweep removes unused files after a grace period, and removal never races a writer."""

from __future__ import annotations

import os
import random
import threading
import time

import pytest
from sqlalchemy import select

from app.services import images as image_service
from app.services import objects
from app.storage import get_storage
from app.tables import Image, ModelVersion
from tests.api.conftest import noise_png, stored_objects


def test_files_are_in_place_before_the_rows_commit(db, settings, make_user, make_project, monkeypatch):
    owner = make_user()
    project = make_project(owner)
    storage = get_storage(settings)
    seen_at_commit: list[bool] = []
    real_commit = db.commit

    def commit():
        for image in [o for o in db.identity_map.values() if isinstance(o, Image)]:
            seen_at_commit.append(storage.exists(image.storage_key))
        real_commit()

    monkeypatch.setattr(db, "commit", commit)
    files = [
        image_service.UploadedFile("a.png", noise_png(seed=1)),
        image_service.UploadedFile("b.png", noise_png(seed=2)),
    ]
    image_service.upload_images(db, storage, project, owner, files, max_pixels=settings.max_image_pixels)
    assert seen_at_commit == [True, True]


def test_a_failed_transaction_leaves_no_orphan(db, settings, make_user, make_project, monkeypatch):
    owner = make_user()
    project = make_project(owner)
    storage = get_storage(settings)

    def failing_commit():
        raise RuntimeError("database went away")

    monkeypatch.setattr(db, "commit", failing_commit)
    files = [image_service.UploadedFile("a.png", noise_png(seed=3))]
    with pytest.raises(RuntimeError):
        image_service.upload_images(db, storage, project, owner, files, max_pixels=settings.max_image_pixels)
    assert stored_objects(settings) == []


def test_a_failed_writer_keeps_a_file_another_writer_reused(settings):
    storage = get_storage(settings)
    data = noise_png(seed=4)
    with pytest.raises(RuntimeError), storage.staging() as staging:
        key = staging.put_bytes(data, ".png")
        time.sleep(0.01)
        assert storage.put_bytes(data, ".png") == key  # a second writer of the same bytes (it commits)
        raise RuntimeError("the first writer's transaction fails")
    assert storage.exists(key)


def test_removal_keeps_a_file_a_writer_touched_meanwhile(settings):
    storage = get_storage(settings)
    data = noise_png(seed=5)
    key = storage.put_bytes(data, ".png")
    old = storage.mtime_ns(key)
    os.utime(storage.path(key), ns=(old - 10**10, old - 10**10))
    listed = storage.mtime_ns(key)
    storage.put_bytes(data, ".png")  # a writer reuses the object after the sweep listed it
    assert storage.remove_if_unused(key, lambda: False, expected_mtime_ns=listed) is False
    assert storage.exists(key)
    # and a row that uses it keeps it too
    assert storage.remove_if_unused(key, lambda: True) is False
    assert storage.exists(key)
    assert storage.remove_if_unused(key, lambda: False) is True
    assert not storage.exists(key)


def test_sweep_removes_old_unused_files_only(db, settings, make_user, make_project):
    owner = make_user()
    project = make_project(owner)
    storage = get_storage(settings)
    files = [image_service.UploadedFile("a.png", noise_png(seed=6))]
    ((image, _),) = image_service.upload_images(
        db, storage, project, owner, files, max_pixels=settings.max_image_pixels
    )
    orphan_old = storage.put_bytes(noise_png(seed=7), ".png")  # e.g. a crash before the commit
    orphan_new = storage.put_bytes(noise_png(seed=8), ".png")  # a write whose commit is in flight
    for key in (orphan_old, image.storage_key):
        past = time.time_ns() - 7200 * 10**9
        os.utime(storage.path(key), ns=(past, past))
    dry = objects.sweep_orphans(db, storage, grace_s=3600, dry_run=True)
    assert (dry.orphans, dry.removed) == (1, 0) and storage.exists(orphan_old)
    report = objects.sweep_orphans(db, storage, grace_s=3600)
    assert (report.orphans, report.removed) == (1, 1)
    assert not storage.exists(orphan_old)
    assert storage.exists(orphan_new) and storage.exists(image.storage_key)
    assert db.scalar(select(Image.storage_key)) == image.storage_key


def test_sweep_keeps_the_weights_of_every_model_version(db, settings, make_user, make_project):
    """Model weights are stored as `<checksum>.pt` and named by `model_versions.checksum`, not by a
    `*_key` column: the sweep must count them as used, however old they are."""
    project = make_project(make_user())
    storage = get_storage(settings)
    registered = storage.put_bytes(b"weights of model v1", objects.MODEL_SUFFIX)
    stray = storage.put_bytes(b"weights no version registered", objects.MODEL_SUFFIX)
    db.add(
        ModelVersion(
            project_id=project.id, version=1, artifact_key="models/project-1/run-1-abcd",
            checksum=registered[:64], backbone="tiny",
        )
    )  # fmt: skip
    db.commit()
    past = time.time_ns() - 7200 * 10**9
    for key in (registered, stray):
        os.utime(storage.path(key), ns=(past, past))
    report = objects.sweep_orphans(db, storage, grace_s=3600)
    assert (report.orphans, report.removed) == (1, 1)
    assert storage.exists(registered) and not storage.exists(stray)


def test_sweep_removes_temporary_files_of_writes_that_died(db, settings):
    """A process killed mid-upload leaves its `.part` file; the sweep removes it after the grace
    period and leaves a fresh one (a write still in progress) alone."""
    storage = get_storage(settings)
    dead, live = storage.tmp_dir / "dead.part", storage.tmp_dir / "live.part"
    dead.write_bytes(b"half an upload")
    live.write_bytes(b"being written")
    past = time.time_ns() - 7200 * 10**9
    os.utime(dead, ns=(past, past))
    assert objects.sweep_orphans(db, storage, grace_s=3600, dry_run=True).temp_removed == 0
    assert dead.exists()
    assert objects.sweep_orphans(db, storage, grace_s=3600).temp_removed == 1
    assert not dead.exists() and live.exists()


def test_sweep_counts_appear_in_metrics(client, settings):
    objects.write_report(settings.resolved_data_dir, objects.SweepReport(scanned=5, orphans=2, removed=2))
    text = client.get("/metrics").text
    assert 'sage_orphan_sweep_objects{outcome="removed"} 2.0' in text


def test_the_upload_route_passes_spooled_files(client, make_user, make_project, auth_headers, monkeypatch):
    owner = make_user()
    project = make_project(owner)
    seen = []
    real = image_service.upload_images

    def spy(session, storage, project, uploader, files, **kw):
        seen.extend((f.data, f.source is not None) for f in files)
        return real(session, storage, project, uploader, files, **kw)

    monkeypatch.setattr(image_service, "upload_images", spy)
    files = [("files", (f"{i}.png", noise_png(seed=20 + i), "image/png")) for i in range(3)]
    assert (
        client.post(
            f"/api/v1/projects/{project.id}/images", headers=auth_headers(owner), files=files
        ).status_code
        == 201
    )
    assert seen == [(b"", True)] * 3


def test_concurrent_writers_of_the_same_bytes_never_lose_a_committed_file(settings):
    """Writers of the same few contents, some of whose transactions fail: a failed writer removes
    only a file it created and nobody reused, so every successful writer's file stays. (The load
    test found committed files missing when creator and reuser met within one kernel clock tick.)"""
    storage = get_storage(settings)
    contents = [noise_png(seed=100 + i) for i in range(3)]
    committed: list[str] = []
    missing: list[str] = []
    lock = threading.Lock()

    def writer(n: int) -> None:
        rng = random.Random(n)
        for _ in range(150):
            data = rng.choice(contents)
            try:
                with storage.staging() as staging:
                    key = staging.put_bytes(data, ".png")
                    if rng.random() < 0.4:
                        raise RuntimeError("this transaction fails")
            except RuntimeError:
                continue
            with lock:
                committed.append(key)
                if not storage.exists(key):
                    missing.append(key)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert committed
    assert missing == [], f"{len(missing)} committed files were missing right after their commit"
    assert all(storage.exists(key) for key in set(committed))
