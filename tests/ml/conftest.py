"""Fixtures for the ML core tests: small synthetic datasets and a quickly trained model."""

from __future__ import annotations

import pytest
import torch

from sage.config import TrainConfig
from sage.synthetic import make_dataset

torch.set_num_threads(1)  # the CI machine is shared; small models gain nothing from more threads


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """80 decoy-shapes images at 32 px with train/val/test splits and saliency maps."""
    return make_dataset(
        "decoy-shapes", tmp_path_factory.mktemp("data") / "shapes", n=80, seed=1, image_size=32
    )


@pytest.fixture
def tiny_config():
    def build(**overrides) -> TrainConfig:
        options = dict(
            method="ce", backbone="tiny", image_size=32, epochs=1, batch_size=16, device="cpu", augment="none"
        )
        options.update(overrides)
        return TrainConfig.from_dict(options)

    return build


@pytest.fixture(scope="session")
def trained_model(shapes_dir, tmp_path_factory):
    """model.pt of a 2-epoch SAGE run on the shapes fixture."""
    from sage.training import fit

    out = tmp_path_factory.mktemp("run")
    config = TrainConfig.from_dict(dict(method="sage", image_size=32, epochs=2, batch_size=16, device="cpu"))
    fit(config, shapes_dir, out)
    return out / "model.pt"
