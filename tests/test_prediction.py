"""Prediction of images, stacks and dask arrays (napari_unet.prediction)."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import torch

from conftest import make_blobs, make_threshold_model
from napari_unet.checkpoint import TrainedModel, save_model
from napari_unet.config import ModelConfig
from napari_unet.errors import ConfigError, DataError
from napari_unet.metrics import instance_metrics
from napari_unet.model import build_model
from napari_unet.prediction import (
    PredictConfig,
    Progress,
    auto_tile_size,
    inference_network,
    labels_shape,
    number_planes,
    predict,
    predict_events,
    segment,
)


def blob_stack(n: int = 3, shape: tuple[int, int] = (40, 52)) -> tuple[np.ndarray, np.ndarray]:
    images, labels = make_blobs(n=n, shape=shape)
    return np.stack(images), np.stack(labels)


def random_model(in_channels: int = 1, target: str = "foreground") -> TrainedModel:
    """An untrained tiny U-Net with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", in_channels=in_channels, base_filters=4, depth=2, target=target
    )
    network = build_model(config)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return TrainedModel(network.eval(), config)


def test_config_is_validated_with_a_fix_in_the_message() -> None:
    with pytest.raises(ConfigError, match="less than half"):
        PredictConfig(tile_size=64, overlap=40)
    with pytest.raises(ConfigError, match="threshold"):
        PredictConfig(threshold=1.5)
    with pytest.raises(ConfigError, match="core_threshold"):
        PredictConfig(core_threshold=1.0)
    with pytest.raises(ConfigError, match="tile_size"):
        PredictConfig(tile_size=8)
    with pytest.raises(ConfigError, match="device"):
        PredictConfig(device="gpu please")
    with pytest.raises(ConfigError, match="Unknown"):
        PredictConfig.from_dict({"tile": 3})
    config = PredictConfig(tile_size=256, tta=True, min_size=3)
    assert PredictConfig.from_dict(config.to_dict()) == config


def test_keyword_overrides_are_prediction_settings_only() -> None:
    image = make_blobs(n=1, shape=(30, 40))[0][0]
    model = make_threshold_model()
    config = PredictConfig(min_size=0)
    assert segment(image, model, config).max() > 0
    assert segment(image, model, config, min_size=10**6).max() == 0  # the override wins
    with pytest.raises(ConfigError, match=r"Unknown prediction setting\(s\) \['tile'\]; valid"):
        segment(image, model, tile=64)
    with pytest.raises(ConfigError, match="min_size"):
        predict(image, model, min_size=-1)


@pytest.mark.parametrize("stored", [{"core_threshold": 2.0}, {"min_size": -3}, [0.5, 0.9]])
def test_invalid_tuned_post_processing_in_a_model_file_is_named(stored) -> None:
    model = make_threshold_model()
    model.metadata["postprocess"] = stored
    image = make_blobs(n=1, shape=(32, 32))[0][0]
    with pytest.raises(ConfigError, match="stored in the model file .* is invalid"):
        predict(image, model)
    # settings given explicitly do not read the stored ones
    explicit = PredictConfig(threshold=0.5, seed_threshold=0.5, core_threshold=0.0, min_size=0)
    assert predict(image, model, explicit).labels.max() > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CUDA"):
        predict(np.zeros((8, 8)), make_threshold_model(), device="cuda")


def test_grey_image_is_segmented_into_its_objects() -> None:
    images, labels = make_blobs(n=1, shape=(64, 80))
    result = predict(
        images[0], make_threshold_model(), tile_size=32, overlap=8, return_probabilities=True
    )
    assert result.labels.shape == (64, 80)
    assert result.labels.dtype == np.uint16
    assert result.probabilities.shape == (1, 64, 80)
    assert result.probabilities.min() >= 0 and result.probabilities.max() <= 1
    assert instance_metrics(labels[0], result.labels)["ap50"] > 0.7


def test_inference_network_matches_the_network_and_leaves_it_alone() -> None:
    model = random_model()
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    fast = inference_network(model.network, model.device)
    assert inference_network(model.network, model.device) is fast  # cached
    x = torch.rand(2, 1, 37, 45)
    with torch.inference_mode():
        expected = model.network(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, before[key])
    with torch.no_grad():
        next(model.network.parameters()).add_(1.0)  # trained further: rebuilt
    assert inference_network(model.network, model.device) is not fast


def test_compiled_prediction_matches_the_eager_one() -> None:
    model = random_model(target="contour")
    image = np.random.default_rng(0).random((40, 56)).astype(np.float32)
    settings = dict(tile_size=32, overlap=8, return_probabilities=True)
    eager = predict(image, model, **settings)
    compiled = predict(image, model, compile=True, **settings)
    np.testing.assert_allclose(compiled.probabilities, eager.probabilities, atol=1e-5)
    np.testing.assert_array_equal(compiled.labels, eager.labels)
    assert inference_network(model.network, model.device, compiled=True) is not (
        inference_network(model.network, model.device)
    )


def test_failed_compilation_warns_and_predicts_uncompiled() -> None:
    import torch._inductor.config as inductor_config

    model = random_model()
    image = np.random.default_rng(1).random((36, 44)).astype(np.float32)
    expected = predict(image, model, tile_size=36, overlap=4).labels
    # A compiler that does not exist: inductor cannot build the tile kernels.
    with inductor_config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        with pytest.warns(RuntimeWarning, match="torch.compile failed"):
            got = predict(image, model, tile_size=36, overlap=4, compile=True).labels
    np.testing.assert_array_equal(got, expected)


def test_colour_layouts_and_channel_checks() -> None:
    images, _ = make_blobs(n=1, shape=(30, 40), rgb=True)
    rgb = images[0]
    rgb_model = make_threshold_model(in_channels=3)
    grey_model = make_threshold_model(in_channels=1)
    assert segment(rgb, rgb_model).shape == (30, 40)
    rgba = np.concatenate([rgb, np.full((30, 40, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(segment(rgba, rgb_model), segment(rgb, rgb_model))
    # grey image for an RGB model, RGB image for a grey model
    np.testing.assert_array_equal(segment(rgb[..., 0], rgb_model), segment(rgb, grey_model))
    # multichannel, channels first
    two = np.stack([rgb[..., 0], rgb[..., 0]])
    assert segment(two, make_threshold_model(in_channels=2), channel_axis=0).shape == (30, 40)
    with pytest.raises(DataError, match="2 channel"):
        segment(two, rgb_model, channel_axis=0)
    with pytest.raises(DataError, match="RGB"):
        segment(rgb[..., 0], rgb_model, rgb=True)
    with pytest.raises(DataError, match="2D image"):
        segment(np.zeros(5), grey_model)
    assert labels_shape((4, 30, 40, 3), 3) == (4, 30, 40)
    assert labels_shape((2, 30, 40), 2, channel_axis=0) == (30, 40)
    # a last axis of 2 is two channels: one plane, not 30 planes of 40x2 pixels
    channels_last = np.moveaxis(two, 0, -1)
    two_model = make_threshold_model(in_channels=2)
    np.testing.assert_array_equal(
        segment(channels_last, two_model), segment(two, two_model, channel_axis=0)
    )
    with pytest.raises(DataError, match="keep one channel"):
        segment(channels_last, grey_model)


@pytest.mark.parametrize("shape", [(3,), (2, 2)])
def test_stacks_keep_their_shape_and_get_unique_labels(shape: tuple[int, ...]) -> None:
    images, truth = blob_stack(n=int(np.prod(shape)))
    stack = images.reshape(*shape, *images.shape[1:])
    labels = segment(stack, make_threshold_model(), min_size=0)
    assert labels.shape == stack.shape
    planes = labels.reshape(-1, *labels.shape[-2:])
    seen: set[int] = set()
    for plane, true_plane in zip(planes, truth):
        values = set(np.unique(plane[plane > 0]).tolist())
        assert values and not values & seen
        seen |= values
        assert instance_metrics(true_plane, plane)["ap50"] > 0.7
    assert sorted(seen) == list(range(1, len(seen) + 1))  # sequential over the stack
    per_plane = segment(stack, make_threshold_model(), min_size=0, labels_per_plane=True)
    for plane in per_plane.reshape(-1, *labels.shape[-2:]):
        assert plane.min() == 0 and np.unique(plane)[1] == 1


def test_dask_stack_is_read_plane_by_plane_and_numbered_like_numpy() -> None:
    images, _ = blob_stack(n=3)
    model = random_model(target="contour")
    config = PredictConfig(tile_size=32, overlap=8, min_size=0, return_probabilities=True)
    eager = predict(images, model, config)
    lazy = predict(da.from_array(images, chunks=(2, 20, 52)), model, config)
    assert isinstance(lazy.labels, np.ndarray) and isinstance(lazy.probabilities, np.ndarray)
    np.testing.assert_allclose(lazy.probabilities, eager.probabilities, atol=1e-6)
    # The one stack policy: unique across planes and 1..N, whatever the input's type.
    np.testing.assert_array_equal(lazy.labels, eager.labels)
    assert lazy.labels.dtype == eager.labels.dtype
    ids = np.unique(lazy.labels[lazy.labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    per_plane = PredictConfig(tile_size=32, overlap=8, min_size=0, labels_per_plane=True)
    np.testing.assert_array_equal(
        segment(da.from_array(images, chunks=1), model, per_plane),
        segment(images, model, per_plane),
    )


def test_number_planes_is_sequential_over_the_stack_or_per_plane() -> None:
    local = np.zeros((3, 4, 4), np.uint32)
    local[0, 0, :2] = [1, 2]
    local[1, 1, :3] = [1, 3, 3]  # label 2 missing: no gap in the result
    local[2, 2, 0] = 1  # not reached (counts cover two planes): stays 0
    labels = number_planes(local, [2, 3], per_plane=False)
    assert labels.max() == 4
    assert labels[0, 0, :2].tolist() == [1, 2] and labels[1, 1, :3].tolist() == [3, 4, 4]
    assert not labels[2].any()
    per_plane = number_planes(local, [2, 3], per_plane=True)
    assert per_plane[1, 1, :3].tolist() == [1, 2, 2]


def test_wide_label_dtype_for_many_objects_over_a_stack() -> None:
    grid = np.zeros((2, 400, 400), np.float32)
    grid[:, ::2, ::2] = 1.0  # 40,000 one-pixel objects per plane
    labels = segment(
        grid, make_threshold_model(), separate=False, min_size=0, tile_size=400, overlap=0
    )
    assert labels.max() == 80_000
    assert labels.dtype == np.uint32


def test_tta_prediction_is_flip_invariant() -> None:
    model = random_model()
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    config = PredictConfig(tta=True, return_probabilities=True)
    plain = predict(image, model, config).probabilities[0]
    flipped = predict(image[:, ::-1], model, config).probabilities[0]
    rotated = predict(np.rot90(image), model, config).probabilities[0]
    np.testing.assert_allclose(flipped[:, ::-1], plain, atol=1e-5)
    np.testing.assert_allclose(np.rot90(plain), rotated, atol=1e-5)
    # without TTA the same network is not symmetric, so the check above means something
    plain_config = PredictConfig(return_probabilities=True)
    without = predict(image, model, plain_config).probabilities[0]
    without_flipped = predict(image[:, ::-1], model, plain_config).probabilities[0]
    assert not np.allclose(without_flipped[:, ::-1], without, atol=1e-5)


def test_events_report_progress_and_stop_cancels() -> None:
    images, _ = blob_stack(n=3)
    events = predict_events(images, make_threshold_model(), PredictConfig(tile_size=32, overlap=8))
    progress: list[Progress] = []
    while True:
        try:
            progress.append(next(events))
        except StopIteration as finished:
            result = finished.value
            break
    assert progress[-1].done == progress[-1].total == 3 * 4  # 4 tiles of 32 per 40x52 plane
    assert "plane 3/3" in progress[-1].message
    assert not result.cancelled

    stop = threading.Event()
    events = predict_events(
        images, make_threshold_model(), PredictConfig(tile_size=32, overlap=8), stop=stop
    )
    next(events)
    stop.set()
    with pytest.raises(StopIteration) as finished:
        next(events)
    assert finished.value.value.cancelled
    assert finished.value.value.labels[2].max() == 0  # the last plane was never reached


def test_model_file_path_and_auto_tile_size(tmp_path) -> None:
    model = make_threshold_model()
    path = save_model(tmp_path / "model.pt", model.network, model.config)
    images, _ = make_blobs(n=1)
    np.testing.assert_array_equal(segment(images[0], path, device="cpu"), segment(images[0], model))
    config = ModelConfig.from_preset("fast", in_channels=3)
    tile = auto_tile_size(config, torch.device("cpu"))
    assert 256 <= tile <= 1024 and tile % config.size_multiple == 0


def test_segment_reads_a_path_and_refuses_what_is_not_an_image(tmp_path) -> None:
    import tifffile

    image = make_blobs(n=1, shape=(32, 36))[0][0]
    tifffile.imwrite(tmp_path / "a.tif", image)
    model = make_threshold_model()
    expected = segment(image, model, min_size=0)
    np.testing.assert_array_equal(segment(str(tmp_path / "a.tif"), model, min_size=0), expected)
    np.testing.assert_array_equal(segment(tmp_path / "a.tif", model, min_size=0), expected)
    cases = [
        (str(tmp_path / "missing.tif"), "missing.tif' does not exist"),
        ([[1, 2], [3]], "the image is a ragged nested list"),
        (torch.zeros(32, 36, requires_grad=True), "requires grad; give tensor.detach()"),
        (np.zeros((32, 36), np.complex64), "the image holds complex numbers"),
    ]
    for bad, message in cases:
        with pytest.raises(DataError, match=message):
            segment(bad, model)
