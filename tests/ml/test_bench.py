import json
import sys
from pathlib import Path

import pytest

from sage.bench import BenchSettings, gap_closed, plan, render_report

ROOT = Path(__file__).resolve().parents[2]


def test_plan_covers_every_suite_method_seed_coverage_and_the_ceiling():
    settings = BenchSettings()
    runs = plan(settings, ablation=False)
    assert len(runs) == 3 * 3 * (1 + len(settings.methods) + 2 * 5)
    assert {r.method for r in runs} == set(settings.methods)
    assert len({r for r in runs if r.clean}) == 9
    assert {r.coverage for r in runs} == {1.0, 0.25, 0.1}


def test_gap_closed():
    assert gap_closed(0.9, 0.5, 0.95) == pytest.approx(0.4 / 0.45)
    assert gap_closed(0.9, 0.94, 0.95) is None


def test_report_marks_targets_pass_and_fail():
    settings = BenchSettings(
        suites=["decoy-shapes"], seeds=2, coverages=[0.1], methods=["ce", "blur", "sage", "sage-inverted"]
    )
    acc = {"ce": 0.4, "blur": 0.95, "sage": 0.9, "sage-inverted": 0.5}
    records = [{"suite": "decoy-shapes", "method": "ce", "seed": s, "coverage": 1.0, "variant": "default", "clean": True,
                "test_accuracy": 1.0, "alignment": {}, "seconds_per_epoch": 1.0} for s in range(2)]  # fmt: skip
    for m, a in acc.items():
        for cov in (1.0, 0.1):
            for s in range(2):
                records.append({"suite": "decoy-shapes", "method": m, "seed": s, "coverage": cov, "variant": "default",
                                "clean": False, "test_accuracy": a, "alignment": {"soft_iou": 0.5},
                                "seconds_per_epoch": 2.5 if m.startswith("sage") else 1.0})  # fmt: skip
    text = render_report(settings, records, ablation=False)
    assert "| decoy-shapes: sage closes ≥ 90% of the gap | 83% | **FAIL** |" in text
    assert "| decoy-shapes: sage mean ≥ blur mean | 90.0 vs 95.0 | **FAIL** |" in text
    assert "| decoy-shapes: sage s/epoch ≤ 3.0× ce | 2.50× | **pass** |" in text
    assert "| decoy-shapes: sage-inverted ≤ ce + 5 points | 50.0 vs ce 40.0 | **FAIL** |" in text
    assert "| decoy-shapes: sage closes ≥ 80% of the gap with 10% maps | 83% | **pass** |" in text


@pytest.mark.slow
def test_smoke_bench_writes_a_report_and_resumes(tmp_path, capsys):
    from sage.cli import main

    argv = [
        "bench",
        "--preset",
        "smoke",
        "--suite",
        "decoy-shapes",
        "--out",
        str(tmp_path / "ml.md"),
        "--work",
        str(tmp_path / "work"),
    ]
    assert main(argv) == 0
    text = (tmp_path / "ml.md").read_text()
    for heading in ("## Targets", "## decoy-shapes", "Clean ceiling", "25% maps", "## SAGE ablation"):
        assert heading in text
    capsys.readouterr()
    assert main(argv) == 0
    assert "[" not in capsys.readouterr().out  # every run was already recorded


@pytest.mark.slow
def test_parallel_bench_gives_the_sequential_results(tmp_path):
    from sage.cli import main

    results = {}
    for jobs in (1, 2):
        work = tmp_path / f"work{jobs}"
        argv = ["bench", "--preset", "smoke", "--suite", "decoy-shapes", "--no-ablation", "--jobs", str(jobs),
                "--out", str(tmp_path / f"ml{jobs}.md"), "--work", str(work)]  # fmt: skip
        assert main(argv) == 0
        records = json.loads((work / "results.json").read_text())
        results[jobs] = {r["key"]: (r["test_accuracy"], r["val_accuracy"]) for r in records}
    assert len(results[1]) == 1 + 7 + 5  # ceiling, every method, every saliency method at 25% maps
    assert results[2] == results[1]  # same runs, same numbers, whichever process trained them


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
