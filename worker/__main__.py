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
    from worker.start import run_worker

    return run_worker(get_settings(), args.queues.split(","), args.concurrency)


def cmd_beat(args: argparse.Namespace) -> int:
    from worker.start import run_beat

    return run_beat(get_settings())


def add_worker_commands(sub) -> None:
    p = sub.add_parser("worker", help="start a Celery worker")
    p.add_argument("--queues", default="train,predict", help="comma-separated: train, predict")
    p.add_argument("--concurrency", type=int, default=1)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="start the periodic scheduler (stale-run reaper, retraining)")
    p.set_defaults(func=cmd_beat)


def main(argv: list[str] | None = None) -> int:
    args = build_parser(add_worker_commands).parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
