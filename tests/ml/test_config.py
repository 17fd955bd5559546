import json

import pytest

from sage.config import TrainConfig


def test_defaults_round_trip_through_json():
    config = TrainConfig()
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_nested_and_flat_method_options():
    a = TrainConfig.from_dict({"sage": {"margin": 0.3}, "baselines": {"cyborg_alpha": 0.2}})
    b = TrainConfig.from_dict({"sage_margin": 0.3, "baselines_cyborg_alpha": 0.2})
    assert a == b
    assert a.sage.margin == 0.3 and a.baselines.cyborg_alpha == 0.2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"methd": "sage"}, "unknown training option(s) methd"),
        ({"sage": {"margn": 1}}, "sage.margn"),
        ({"method": "magic"}, "unknown method 'magic'"),
        ({"backbone": "resnet9000"}, "unknown backbone"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"epochs": "ten"}, "epochs must be an integer"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"amp": "yes"}, "amp must be true or false"),
        ({"lr": 0}, "lr must be > 0"),
        ({"labels": ["a", "a"]}, "labels must be unique"),
        ({"labels": "a,b"}, "labels must be a list"),
        ({"sage": {"degradation": "jpeg"}}, "unknown sage.degradation"),
        ({"sage": {"strength_min": 0.9, "strength_max": 0.5}}, "sage.strength_max"),
        ({"saliency_fraction": 1.5}, "saliency_fraction"),
        ({"sage": 3}, "'sage' must be an object"),
    ],
)
def test_bad_options_are_rejected_with_the_key(options, message):
    with pytest.raises(ValueError, match=None) as info:
        TrainConfig.from_dict(options)
    assert message in str(info.value)


def test_ints_are_accepted_for_floats_and_none_for_optional_path():
    config = TrainConfig.from_dict({"lr": 1, "pretrained_path": None})
    assert isinstance(config.lr, float) and config.pretrained_path is None


def test_degradation_accepts_joined_kinds_and_rejects_unknown_ones():
    assert (
        TrainConfig.from_dict({"sage": {"degradation": "blur+noise+mean"}}).sage.degradation
        == "blur+noise+mean"
    )
    for bad in ("blur+fog", "mix+blur", "+"):
        with pytest.raises(ValueError, match="sage.degradation"):
            TrainConfig.from_dict({"sage": {"degradation": bad}})
    with pytest.raises(ValueError, match="sage.fill"):
        TrainConfig.from_dict({"sage": {"fill": "dataset"}})
