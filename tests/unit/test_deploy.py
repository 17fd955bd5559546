"""The Dockerfile and docker-compose.yml, checked without a Docker engine: base images, the Python
the image runs, stage references, files copied, and every command an entry point that parses."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from app.settings import Settings
from worker.__main__ import studio_parser as build_parser  # the `sage-studio` entry point

ROOT = Path(__file__).resolve().parents[2]


def _dockerfile() -> tuple[dict[str, str], list[dict]]:
    """(global ARG defaults, stages [{"base", "name", "lines"}]) with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    args: dict[str, str] = {}
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?: AS (\S+))?", rest)
            stages.append({"base": m.group(1), "name": m.group(2), "lines": []})
        elif word == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif stages:
            stages[-1]["lines"].append((word, rest))
    return args, stages


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value)


def _stage(stages, name):
    return next(s for s in stages if s["name"] == name)


def _lineage(stages, name: str, variant: str, args) -> list[str]:
    """The chain of stage names from `name` down to its external base image."""
    names = {s["name"] for s in stages}
    chain = [name]
    base = _stage(stages, name)["base"]
    while True:
        base = _expand(base.replace("${VARIANT}", variant), args)
        if base not in names:
            return [*chain, base]
        chain.append(base)
        base = _stage(stages, base)["base"]


def test_cuda_image_runs_the_python_it_was_built_for():
    args, stages = _dockerfile()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = re.search(r">=(\d+\.\d+)", pyproject["project"]["requires-python"]).group(1)
    assert args["PYTHON_VERSION"] == wanted
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d", args["CUDA_BASE"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["UV_VERSION"])
    text = (ROOT / "Dockerfile").read_text()
    # No distribution Python: Ubuntu 24.04 has 3.12 and no python3.11 package.
    assert not re.search(r"apt-get install[^\n]*python3", text)
    python = _stage(stages, "python")
    assert ("RUN", "uv python install ${PYTHON_VERSION}") in python["lines"]
    build = _stage(stages, "build")
    assert any(
        w == "RUN" and r.startswith("uv venv --python ${PYTHON_VERSION} /opt/venv") for w, r in build["lines"]
    )
    for variant, base in (("cpu", args["CPU_BASE"]), ("cuda", args["CUDA_BASE"])):
        # The venv is made from the interpreter installed on the same base the runtime uses, and
        # the runtime gets that interpreter at the same path.
        assert _lineage(stages, "build", variant, args)[-1] == base
        assert _lineage(stages, "runtime", variant, args)[-1] == base
    runtime = _stage(stages, "runtime")
    copies = [r for w, r in runtime["lines"] if w == "COPY" and r.startswith("--from=")]
    assert "--from=python /opt/python /opt/python" in copies and "--from=build /opt/venv /opt/venv" in copies


def test_dockerfile_references_resolve():
    args, stages = _dockerfile()
    names = {s["name"] for s in stages if s["name"]}
    assert {"base-cpu", "base-cuda"} <= names and args["VARIANT"] in ("cpu", "cuda")
    for stage in stages:
        for word, rest in stage["lines"]:
            if word != "COPY":
                continue
            parts = rest.split()
            source = next((p[len("--from=") :] for p in parts if p.startswith("--from=")), None)
            paths = [p for p in parts if not p.startswith("--")][:-1]
            if source is None:
                for path in paths:
                    assert (ROOT / path).exists(), f"COPY {path}: not in the repository"
            else:
                assert source in names, f"COPY --from={source}: no such stage"
    runtime = _stage(stages, "runtime")
    cmd = next(r for w, r in runtime["lines"] if w == "CMD")
    argv = yaml.safe_load(cmd)
    assert argv[0] == "sage-studio"
    build_parser().parse_args(argv[1:])
    health = next(r for w, r in runtime["lines"] if w == "HEALTHCHECK")
    assert "/healthz" in health


def test_console_script_is_the_cli():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    module, _, func = pyproject["project"]["scripts"]["sage-studio"].partition(":")
    import importlib

    assert callable(getattr(importlib.import_module(module), func))


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_commands_are_real_entry_points():
    services = _compose()["services"]
    sage = [name for name, s in services.items() if str(s.get("image", "")).startswith("sage-studio")]
    assert {"app", "beat", "migrate", "worker-predict", "worker-train", "worker-train-multi"} <= set(sage)
    for name in sage:
        command = services[name]["command"]
        assert command[0] == "sage-studio", name
        args = build_parser().parse_args(command[1:])
        assert callable(args.func), name
        if args.command == "worker":
            assert set(args.queues.split(",")) <= {"train", "predict"}
        variant = (
            (services[name].get("build") or {}).get("args", {}).get("VARIANT", "cpu")
            if isinstance(services[name].get("build"), dict)
            else "cpu"
        )
        assert variant in ("cpu", "cuda")


def test_compose_runs_a_fleet_without_a_shared_disk():
    compose = _compose()
    services = compose["services"]
    assert {"minio", "minio-init"} <= set(services)
    sage = {n: s for n, s in services.items() if str(s.get("image", "")).startswith("sage-studio")}
    fields = set(Settings.model_fields)
    for name, service in sage.items():
        env = service["environment"]
        assert env["SAGE_STORAGE_URL"].startswith("s3://"), name
        assert "minio" in env["SAGE_S3_ENDPOINT_URL"] and {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        } <= set(env)
        for key in env:  # a misspelt setting would be ignored silently by the app
            if key.startswith("SAGE_"):
                assert key[len("SAGE_") :].lower() in fields, f"{name}: unknown setting {key}"
        assert not service.get("volumes"), f"{name} mounts a volume: workers must not share a disk"
    bucket = re.match(r"s3://([^/]+)", sage["app"]["environment"]["SAGE_STORAGE_URL"]).group(1)
    assert f"mb --ignore-existing sage/{bucket}" in " ".join(services["minio-init"]["command"])
    for name, gpus in (("worker-train", 1), ("worker-train-multi", 2)):
        command = services[name]["command"]
        listed = command[command.index("--gpus") + 1].split(",")
        device = services[name]["deploy"]["resources"]["reservations"]["devices"][0]
        assert len(listed) == gpus == device["count"] and device["capabilities"] == ["gpu"], name


@pytest.mark.parametrize(("gpus", "expected"), [("0", 1), ("0,1", 2), ("2, 3", 2)])
def test_worker_gpus_flag(gpus, expected, monkeypatch):
    from app.processes import apply_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored after the test (apply_gpus sets them)
    monkeypatch.setenv("SAGE_TRAIN_PROCESSES", "1")
    settings = apply_gpus(Settings(env="test"), gpus)
    assert settings.train_processes == expected
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == gpus.replace(" ", "")


@pytest.mark.parametrize("gpus", ["", "a", "0,0", "-1"])
def test_worker_gpus_flag_refuses_nonsense(gpus):
    from app.processes import apply_gpus

    with pytest.raises(ValueError, match="distinct GPU indices"):
        apply_gpus(Settings(env="test"), gpus)
