"""The claim the product rests on: with expert saliency, SAGE learns the object, not the decoy."""

import pytest

from sage.config import TrainConfig
from sage.synthetic import make_dataset
from sage.training import fit


@pytest.mark.slow
def test_sage_beats_cross_entropy_on_a_decorrelated_decoy_split(tmp_path):
    data = make_dataset("decoy-shapes", tmp_path / "data", n=300, seed=0, image_size=32)
    options = dict(
        backbone="tiny", image_size=32, epochs=6, batch_size=32, seed=0, device="cpu", augment="none"
    )
    ce = fit(TrainConfig.from_dict({**options, "method": "ce"}), data, tmp_path / "ce")
    sage = fit(TrainConfig.from_dict({**options, "method": "sage"}), data, tmp_path / "sage")
    # both fit the (decoy-carrying) validation split; only SAGE transfers to the decorrelated test split
    assert ce["val_accuracy"] > 0.9
    assert sage["test_accuracy"] >= ce["test_accuracy"] + 0.2, (sage["test_accuracy"], ce["test_accuracy"])
    assert sage["test"]["alignment"]["pointing_game"] > ce["test"]["alignment"]["pointing_game"]
