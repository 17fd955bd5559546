import json
import sys
from pathlib import Path

import numpy as np
import pytest

from sage.bench import (
    REFERENCE,
    BenchSettings,
    choose_configs,
    dataset_dir,
    paired_differences,
    plan_report,
    plan_tuning,
    render_report,
    run_options,
    t_interval,
)
from sage.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_tuning_and_report_seeds_must_be_disjoint():
    with pytest.raises(ValueError, match="disjoint"):
        BenchSettings(tuning_seeds=[0, 100], report_seeds=[0, 1, 2])
    with pytest.raises(ValueError, match="disjoint"):
        BenchSettings().with_overrides({"report_seeds": [100, 1]})
    settings = BenchSettings()
    assert len(settings.report_seeds) >= 5
    assert not {r.seed for r in plan_tuning(settings)} & set(settings.report_seeds)
    with pytest.raises(ValueError, match="not a tuning seed"):
        dataset_dir(settings, Path("/nonexistent"), "decoy-shapes", 0, "tune")


def test_every_method_gets_the_same_tuning_budget():
    settings = BenchSettings()
    runs = plan_tuning(settings)
    per_method = {m: sum(r.method == m for r in runs) for m in settings.methods}
    assert set(per_method.values()) == {
        settings.configs_per_method * len(settings.tuning_seeds) * len(settings.suites)
    }
    epochs = {run_options(settings, r)["epochs"] for r in runs}
    assert epochs == {settings.epochs}
    assert {"ce-swap", "ce-jsd", "sage-paper", "sage", "rrr"} <= set(settings.methods)


def test_configuration_is_chosen_on_validation_accuracy_of_tuning_seeds_never_test():
    settings = BenchSettings(suites=["decoy-shapes"], methods=["ce", "sage"], tuning_seeds=[100, 101])
    records = []
    for method in ("ce", "sage"):
        for seed in (100, 101):
            for config, (val, test) in enumerate([(0.5, 0.9), (0.8, 0.1), (0.6, 0.99)]):
                records.append({"key": f"{method}{seed}{config}", "stage": "tune", "suite": "decoy-shapes",
                                "method": method, "seed": seed, "config": config, "val_accuracy": val,
                                "test_accuracy": test})  # fmt: skip
    assert choose_configs(settings, records) == {("decoy-shapes", "ce"): 1, ("decoy-shapes", "sage"): 1}
    leaked = records + [{**records[0], "key": "r", "stage": "report", "seed": 0}]
    with pytest.raises(ValueError, match="non-tuning record"):
        choose_configs(settings, leaked)
    report = plan_report(settings, {("decoy-shapes", "ce"): 1, ("decoy-shapes", "sage"): 2})
    assert {r.seed for r in report} == set(settings.report_seeds)
    assert {(r.method, r.config) for r in report if r.stage == "report"} == {("ce", 1), ("sage", 2)}


def test_tuning_datasets_have_a_validation_split_without_the_shortcut(tmp_path):
    """Tuning val images equal the clean twin's (decoy random); train images equal the decoy set's."""
    tune = make_dataset("decoy-shapes", tmp_path / "tune", n=20, seed=3, image_size=32, val_shortcut=False)
    decoy = make_dataset("decoy-shapes", tmp_path / "decoy", n=20, seed=3, image_size=32)
    clean = make_dataset("decoy-shapes", tmp_path / "clean", n=20, seed=3, image_size=32, clean=True)
    rows = [line.split(",") for line in (tune / "labels.csv").read_text().splitlines()[1:]]
    same = {split: [] for split in ("train", "val")}
    for image, _, split in rows:
        if split in same:
            a = (tune / "images" / image).read_bytes()
            same[split].append(
                (a == (decoy / "images" / image).read_bytes(), a == (clean / "images" / image).read_bytes())
            )
    assert all(d for d, _ in same["train"]) and all(c for _, c in same["val"])
    assert not all(d for d, _ in same["val"])  # the val decoy really changed


def test_intervals_and_paired_differences():
    mean, low, high = t_interval([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and high - mean == pytest.approx(4.303 * 0.1 / np.sqrt(3), rel=1e-3)
    records = [{"suite": "s", "stage": "report", "method": m, "seed": s, "test_accuracy": a}
               for m, accs in (("sage", [0.9, 0.8, 0.7]), ("ce", [0.5, 0.6, 0.7])) for s, a in enumerate(accs)]  # fmt: skip
    assert paired_differences(records, "ce", "sage", "s") == pytest.approx([-0.4, -0.2, 0.0])


def test_report_says_where_sage_does_not_win():
    settings = BenchSettings(suites=["decoy-shapes"], methods=["ce", "blur", "sage"], report_seeds=[0, 1, 2])
    chosen = {("decoy-shapes", m): 0 for m in settings.methods}
    acc = {"ce": [0.40, 0.45, 0.5], "blur": [0.95, 0.9, 0.97], "sage": [0.9, 0.91, 0.9]}
    report = [{"suite": "decoy-shapes", "stage": "ceiling", "method": "ce", "seed": s, "test_accuracy": 1.0,
               "seconds_per_epoch": 1.0} for s in range(3)]  # fmt: skip
    for m, values in acc.items():
        report += [{"suite": "decoy-shapes", "stage": "report", "method": m, "seed": s, "config": 0,
                    "test_accuracy": a, "alignment": {"pearson": 0.5}, "seconds_per_epoch": 1.0}
                   for s, a in enumerate(values)]  # fmt: skip
    text = render_report(settings, [], report, chosen)
    assert "`blur` is at or above `sage`" in text
    assert "| ce | `{}` | 45.0 [" in text
    assert f"Δ vs {REFERENCE}" in text and "| sage | `{}` | 90.3 [" in text


@pytest.mark.slow
def test_smoke_bench_writes_a_report_and_resumes(tmp_path, capsys):
    from sage.cli import main

    argv = ["bench", "--preset", "smoke", "--methods", "ce", "rrr", "sage-paper", "sage",
            "--out", str(tmp_path / "ml.md"), "--work", str(tmp_path / "work")]  # fmt: skip
    assert main(argv) == 0
    text = (tmp_path / "ml.md").read_text()
    for heading in ("## decoy-shapes", "Clean ceiling", "## Where SAGE does not win", "## Tuning"):
        assert heading in text
    records = json.loads((tmp_path / "work" / "results.json").read_text())
    tuning = [r for r in records if r["stage"] == "tune"]
    assert len(tuning) == 4 * 2 and all("test_accuracy" not in r for r in tuning)
    assert {r["seed"] for r in records if r["stage"] != "tune"} == {0, 1}
    capsys.readouterr()
    assert main(argv) == 0
    assert "[" not in capsys.readouterr().out  # every run was already recorded


@pytest.mark.slow
def test_gpu_bench_script_runs_on_cpu_in_smoke_mode(tmp_path, monkeypatch):
    import runpy

    out = tmp_path / "gpu.md"
    monkeypatch.setattr(sys, "argv", ["gpu_bench.py", "--smoke", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "bench" / "gpu_bench.py"), run_name="__main__")
    assert exit_info.value.code == 0
    text = out.read_text()
    assert "| ce |" in text and "| sage |" in text and "ratio" in text
