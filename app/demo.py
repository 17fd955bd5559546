"""The demo project that `make run` seeds: a decoy-shapes dataset, partly annotated, and an admin account.

A first-time user signs in with the printed credentials and sees the whole loop at once: a third
of the images already carry a label and a soft saliency map (the dataset's human-like maps), so
"Train now" works immediately, and the rest wait in the annotation queue.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from sqlalchemy import select

from app.db import make_engine, make_session_factory
from app.settings import Settings
from app.tables import Project
from sage.labels_csv import LABELS_CSV, LabelRow, read_labels_csv

DEMO_PROJECT = "Demo: decoy shapes"
DEMO_ADMIN = "admin"
DEMO_IMAGES = 120
DEMO_ANNOTATED = 40
# Measured with `make run` on a 2-core CPU: 10 epochs (the library default) gave val 0.42 / test
# 0.33 on these 120 images; 40 epochs gave val 1.00 / test 0.92 in 20 s, so the demo's first
# "Train now" shows a model that really looks at the shapes.
DEMO_TRAINING = {"epochs": 40}
DEMO_IMAGE_SIZE = 128  # pixels on disk; the model trains at the project's image_size (64)
DEMO_DESCRIPTION = (
    "Which shape is in the picture? A small coloured patch in a corner gives the class away in the "
    "training data (a shortcut); the saliency maps say to look at the shape instead. Train with SAGE "
    "and compare the heatmaps with a plain cross-entropy model."
)


def _say(message: str) -> None:
    print(message, flush=True)


def seed_demo(
    settings: Settings,
    if_missing: bool = True,
    *,
    n_images: int = DEMO_IMAGES,
    n_annotated: int = DEMO_ANNOTATED,
) -> int:
    """Create the admin account and the demo project (idempotent with `if_missing`). Returns 0."""
    from app.services import users as users_service
    from app.services.annotations import put_annotation
    from app.services.images import UploadedFile, upload_images
    from app.services.projects import create_project
    from app.storage import get_storage

    engine = make_engine(settings.resolved_database_url)
    session = make_session_factory(engine)()
    try:
        admin = users_service.get_by_username(session, DEMO_ADMIN)
        if admin is None:
            password = os.environ.get("SAGE_DEMO_PASSWORD") or secrets.token_urlsafe(12)
            admin = users_service.create_user(session, DEMO_ADMIN, password, is_admin=True)
            _say("")
            _say("  SAGE Studio demo account (site admin)")
            _say(f"    username: {DEMO_ADMIN}")
            _say(f"    password: {password}")
            if not os.environ.get("SAGE_DEMO_PASSWORD"):
                _say("    (generated; set SAGE_DEMO_PASSWORD to choose it)")
            _say("")
        else:
            _say(f"demo: the account {DEMO_ADMIN!r} exists (its password is unchanged)")

        existing = session.scalar(select(Project).where(Project.name == DEMO_PROJECT))
        if existing is not None:
            if if_missing:
                _say(f"demo: project {DEMO_PROJECT!r} exists (id {existing.id}); nothing to do")
                return 0
            from app.services.projects import delete_project

            delete_project(session, get_storage(settings), existing)

        from sage.synthetic import make_dataset

        storage = get_storage(settings)
        with tempfile.TemporaryDirectory(prefix="sage-demo-") as tmp:
            folder = make_dataset(
                "decoy-shapes", Path(tmp) / "decoy-shapes", n=n_images, seed=0, image_size=DEMO_IMAGE_SIZE
            )
            parsed = read_labels_csv(folder / LABELS_CSV).check(folder / LABELS_CSV)
            rows = parsed.rows
            labels = parsed.labels
            project = create_project(
                session,
                admin,
                name=DEMO_PROJECT,
                labels=labels,
                description=DEMO_DESCRIPTION,
                training=dict(DEMO_TRAINING),
            )
            images = {}
            # one upload per (label, split) group: the import label and split are per call
            groups: dict[tuple[str, str], list[LabelRow]] = {}
            for r in rows:
                groups.setdefault((r.label or "", r.split), []).append(r)
            for (label, split), group in groups.items():
                files = [UploadedFile(r.image, (folder / "images" / r.image).read_bytes()) for r in group]
                results = upload_images(
                    session,
                    storage,
                    project,
                    admin,
                    files,
                    label=label,
                    split=split,
                    max_pixels=settings.max_image_pixels,
                )
                for r, (image, _created) in zip(group, results, strict=True):
                    images[r.image] = image
            annotated = 0
            for r in rows:
                if annotated >= n_annotated:
                    break
                saliency = folder / "saliency" / f"{Path(r.image).stem}.png"
                if r.split != "train" or not saliency.is_file():
                    continue
                put_annotation(
                    session,
                    storage,
                    images[r.image],
                    project,
                    admin,
                    label=r.label,
                    saliency_png=saliency.read_bytes(),
                    if_match=None,
                )
                annotated += 1
        _say(f"demo: project {DEMO_PROJECT!r} (id {project.id}): {len(rows)} images, {annotated} annotated")
        return 0
    finally:
        session.close()
        engine.dispose()
