"""Fixed, group-aware splits: drawn once per image, kept across retraining, never cutting a group."""

from collections import defaultdict

from sqlalchemy import select

from app.services.datasets import draw_splits
from app.tables import Image
from tests.api.conftest import noise_png, upload


def add_images(db, project, n, start=0, group=None, label="cat"):
    rows = []
    for i in range(start, start + n):
        rows.append(Image(project_id=project.id, sha256=f"{i:064x}", storage_key=f"k{i}", format="png",
                          width=8, height=8, label=label, group=group(i) if callable(group) else group))  # fmt: skip
    db.add_all(rows)
    db.commit()
    return rows


def splits_of(db, project):
    return {img.id: img.split for img in db.scalars(select(Image).where(Image.project_id == project.id))}


def test_splits_are_drawn_once_stratified_and_survive_retraining(db, make_user, make_project):
    project = make_project(make_user())
    add_images(db, project, 30, label="cat")
    add_images(db, project, 30, start=100, label="dog")
    drawn = draw_splits(db, project)
    db.commit()
    assert drawn == {"train": 36, "val": 12, "test": 12}
    first = splits_of(db, project)
    by_label = defaultdict(lambda: defaultdict(int))
    for img in db.scalars(select(Image)):
        by_label[img.label][img.split] += 1
    assert all(counts["test"] == 6 and counts["val"] == 6 for counts in by_label.values())

    assert draw_splits(db, project) == {}  # a second run draws nothing ...
    add_images(db, project, 10, start=200, label="cat")
    draw_splits(db, project)  # ... and new images never move the old ones
    db.commit()
    after = splits_of(db, project)
    assert {i: after[i] for i in first} == first
    assert sum(1 for i in after if i not in first and after[i] == "test") == 2


def test_groups_never_span_splits(db, make_user, make_project):
    project = make_project(make_user())
    add_images(db, project, 40, group=lambda i: f"patient-{i // 4}", label="cat")
    add_images(db, project, 40, start=100, group=lambda i: f"patient-{i // 4}", label="dog")
    draw_splits(db, project)
    db.commit()
    # a later visit of an existing patient, and one whose first image a manager put in test
    add_images(db, project, 3, start=300, group="patient-0", label="cat")
    first_of_new = add_images(db, project, 1, start=400, group="patient-new", label="dog")[0]
    first_of_new.split = "test"
    add_images(db, project, 2, start=401, group="patient-new", label="dog")
    draw_splits(db, project)
    db.commit()
    groups = defaultdict(set)
    for img in db.scalars(select(Image).where(Image.project_id == project.id)):
        groups[img.group].add(img.split)
    assert all(len(splits) == 1 for splits in groups.values()), groups
    assert groups["patient-new"] == {"test"}
    assert {s for splits in groups.values() for s in splits} == {"train", "val", "test"}


def test_upload_takes_a_group(client, make_user, make_project, auth_headers):
    user = make_user()
    project = make_project(user)
    r = upload(
        client, auth_headers(user), project.id, [("a.png", noise_png())], group="patient 7", label="cat"
    )
    assert r.status_code == 201, r.text
    assert r.json()["images"][0]["group"] == "patient 7"
    bad = upload(client, auth_headers(user), project.id, [("b.png", noise_png(seed=2))], group="x\x01")
    assert bad.status_code == 422
