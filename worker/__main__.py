"""`sage-studio` (and `python -m worker`): the composition root of process start-up.

It sits above app/ and worker/: the app's commands (serve, migrate, users, tokens, import, export,
demo) come from app.cli; `worker` and `beat` (worker.start) and `model export` (worker.jobs, which
needs torch) are added here. app/ never imports worker/;
`sage-studio serve` starts its workers and beat as `python -m worker ...` child processes.
"""

from __future__ import annotations

import argparse
import sys

from app.cli import build_parser
from app.services.jobs import EXPORT_FORMATS
from app.settings import get_settings


def cmd_worker(args: argparse.Namespace) -> int:
    from app.processes import apply_gpus
    from worker.start import run_worker

    settings = get_settings()
    if args.gpus is not None:
        try:
            settings = apply_gpus(settings, args.gpus)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return run_worker(settings, args.queues.split(","), args.concurrency)


def cmd_beat(args: argparse.Namespace) -> int:
    from worker.start import run_beat

    return run_beat(get_settings())


def cmd_model_export(args: argparse.Namespace) -> int:
    """Write a model version's archive in this process (no worker needed)."""
    import json
    from pathlib import Path

    from app.cli import database, fail
    from app.services.errors import ServiceError
    from app.storage import get_storage
    from app.tables import ModelVersion
    from worker.jobs import write_export
    from worker.registry import ArtifactError

    settings = get_settings()
    with database(settings) as session:
        model = session.get(ModelVersion, args.mid)
        if model is None:
            return fail(f"no model {args.mid}; `GET /api/v1/projects/{{pid}}/models` lists them")
        try:
            card = write_export(
                session, settings.resolved_data_dir, model, args.format, Path(args.out), get_storage(settings)
            )
        except (ArtifactError, ServiceError, ValueError, FileNotFoundError) as exc:
            return fail(str(exc))
    print(json.dumps({"out": args.out, "format": args.format, "sha256": card["archive_sha256"],
                      "bytes": card["archive_bytes"], "model_version": model.version}))  # fmt: skip
    return 0


def add_worker_commands(sub) -> None:
    p = sub.add_parser("worker", help="start a Celery worker")
    p.add_argument("--queues", default="train,predict", help="comma-separated: train, predict")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument(
        "--gpus",
        default=None,
        help="train worker: GPU indices it owns, e.g. 0 (one worker per GPU) or 0,1 (one worker "
        "training each run on both GPUs with DistributedDataParallel)",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="start the periodic scheduler (stale-run reaper, retraining)")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("model", help="model versions: export")
    model_sub = p.add_subparsers(dest="model_command", required=True)
    q = model_sub.add_parser(
        "export", help="write a model version as an archive (model, model.json, SHA256SUMS)"
    )
    q.add_argument("mid", type=int, help="model version id")
    q.add_argument("--format", required=True, choices=EXPORT_FORMATS)
    q.add_argument("--out", required=True, help="the .zip to write")
    q.set_defaults(func=cmd_model_export)


def studio_parser() -> argparse.ArgumentParser:
    """The parser of every `sage-studio` command (the app's plus worker and beat)."""
    return build_parser(add_worker_commands)


def main(argv: list[str] | None = None) -> int:
    args = studio_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
