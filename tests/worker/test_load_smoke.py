"""The load test, headless and small (as CI runs it): the full embedded stack (`python -m worker
serve`: web, workers, beat) under annotators, viewers and predicting clients while training runs,
then every acknowledged save read back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_bench():
    spec = importlib.util.spec_from_file_location("load_bench", ROOT / "bench" / "load_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_small_load_on_the_embedded_stack_answers_no_5xx_and_keeps_every_save(tmp_path):
    bench = _load_bench()
    out = tmp_path / "load.md"
    # 5 users, one of each kind at least: 3 annotators, 1 viewer, 1 predictor
    code = bench.main(
        ["--users", "5", "--annotators", "3", "--viewers", "1", "--predictors", "1", "--seconds", "15",
         "--modes", "embedded", "--images", "20", "--out", str(out)]
    )  # fmt: skip
    report = out.read_text()
    assert code == 0, report
    rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in report.splitlines()
        if line.startswith("| ")
    }
    for name in ("PUT /images/{iid}/annotation", "POST /projects/{pid}/predict", "GET gallery", "**all**"):
        assert name in rows, report
        assert int(rows[name][1]) > 0, report  # requests of this type were made
    assert rows["**all**"][6] == "0", report  # no 5xx
    integrity = next(line for line in report.splitlines() if line.startswith("Integrity"))
    acked = int(integrity.split(": ")[1].split(" ")[0])
    assert acked > 0 and integrity.endswith(" 0 problems."), report
    assert f"{acked} read back with their exact bytes" in integrity, report
    assert "runs started" in report and "0 runs started" not in report, report
