"""Tests of napari_unet.config: validation, presets and serialisation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from napari_unet.config import PRESETS, TARGET_CHANNELS, ModelConfig, NormalizationConfig
from napari_unet.errors import ConfigError


def test_defaults_are_the_reference_model() -> None:
    config = ModelConfig()
    assert (config.architecture, config.in_channels, config.base_filters, config.depth) == (
        "unet",
        3,
        64,
        4,
    )
    assert config.target == "foreground" and config.out_channels == 1
    assert config.size_multiple == 16
    assert config.normalization == NormalizationConfig("percentile", 1.0, 99.8)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"architecture": "resnet"}, "architecture 'resnet' is unknown"),
        ({"in_channels": 0}, "in_channels must be an integer from 1 to 64"),
        ({"in_channels": 65}, "in_channels"),
        ({"in_channels": 2.0}, "in_channels"),
        ({"base_filters": 0}, "base_filters must be an integer from 1 to 256"),
        ({"base_filters": 257}, "base_filters"),
        ({"depth": 0}, "depth must be an integer from 1 to 6"),
        ({"depth": 7}, "depth"),
        ({"target": "edges"}, "target 'edges' is unknown"),
        ({"deep_supervision": True}, "deep_supervision needs architecture='unetpp'"),
        ({"normalization": "percentile"}, "normalization must be a NormalizationConfig"),
        ({"normalization": {"mode": "none", "gamma": 2}}, "Unknown normalization setting"),
    ],
)
def test_model_config_bounds(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**overrides)


def test_model_config_limits_are_inclusive() -> None:
    ModelConfig(in_channels=1, base_filters=1, depth=1)
    ModelConfig(in_channels=64, base_filters=256, depth=6)
    ModelConfig(architecture="unetpp", deep_supervision=True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "zscore"}, "normalization mode 'zscore' is unknown"),
        ({"low": 50, "high": 50}, "0 <= low < high <= 100"),
        ({"low": -1}, "low < high"),
        ({"high": 100.5}, "low < high"),
    ],
)
def test_normalization_bounds(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NormalizationConfig(**kwargs)


def test_config_errors_are_value_errors() -> None:
    # callers that only know ValueError still catch them
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets(name: str) -> None:
    config = ModelConfig.from_preset(name)
    assert config.preset == name
    for key, value in PRESETS[name].items():
        assert getattr(config, key) == value


def test_preset_values() -> None:
    assert {name: p["base_filters"] for name, p in PRESETS.items()} == {
        "reference": 64,
        "fast": 32,
        "tiny": 16,
        "unetpp": 32,
    }
    assert PRESETS["unetpp"]["architecture"] == "unetpp"


def test_from_preset_overrides_and_errors() -> None:
    config = ModelConfig.from_preset("fast", in_channels=1, target="distance")
    assert (config.base_filters, config.in_channels, config.out_channels) == (32, 1, 2)
    with pytest.raises(ConfigError, match="preset 'huge' is unknown.*reference"):
        ModelConfig.from_preset("huge")
    with pytest.raises(ConfigError, match=r"Unknown model setting\(s\) \['filters'\]"):
        ModelConfig.from_preset("tiny", filters=8)


@pytest.mark.parametrize("target", sorted(TARGET_CHANNELS))
def test_out_channels_follow_target(target: str) -> None:
    assert ModelConfig(target=target).out_channels == TARGET_CHANNELS[target]


def test_to_dict_from_dict_round_trip_through_json() -> None:
    config = ModelConfig.from_preset(
        "unetpp",
        in_channels=1,
        target="contour",
        deep_supervision=True,
        normalization=NormalizationConfig("minmax"),
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["normalization"] == {"mode": "minmax", "low": 1.0, "high": 99.8}
    restored = ModelConfig.from_dict(data)
    assert restored == config
    assert isinstance(restored.normalization, NormalizationConfig)
    assert NormalizationConfig.from_dict(config.normalization.to_dict()) == config.normalization


def test_from_dict_refuses_unknown_keys_and_non_mappings() -> None:
    data = ModelConfig().to_dict()
    with pytest.raises(ConfigError, match=r"Unknown model setting\(s\) \['colour'\]"):
        ModelConfig.from_dict({**data, "colour": "red"})
    with pytest.raises(ConfigError, match=r"Unknown normalization setting\(s\) \['gamma'\]"):
        ModelConfig.from_dict({**data, "normalization": {"mode": "none", "gamma": 2}})
    with pytest.raises(ConfigError, match="normalization must be a mapping"):
        NormalizationConfig.from_dict(["percentile"])  # type: ignore[arg-type]


def test_from_dict_fills_missing_keys_with_defaults() -> None:
    assert ModelConfig.from_dict({"depth": 3}) == ModelConfig(depth=3)


def test_configs_are_frozen_and_hashable() -> None:
    config = ModelConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 3  # type: ignore[misc]
    assert hash(config) == hash(ModelConfig())
