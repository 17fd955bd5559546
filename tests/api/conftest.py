"""Helpers for the REST API tests: users, tokens, projects and image bytes made to order."""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable

import numpy as np
import pytest
from argon2 import PasswordHasher
from PIL import Image as PILImage

from app import security
from app.services import projects as project_service
from app.services import users as user_service
from app.tables import Project, User

PASSWORD = "correct horse battery"
_names = itertools.count(1)


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """Argon2 with minimal cost: the tests check behaviour, not hashing strength."""
    monkeypatch.setattr(
        security, "password_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    )


@pytest.fixture
def make_user(db) -> Callable[..., User]:
    def make(username: str | None = None, *, admin: bool = False, password: str = PASSWORD) -> User:
        return user_service.create_user(db, username or f"user{next(_names)}", password, is_admin=admin)

    return make


@pytest.fixture
def auth_headers(db) -> Callable[[User], dict[str, str]]:
    """Bearer headers with a fresh personal API token of the user."""

    def headers(user: User) -> dict[str, str]:
        _, token = user_service.create_token(db, user, "tests")
        return {"Authorization": f"Bearer {token}"}

    return headers


@pytest.fixture
def make_project(db) -> Callable[..., Project]:
    def make(
        owner: User, *, labels=("cat", "dog"), members: dict[User, str] | None = None, **fields
    ) -> Project:
        project = project_service.create_project(
            db, owner, name=fields.pop("name", f"project {next(_names)}"), labels=list(labels), **fields
        )
        for user, role in (members or {}).items():
            project_service.set_member(db, project, user.username, role)
        return project

    return make


def png_bytes(
    width: int = 16, height: int = 12, colour=(200, 30, 30), mode: str = "RGB", fmt: str = "PNG"
) -> bytes:
    buf = io.BytesIO()
    PILImage.new(mode, (width, height), colour).save(buf, format=fmt)
    return buf.getvalue()


def noise_png(width: int = 16, height: int = 12, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A distinct image per seed (distinct bytes: no accidental deduplication)."""
    arr = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def mask_png(width: int = 16, height: int = 12, value: int | None = None, seed: int = 0) -> bytes:
    """An 8-bit grayscale map: constant `value`, or a seeded random soft map."""
    if value is not None:
        arr = np.full((height, width), value, dtype=np.uint8)
    else:
        arr = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def upload(client, headers, pid: int, files: list[tuple[str, bytes]], **form):
    return client.post(
        f"/api/v1/projects/{pid}/images",
        headers=headers,
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        data=form,
    )


def put_annotation(client, headers, iid: int, *, label=None, saliency: bytes | None = None, if_match=None):
    h = dict(headers)
    if if_match is not None:
        h["If-Match"] = str(if_match)
    files = {"saliency": ("map.png", saliency, "image/png")} if saliency is not None else None
    data = {"label": label} if label is not None else {}
    return client.put(f"/api/v1/images/{iid}/annotation", headers=h, data=data, files=files)


def stored_objects(settings) -> list:
    """A local path of every stored object (staging and temporary objects excluded), whichever the
    backend: the file itself in the local folder, a scratch-cache copy for S3."""
    from app.storage import get_storage

    storage = get_storage(settings)
    return sorted(storage.path(key) for key in storage.iter_keys())
