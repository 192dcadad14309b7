"""Imaging modality (napari_unet.modality) and per-modality post-processing, on real DSB images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import io
from napari_unet.checkpoint import load_model
from napari_unet.config import DEFAULT_POSTPROCESS, PredictConfig
from napari_unet.errors import ConfigError
from napari_unet.modality import (
    balanced_probabilities,
    classify_modality,
    postprocess_for_modality,
)
from napari_unet.postprocess import probabilities_to_labels
from napari_unet.prediction import predict
from napari_unet.tuning import PostprocessGrid, tune

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def samples() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The DSB 2018 samples shipped in the package: (modality, image, labels)."""
    pairs = io.find_pairs(io.SAMPLES_DIR / "images", io.SAMPLES_DIR / "labels")
    images = [(io.read_image(image), io.read_image(labels)) for image, labels in pairs]
    return [(classify_modality(image), image, labels) for image, labels in images]


def test_the_shipped_samples_are_three_fluorescence_and_one_he(samples) -> None:
    assert sorted(modality for modality, _, _ in samples) == ["H&E", *["fluorescence"] * 3]
    # The rule's home is modality; evaluation re-exports it for its report.
    from napari_unet import evaluation

    assert evaluation.classify_modality is classify_modality


def test_balanced_probabilities_give_every_modality_the_same_share() -> None:
    modalities = ["fluorescence"] * 6 + ["H&E"] * 3 + ["brightfield"]
    probabilities = balanced_probabilities(modalities)
    assert probabilities.sum() == pytest.approx(1.0)
    for modality in ("fluorescence", "H&E", "brightfield"):
        share = sum(p for p, kind in zip(probabilities, modalities) if kind == modality)
        assert share == pytest.approx(1 / 3)
    assert balanced_probabilities([]).size == 0


def test_postprocess_for_modality_replaces_only_what_the_modality_holds() -> None:
    tuned = {"threshold": 0.7, "min_size": 16, "per_modality": {"H&E": {"threshold": 0.6}}}
    assert postprocess_for_modality(tuned, "H&E")["threshold"] == 0.6
    assert postprocess_for_modality(tuned, "H&E")["min_size"] == 16
    assert postprocess_for_modality(tuned, "brightfield") is tuned  # no entry: overall
    assert postprocess_for_modality(tuned, None) is tuned
    assert postprocess_for_modality({"threshold": 0.7}, "H&E") == {"threshold": 0.7}


def test_per_modality_values_are_chosen_stored_and_picked_from_the_image(samples, tmp_path):
    images = [image for _, image, _ in samples]
    labels = [truth for _, _, truth in samples]
    grid = PostprocessGrid((0.5, 0.7), (0.5,), (0.0,), (16,))
    result = tune(images, labels, "default", grid=grid, device="cpu")
    assert sorted(result.modalities) == ["H&E", *["fluorescence"] * 3]
    assert set(result.per_modality(min_images=1)) == {"fluorescence", "H&E"}
    # A modality with too few tuning images keeps the overall values.
    assert set(result.per_modality(min_images=2)) == {"fluorescence"}
    he = result.per_modality(min_images=1)["H&E"]
    assert he.per_image.shape == (2, 1)
    assert he.rows[0]["f1_50"] == pytest.approx(he.per_image[0, 0])

    model = load_model("default", device="cpu")
    result.apply(model, "the shipped samples", per_modality=True, min_images=1)
    # A value no object reaches tells which table prediction used.
    model.metadata["postprocess"]["per_modality"]["H&E"]["min_size"] = 10**6
    loaded = load_model(model.save(tmp_path / "tuned.pt"), device="cpu")
    stored = loaded.metadata["postprocess"]
    assert set(stored["per_modality"]) == {"fluorescence", "H&E"}
    assert stored["threshold"] == result.best["threshold"]
    for modality, image, _ in samples:
        labels_out = predict(image, loaded, device="cpu").labels
        assert (labels_out.max() == 0) == (modality == "H&E")
    # A value given by the caller still wins over the modality's.
    he_image = next(image for modality, image, _ in samples if modality == "H&E")
    assert predict(he_image, loaded, min_size=16).labels.max() > 0


def test_a_model_file_without_per_modality_values_behaves_as_before(samples) -> None:
    model = load_model("default", device="cpu")
    assert "per_modality" not in model.metadata["postprocess"]
    for modality in (None, "H&E", "brightfield"):
        config = PredictConfig().for_model(model, modality)
        assert {name: getattr(config, name) for name in DEFAULT_POSTPROCESS} == {
            name: model.metadata["postprocess"][name] for name in DEFAULT_POSTPROCESS
        }
    _, image, _ = samples[0]
    result = predict(image, model, return_probabilities=True)
    expected = probabilities_to_labels(
        result.probabilities,
        model.config.target,
        **{name: model.metadata["postprocess"][name] for name in DEFAULT_POSTPROCESS},
    )
    np.testing.assert_array_equal(result.labels > 0, expected > 0)


def test_invalid_per_modality_values_are_refused_with_a_fix() -> None:
    model = load_model("default", device="cpu")
    model.metadata["postprocess"] = {"threshold": 0.7, "per_modality": {"H&E": {"threshold": 2}}}
    with pytest.raises(ConfigError, match="re-tune"):
        PredictConfig().for_model(model, "H&E")
    assert PredictConfig().for_model(model, "fluorescence").threshold == 0.7
