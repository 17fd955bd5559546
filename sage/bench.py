"""`python -m sage bench`: the fair comparison of every method on the synthetic suites.

The protocol (bench/README.md) is enforced here, not only described:
1. Tuning: every method gets the same number of configurations (`BenchSettings.configs_per_method`
   entries of its `SEARCH_SPACES` list) and the same epochs, trained on datasets drawn from the
   tuning seeds whose validation split has a randomised shortcut (`make_dataset(val_shortcut=
   False)`). A tuning run records its validation accuracy only; its test split is never read.
2. Choice: `choose_configs` takes, per suite and method, the configuration with the best mean
   validation accuracy over the tuning seeds (ties go to the earlier entry, the default).
3. Report: the chosen configurations are trained on datasets drawn from the report seeds, which
   `BenchSettings` refuses to share with the tuning seeds; the report gives the mean test accuracy
   with a 95% t-interval and the paired difference of every method against `sage` (same seed,
   same dataset) with its 95% t-interval.

Results go to WORK/results.json as they finish (a rerun skips runs already there with the same
settings), the report to bench/ml.md.
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

from sage.config import Method, TrainConfig
from sage.synthetic import KINDS, make_dataset

# The methods compared (sage-inverted, a sanity check rather than a competitor, is left out).
COMPARED = tuple(m for m in Method if m is not Method.SAGE_INVERTED)
REFERENCE = Method.SAGE

# Per method, the configurations tuning may try, its default first. Each list varies the method's
# main weight over about the same relative range (ce, which has none, its learning rate; ce-swap,
# which has no weight, how S is preprocessed). Only the first `configs_per_method` are used.
SEARCH_SPACES: dict[str, list[dict[str, Any]]] = {
    Method.CE: [{}, {"lr": 1e-3}, {"lr": 4e-3}],
    Method.BLUR: [{}, {"baselines": {"blur_sigma": 0.0625}}, {"baselines": {"blur_sigma": 0.25}}],
    Method.CYBORG: [{}, {"baselines": {"cyborg_alpha": 0.5}}, {"baselines": {"cyborg_alpha": 0.9}}],
    Method.RRR: [{}, {"baselines": {"rrr_balance": 0.1}}, {"baselines": {"rrr_balance": 10.0}}],
    Method.GRADIA: [{}, {"baselines": {"gradia_lambda": 1.0}}, {"baselines": {"gradia_lambda": 10.0}}],
    Method.CE_SWAP: [{}, {"sage": {"saliency_mode": "continuous"}}, {"sage": {"saliency_mode": "threshold"}}],
    Method.CE_JSD: [{}, {"sage": {"lambda_js": 1.0}}, {"sage": {"lambda_js": 10.0}}],
    Method.SAGE_PAPER: [{}, {"sage": {"lambda_js": 1.0}}, {"sage": {"lambda_js": 10.0}}],
    Method.SAGE: [{}, {"sage": {"lambda_js": 1.0}}, {"sage": {"lambda_js": 10.0}}],
    Method.SAGE_INVERTED: [{}, {"sage": {"lambda_js": 1.0}}, {"sage": {"lambda_js": 10.0}}],
}
assert set(SEARCH_SPACES) == set(Method), "every method needs a search space"


@dataclass
class BenchSettings:
    suites: list[str] = field(default_factory=lambda: ["decoy-digits"])
    methods: list[str] = field(default_factory=lambda: list(COMPARED))
    tuning_seeds: list[int] = field(default_factory=lambda: [100])
    report_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    configs_per_method: int = 3
    epochs: int = 12
    n: int = 360
    data_size: int = 64
    image_size: int = 32
    backbone: str = "tiny"
    batch_size: int = 32
    lr: float = 2e-3
    augment: str = "none"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """The protocol's rules: disjoint seed sets, the same budget for every method."""
        shared = sorted(set(self.tuning_seeds) & set(self.report_seeds))
        if shared:
            raise ValueError(f"tuning and report seeds must be disjoint; both hold {shared}")
        if not self.tuning_seeds or len(self.report_seeds) < 2:
            raise ValueError("the protocol needs at least one tuning seed and two report seeds")
        for suite in self.suites:
            if suite not in KINDS:
                raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(KINDS)}")
        for method in self.methods:
            if method not in SEARCH_SPACES:
                raise ValueError(f"unknown method {method!r}; choose from {', '.join(SEARCH_SPACES)}")
            if len(SEARCH_SPACES[method]) < self.configs_per_method:
                raise ValueError(
                    f"{method} has {len(SEARCH_SPACES[method])} configurations, fewer than the "
                    f"{self.configs_per_method} every method is tuned with"
                )
        if self.configs_per_method < 1:
            raise ValueError("configs_per_method must be at least 1")

    @classmethod
    def preset(cls, name: str) -> BenchSettings:
        if name == "smoke":  # seconds: proves the pipeline and the report, not the science
            return cls(suites=["decoy-shapes"], tuning_seeds=[100], report_seeds=[0, 1], configs_per_method=2,
                       epochs=1, n=40, data_size=32, image_size=16)  # fmt: skip
        if name != "full":
            raise ValueError(f"unknown bench preset {name!r}; use full or smoke")
        return cls()

    def with_overrides(self, overrides: dict[str, Any]) -> BenchSettings:
        return dataclasses.replace(self, **overrides)

    def space(self, method: str) -> list[dict[str, Any]]:
        return SEARCH_SPACES[method][: self.configs_per_method]

    def train_options(self) -> dict[str, Any]:
        # allow_coarse_cam: the smoke preset's 16 px give tiny a 4x4 CAM grid
        return dict(backbone=self.backbone, image_size=self.image_size, epochs=self.epochs, batch_size=self.batch_size,
                    lr=self.lr, augment=self.augment, device="cpu", amp=False, allow_coarse_cam=True)  # fmt: skip

    def fingerprint(self) -> str:
        keys = ("epochs", "n", "data_size", "image_size", "backbone", "batch_size", "lr", "augment")
        blob = json.dumps(
            {k: getattr(self, k) for k in keys} | {"defaults": TrainConfig().to_dict()}, sort_keys=True
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class RunSpec:
    stage: str  # "tune", "report" or "ceiling" (ce on the clean twin, report seeds)
    suite: str
    method: str
    seed: int
    config: int = 0  # index into the method's search space

    def key(self, fingerprint: str) -> str:
        return f"{fingerprint}|{self.stage}|{self.suite}|{self.method}|{self.config}|{self.seed}"


def plan_tuning(settings: BenchSettings) -> list[RunSpec]:
    return [
        RunSpec("tune", suite, method, seed, i)
        for suite in settings.suites
        for seed in settings.tuning_seeds
        for method in settings.methods
        for i in range(len(settings.space(method)))
    ]


def plan_report(settings: BenchSettings, chosen: dict[tuple[str, str], int]) -> list[RunSpec]:
    runs = []
    for suite in settings.suites:
        for seed in settings.report_seeds:
            runs.append(RunSpec("ceiling", suite, Method.CE, seed))
            runs += [RunSpec("report", suite, m, seed, chosen[(suite, m)]) for m in settings.methods]
    return runs


def choose_configs(settings: BenchSettings, records: list[dict]) -> dict[tuple[str, str], int]:
    """Per (suite, method), the configuration index with the best mean validation accuracy over the
    tuning seeds. Reads only tuning records, only their `val_accuracy`; a record from another seed
    or stage is an error (it would mean report data leaking into the choice)."""
    scores: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        if r["stage"] != "tune" or r["seed"] not in settings.tuning_seeds:
            raise ValueError(f"configuration choice got a non-tuning record: {r['key']}")
        scores.setdefault((r["suite"], r["method"], r["config"]), []).append(r["val_accuracy"])
    chosen = {}
    for suite in settings.suites:
        for method in settings.methods:
            means = [
                float(np.mean(scores.get((suite, method, i), [-1.0])))
                for i in range(len(settings.space(method)))
            ]
            chosen[(suite, method)] = int(np.argmax(means))  # first of the best: the default wins ties
    return chosen


def run_bench(
    settings: BenchSettings,
    out_md: Path,
    work_dir: Path,
    fresh: bool = False,
    jobs: int = 1,
    report_only: bool = False,
) -> list[dict]:
    """Run (or resume) tuning then the report runs, and write the markdown report; returns the
    records (tuning and report).

    report_only: train nothing; write the report from the runs already in WORK/results.json (the
    tuning must be complete; report runs still missing are listed at the top of the report).

    jobs > 1 trains that many runs at once, each in its own process with one thread (the datasets
    are written first, by this process).
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    results_path = work_dir / "results.json"
    fingerprint = settings.fingerprint()
    done: dict[str, dict] = {}
    if results_path.is_file() and not fresh:
        done = {r["key"]: r for r in json.loads(results_path.read_text())}
    started = time.perf_counter()

    def execute(runs: list[RunSpec]) -> list[dict]:
        if report_only:
            return [done[s.key(fingerprint)] for s in runs if s.key(fingerprint) in done]
        todo = [(i, spec) for i, spec in enumerate(runs, start=1) if spec.key(fingerprint) not in done]
        for _, spec in todo:
            dataset_dir(settings, work_dir, spec.suite, spec.seed, spec.stage)

        def record_done(i: int, spec: RunSpec, record: dict) -> None:
            done[record["key"]] = record | {"jobs": jobs}
            _atomic_write(results_path, json.dumps(list(done.values()), indent=1))
            score = (
                f"test {record['test_accuracy']:.3f}"
                if "test_accuracy" in record
                else f"val {record['val_accuracy']:.3f}"
            )
            print(f"[{spec.stage} {i}/{len(runs)}] {spec.suite} {spec.method} config {spec.config} seed {spec.seed}: "
                  f"{score} ({record['seconds_per_epoch']:.2f} s/epoch, {time.perf_counter() - started:.0f}s elapsed)",
                  flush=True)  # fmt: skip

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
        return [done[s.key(fingerprint)] for s in runs]

    tuning = execute(plan_tuning(settings))
    if len(tuning) < len(plan_tuning(settings)):
        raise ValueError(
            f"{len(plan_tuning(settings)) - len(tuning)} tuning runs are missing; run the bench first"
        )
    chosen = choose_configs(settings, tuning)
    planned = plan_report(settings, chosen)
    report = execute(planned)
    text = render_report(settings, tuning, report, chosen)
    if len(report) < len(planned):
        missing = [f"{'ceiling' if s.stage == 'ceiling' else s.method} seed {s.seed}"
                   for s in planned if s.key(fingerprint) not in done]  # fmt: skip
        head, rest = text.split("\n", 1)
        text = (f"{head}\n\n**Partial report: {len(missing)} of {len(planned)} report runs had not finished** "
                f"({', '.join(missing)}); intervals use the seeds that had.\n{rest}")  # fmt: skip
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text(text)
    return tuning + report


def _init_bench_process() -> None:
    torch.set_num_threads(1)  # identical conditions for every method; timing ratios stay comparable


def run_options(settings: BenchSettings, spec: RunSpec) -> dict[str, Any]:
    """The TrainConfig options of one run: the shared budget, the method, its configuration."""
    options = settings.train_options() | {"method": spec.method, "seed": spec.seed}
    return _merge(options, settings.space(spec.method)[spec.config] if spec.stage != "ceiling" else {})


def _bench_run(settings: BenchSettings, spec: RunSpec, fingerprint: str, work_dir: Path, slot: str) -> dict:
    from sage.training import fit

    data_dir = dataset_dir(settings, work_dir, spec.suite, spec.seed, spec.stage)
    t0 = time.perf_counter()
    out_dir = work_dir / "runs" / slot
    metrics = fit(TrainConfig.from_dict(run_options(settings, spec)), data_dir, out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    record = {
        "key": spec.key(fingerprint), **dataclasses.asdict(spec),
        "val_accuracy": metrics["val_accuracy"],
        "seconds_per_epoch": float(np.median([h["seconds"] for h in metrics["history"]])),
        "wall_seconds": time.perf_counter() - t0,
    }  # fmt: skip
    if spec.stage != "tune":  # a tuning run never records what its test split says
        record["test_accuracy"] = metrics["test_accuracy"]
        record["alignment"] = metrics["test"].get("alignment", {})
    return record


def dataset_dir(settings: BenchSettings, work_dir: Path, suite: str, seed: int, stage: str) -> Path:
    """The dataset of one run: tuning datasets have a validation split with a random shortcut; the
    ceiling trains on the clean twin (same objects and test split as the report dataset)."""
    clean = stage == "ceiling"
    tune = stage == "tune"
    if tune != (seed in settings.tuning_seeds):
        raise ValueError(f"seed {seed} is not a {'tuning' if tune else 'report'} seed")
    name = f"{suite}-n{settings.n}-p{settings.data_size}-s{seed}{'-clean' if clean else ''}{'-valrandom' if tune else ''}"
    path = work_dir / "data" / name
    if not (path / "labels.csv").is_file():
        make_dataset(suite, path, n=settings.n, seed=seed, clean=clean, image_size=settings.data_size,
                     val_shortcut=not tune)  # fmt: skip
    return path


# -- statistics -------------------------------------------------------------------------------------


def t_interval(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its two-sided t-interval over independent values (seeds)."""
    from scipy import stats

    arr = np.asarray(values, dtype=np.float64)
    if len(arr) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(arr.mean())
    if len(arr) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(arr) - 1) * arr.std(ddof=1) / np.sqrt(len(arr)))
    return mean, mean - half, mean + half


def paired_differences(records: list[dict], method: str, reference: str, suite: str) -> list[float]:
    """Per report seed, test accuracy of `method` minus `reference` (same dataset, same seed)."""
    by = {
        (r["method"], r["seed"]): r["test_accuracy"]
        for r in records
        if r["suite"] == suite and r["stage"] == "report"
    }
    seeds = sorted({s for m, s in by if m == method} & {s for m, s in by if m == reference})
    return [by[(method, s)] - by[(reference, s)] for s in seeds]


def _ci(values: list[float], scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    mean, low, high = t_interval(values)
    if np.isnan(mean):
        return "n/a"
    sign = "+" if signed else ""
    return (
        f"{mean * scale:{sign}.{digits}f} [{low * scale:{sign}.{digits}f}, {high * scale:{sign}.{digits}f}]"
    )


# -- report ---------------------------------------------------------------------------------------


def render_report(
    settings: BenchSettings, tuning: list[dict], report: list[dict], chosen: dict[tuple[str, str], int]
) -> str:
    jobs = max((r.get("jobs", 1) for r in report), default=1)
    k = settings.configs_per_method
    lines = [
        "# SAGE benchmark (generated by `python -m sage bench`; do not edit by hand)",
        "",
        "Protocol: bench/README.md. Every method is tuned with the same budget "
        f"({k} configurations, {settings.epochs} epochs each) on tuning seeds {settings.tuning_seeds}, whose "
        "validation split has a randomised shortcut, and chosen by validation accuracy only; the chosen "
        f"configuration is then trained on report seeds {settings.report_seeds} (disjoint from the tuning seeds). "
        f"Backbone `{settings.backbone}`, {settings.image_size} px inputs (datasets drawn at {settings.data_size} px), "
        f"{settings.n} images per dataset (60/20/20 train/val/test), {settings.epochs} epochs, batch "
        f"{settings.batch_size}, AdamW lr {settings.lr} cosine unless the configuration changes it, augmentation "
        f"`{settings.augment}`, maps on every training image. Suites: {', '.join(settings.suites)}. **This is a smaller "
        "protocol than the previous bench/ml.md** (which had three suites, 600 images, 20 epochs and partial-map and "
        "ablation tables, but tuned on its test seeds): it was sized to run on a shared 2-core machine at nice 19 "
        "(bench/README.md); in exchange every method is tuned alike and every number has an interval. "
        f"CPU, 1 thread per run, {jobs} run{'s' if jobs > 1 else ''} at a time, on a machine shared with other work, "
        "so seconds per epoch are rough "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores shared, torch {torch.__version__}).",
        "",
        "Test splits carry a random decoy; train (and the report datasets' val) carry the class-coded decoy. Test "
        f"accuracy in %, mean over the {len(settings.report_seeds)} report seeds with its 95% t-interval in brackets; "
        f"Δ vs {REFERENCE}: the mean over seeds of the paired difference (method − {REFERENCE}, same dataset and "
        "seed) with its 95% t-interval; an interval that excludes 0 is a difference the seeds support. Pearson r: "
        "Grad-CAM of the predicted class vs the human map on the test split. s/epoch: training only, median over "
        "a run's epochs, mean over seeds.",
        "",
    ]
    verdicts: list[str] = []
    for suite in settings.suites:
        rows = [r for r in report if r["suite"] == suite]
        ceiling = [r["test_accuracy"] for r in rows if r["stage"] == "ceiling"]
        ce_sec = np.mean(
            [r["seconds_per_epoch"] for r in rows if r["stage"] == "report" and r["method"] == Method.CE]
            or [np.nan]
        )
        lines += [f"## {suite}", "", f"Clean ceiling (ce on the clean twin, report seeds): {_ci(ceiling)}.", "",
                  f"| method | chosen configuration | test acc [95% CI] | Δ vs {REFERENCE} [95% CI] | Pearson r | s/epoch | × ce |",
                  "|---|---|---|---|---|---|---|"]  # fmt: skip
        ref_mean = t_interval(
            [r["test_accuracy"] for r in rows if r["stage"] == "report" and r["method"] == REFERENCE]
        )[0]
        for method in settings.methods:
            mine = [r for r in rows if r["stage"] == "report" and r["method"] == method]
            if not mine:
                continue
            accs = [r["test_accuracy"] for r in mine]
            diff = paired_differences(report, method, REFERENCE, suite) if method != REFERENCE else []
            sec = float(np.mean([r["seconds_per_epoch"] for r in mine]))
            pearson = [r.get("alignment", {}).get("pearson", np.nan) for r in mine]
            config = json.dumps(settings.space(method)[chosen[(suite, method)]]) or "{}"
            lines.append(
                f"| {method} | `{config}` | {_ci(accs)} | {_ci(diff, signed=True) if diff else '—'} | "
                f"{np.nanmean(pearson) if not all(np.isnan(pearson)) else float('nan'):.3f} | {sec:.2f} | {sec / ce_sec:.2f} |"
            )
            if method != REFERENCE and diff:
                mean, low, high = t_interval(diff)
                if mean >= 0:
                    support = (
                        "the interval excludes 0: the seeds support it"
                        if len(diff) > 1 and low > 0
                        else "the interval includes 0"
                    )
                    verdicts.append(f"{suite}: `{method}` is at or above `{REFERENCE}` on average "
                                    f"({np.mean(accs) * 100:.1f} vs {ref_mean * 100:.1f}; paired difference "
                                    f"{_ci(diff, signed=True)}, {support}).")  # fmt: skip
                elif len(diff) < 2:
                    verdicts.append(f"{suite}: `{REFERENCE}` is {-mean * 100:.1f} points above `{method}` on the one "
                                    "seed that finished; no interval yet.")  # fmt: skip
                elif not high < 0:
                    verdicts.append(f"{suite}: `{REFERENCE}` beats `{method}` by {-mean * 100:.1f} points on average, "
                                    "but the interval of the paired difference includes 0 (not supported by these seeds).")  # fmt: skip
        lines.append("")
    lines += ["## Where SAGE does not win", ""]
    lines += [f"- {v}" for v in verdicts] or [
        "- Nowhere: on every suite `sage` beats every method with an interval that excludes 0."
    ]
    lines += ["", "## Tuning (validation accuracy %, mean over the tuning seeds; the chosen configuration in bold)", "",
              "| suite | method | " + " | ".join(f"config {i}" for i in range(k)) + " |",
              "|---|---|" + "---|" * k]  # fmt: skip
    for suite in settings.suites:
        for method in settings.methods:
            cells = []
            for i, space_config in enumerate(settings.space(method)):
                vals = [
                    r["val_accuracy"]
                    for r in tuning
                    if (r["suite"], r["method"], r["config"]) == (suite, method, i)
                ]
                text = f"`{json.dumps(space_config)}` {np.mean(vals) * 100:.1f}" if vals else "n/a"
                cells.append(f"**{text}**" if chosen.get((suite, method)) == i else text)
            lines.append(f"| {suite} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
