"""`python -m sage` round trip: one real subprocess for the entry point, the rest in-process."""

import json
import subprocess
import sys

import pytest

from sage.cli import main


@pytest.mark.slow
def test_make_dataset_train_evaluate_round_trip(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert (
        main(["make-dataset", "decoy-texture", str(data), "--n", "40", "--seed", "3", "--image-size", "32"])
        == 0
    )
    trained = subprocess.run(
        [sys.executable, "-m", "sage", "train", "--data", str(data), "--method", "sage", "--out", str(run),
         "--epochs", "1", "--image-size", "32", "--device", "cpu", "--set", "sage.margin=0.3", "--set", "augment=none"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    summary = json.loads(trained.stdout)
    assert summary["epochs_run"] == 1 and (run / "model.pt").is_file()
    assert "epoch 1/1" in trained.stderr
    capsys.readouterr()
    assert main(["evaluate", "--model", str(run), "--data", str(data), "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0.0 <= report["accuracy"] <= 1.0 and report["n"] == 8 and "alignment" in report
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"])


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--set", "epochs=0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "nothing.pt"), "--data", str(tmp_path), "--json"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "labels.csv: missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["make-dataset", "decoy-nope", str(tmp_path / "x")])
