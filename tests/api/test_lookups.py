"""app.services.lookups: the one "row or 404" and the one "active model" query routes and services share."""

from __future__ import annotations

import pytest

from app.services.errors import NotFound
from app.services.lookups import active_model, get_or_404
from app.tables import ModelVersion, TrainingRun


def test_get_or_404_returns_the_row_or_a_404_naming_it(db, make_user, make_project, client, auth_headers):
    owner = make_user()
    project = make_project(owner)
    assert get_or_404(db, type(project), project.id, "project") is project
    with pytest.raises(NotFound) as info:
        get_or_404(db, TrainingRun, 987654, "training run")
    assert info.value.status_code == 404 and str(info.value) == "no training run 987654"
    r = client.get("/api/v1/training-runs/987654", headers=auth_headers(owner))
    assert r.status_code == 404 and r.json() == {"detail": "no training run 987654"}


def test_active_model_is_the_one_active_version_of_the_project(db, make_user, make_project):
    owner = make_user()
    project, other = make_project(owner), make_project(owner)
    assert active_model(db, project.id) is None

    def version(p, n, active):
        m = ModelVersion(
            project_id=p.id,
            version=n,
            artifact_key=f"k{p.id}-{n}",
            checksum="0" * 64,
            backbone="tiny",
            active=active,
        )
        db.add(m)
        db.flush()
        return m

    version(project, 1, False)
    current = version(project, 2, True)
    version(other, 1, True)
    db.commit()
    assert active_model(db, project.id) is current
