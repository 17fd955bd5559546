"""The `sage-studio` command line: serve, worker, beat, migrate, users, tokens, import, export, demo."""

from __future__ import annotations

import argparse
import sys

from app.settings import get_settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.db import upgrade_to_head

    settings = get_settings()
    upgrade_to_head(settings.resolved_database_url)
    print(f"database at head: {settings.resolved_database_url.split('@')[-1]}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app.processes import serve

    return serve(get_settings(), args.host, args.port, web_only=args.web_only)


def cmd_worker(args: argparse.Namespace) -> int:
    from app.processes import run_worker

    return run_worker(get_settings(), args.queues.split(","), args.concurrency)


def cmd_beat(args: argparse.Namespace) -> int:
    from app.processes import run_beat

    return run_beat(get_settings())


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import seed_demo

    return seed_demo(get_settings(), if_missing=args.if_missing)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sage-studio", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="upgrade the database to the latest schema")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("serve", help="start the web server (embedded mode: with workers and beat)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--web-only", action="store_true", help="start only the web server (workers and beat run elsewhere)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="start a Celery worker")
    p.add_argument("--queues", default="train,predict", help="comma-separated: train, predict")
    p.add_argument("--concurrency", type=int, default=1)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("beat", help="start the periodic scheduler (stale-run reaper, retraining)")
    p.set_defaults(func=cmd_beat)

    p = sub.add_parser("demo", help="seed the demo project and admin account")
    p.add_argument("--if-missing", action="store_true", help="do nothing when the demo project exists")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
