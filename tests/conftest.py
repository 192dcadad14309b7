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
            radius = rng.integers(3, 7)
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
