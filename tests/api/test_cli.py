"""The sage-studio commands of this issue: create-user, create-token, import, export."""

from __future__ import annotations

import csv
import zipfile

import pytest

from app.cli import main
from app.settings import get_settings
from tests.api.conftest import mask_png, noise_png


@pytest.fixture
def cli_env(settings, monkeypatch):
    monkeypatch.setenv("SAGE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("SAGE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SAGE_SECRET_KEY", settings.secret_key)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_create_user_token_import_export(cli_env, client, tmp_path, capsys):
    assert main(["create-user", "--username", "boss", "--password", "a long password", "--admin"]) == 0
    assert main(["create-user", "--username", "boss", "--password", "a long password"]) == 1
    assert "taken" in capsys.readouterr().err
    assert main(["create-token", "--username", "boss", "--name", "script"]) == 0
    token = capsys.readouterr().out.strip()
    h = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/users/me", headers=h).json()["is_admin"] is True

    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    (folder / "saliency").mkdir()
    (folder / "labels.csv").write_text("image,label,split\na.png,cat,train\nb.png,dog,test\n")
    (folder / "images" / "a.png").write_bytes(noise_png(seed=1))
    (folder / "images" / "b.png").write_bytes(noise_png(seed=2))
    (folder / "saliency" / "a.png").write_bytes(mask_png(seed=3))
    assert main(["import", str(folder), "--project", "Pets"]) == 1  # no such project
    assert main(["import", str(folder), "--project", "Pets", "--create", "--user", "boss"]) == 0
    assert '"imported": 2' in capsys.readouterr().out
    projects = client.get("/api/v1/projects", headers=h).json()
    assert [(p["name"], p["labels"]) for p in projects] == [("Pets", ["cat", "dog"])]

    out = tmp_path / "out"
    assert main(["export", "--project", "Pets", "--out", str(out)]) == 0
    assert (out / "images" / "a.png").read_bytes() == (folder / "images" / "a.png").read_bytes()
    assert (out / "saliency" / "a.png").read_bytes() == (folder / "saliency" / "a.png").read_bytes()
    rows = list(csv.DictReader((out / "labels.csv").read_text().splitlines()))
    assert [(r["image"], r["label"], r["split"]) for r in rows] == [
        ("a.png", "cat", "train"),
        ("b.png", "dog", "test"),
    ]
    assert main(["export", "--project", "Pets", "--out", str(tmp_path / "pets.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "pets.zip") as zf:
        assert zf.read("pets/images/b.png") == (folder / "images" / "b.png").read_bytes()

    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "labels.csv").write_text("image,label\nmissing.png,cat\n")
    capsys.readouterr()
    assert main(["import", str(bad), "--project", "Pets"]) == 1
    assert "labels.csv:2: images/missing.png is not in the dataset" in capsys.readouterr().err


def test_import_create_reports_a_bad_labels_csv_and_creates_no_project(cli_env, client, tmp_path, capsys):
    folder = tmp_path / "ds"
    (folder / "images").mkdir(parents=True)
    (folder / "labels.csv").write_text("image,label,split\na.png,cat,train\nb.png,dog,holdout\n")
    assert main(["import", str(folder), "--project", "Pets", "--create"]) == 1
    err = capsys.readouterr().err
    assert "labels.csv:3: unknown split 'holdout'" in err and "not created" in err
    assert main(["export", "--project", "Pets", "--out", str(tmp_path / "out")]) == 1


def test_worker_commands_start_from_the_composition_root(capsys):
    """app/ never imports worker/: `python -m app.cli worker` says where the command lives."""
    assert main(["worker", "--queues", "train"]) == 1
    assert "`sage-studio worker` or `python -m worker worker`" in capsys.readouterr().err
    from worker.__main__ import main as studio

    with pytest.raises(SystemExit):
        studio(["worker", "--help"])
    assert "--queues" in capsys.readouterr().out
