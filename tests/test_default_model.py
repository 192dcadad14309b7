"""The bundled nuclei model: in the package, accurate on the bundled samples, as documented."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from napari_unet import io
from napari_unet.checkpoint import default_model_path, load_model
from napari_unet.config import DEFAULT_POSTPROCESS
from napari_unet.metrics import mean_pixel_metrics
from napari_unet.prediction import PredictConfig, predict

MODEL_CARD = Path(__file__).parents[1] / "docs" / "model_card.md"


@pytest.fixture(scope="module")
def model():
    return load_model("default", device="cpu")


@pytest.fixture(scope="module")
def samples() -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = io.find_pairs(io.SAMPLES_DIR / "images", io.SAMPLES_DIR / "labels")
    return [(io.read_image(image), io.read_image(labels)) for image, labels in pairs]


def test_bundled_model_ships_inside_the_installed_package(model) -> None:
    import napari_unet

    assert default_model_path().is_relative_to(Path(napari_unet.__file__).parent)
    assert default_model_path().stat().st_size < 32 * 2**20
    assert model.source == str(default_model_path())


def test_bundled_model_segments_the_samples_accurately(model, samples) -> None:
    pairs = []
    for image, truth in samples:
        labels = predict(image, model).labels
        assert labels.shape == truth.shape
        assert labels.max() > 0.5 * truth.max()  # objects, not one blob
        pairs.append((truth > 0, labels > 0))
    # fails if the weights are missing, random or mismatched to the config
    assert mean_pixel_metrics(pairs)["f1"] > 0.8


def test_tuned_postprocessing_applies_only_when_unset(model) -> None:
    tuned = model.metadata["postprocess"]
    settings = ("threshold", "seed_threshold", "core_threshold", "min_size")
    filled = PredictConfig().for_model(model)
    assert [getattr(filled, name) for name in settings] == [tuned[name] for name in settings]
    explicit = PredictConfig(threshold=0.5, min_size=3, core_threshold=0.0).for_model(model)
    assert (explicit.threshold, explicit.min_size, explicit.core_threshold) == (0.5, 3, 0.0)
    assert explicit.seed_threshold == tuned["seed_threshold"]


def test_models_without_tuned_values_use_the_defaults(model) -> None:
    untuned = load_model(default_model_path(), device="cpu")
    untuned.metadata.pop("postprocess")
    filled = PredictConfig().for_model(untuned)
    assert filled.threshold == DEFAULT_POSTPROCESS["threshold"]
    assert filled.min_size == DEFAULT_POSTPROCESS["min_size"]
    assert filled.core_threshold == DEFAULT_POSTPROCESS["core_threshold"] == 0.0


def _card_value(name: str) -> str:
    match = re.search(
        rf"^\|\s*{re.escape(name)}\s*\|\s*`?([^|`]+?)`?\s*\|", MODEL_CARD.read_text(), re.M
    )
    assert match, f"model card has no '{name}' row"
    return match.group(1)


def test_stored_config_matches_the_model_card(model) -> None:
    config, metadata = model.config, model.metadata
    assert _card_value("architecture") == config.architecture
    assert _card_value("preset") == config.preset
    assert int(_card_value("base filters")) == config.base_filters
    assert int(_card_value("depth")) == config.depth
    assert _card_value("target") == config.target
    assert _card_value("input channels") == str(config.in_channels)
    assert _card_value("normalisation") == (
        f"{config.normalization.mode} {config.normalization.low:g}-{config.normalization.high:g}"
    )
    train = metadata["train_config"]
    assert float(_card_value("learning rate")) == train["learning_rate"]
    assert int(_card_value("patch size")) == train["patch_size"]
    assert int(_card_value("batch size")) == train["batch_size"]
    assert _card_value("loss") == train["loss"]
    assert _card_value("schedule") == train["schedule"]
    tuned = metadata["postprocess"]
    assert float(_card_value("threshold")) == tuned["threshold"]
    assert float(_card_value("seed threshold")) == tuned["seed_threshold"]
    assert float(_card_value("core threshold")) == tuned["core_threshold"]
    assert int(_card_value("minimum size")) == tuned["min_size"]
