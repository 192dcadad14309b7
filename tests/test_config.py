"""Tests of napari_unet.config: validation, presets, serialisation, overrides and options."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from napari_unet.config import (
    DEFAULT_POSTPROCESS,
    PRESETS,
    PRESETS_3D,
    TARGET_CHANNELS,
    ModelConfig,
    NormalizationConfig,
    PostprocessGrid,
    PredictConfig,
    TrainConfig,
    default_postprocess,
    pool_kernels,
)
from napari_unet.errors import ConfigError
from napari_unet.settings import Settings, option_fields, rule_of


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
        ({"in_channels": 0}, "in_channels must be a whole number from 1 to 64"),
        ({"in_channels": 65}, "in_channels"),
        ({"in_channels": 2.0}, "in_channels"),
        ({"base_filters": 0}, "base_filters must be a whole number from 1 to 256"),
        ({"base_filters": 257}, "base_filters"),
        ({"depth": 0}, "depth must be a whole number from 1 to 6"),
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


# --------------------------------------------------------------------------------------
# The shared base: every settings class, its rules, dictionaries, overrides and options
# --------------------------------------------------------------------------------------

SETTINGS_CLASSES = (NormalizationConfig, ModelConfig, TrainConfig, PredictConfig, PostprocessGrid)


@pytest.mark.parametrize("cls", SETTINGS_CLASSES)
def test_every_field_has_a_rule_with_help(cls: type[Settings]) -> None:
    assert issubclass(cls, Settings)
    for item in dataclasses.fields(cls):
        rule = rule_of(item)
        assert rule.help, item.name
        if rule.kind == "choice":
            assert rule.choices
        # defaults pass their own rule
        assert getattr(cls(), item.name) is not None or rule.none is not None


@pytest.mark.parametrize("cls", SETTINGS_CLASSES)
def test_round_trip_through_json_and_unknown_keys(cls: type[Settings]) -> None:
    config = cls()
    data = json.loads(json.dumps(config.to_dict()))
    assert cls.from_dict(data) == config
    with pytest.raises(ConfigError, match=r"Unknown .* setting\(s\) \['colour'\]; valid settings"):
        cls.from_dict({**data, "colour": "red"})
    with pytest.raises(ConfigError, match="must be a mapping"):
        cls.from_dict([1, 2])  # type: ignore[arg-type]


def test_train_config_nests_its_model_as_a_dictionary() -> None:
    config = TrainConfig(model=ModelConfig.from_preset("tiny", in_channels=1), epochs=3)
    data = config.to_dict()
    assert data["model"]["base_filters"] == 16
    assert data["model"]["normalization"]["mode"] == "percentile"
    restored = TrainConfig.from_dict(data)
    assert restored == config and isinstance(restored.model, ModelConfig)
    with pytest.raises(ConfigError, match="model must be a ModelConfig or a mapping"):
        TrainConfig(model="tiny")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (TrainConfig, {"epochs": 0}, r"epochs must be a whole number >= 1, got 0\."),
        (TrainConfig, {"epochs": 2.5}, "epochs must be a whole number"),
        (TrainConfig, {"batch_size": True}, "batch_size must be a whole number"),
        (TrainConfig, {"learning_rate": 0}, "strictly between 0 and 1, got 0; the reference"),
        (TrainConfig, {"val_fraction": 1.0}, "val_fraction must be a number from 0 to under 1"),
        (TrainConfig, {"seed": "1"}, "seed must be a whole number, got '1'"),
        (TrainConfig, {"early_stopping_patience": 0}, r"or None \(never stop early\)"),
        (TrainConfig, {"min_lr": 1e-3}, "min_lr must lie from 0 to learning_rate"),
        (TrainConfig, {"min_lr": -1.0}, "min_lr must be a number >= 0"),
        (TrainConfig, {"augment": "no"}, "augment must be True or False"),
        (TrainConfig, {"device": "gpu0"}, "device 'gpu0' is not a device name"),
        (TrainConfig, {"label_mode": "dense"}, "label_mode 'dense' is unknown; use one of"),
        (PredictConfig, {"overlap": 300}, "overlap must be a whole number from 0 to 256"),
        (PredictConfig, {"threshold": 1.0}, "threshold must be a number strictly between 0"),
        (PredictConfig, {"core_threshold": -0.1}, "core_threshold must be a number from 0"),
        (PredictConfig, {"tile_size": 64, "overlap": 32}, "less than half of tile_size"),
        (PredictConfig, {"tta": None}, "tta must be True or False"),
        (PostprocessGrid, {"min_sizes": 8}, "min_sizes must be a list of values"),
        (NormalizationConfig, {"low": "1"}, "normalization low must be a number"),
    ],
)
def test_messages_say_what_to_change(cls: type, values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**values)


def test_grid_lists_become_tuples() -> None:
    grid = PostprocessGrid(thresholds=[0.5], min_sizes=[4, 8])
    assert grid.thresholds == (0.5,) and grid.min_sizes == (4, 8)
    assert hash(grid) == hash(PostprocessGrid(thresholds=(0.5,), min_sizes=(4, 8)))


def test_replace_and_overrides_refuse_unknown_names() -> None:
    config = PredictConfig(tta=True)
    assert config.replace(min_size=3) == PredictConfig(tta=True, min_size=3)
    assert PredictConfig.with_overrides(None, {"tta": True}) == config
    assert PredictConfig.with_overrides(config, {}) is config
    with pytest.raises(ConfigError, match=r"Unknown prediction setting\(s\) \['rgb'\]; valid"):
        config.replace(rgb=True)
    with pytest.raises(ConfigError, match="tile_batch"):
        config.replace(tile_batch=0)
    with pytest.raises(ConfigError, match=r"Unknown training setting\(s\) \['lr'\]"):
        TrainConfig.with_overrides(None, {"lr": 1e-3})


def test_option_fields_flatten_the_nested_settings() -> None:
    names = list(option_fields(TrainConfig))
    model_names = list(option_fields(ModelConfig))
    assert "model" not in names and "normalization" not in model_names
    assert {"normalization_mode", "normalization_low", "normalization_high"} <= set(model_names)
    assert set(model_names) <= set(names)
    assert {"epochs", "min_lr", "half_precision"} <= set(names)
    assert list(option_fields(PredictConfig)) == [f.name for f in dataclasses.fields(PredictConfig)]


def test_from_options_builds_the_nested_settings_from_a_preset() -> None:
    config = TrainConfig.from_options(
        preset="tiny",
        in_channels=1,
        depth=3,
        target=None,  # None: left to the preset / default
        normalization_mode="minmax",
        epochs=4,
        early_stopping_patience=None,
    )
    assert config.model == ModelConfig.from_preset(
        "tiny", in_channels=1, depth=3, normalization=NormalizationConfig("minmax")
    )
    assert (config.epochs, config.early_stopping_patience) == (4, None)
    assert TrainConfig.from_options() == TrainConfig()
    with pytest.raises(ConfigError, match="preset 'huge' is unknown"):
        TrainConfig.from_options(preset="huge")
    with pytest.raises(ConfigError, match=r"Unknown training setting\(s\) \['lr'\]"):
        TrainConfig.from_options(lr=1e-3)


def test_preset_names_are_free_text_for_model_files() -> None:
    # display only: a model file may carry a name this version has no preset for
    assert ModelConfig.from_dict({"preset": "my-own"}).preset == "my-own"
    with pytest.raises(ConfigError, match="preset must be a string"):
        ModelConfig(preset=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "anisotropy,kernels",
    [
        (1.0, ((2, 2, 2), (2, 2, 2), (2, 2, 2))),
        (1.3, ((2, 2, 2), (2, 2, 2), (2, 2, 2))),
        (2.0, ((1, 2, 2), (2, 2, 2), (2, 2, 2))),
        (3.0, ((1, 2, 2), (1, 2, 2), (2, 2, 2))),
        (4.0, ((1, 2, 2), (1, 2, 2), (2, 2, 2))),
        (10.0, ((1, 2, 2), (1, 2, 2), (1, 2, 2))),
        (0.5, ((2, 2, 2), (2, 2, 2), (2, 2, 2))),
    ],
)
def test_pool_kernels_leave_z_alone_while_it_is_coarser(
    anisotropy: float, kernels: tuple[tuple[int, ...], ...]
) -> None:
    assert pool_kernels(3, ndim=3, anisotropy=anisotropy) == kernels
    config = ModelConfig(ndim=3, depth=3, anisotropy=anisotropy)
    assert config.pool_kernels == kernels
    z_multiple = math.prod(kernel[0] for kernel in kernels)
    assert config.size_multiples == (z_multiple, 8, 8)


def test_pool_kernels_of_a_2d_network_are_2x2() -> None:
    assert pool_kernels(4) == ((2, 2),) * 4
    config = ModelConfig(depth=4)
    assert config.pool_kernels == ((2, 2),) * 4
    assert config.size_multiples == (16, 16) and config.size_multiple == 16


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_have_3d_values(name: str) -> None:
    config = ModelConfig.from_preset(name, ndim=3)
    assert (config.ndim, config.preset) == (3, name)
    for key, value in PRESETS_3D[name].items():
        assert getattr(config, key) == value
    # the 3D tiny net is small enough to train on a laptop CPU
    assert PRESETS_3D["tiny"]["base_filters"] <= 16 and PRESETS_3D["tiny"]["depth"] <= 3
    # overrides still win over the 3D preset
    assert ModelConfig.from_preset(name, ndim=3, depth=2).depth == 2


def test_3d_preset_from_options() -> None:
    config = ModelConfig.from_options(preset="tiny", ndim=3, anisotropy=2.0, in_channels=1)
    assert (config.base_filters, config.depth, config.anisotropy) == (8, 3, 2.0)
    assert ModelConfig.from_options(preset="tiny", ndim=None).base_filters == 16


@pytest.mark.parametrize(
    "values,message",
    [
        ({"ndim": 4}, "ndim must be a whole number from 2 to 3, got 4; use 2 .* or 3"),
        ({"ndim": 1}, "ndim must be"),
        ({"ndim": 3, "anisotropy": 0}, "anisotropy must be a number over 0"),
        ({"ndim": 3, "anisotropy": -1.0}, "anisotropy must be a number over 0"),
        ({"anisotropy": 2.0}, r"anisotropy \(2\) is for 3D models; use ndim=3"),
    ],
)
def test_ndim_and_anisotropy_are_checked(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**values)


def test_old_model_configs_without_ndim_load_as_2d() -> None:
    old = ModelConfig().to_dict()
    del old["ndim"], old["anisotropy"]
    config = ModelConfig.from_dict(old)
    assert (config.ndim, config.anisotropy) == (2, 1.0)


def test_grid_and_default_seed_thresholds_follow_the_target() -> None:
    def seeds(grid: PostprocessGrid, target: str) -> list[float]:
        return sorted({combo["seed_threshold"] for combo in grid.combinations(target)})

    grid = PostprocessGrid(thresholds=(0.5,), core_thresholds=(0.0,), min_sizes=(8,))
    assert seeds(grid, "contour") == [0.4, 0.5, 0.6]
    assert seeds(grid, "distance") == [0.1, 0.2, 0.3]
    assert seeds(grid, "foreground") == [0.5]
    given = grid.replace(seed_thresholds=(0.05, 0.15))
    assert seeds(given, "contour") == seeds(given, "distance") == [0.05, 0.15]
    assert seeds(given, "foreground") == [0.5]
    assert default_postprocess("distance")["seed_threshold"] == 0.2
    assert default_postprocess("contour") == DEFAULT_POSTPROCESS
