"""sage/ is a plain PyTorch library: importing all of it must not pull in the web or queue stack."""

import subprocess
import sys

MODULES = [
    "sage", "sage.cli", "sage.config", "sage.data", "sage.transforms", "sage.synthetic", "sage.views",
    "sage.models", "sage.methods", "sage.cam", "sage.training", "sage.evaluation", "sage.metrics",
    "sage.inference", "sage.heatmaps", "sage.bench",
]  # fmt: skip
FORBIDDEN = ["fastapi", "starlette", "sqlalchemy", "celery", "kombu", "app", "worker", "alembic", "redis"]


def test_sage_imports_no_web_database_or_queue_modules():
    code = (
        "import importlib, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"sage imported: {result.stdout.strip()}"


def test_training_options_validate_without_torch():
    """The web process validates options with TrainConfig before queueing a run; it must not load torch."""
    code = (
        "import sys\n"
        "from sage.config import TrainConfig\n"
        "TrainConfig.from_dict({'method': 'sage', 'backbone': 'resnet18', 'epochs': 2})\n"
        "try:\n"
        "    TrainConfig.from_dict({'backbone': 'resnet9000'})\n"
        "except ValueError as exc:\n"
        "    print('error:', exc)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stdout.strip().splitlines()
    assert "resnet9000" in lines[0] and "resnet18" in lines[0]
    assert lines[-1] == "False", "validating training options imported torch"


def test_config_backbones_match_the_model_registry():
    from sage.config import BACKBONES
    from sage.models import available_models

    assert sorted(BACKBONES) == sorted(available_models())
