"""Tests of napari_unet.cli._options: every setting is an option named after its field.

Each command's table below gives one non-default value per option; a test checks that the
tables (plus the settings each command leaves out, with its reason) cover every field of
the command's settings classes, so a new field without an option fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from napari_unet.cli import build_parser
from napari_unet.cli import evaluate as evaluate_command
from napari_unet.cli import train as train_command
from napari_unet.cli import tune as tune_command
from napari_unet.cli._options import config_from_args, flag, prediction_config
from napari_unet.config import (
    ModelConfig,
    NormalizationConfig,
    PostprocessGrid,
    PredictConfig,
    TrainConfig,
)
from napari_unet.settings import Settings, option_fields, rule_of

#: option name -> (command-line words, value the setting gets)
TRAIN_EXAMPLES: dict[str, tuple[list[str], Any]] = {
    "architecture": (["unetpp"], "unetpp"),
    "base_filters": (["8"], 8),
    "depth": (["3"], 3),
    "target": (["contour"], "contour"),
    "deep_supervision": ([], True),
    "normalization_mode": (["minmax"], "minmax"),
    "normalization_low": (["2"], 2.0),
    "normalization_high": (["98"], 98.0),
    "preset": (["tiny"], "tiny"),
    "ndim": (["3"], 3),
    "anisotropy": (["2"], 2.0),
    "epochs": (["3"], 3),
    "batch_size": (["4"], 4),
    "learning_rate": (["0.01"], 0.01),
    "patch_size": (["64"], 64),
    "augment": (None, False),  # --no-augment
    "loss": (["dice"], "dice"),
    "label_mode": (["binary"], "binary"),
    "val_fraction": (["0.2"], 0.2),
    "seed": (["7"], 7),
    "early_stopping_patience": (["3"], 3),
    "plateau_patience": (["2"], 2),
    "min_lr": (["1e-5"], 1e-5),
    "device": (["cpu"], "cpu"),
    "steps_per_epoch": (["5"], 5),
    "schedule": (["cosine"], "cosine"),
    "sampling": (["modality"], "modality"),
    "colour_augment": ([], True),
    "scale_augment": ([], True),
    "half_precision": ([], True),
    "loader_threads": (["2"], 2),
    "contact_weight": (["5"], 5),
    "max_minutes": (["1.5"], 1.5),
    "patch_depth": (["16"], 16),
    "replay_samples": (["2"], 2),
    "freeze_batchnorm": ([], True),
    "freeze": (["none"], "none"),
}
PREDICT_EXAMPLES: dict[str, tuple[list[str] | None, Any]] = {
    "tile_size": (["256"], 256),
    "overlap": (["16"], 16),
    "tile_batch": (["4"], 4),
    "tta": ([], True),
    "compile": ([], True),
    "threshold": (["0.6"], 0.6),
    "separate": (None, False),
    "min_size": (["20"], 20),
    "seed_threshold": (["0.4"], 0.4),
    "core_threshold": (["0.8"], 0.8),
    "fill_holes": (None, False),
    "labels_per_plane": ([], True),
    "device": (["cpu"], "cpu"),
    "return_probabilities": ([], True),
    "stack": (["planes"], "planes"),
    "anisotropy": (["2.5"], 2.5),
    "volume_method": (["link"], "link"),
}
GRID_EXAMPLES: dict[str, tuple[list[str], Any]] = {
    "thresholds": (["0.3", "0.4"], (0.3, 0.4)),
    "seed_thresholds": (["0.2"], (0.2,)),
    "core_thresholds": (["0", "0.7"], (0.0, 0.7)),
    "min_sizes": (["0", "4"], (0, 4)),
}

REQUIRED = {
    "train": ["--out", "m.pt"],
    "predict": ["image.tif", "--model", "default", "--out", "labels"],
    "evaluate": ["--model", "default"],
    "tune": ["--model", "default"],
}


def parse(command: str, *words: str) -> argparse.Namespace:
    return build_parser().parse_args([command, *REQUIRED[command], *words])


def words_of(examples: dict[str, tuple[list[str] | None, Any]], names: Any) -> list[str]:
    """The command line setting each option of ``names`` to its example."""
    words: list[str] = []
    for name in names:
        values, _ = examples[name]
        # None: a switch that is on by default, turned off
        words += [f"--no-{flag(name)[2:]}"] if values is None else [flag(name), *values]
    return words


def lookup(config: Settings, name: str) -> Any:
    """The value of option ``name`` in ``config``, nested settings included."""
    for item in dataclasses.fields(config):
        rule = rule_of(item)
        if rule.kind != "config":
            if item.name == name:
                return getattr(config, name)
        elif name.startswith(rule.prefix) and name[len(rule.prefix) :] in option_fields(
            rule.config
        ):
            return lookup(getattr(config, item.name), name[len(rule.prefix) :])
    raise KeyError(name)


def check_every_value(config: Settings, examples: dict, names: Any) -> None:
    for name in names:
        expected = examples[name][1]
        assert lookup(config, name) == pytest.approx(expected), name
        assert expected != lookup(type(config)(), name), f"{name}: example is the default"


def test_the_tables_cover_every_field_of_every_command() -> None:
    assert set(TRAIN_EXAMPLES) | set(train_command.NOT_OPTIONS) == set(option_fields(TrainConfig))
    assert set(PREDICT_EXAMPLES) == set(option_fields(PredictConfig))
    assert set(GRID_EXAMPLES) == set(option_fields(PostprocessGrid))
    for command in (train_command, evaluate_command, tune_command):
        assert all(reason for reason in command.NOT_OPTIONS.values())


def test_every_training_setting_is_an_option_of_train() -> None:
    names = [name for name in TRAIN_EXAMPLES]
    args = parse("train", *words_of(TRAIN_EXAMPLES, names))
    config = config_from_args(args, TrainConfig, exclude=train_command.NOT_OPTIONS, in_channels=1)
    check_every_value(config, TRAIN_EXAMPLES, names)
    assert config.model.in_channels == 1


@pytest.mark.parametrize("command", ["predict", "evaluate", "tune"])
def test_every_prediction_setting_is_an_option(command: str) -> None:
    left_out = {"predict": {}, "evaluate": evaluate_command.NOT_OPTIONS}.get(
        command, tune_command.NOT_OPTIONS
    )
    names = [name for name in PREDICT_EXAMPLES if name not in left_out]
    args = parse(command, *words_of(PREDICT_EXAMPLES, names))
    config = prediction_config(args, exclude=left_out)
    check_every_value(config, PREDICT_EXAMPLES, names)
    for name in left_out:  # not offered: the command line cannot set them
        assert not hasattr(args, name)


def test_every_grid_setting_is_an_option_of_tune() -> None:
    args = parse("tune", *words_of(GRID_EXAMPLES, GRID_EXAMPLES))
    check_every_value(config_from_args(args, PostprocessGrid), GRID_EXAMPLES, GRID_EXAMPLES)


def test_without_options_the_defaults_are_those_of_the_commands() -> None:
    config = config_from_args(
        parse("train"), TrainConfig, exclude=train_command.NOT_OPTIONS, in_channels=3
    )
    assert config == TrainConfig(model=ModelConfig.from_preset("fast", in_channels=3))
    for command in ("predict", "evaluate", "tune"):
        args = parse(command)
        left_out = getattr(globals().get(f"{command}_command"), "NOT_OPTIONS", {})
        assert prediction_config(args, exclude=left_out) == PredictConfig()
    assert config_from_args(parse("tune"), PostprocessGrid) == PostprocessGrid()


@pytest.mark.parametrize(
    ("command", "words", "name", "value"),
    [
        ("train", ["--lr", "0.003"], "learning_rate", 0.003),
        ("train", ["--half"], "half_precision", True),
        ("train", ["--early-stopping", "0"], "early_stopping_patience", None),
        ("train", ["--early-stopping-patience", "none"], "early_stopping_patience", None),
        ("train", ["--no-augment"], "augment", False),
        ("predict", ["--tile", "512"], "tile_size", 512),
        ("predict", ["--save-probabilities"], "return_probabilities", True),
        ("predict", ["--no-separate"], "separate", False),
        ("evaluate", ["--tile-size", "100"], "overlap", 25),  # a quarter of a small tile
    ],
)
def test_older_spellings_and_derived_defaults(
    command: str, words: list[str], name: str, value: Any
) -> None:
    args = parse(command, *words)
    if command == "train":
        config = config_from_args(args, TrainConfig, exclude=train_command.NOT_OPTIONS)
    else:
        left_out = getattr(globals().get(f"{command}_command"), "NOT_OPTIONS", {})
        config = prediction_config(args, exclude=left_out)
    assert getattr(config, name) == value


def test_normalization_keeps_its_old_flag() -> None:
    args = parse("train", "--normalization", "none")
    config = config_from_args(args, TrainConfig, exclude=train_command.NOT_OPTIONS)
    assert config.model.normalization == NormalizationConfig("none")


def test_values_argparse_cannot_read_exit_with_usage(capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        parse("train", "--epochs", "three")
    assert stopped.value.code == 2
    assert "'three' is not a whole number" in capsys.readouterr().err
