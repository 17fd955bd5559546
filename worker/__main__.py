"""`sage-studio` (and `python -m worker`): the composition root of process start-up.

It sits above app/ and worker/: the app's commands (serve, migrate, users, tokens, import, export,
demo) come from app.cli, and `worker` and `beat` from worker.start. app/ never imports worker/;
`sage-studio serve` starts its workers and beat as `python -m worker ...` child processes.
"""

from __future__ import annotations

import argparse
import sys

from app.cli import build_parser
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


def studio_parser() -> argparse.ArgumentParser:
    """The parser of every `sage-studio` command (the app's plus worker and beat)."""
    return build_parser(add_worker_commands)


def main(argv: list[str] | None = None) -> int:
    args = studio_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
