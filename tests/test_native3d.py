"""A 3D model's prediction of volumes (napari_unet.native3d through predict)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import make_threshold_model
from napari_unet.checkpoint import TrainedModel, load_model
from napari_unet.errors import ConfigError, DataError
from napari_unet.evaluation import score_labels
from napari_unet.native3d import resampled_depth
from napari_unet.prediction import predict, predict_events
from napari_unet.synthetic import nuclei_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A saved and reloaded 3D threshold network for volumes of anisotropy 2."""
    model = make_threshold_model(ndim=3, anisotropy=2.0)
    path = model.save(tmp_path_factory.mktemp("models") / "m3d.pt")
    return load_model(path, device="cpu")


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return nuclei_volume((20, 64, 64), 6, diameter=(12, 18), seed=1, anisotropy=2.0)


def test_a_3d_model_segments_a_volume_in_3d(
    model_3d: TrainedModel, volume: tuple[np.ndarray, np.ndarray]
) -> None:
    image, truth = volume
    result = predict(image, model_3d, return_probabilities=True, min_size=20)
    assert result.labels.shape == image.shape
    assert result.probabilities.shape == (1, *image.shape)
    # one id per nucleus across Z: every object spans several planes, and the count is
    # that of the nuclei, not of their sections (10x more)
    ids = np.unique(result.labels)[1:]
    planes = [len(np.unique(np.nonzero(result.labels == i)[0])) for i in ids]
    assert min(planes) >= 3
    instance = score_labels(truth, result.labels)[1]
    assert abs(instance["n_pred"] - instance["n_true"]) <= 2


def test_tiles_give_the_whole_volume_prediction(
    model_3d: TrainedModel, volume: tuple[np.ndarray, np.ndarray]
) -> None:
    image = volume[0]
    whole = predict(image, model_3d, return_probabilities=True)
    tiled = predict(image, model_3d, return_probabilities=True, tile_size=32, overlap=8)
    # the threshold network is pointwise: tiling and blending must not change it
    np.testing.assert_allclose(tiled.probabilities, whole.probabilities, atol=1e-5)
    np.testing.assert_array_equal(tiled.labels, whole.labels)


def test_progress_counts_3d_tiles_and_stop_cancels(
    model_3d: TrainedModel, volume: tuple[np.ndarray, np.ndarray]
) -> None:
    events = list(predict_events(volume[0], model_3d, tile_size=32, overlap=8))
    assert events[-1].done == events[-1].total > 1
    assert "3D tile" in events[0].message
    stop = threading.Event()
    stop.set()
    result = predict(volume[0], model_3d, tile_size=32, overlap=8, stop=stop)
    assert result.cancelled and result.labels.shape == volume[0].shape


def test_tta_flips_and_rotates_xy_and_flips_z(
    model_3d: TrainedModel, volume: tuple[np.ndarray, np.ndarray]
) -> None:
    image = volume[0][:, :40, :48]  # Y != X: rotated tiles change shape
    plain = predict(image, model_3d, return_probabilities=True)
    augmented = predict(image, model_3d, return_probabilities=True, tta=True)
    # a pointwise network is equivariant to every flip and rotation
    np.testing.assert_allclose(augmented.probabilities, plain.probabilities, atol=1e-5)


def test_data_of_another_anisotropy_is_resampled_to_the_model(
    model_3d: TrainedModel, volume: tuple[np.ndarray, np.ndarray]
) -> None:
    assert resampled_depth(20, 2.0, 2.0) == 20
    assert resampled_depth(20, 2.05, 2.0) == 20  # within 5%: as it is
    assert resampled_depth(20, 1.0, 2.0) == 10
    assert resampled_depth(10, 4.0, 2.0) == 20
    # the same nuclei sampled twice as finely in Z: resampled to the model's Z step,
    # predicted, and labelled back at the volume's planes
    fine, truth = nuclei_volume((40, 64, 64), 6, diameter=(12, 18), seed=1, anisotropy=1.0)
    result = predict(fine, model_3d, anisotropy=1.0, min_size=20, return_probabilities=True)
    assert result.labels.shape == fine.shape
    assert result.probabilities.shape == (1, *fine.shape)
    instance = score_labels(truth, result.labels)[1]
    assert abs(instance["n_pred"] - instance["n_true"]) <= 2


def test_channels_of_a_volume(volume: tuple[np.ndarray, np.ndarray]) -> None:
    model = make_threshold_model(in_channels=2, ndim=3)
    image = volume[0]
    two = np.stack([image, image])  # (C, Z, Y, X)
    first = predict(two, model, channel_axis=0, return_probabilities=True).probabilities
    last = predict(np.moveaxis(two, 0, -1), model, channel_axis=-1, return_probabilities=True)
    assert first.shape == (1, *image.shape)
    np.testing.assert_allclose(last.probabilities, first, atol=1e-6)


@pytest.mark.parametrize(
    "shape,axes,error,message",
    [
        ((64, 64), None, DataError, r"a 3D model segments \(Z, Y, X\) volumes.*2D image"),
        ((5, 64, 64), "TYX", DataError, "time series .* not a Z stack.*stack='planes'"),
        ((2, 5, 32, 32), "TZYX", DataError, r"one \(Z, Y, X\) volume at a time.*image\[t\]"),
    ],
)
def test_inputs_a_3d_model_cannot_segment_are_refused(
    model_3d: TrainedModel,
    shape: tuple[int, ...],
    axes: str | None,
    error: type[Exception],
    message: str,
) -> None:
    with pytest.raises(error, match=message):
        predict(np.zeros(shape, np.float32), model_3d, axes=axes)


def test_planes_mode_with_a_3d_model_is_refused(
    model_3d: TrainedModel, volume: tuple[np.ndarray, np.ndarray]
) -> None:
    with pytest.raises(ConfigError, match="stack='planes'.*3D model cannot"):
        predict(volume[0], model_3d, stack="planes")


def test_blockwise_refuses_a_3d_model(model_3d: TrainedModel, tmp_path: Path) -> None:
    from napari_unet.blockwise import segment_to_zarr

    with pytest.raises(ConfigError, match="block-wise.*napari-unet predict"):
        segment_to_zarr(np.zeros((4, 64, 64), np.float32), tmp_path / "out.zarr", model_3d)
    assert not (tmp_path / "out.zarr").exists()


def test_evaluate_scores_a_3d_model_on_volumes_in_3d(
    model_3d: TrainedModel, volume: tuple[np.ndarray, np.ndarray]
) -> None:
    from napari_unet.evaluation import evaluate

    image, truth = volume
    report = evaluate([image], [truth], model_3d, min_size=20)
    row = report.rows[0]
    # objects counted once across Z: the nuclei, not their sections
    assert row["n_true"] == 6 and abs(row["n_pred"] - 6) <= 2
    expected = score_labels(truth, predict(image, model_3d, min_size=20).labels)[1]
    assert row["f1_50"] == pytest.approx(expected["f1_50"])
    with pytest.raises(DataError, match="'flat' is a 2D image; a 3D model"):
        evaluate([image, image[5]], [truth, truth[5]], model_3d, names=["vol", "flat"])
    with pytest.raises(ConfigError, match="stack='planes'"):
        evaluate([image], [truth], model_3d, stack="planes")


def test_tune_a_3d_model_on_volumes(
    model_3d: TrainedModel, volume: tuple[np.ndarray, np.ndarray]
) -> None:
    from napari_unet.config import PostprocessGrid
    from napari_unet.tuning import tune

    image, truth = volume
    grid = PostprocessGrid(thresholds=(0.5, 0.7), core_thresholds=(0.0,), min_sizes=(0, 20))
    result = tune([image], [truth], model_3d, grid=grid)
    assert len(result.rows) == 4
    best = result.best
    labels = predict(image, model_3d, **best).labels
    # the tuned score is the 3D score of a prediction with those settings
    assert result.rows[0]["f1_50"] == pytest.approx(score_labels(truth, labels)[1]["f1_50"])
    with pytest.raises(DataError, match="2D image; a 3D model"):
        tune([image[5]], [truth[5]], model_3d, grid=grid)
