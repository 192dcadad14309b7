"""Fast inference of napari_unet.inference for 3D networks: folding, TTA, tile shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.checkpoint import TrainedModel
from napari_unet.config import ModelConfig
from napari_unet.inference import (
    TilePredictor,
    auto_tile_shape,
    auto_tile_size,
    inference_network,
    tile_overlaps,
)
from napari_unet.model import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_3d(anisotropy: float = 2.0) -> TrainedModel:
    """A small 3D network with non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset(
        "tiny", in_channels=1, ndim=3, anisotropy=anisotropy, base_filters=4, depth=2
    )
    network = build_model(config).train()
    with torch.no_grad():
        for _ in range(3):
            network(torch.rand(2, 1, 8, 16, 16) * 3 + 1)
    return TrainedModel(network.eval(), config)


def test_batchnorm3d_is_folded_and_the_output_kept() -> None:
    model = trained_3d()
    fast = inference_network(model.network, torch.device("cpu"))
    kinds = {type(module) for module in fast.modules()}
    assert torch.nn.BatchNorm3d not in kinds and torch.nn.Conv3d in kinds
    x = torch.rand(1, 1, 7, 21, 18)
    with torch.no_grad():
        expected = model.network(x)
        got = fast(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_3d_tta_averages_16_flips_and_rotations_exactly_undone() -> None:
    model = trained_3d()
    predictor = TilePredictor(model, tta=True)
    assert len(predictor.transforms) == 16
    t = torch.rand(1, 1, 3, 5, 5)
    forwards = {tuple(forward(t).flatten().tolist()) for forward, _ in predictor.transforms}
    assert len(forwards) == 16  # all distinct
    for forward, inverse in predictor.transforms:
        assert torch.equal(inverse(forward(t)), t)
    tiles = np.random.default_rng(0).random((2, 1, 8, 16, 12)).astype(np.float32)
    augmented = predictor(tiles)
    assert augmented.shape == (2, 1, 8, 16, 12)
    # the mean of the 16 views, computed by hand from the plain predictor
    plain = TilePredictor(model)
    by_hand = np.mean(
        [
            inverse(torch.from_numpy(plain(forward(torch.from_numpy(tiles)).numpy()))).numpy()
            for forward, inverse in predictor.transforms
        ],
        axis=0,
    )
    np.testing.assert_allclose(augmented, by_hand, atol=1e-5)


def test_2d_tta_keeps_its_8_transforms() -> None:
    config = ModelConfig.from_preset("tiny", in_channels=1, base_filters=2, depth=1)
    assert (
        len(TilePredictor(TrainedModel(build_model(config).eval(), config), True).transforms) == 8
    )


def test_auto_tile_shape_is_a_near_cube_in_space_with_a_2d_tiles_voxels() -> None:
    config = ModelConfig.from_preset("tiny", in_channels=1, ndim=3, anisotropy=2.0)
    cpu = torch.device("cpu")
    pixels = auto_tile_size(config, cpu) ** 2
    z, y, x = auto_tile_shape(config, cpu, (400, 2000, 2000))
    assert y == x and y % config.size_multiples[1] == 0 and z % config.size_multiples[0] == 0
    assert abs(z * 2.0 / y - 1) < 0.25  # Z side in space about the XY side
    assert 0.5 * pixels < z * y * x <= 1.3 * pixels
    # a thin volume: one tile deep, XY grows to keep the voxels
    z, y, _ = auto_tile_shape(config, cpu, (6, 2000, 2000))
    assert z == 6 and 0.5 * pixels < z * y * y <= pixels
    # a tile size given: the XY side, and Z over the anisotropy
    assert auto_tile_shape(config, cpu, (40, 500, 500), tile_size=64) == (32, 64, 64)


def test_tile_overlaps_follow_the_anisotropy_and_the_tile() -> None:
    assert tile_overlaps((32, 128, 128), 64, 2.0) == (8, 32, 32)
    assert tile_overlaps((64, 512, 512), 64, 2.0) == (16, 64, 64)
    assert tile_overlaps((64, 512, 512), 16, 4.0) == (4, 16, 16)
