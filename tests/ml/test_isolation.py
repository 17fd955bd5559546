"""sage/ is a plain PyTorch library; that it imports no web, database or queue module is an
import-linter contract (pyproject.toml, tests/unit/test_foundation.py::test_layering_contracts_hold)."""

import subprocess
import sys


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
    from sage.backbones import available_models
    from sage.config import BACKBONES

    assert sorted(BACKBONES) == sorted(available_models())
