"""Shared test fixtures: small synthetic images of bright round blobs with instance labels."""

from __future__ import annotations

import numpy as np
import pytest


def make_blobs(
    n: int = 4, shape: tuple[int, int] = (48, 48), rgb: bool = False, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``n`` noisy images of bright disks (uint8, grey or RGB) and their uint16 instance labels."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    images, labels = [], []
    for _ in range(n):
        label = np.zeros(shape, np.uint16)
        for index in range(1, 5):
            radius = rng.integers(3, max(4, min(7, min(shape) // 2 - 1)))
            r, c = rng.integers(radius, shape[0] - radius), rng.integers(radius, shape[1] - radius)
            label[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = index
        image = np.clip((label > 0) * 140 + rng.normal(40, 12, shape), 0, 255).astype(np.uint8)
        images.append(np.stack([image] * 3, axis=-1) if rgb else image)
        labels.append(label)
    return images, labels


@pytest.fixture
def blobs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Four 48x48 grey blob images with instance labels."""
    return make_blobs()


def blob_pair(size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grey image of bright discs on a noisy background and its instance labels."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.uint16)
    for index in range(1, 7):
        centre = rng.integers(8, size - 8, 2)
        labels[disk(tuple(centre), int(rng.integers(4, 8)), shape=labels.shape)] = index
    image = (labels > 0) * 180 + rng.normal(30, 10, labels.shape)
    return image.clip(0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a test module with one torch intra-op thread, restoring the count afterwards.

    Tiny networks gain nothing from intra-op threads, while on a busy 2-core machine
    competing OpenMP threads make each step up to 100x slower. Activate it per module
    with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_threshold_model(
    in_channels: int = 1,
    target: str = "foreground",
    gain: float = 20.0,
    ndim: int = 2,
    anisotropy: float = 1.0,
):
    """A real U-Net (depth 1, one filter) whose weights make it a known function.

    Every output channel is ``sigmoid(gain * (x - 0.5))`` of the mean ``x`` of the
    normalised input channels, so bright objects come out as objects. Prediction
    tests get deterministic, meaningful output without training. ``ndim=3`` builds the
    3D network (Conv3d) of a model for volumes of that ``anisotropy``.
    """
    import torch

    from napari_unet.checkpoint import TrainedModel
    from napari_unet.config import ModelConfig
    from napari_unet.model import build_model

    config = ModelConfig(
        in_channels=in_channels,
        base_filters=1,
        depth=1,
        target=target,
        ndim=ndim,
        anisotropy=anisotropy,
    )
    network = build_model(config)
    centre = (1,) * ndim
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        for module in network.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                module.weight.fill_(1.0)
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        # Encoder and decoder blocks pass channel 0 through (centre tap of each 3x3
        # conv); the decoder reads only the skip connection (concatenated first).
        network.encoders[0][0].weight[(0, slice(None), *centre)] = 1.0 / in_channels
        network.encoders[0][3].weight[(0, 0, *centre)] = 1.0
        network.decoders[0].conv[0].weight[(0, 0, *centre)] = 1.0
        network.decoders[0].conv[3].weight[(0, 0, *centre)] = 1.0
        network.head.weight[:, 0] = gain
        network.head.bias[:] = -gain / 2
    return TrainedModel(network.eval(), config)
