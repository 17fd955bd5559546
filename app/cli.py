"""The `sage-studio` command line: serve, worker, beat, migrate, users, tokens, import, export, storage, demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def cmd_migrate(args: argparse.Namespace) -> int:
    from app.db import upgrade_to_head

    settings = get_settings()
    upgrade_to_head(settings.resolved_database_url, settings)
    print(f"database at head: {settings.resolved_database_url.split('@')[-1]}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from app.processes import serve

    return serve(get_settings(), args.host, args.port, web_only=args.web_only)


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import seed_demo

    return seed_demo(get_settings(), if_missing=args.if_missing)


@contextmanager
def database(settings: Settings) -> Iterator[Session]:
    """A session in app.db's session scope (commit on success, rollback on error); the engine is
    disposed of afterwards."""
    from app.db import make_engine, make_session_factory, session_scope

    engine = make_engine(settings.resolved_database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def cmd_create_user(args: argparse.Namespace) -> int:
    import getpass

    from app.services.errors import ServiceError
    from app.services.users import create_user

    password = args.password or getpass.getpass("password: ")
    with database(get_settings()) as session:
        try:
            user = create_user(session, args.username, password, is_admin=args.admin)
        except ServiceError as exc:
            return fail(str(exc))
    print(f"created {'site admin' if user.is_admin else 'user'} {user.username!r} (id {user.id})")
    return 0


def cmd_create_token(args: argparse.Namespace) -> int:
    from app.services.errors import ServiceError
    from app.services.users import create_token, get_by_username

    with database(get_settings()) as session:
        try:
            user = get_by_username(session, args.username)
            if user is None:
                return fail(f"no user named {args.username!r}")
            _, token = create_token(session, user, args.name, args.expires_in_days)
        except ServiceError as exc:
            return fail(str(exc))
    print(token)  # alone on stdout, for scripts: TOKEN=$(sage-studio create-token ...)
    print("store this token now: it is not shown again", file=sys.stderr)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from app.services import datasets
    from app.services.errors import NotFound, ServiceError
    from app.services.projects import create_project, find_project
    from app.services.users import get_by_username
    from app.storage import get_storage
    from sage.labels_csv import parse_labels_csv

    settings = get_settings()
    with database(settings) as session:
        try:
            user = None
            if args.user:
                user = get_by_username(session, args.user)
                if user is None:
                    return fail(f"no user named {args.user!r}")
            source = datasets.open_source(Path(args.source), settings)
            try:
                project = find_project(session, args.project)
            except NotFound:
                if not args.create:
                    return fail(f"no project {args.project!r}; pass --create to make it from labels.csv")
                parsed = parse_labels_csv(datasets.read_labels(source), allow_unlabelled=True)
                for problem in parsed.problems:
                    print(f"  {problem}", file=sys.stderr)
                if parsed.problems:
                    return fail("import rejected; nothing was imported (the project was not created)")
                labels = parsed.labels
                if not labels:
                    return fail("labels.csv names no label; create the project with its labels first")
                project = create_project(session, user, name=args.project, labels=labels)
                print(
                    f"created project {project.name!r} (id {project.id}) with labels {labels}",
                    file=sys.stderr,
                )
            report = datasets.import_dataset(session, get_storage(settings), settings, project, user, source)
        except datasets.ImportRejected as exc:
            for e in exc.errors:
                print(
                    f"  {e['file']}" + (f":{e['line']}" if e.get("line") else "") + f": {e['error']}",
                    file=sys.stderr,
                )
            return fail("import rejected; nothing was imported")
        except (ServiceError, FileNotFoundError) as exc:
            return fail(str(exc))
    report.pop("image_ids", None)
    print(json.dumps(report, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from app.services import datasets
    from app.services.errors import ServiceError
    from app.services.projects import find_project
    from app.storage import get_storage

    settings = get_settings()
    storage = get_storage(settings)
    with database(settings) as session:
        out = Path(args.out)
        try:
            project = find_project(session, args.project)
            if out.suffix.lower() == ".zip":
                entries, lineage = datasets.dataset_entries(
                    session, project, only_labelled=args.only_labelled
                )
                tmp = out.with_name(out.name + ".part")
                with open(tmp, "wb") as f:
                    for chunk in datasets.export_zip_stream(storage, entries, folder=out.stem):
                        f.write(chunk)
                os.replace(tmp, out)
            else:
                lineage = datasets.write_dataset_folder(
                    session, storage, project, out, only_labelled=args.only_labelled, study=True
                )
        except ServiceError as exc:
            return fail(str(exc))
    lineage.pop("annotations", None)
    lineage.pop("adjudications", None)
    print(json.dumps({"out": str(out), **lineage}, indent=2))
    return 0


def cmd_storage_migrate(args: argparse.Namespace) -> int:
    import json

    from app.storage import StorageUrlError, get_storage, migrate_objects, storage_for_url

    settings = get_settings()
    source = get_storage(settings)
    try:
        target = storage_for_url(args.to, settings)
    except StorageUrlError as exc:
        return fail(str(exc))
    if repr(source) == repr(target):
        return fail(f"the target {args.to} is the current storage ({source!r})")
    # Model weights of earlier releases lived in artifact directories next to the objects.
    legacy = [
        (p, ".pt") for p in sorted((settings.resolved_data_dir / "models").glob("project-*/run-*/model.pt"))
    ]
    print(f"copying {source!r} -> {target!r}", file=sys.stderr)
    report = migrate_objects(
        source,
        target,
        verify_existing=args.verify_existing,
        extra_files=legacy,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(json.dumps(report, indent=2))
    if report["errors"]:
        return fail(f"{len(report['errors'])} object(s) not copied; fix them and run the command again")
    print(f"done: set SAGE_STORAGE_URL={args.to} on every web and worker process", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from app.services import objects
    from app.storage import get_storage

    settings = get_settings()
    grace = settings.orphan_grace_s if args.grace_s is None else args.grace_s
    with database(settings) as session:
        report = objects.sweep_orphans(session, get_storage(settings), grace, dry_run=args.dry_run)
    objects.write_report(settings.resolved_data_dir, report)
    print(json.dumps(asdict(report), indent=2))
    return 0


def cmd_weights_add(args: argparse.Namespace) -> int:
    """Copy the file into SAGE_WEIGHTS_DIR and store it in the object storage (recorded in the
    database), so that train workers on other machines fetch it when they need it."""
    from app.services.weights import publish
    from app.storage import get_storage
    from sage.weights import WeightsError, add_weights, weights_dir

    try:
        entry = add_weights(Path(args.file), args.name, args.backbone)
    except WeightsError as exc:
        return fail(str(exc))
    settings = get_settings()
    try:
        with database(settings) as session:
            row = publish(session, get_storage(settings), entry, weights_dir())
            key = row.storage_key
    except Exception as exc:  # noqa: BLE001 - the local copy stands; say why the fleet cannot see it
        return fail(f"added {entry.name} to {weights_dir()} but could not store it for other workers: {exc}")
    print(f"added {entry.name} ({entry.backbone}) as {entry.file}; stored as {key} for every worker")
    return 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    from sage.weights import WeightsError, list_weights, weights_dir

    try:
        entries = list_weights()
    except WeightsError as exc:
        return fail(str(exc))
    if not entries:
        print(f"no weights registered in {weights_dir()}; add one with `sage-studio weights add FILE`")
    for e in entries:
        print(
            f"{e.name}\t{e.backbone}\t{e.file}\t{e.source}{'' if e.present else ' (downloaded on first use)'}"
        )
    return 0


# Started by the composition root (worker/__main__.py, the `sage-studio` entry point), not here:
# app/ never imports worker/.
WORKER_COMMANDS = ("worker", "beat")


def build_parser(add_worker_commands: Callable[[Any], None] | None = None) -> argparse.ArgumentParser:
    """The `sage-studio` parser: the app's commands, plus `worker` and `beat` when the composition
    root passes `add_worker_commands` (it receives the subparsers object)."""
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

    if add_worker_commands is not None:
        add_worker_commands(sub)

    p = sub.add_parser("create-user", help="create an account (--admin: a site admin)")
    p.add_argument("--username", required=True)
    p.add_argument("--password", help="prompted for when omitted")
    p.add_argument("--admin", action="store_true", help="site admin: manages users and every project")
    p.set_defaults(func=cmd_create_user)

    p = sub.add_parser("create-token", help="create a personal API token; prints it once")
    p.add_argument("--username", required=True)
    p.add_argument("--name", default="cli", help="what the token is for")
    p.add_argument("--expires-in-days", type=int, default=None)
    p.set_defaults(func=cmd_create_token)

    p = sub.add_parser("import", help="import a dataset folder or zip (labels.csv, images/, saliency/)")
    p.add_argument("source", help="dataset folder or .zip")
    p.add_argument("--project", required=True, help="project name or id")
    p.add_argument("--create", action="store_true", help="create the project (labels from labels.csv)")
    p.add_argument("--user", help="username recorded as uploader (and manager of a created project)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="export a project as a dataset folder, or a .zip")
    p.add_argument("--project", required=True, help="project name or id")
    p.add_argument("--out", required=True, help="an empty folder, or a file name ending in .zip")
    p.add_argument("--only-labelled", action="store_true", help="leave out images without a label")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("storage", help="object storage: migrate to another backend")
    storage_sub = p.add_subparsers(dest="storage_command", required=True)
    p = storage_sub.add_parser(
        "migrate", help="copy every object to another backend, checking each; run again to resume"
    )
    p.add_argument(
        "--to", required=True, help="file:///path or s3://bucket/prefix (SAGE_S3_ENDPOINT_URL applies)"
    )
    p.add_argument(
        "--verify-existing", action="store_true", help="also re-hash objects already in the target"
    )
    p.set_defaults(func=cmd_storage_migrate)

    p = sub.add_parser("sweep", help="remove stored files no row uses (older than SAGE_ORPHAN_GRACE_S)")
    p.add_argument("--dry-run", action="store_true", help="only count them")
    p.add_argument("--grace-s", type=float, default=None, help="override SAGE_ORPHAN_GRACE_S")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("weights", help="the pretrained weights registry (SAGE_WEIGHTS_DIR)")
    wsub = p.add_subparsers(dest="weights_command", required=True)
    w = wsub.add_parser("add", help="copy a weights file into the registry (hash-checked)")
    w.add_argument(
        "file", help="a torchvision weights file (e.g. resnet18-f37072fd.pth) or your own state dict"
    )
    w.add_argument("--name", help="a torchvision name (ResNet18_Weights.IMAGENET1K_V1) or your own")
    w.add_argument("--backbone", help="the backbone of your own weights (default: from the file name)")
    w.set_defaults(func=cmd_weights_add)
    w = wsub.add_parser("list", help="the names training options may use as weights")
    w.set_defaults(func=cmd_weights_list)

    p = sub.add_parser("demo", help="seed the demo project and admin account")
    p.add_argument("--if-missing", action="store_true", help="do nothing when the demo project exists")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The app's commands (`python -m app.cli ...`); `sage-studio` (worker/__main__.py) adds
    `worker` and `beat`."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in WORKER_COMMANDS:
        return fail(f"start {argv[0]} with `sage-studio {argv[0]}` or `python -m worker {argv[0]}`")
    args = build_parser().parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
