"""`python -m sage bench`: every method on every synthetic suite, several seeds, one budget.

For each suite and seed it writes the decoy dataset and its clean twin (same objects, same test
split), trains every method with the same backbone, epochs and batch size, then every saliency
method again with maps on only some of the training images, then SAGE ablation variants. Results
go to WORK/results.json as they finish (a rerun skips runs already there with the same settings),
and the report, with the targets of issue 3 marked pass/fail, to bench/ml.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sage.config import METHODS, TrainConfig
from sage.synthetic import KINDS, make_dataset

SALIENCY_METHODS = ("blur", "cyborg", "rrr", "gradia", "sage")

# SAGE variants for the ablation table: name -> TrainConfig overrides.
ABLATIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "no triplet": {"sage": {"lambda_trip": 0.0}},
    "no JSD": {"sage": {"lambda_js": 0.0}},
    "no hinge": {"sage": {"lambda_hinge": 0.0}},
    "S continuous (as painted)": {"sage": {"saliency_mode": "continuous"}},
    "S thresholded at 0.7": {"sage": {"saliency_mode": "threshold", "threshold": 0.7}},
    "D = mix (blur/noise/mean/swap)": {"sage": {"degradation": "mix"}},
    "batchnorm clean": {"sage": {"batchnorm": "clean"}},
    "views on half the rows": {"sage": {"view_share": 0.5}},
    "plain shuffling (no annotated share)": {"annotated_share": 0.0},
}


@dataclass
class BenchSettings:
    suites: list[str] = field(default_factory=lambda: list(KINDS))
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    seeds: int = 3
    epochs: int = 20
    n: int = 600
    data_size: int = 64
    image_size: int = 32
    backbone: str = "tiny"
    batch_size: int = 32
    lr: float = 2e-3
    augment: str = "none"
    coverages: list[float] = field(default_factory=lambda: [0.25, 0.1])
    ablation_suite: str = "decoy-texture"
    ablation_seeds: int = 2
    ablation_coverages: list[float] = field(default_factory=lambda: [1.0, 0.1])
    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS))

    @classmethod
    def preset(cls, name: str) -> BenchSettings:
        if name == "smoke":  # seconds: proves the pipeline and the report, not the science
            return cls(seeds=1, epochs=1, n=40, data_size=32, image_size=16, coverages=[0.25],
                       ablation_seeds=1, ablation_coverages=[1.0], ablations=["default", "no triplet"],
                       ablation_suite="decoy-shapes")  # fmt: skip
        if name != "full":
            raise ValueError(f"unknown bench preset {name!r}; use full or smoke")
        return cls()

    def with_overrides(self, overrides: dict[str, Any]) -> BenchSettings:
        settings = dataclasses.replace(self, **overrides)
        for suite in settings.suites:
            if suite not in KINDS:
                raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(KINDS)}")
        if settings.ablation_suite not in settings.suites:
            settings = dataclasses.replace(settings, ablation_suite=settings.suites[0])
        return settings

    def train_options(self) -> dict[str, Any]:
        return dict(backbone=self.backbone, image_size=self.image_size, epochs=self.epochs, batch_size=self.batch_size,
                    lr=self.lr, augment=self.augment, device="cpu", amp=False)  # fmt: skip

    def fingerprint(self) -> str:
        keys = ("epochs", "n", "data_size", "image_size", "backbone", "batch_size", "lr", "augment")
        blob = json.dumps(
            {k: getattr(self, k) for k in keys} | {"defaults": TrainConfig().to_dict()}, sort_keys=True
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunSpec:
    suite: str
    method: str
    seed: int
    coverage: float = 1.0
    variant: str = "default"
    clean: bool = False

    def key(self, fingerprint: str) -> str:
        return f"{fingerprint}|{self.suite}|{'clean' if self.clean else 'decoy'}|{self.method}|{self.variant}|{self.coverage}|{self.seed}"


def plan(settings: BenchSettings, ablation: bool) -> list[RunSpec]:
    runs: list[RunSpec] = []
    for suite in settings.suites:
        for seed in range(settings.seeds):
            runs.append(RunSpec(suite, "ce", seed, clean=True))
            runs += [RunSpec(suite, m, seed) for m in settings.methods]
            for coverage in settings.coverages:
                runs += [RunSpec(suite, m, seed, coverage) for m in settings.methods if m in SALIENCY_METHODS]
    if ablation:
        for variant in settings.ablations:
            for coverage in settings.ablation_coverages:
                for seed in range(settings.ablation_seeds):
                    runs.append(RunSpec(settings.ablation_suite, "sage", seed, coverage, variant))
    unique = list(dict.fromkeys(runs))  # the default variant is shared with the main table
    return unique


def run_bench(
    settings: BenchSettings,
    out_md: Path,
    work_dir: Path,
    ablation: bool = True,
    fresh: bool = False,
    jobs: int = 1,
) -> list[dict]:
    """Run (or resume) the benchmark and write the markdown report; returns the result records.

    jobs > 1 trains that many runs at once, each in its own process with one thread (the datasets
    are written first, by this process). Every run, whatever its method, shares the machine the
    same way, so seconds-per-epoch ratios stay comparable; they are medians over epochs, which a
    passing burst of other load moves less than a mean.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    results_path = work_dir / "results.json"
    fingerprint = settings.fingerprint()
    done: dict[str, dict] = {}
    if results_path.is_file() and not fresh:
        done = {r["key"]: r for r in json.loads(results_path.read_text())}
    runs = plan(settings, ablation)
    todo = [(i, spec) for i, spec in enumerate(runs, start=1) if spec.key(fingerprint) not in done]
    for _, spec in todo:
        dataset_dir(settings, work_dir, spec.suite, spec.seed, spec.clean)
    started = time.perf_counter()

    def record_done(i: int, spec: RunSpec, record: dict) -> None:
        done[record["key"]] = record | {"jobs": jobs}  # the report says how its runs shared the machine
        _atomic_write(results_path, json.dumps(list(done.values()), indent=1))
        print(f"[{i}/{len(runs)}] {spec.suite} {'clean ' if spec.clean else ''}{spec.method} {spec.variant} "
              f"cov={spec.coverage} seed={spec.seed}: test {record['test_accuracy']:.3f} "
              f"({record['seconds_per_epoch']:.2f} s/epoch, {time.perf_counter() - started:.0f}s elapsed)", flush=True)  # fmt: skip

    if jobs <= 1:
        _init_bench_process()
        for i, spec in todo:
            record_done(i, spec, _bench_run(settings, spec, fingerprint, work_dir, "last"))
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_bench_process) as pool:
            futures = {
                pool.submit(_bench_run, settings, spec, fingerprint, work_dir, f"job-{i}"): (i, spec)
                for i, spec in todo
            }
            for future in as_completed(futures):
                record_done(*futures[future], future.result())
    records = [done[s.key(fingerprint)] for s in runs]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(render_report(settings, records, ablation))
    return records


def _init_bench_process() -> None:
    torch.set_num_threads(1)  # identical conditions for every method; timing ratios stay comparable


def _bench_run(settings: BenchSettings, spec: RunSpec, fingerprint: str, work_dir: Path, slot: str) -> dict:
    from sage.training import fit

    data_dir = dataset_dir(settings, work_dir, spec.suite, spec.seed, spec.clean)
    options = settings.train_options() | {
        "method": spec.method,
        "seed": spec.seed,
        "saliency_fraction": spec.coverage,
    }
    options = _merge(options, ABLATIONS.get(spec.variant, {}))
    t0 = time.perf_counter()
    out_dir = work_dir / "runs" / slot
    metrics = fit(TrainConfig.from_dict(options), data_dir, out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    return {
        "key": spec.key(fingerprint), **dataclasses.asdict(spec),
        "test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics["val_accuracy"],
        "alignment": metrics["test"].get("alignment", {}),
        "seconds_per_epoch": float(np.median([h["seconds"] for h in metrics["history"]])),
        "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip


def dataset_dir(settings: BenchSettings, work_dir: Path, suite: str, seed: int, clean: bool) -> Path:
    path = (
        work_dir / "data" / f"{suite}-n{settings.n}-p{settings.data_size}-s{seed}{'-clean' if clean else ''}"
    )
    if not (path / "labels.csv").is_file():
        make_dataset(suite, path, n=settings.n, seed=seed, clean=clean, image_size=settings.data_size)
    return path


# -- report ---------------------------------------------------------------------------------------


def _stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return (
        (float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)
        if len(arr)
        else (float("nan"), 0.0)
    )


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = _stats(values)
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if values else "n/a"


def gap_closed(acc: float, ce: float, clean: float) -> float | None:
    """Share of the CE-to-ceiling gap a method closes; None when there is (almost) no gap."""
    if clean - ce < 0.02:
        return None
    return (acc - ce) / (clean - ce)


def _mark(ok: bool) -> str:
    return "**pass**" if ok else "**FAIL**"


def render_report(settings: BenchSettings, records: list[dict], ablation: bool) -> str:
    def select(**kw) -> list[dict]:
        return [r for r in records if all(r.get(k) == v for k, v in kw.items())]

    def accs(**kw) -> list[float]:
        return [r["test_accuracy"] for r in select(**kw)]

    jobs = max((r.get("jobs", 1) for r in records), default=1)
    lines = [
        "# SAGE benchmark (generated by `python -m sage bench`; do not edit by hand)",
        "",
        f"Backbone `{settings.backbone}`, {settings.image_size} px inputs (datasets drawn at {settings.data_size} px), "
        f"{settings.n} images per dataset (60/20/20 train/val/test), {settings.epochs} epochs, batch {settings.batch_size}, "
        f"AdamW lr {settings.lr} cosine, augmentation `{settings.augment}`, {settings.seeds} seeds (seed s draws dataset s "
        f"and trains with seed s), CPU with 1 thread per run and {jobs} run{'s' if jobs > 1 else ''} at a time "
        f"({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared, torch {torch.__version__}). Test splits carry a random decoy; "
        "train/val carry the class-coded decoy. The clean ceiling is `ce` trained on the clean twin (decoy present "
        "but random everywhere) and tested on the identical test split. Accuracy in %, mean ± sample std over seeds. "
        "Alignment: Grad-CAM of the predicted class vs the human map on the test split. Seconds per epoch: training "
        "only, median over a run's epochs, mean over seeds, same thread count; × ce is its ratio to `ce` on the same suite.",
        "",
    ]
    summary: list[tuple[str, str, bool]] = []
    for suite in settings.suites:
        ce = _stats(accs(suite=suite, method="ce", clean=False, coverage=1.0, variant="default"))[0]
        clean = _stats(accs(suite=suite, clean=True))[0]
        ce_sec = _stats(
            [r["seconds_per_epoch"] for r in select(suite=suite, method="ce", clean=False, coverage=1.0)]
        )[0]
        sage_acc = _stats(accs(suite=suite, method="sage", clean=False, coverage=1.0, variant="default"))[0]
        lines += [
            f"## {suite}",
            "",
            f"Clean ceiling (ce on the clean twin): {_pm(accs(suite=suite, clean=True))}.",
            "",
        ]
        lines += ["| method | test acc | gap closed | soft IoU | Pearson r | pointing | s/epoch | × ce | target |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for method in settings.methods:
            rows = select(suite=suite, method=method, clean=False, coverage=1.0, variant="default")
            if not rows:
                continue
            mean = _stats([r["test_accuracy"] for r in rows])[0]
            gap = gap_closed(mean, ce, clean)
            align = {
                k: [r["alignment"].get(k, float("nan")) for r in rows]
                for k in ("soft_iou", "pearson", "pointing_game")
            }
            sec = _stats([r["seconds_per_epoch"] for r in rows])[0]
            ratio = sec / ce_sec if ce_sec else float("nan")
            target = ""
            if method == "sage":
                ok_gap = gap is None and mean >= clean - 0.02 or gap is not None and gap >= 0.9
                ok_time = ratio <= 3.0
                target = f"gap ≥ 90%: {_mark(ok_gap)}; time ≤ 3.0× ce: {_mark(ok_time)}"
                summary += [(f"{suite}: sage closes ≥ 90% of the gap", _gap_text(gap), ok_gap),
                            (f"{suite}: sage s/epoch ≤ 3.0× ce", f"{ratio:.2f}×", ok_time)]  # fmt: skip
            elif method == "sage-inverted":
                ok = mean <= ce + 0.05
                target = f"≤ ce + 5: {_mark(ok)}"
                summary.append(
                    (f"{suite}: sage-inverted ≤ ce + 5 points", f"{mean * 100:.1f} vs ce {ce * 100:.1f}", ok)
                )
            elif method != "ce":
                ok = sage_acc >= mean
                target = f"sage ≥ {method}: {_mark(ok)}"
                summary.append(
                    (f"{suite}: sage mean ≥ {method} mean", f"{sage_acc * 100:.1f} vs {mean * 100:.1f}", ok)
                )
            lines.append(
                f"| {method} | {_pm([r['test_accuracy'] for r in rows])} | {_gap_text(gap)} | {_pm(align['soft_iou'], 1, 3)} | "
                f"{_pm(align['pearson'], 1, 3)} | {_pm(align['pointing_game'], 1, 2)} | {sec:.2f} | {ratio:.2f} | {target} |"
            )
        if settings.coverages:
            covs = [1.0, *settings.coverages]
            lines += ["", f"Saliency maps on only part of the training images ({suite}; the rest train with CE alone):", "",
                      "| method | " + " | ".join(f"{c:.0%} maps" for c in covs) + " | gap closed at " + f"{covs[-1]:.0%} | target |",
                      "|---|" + "---|" * (len(covs) + 2)]  # fmt: skip
            for method in [m for m in settings.methods if m in SALIENCY_METHODS]:
                cells = [
                    _pm(accs(suite=suite, method=method, clean=False, coverage=c, variant="default"))
                    for c in covs
                ]
                low = _stats(
                    accs(suite=suite, method=method, clean=False, coverage=covs[-1], variant="default")
                )[0]
                gap = gap_closed(low, ce, clean)
                target = ""
                if method == "sage" and covs[-1] <= 0.1:
                    ok = gap is None and low >= clean - 0.02 or gap is not None and gap >= 0.8
                    target = f"gap ≥ 80% at {covs[-1]:.0%}: {_mark(ok)}"
                    summary.append(
                        (
                            f"{suite}: sage closes ≥ 80% of the gap with {covs[-1]:.0%} maps",
                            _gap_text(gap),
                            ok,
                        )
                    )
                lines.append(f"| {method} | " + " | ".join(cells) + f" | {_gap_text(gap)} | {target} |")
        lines.append("")
    if ablation and any(r["variant"] != "default" for r in records):
        suite = settings.ablation_suite
        lines += [f"## SAGE ablation ({suite}, {settings.ablation_seeds} seeds)", "",
                  "Each row changes one knob from the defaults in `sage/config.py` (`SageOptions`).", "",
                  "| variant | overrides | " + " | ".join(f"{c:.0%} maps" for c in settings.ablation_coverages) + " | s/epoch (mean of its runs) |",
                  "|---|---|" + "---|" * (len(settings.ablation_coverages) + 1)]  # fmt: skip
        for variant in settings.ablations:
            cells, secs = [], []
            for c in settings.ablation_coverages:
                rows = [r for r in select(suite=suite, method="sage", clean=False, coverage=c, variant=variant)
                        if r["seed"] < settings.ablation_seeds]  # fmt: skip
                cells.append(_pm([r["test_accuracy"] for r in rows]))
                secs += [r["seconds_per_epoch"] for r in rows]
            sec_text = f"{_stats(secs)[0]:.2f}" if secs else "n/a"
            lines.append(
                f"| {variant} | `{json.dumps(ABLATIONS[variant])}` | "
                + " | ".join(cells)
                + f" | {sec_text} |"
            )
        lines.append("")
    passed = sum(ok for *_, ok in summary)
    head = [
        "## Targets",
        "",
        f"{passed} of {len(summary)} targets met.",
        "",
        "| target | value | result |",
        "|---|---|---|",
    ]
    head += [f"| {name} | {value} | {_mark(ok)} |" for name, value, ok in summary]
    return "\n".join(lines[:3] + [lines[3], ""] + head + [""] + lines[4:]) + "\n"


def _gap_text(gap: float | None) -> str:
    return "no gap" if gap is None else f"{gap * 100:.0f}%"


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
