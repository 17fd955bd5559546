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
