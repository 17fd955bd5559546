"""`python -m sage`: make-dataset, train, evaluate, predict, export, bench (DESIGN.md section 7)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from sage.config import Method

# argparse names invalid choices by their repr: offer the plain names, not the members' <Method...> reprs
METHOD_NAMES = [m.value for m in Method]


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _clean_json(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean_json(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_clean_json(obj), default=_json_default, indent=None))


def _parse_set(pairs: list[str]) -> dict[str, Any]:
    """--set key=value (value parsed as JSON when it can be, else a string); dotted keys nest."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        target = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            target = target.setdefault(p, {})
        target[leaf] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = (
            _merge(merged.get(k, {}), v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
        )
    return merged


def cmd_make_dataset(args: argparse.Namespace) -> int:
    from sage.synthetic import make_dataset

    out = make_dataset(
        args.kind, args.out, n=args.n, seed=args.seed, clean=args.clean, image_size=args.image_size
    )
    print(f"wrote {args.kind}{' (clean)' if args.clean else ''} with {args.n} images to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sage.config import TrainConfig
    from sage.training import fit

    options: dict[str, Any] = {}
    if args.config:
        options = json.loads(Path(args.config).read_text())
    for key in ("method", "backbone", "epochs", "image_size", "seed", "device", "batch_size", "lr"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.pretrained:
        options["pretrained_path"] = args.pretrained
    if args.checkpoint:
        options["checkpoint"] = True
    options = _merge(options, _parse_set(args.set))
    config = TrainConfig.from_dict(options)

    def progress(event: dict) -> None:
        if not args.quiet and event["val"] is not None:
            losses = " ".join(f"{k}={v:.4f}" for k, v in event["losses"].items())
            print(
                f"epoch {event['epoch']}/{event['epochs']} {losses} val_loss={event['val']['loss']:.4f} "
                f"val_acc={event['val']['accuracy']:.3f} {event['images_per_s']:.0f} img/s eta {event['eta_s']:.0f}s",
                file=sys.stderr,
            )

    metrics = fit(config, args.data, args.out, progress=progress, resume=args.resume)
    summary = {k: v for k, v in metrics.items() if k not in ("history", "val", "test")}
    summary["model"] = str(Path(args.out) / "model.pt")
    _print_json(summary)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sage.data import load_split, read_dataset
    from sage.evaluation import evaluate
    from sage.inference import Predictor

    model_path = Path(args.model)
    if model_path.is_dir():
        model_path = model_path / "model.pt"
    predictor = Predictor.load(model_path, device=args.device)
    index = read_dataset(args.data, predictor.labels)
    samples = index.split(args.split) if args.split != "all" else index.samples
    if not samples:
        raise ValueError(f"{args.data} has no images in split {args.split!r}")
    tensors = load_split(index, samples, predictor.image_size, window=predictor.window)
    metrics = evaluate(predictor.model, tensors, predictor.labels, predictor.device)
    metrics["split"] = args.split
    metrics["labels"] = predictor.labels
    if args.json:
        _print_json(metrics)
    else:
        print(f"{args.split}: accuracy {metrics['accuracy']:.4f}, balanced {metrics['balanced_accuracy']:.4f}, "
              f"macro-F1 {metrics['macro_f1']:.4f}, n={metrics['n']}")  # fmt: skip
        if "alignment" in metrics:
            print("alignment: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["alignment"].items()))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from sage.batch import ProgressBar, iter_inputs, load_model, predict_batch

    model = load_model(args.model, device=args.device)
    inputs = iter_inputs(args.images)
    if not inputs:
        raise ValueError(f"{args.images} holds no images ({', '.join(('png', 'jpeg', 'tiff', 'bmp'))})")
    bar = None if args.quiet else ProgressBar(len(inputs))
    result = predict_batch(
        model, inputs, args.out, heatmaps=args.heatmaps, progress=bar.update if bar else None
    )
    _print_json({"predicted": result.predicted, "failed": len(result.failed), "out": str(args.out)})
    return 0 if result.predicted else 2


def cmd_export(args: argparse.Namespace) -> int:
    from sage.export import export_archive

    model = Path(args.model)
    card = export_archive(model / "model.pt" if model.is_dir() else model, args.out, args.format)
    _print_json({"out": str(args.out), "format": args.format, "sha256": card["archive_sha256"]})
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from sage.bench import BenchSettings, run_bench

    settings = BenchSettings.preset(args.preset)
    overrides = {
        "suites": args.suite, "methods": args.methods, "tuning_seeds": args.tuning_seeds,
        "report_seeds": args.report_seeds, "configs_per_method": args.configs, "epochs": args.epochs,
        "n": args.n, "image_size": args.image_size, "backbone": args.backbone,
    }  # fmt: skip
    settings = settings.with_overrides({k: v for k, v in overrides.items() if v is not None})
    run_bench(settings, out_md=Path(args.out), work_dir=Path(args.work), fresh=args.fresh, jobs=args.jobs,
              report_only=args.report_only)  # fmt: skip
    print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sage.synthetic import KINDS

    parser = argparse.ArgumentParser(prog="python -m sage", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="write a synthetic dataset folder with a shortcut")
    p.add_argument("kind", choices=list(KINDS))
    p.add_argument("out")
    p.add_argument("--n", type=int, default=600, help="number of images (default 600)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--clean", action="store_true", help="the shortcut carries no class information (the ceiling)"
    )
    p.add_argument(
        "--image-size", type=int, default=64, help="side of the written images in pixels (default 64)"
    )
    p.set_defaults(func=cmd_make_dataset)

    p = sub.add_parser("train", help="train a model on a dataset folder; prints the metrics as JSON")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="run folder; model.pt is written there")
    p.add_argument("--method", choices=METHOD_NAMES)
    p.add_argument("--backbone")
    p.add_argument("--epochs", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--pretrained", help="local weights file for the backbone")
    p.add_argument("--config", help="JSON file of training options (TrainConfig.from_dict)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any option, e.g. sage.margin=0.3"
    )
    p.add_argument("--checkpoint", action="store_true", help="write checkpoint.pt every epoch")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint.pt")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained model on a dataset split")
    p.add_argument("--model", required=True, help="model.pt or the run folder holding it")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict a folder or zip of images; writes predictions.csv")
    p.add_argument("--model", required=True, help="run folder, model.pt, or an export archive (.zip)")
    p.add_argument("--images", required=True, help="a folder (searched recursively) or a zip of images")
    p.add_argument("--out", required=True, help="output folder: predictions.csv [, heatmaps/]")
    p.add_argument("--heatmaps", action="store_true", help="write Grad-CAM PNGs at each image's size")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a model as an archive (TorchScript, ONNX or state dict)")
    p.add_argument("--model", required=True, help="run folder or model.pt")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx", "state_dict"))
    p.add_argument("--out", required=True, help="the archive (.zip) to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "bench", help="the fair comparison of every method (bench/README.md); writes a markdown report"
    )
    p.add_argument("--preset", default="full", choices=("full", "smoke"))
    p.add_argument("--suite", nargs="+", choices=list(KINDS), help="dataset kinds")
    p.add_argument("--methods", nargs="+", choices=METHOD_NAMES)
    p.add_argument("--tuning-seeds", type=int, nargs="+", help="seeds that choose configurations")
    p.add_argument("--report-seeds", type=int, nargs="+", help="seeds the tables report (disjoint)")
    p.add_argument("--configs", type=int, help="configurations tried per method (the same for all)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--n", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--backbone")
    p.add_argument("--out", default="bench/ml.md")
    p.add_argument("--work", default="bench/out", help="datasets and the resumable results.json")
    p.add_argument("--fresh", action="store_true", help="ignore results already in WORK/results.json")
    p.add_argument(
        "--report-only", action="store_true", help="train nothing; report the runs in WORK/results.json"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process and thread each")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
