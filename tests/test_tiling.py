"""Tile grid, blending window and stitching of napari_unet.tiling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_unet.tiling import (
    blend_window,
    fit_tile,
    sliding_window,
    sliding_window_events,
    tile_grid,
    tile_starts,
)


@pytest.mark.parametrize("length", [1, 7, 48, 49, 100, 257, 1000])
@pytest.mark.parametrize(("tile", "overlap"), [(48, 0), (48, 16), (64, 31), (256, 64)])
def test_tile_starts_cover_the_axis_with_the_overlap(length: int, tile: int, overlap: int) -> None:
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0
    assert starts[-1] + size == length
    gaps = np.diff(starts)
    assert np.all(gaps > 0)
    assert np.all(size - gaps >= overlap)  # neighbours overlap by at least `overlap`


def test_fit_tile_shrinks_tiles_to_cover_evenly() -> None:
    # 2048 px with tiles of at most 1024 and overlap 64 needs 3 tiles; 736 px suffice.
    assert fit_tile(2048, 1024, 64, multiple=16) == 736
    assert len(tile_starts(2048, 736, 64)) == 3
    assert fit_tile(37, 64, 16) == 37  # smaller than a tile: one tile of the image
    assert fit_tile(100, 64, 16, multiple=16) % 16 == 0


@pytest.mark.parametrize("shape", [(5, 9), (47, 131), (64, 64), (200, 33)])
def test_tile_grid_tiles_have_one_size_and_cover_the_image(shape: tuple[int, int]) -> None:
    tiles = tile_grid(shape, 48, 12, multiple=8)
    covered = np.zeros(shape, dtype=int)
    sizes = set()
    for rows, cols in tiles:
        covered[rows, cols] += 1
        sizes.add((rows.stop - rows.start, cols.stop - cols.start))
        assert rows.stop <= shape[0] and cols.stop <= shape[1]
    assert len(sizes) == 1
    assert covered.min() >= 1


def test_blend_window_is_positive_smooth_and_one_inside() -> None:
    window = blend_window((40, 30), overlap=8)
    assert window.min() > 0
    assert window.max() == pytest.approx(1.0)
    np.testing.assert_allclose(window[8:-8, 8:-8], 1.0)
    np.testing.assert_allclose(window, window[::-1, ::-1])
    assert np.all(np.diff(window[:9, 15]) > 0)  # rises monotonically to the interior
    np.testing.assert_array_equal(blend_window((5, 6), overlap=0), np.ones((5, 6)))


@pytest.mark.parametrize("shape", [(1, 1), (17, 23), (100, 131)])
def test_constant_predictor_gives_a_constant_output(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).random((2, *shape)).astype(np.float32)

    def constant(tiles: np.ndarray) -> np.ndarray:
        return np.full((tiles.shape[0], 3, *tiles.shape[2:]), 0.7, dtype=np.float32)

    out = sliding_window(image, constant, tile_size=32, overlap=10)
    assert out.shape == (3, *shape)
    np.testing.assert_allclose(out, 0.7, rtol=1e-6)


def test_pointwise_predictor_is_stitched_exactly() -> None:
    image = np.random.default_rng(1).random((2, 97, 131)).astype(np.float32)

    def pointwise(tiles: np.ndarray) -> np.ndarray:
        return np.stack([tiles[:, 0] * 2 - tiles[:, 1], np.tanh(tiles[:, 1])], axis=1)

    untiled = pointwise(image[None])[0]
    np.testing.assert_allclose(
        sliding_window(image, pointwise, 40, 12, batch_size=3), untiled, atol=1e-6
    )


def test_stitching_a_convolution_reproduces_the_untiled_prediction() -> None:
    """A 5x5 mean filter sees zero padding at tile borders; blending hides it."""
    kernel = torch.ones(1, 1, 5, 5) / 25

    def blur(tiles: np.ndarray) -> np.ndarray:
        return F.conv2d(torch.from_numpy(tiles), kernel, padding=2).numpy()

    image = np.random.default_rng(2).random((1, 101, 131)).astype(np.float32)
    untiled = blur(image[None])[0]
    stitched = sliding_window(image, blur, tile_size=48, overlap=16)
    difference = np.abs(stitched - untiled)
    assert difference.max() < 0.02  # values around 0.5 with std 0.07
    assert difference.mean() < 1e-3


def test_events_count_tiles_and_batches() -> None:
    image = np.zeros((1, 50, 70), dtype=np.float32)
    n_tiles = len(tile_grid((50, 70), 32, 8))
    events = sliding_window_events(image, lambda t: t, 32, 8, batch_size=2)
    counts = []
    while True:
        try:
            counts.append(next(events))
        except StopIteration as finished:
            result = finished.value
            break
    assert counts[-1] == n_tiles
    assert counts == sorted(counts)
    assert result.shape == (1, 50, 70)


def test_predictor_changing_the_shape_is_refused() -> None:
    image = np.zeros((1, 40, 40), dtype=np.float32)
    with pytest.raises(ValueError, match="spatial size"):
        sliding_window(image, lambda t: t[..., :-1], 32, 8)


# --------------------------------------------------------------------------- volumes


def test_3d_tile_grid_has_one_size_per_axis_and_covers_the_volume() -> None:
    shape = (21, 50, 70)
    tiles = tile_grid(shape, (8, 32, 32), (2, 8, 8), multiple=(4, 16, 16))
    covered = np.zeros(shape, dtype=int)
    for tile in tiles:
        covered[tile] += 1
    assert {tuple(s.stop - s.start for s in tile) for tile in tiles} == {(8, 32, 32)}
    assert covered.min() >= 1
    # row-major: the last axis varies fastest, as in 2D
    assert tiles[0][0] == tiles[1][0] and tiles[0][2] != tiles[1][2]


def test_3d_blend_window_is_a_product_of_ramps() -> None:
    window = blend_window((6, 20, 24), (2, 8, 8))
    assert window.shape == (6, 20, 24) and window.min() > 0
    np.testing.assert_allclose(window, window[::-1, ::-1, ::-1])
    np.testing.assert_allclose(window[2:-2, 8:-8, 8:-8], 1.0)


@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 17, 23), (19, 40, 33)])
def test_3d_constant_predictor_gives_a_constant_output(shape: tuple[int, int, int]) -> None:
    volume = np.random.default_rng(0).random((1, *shape)).astype(np.float32)

    def constant(tiles: np.ndarray) -> np.ndarray:
        assert tiles.ndim == 5
        return np.full((tiles.shape[0], 2, *tiles.shape[2:]), 0.7, dtype=np.float32)

    out = sliding_window(volume, constant, tile_size=(8, 16, 16), overlap=(2, 4, 4))
    assert out.shape == (2, *shape)
    np.testing.assert_allclose(out, 0.7, rtol=1e-6)


def test_3d_stitching_a_convolution_reproduces_the_untiled_prediction() -> None:
    kernel = torch.ones(1, 1, 3, 5, 5) / 75

    def blur(tiles: np.ndarray) -> np.ndarray:
        return F.conv3d(torch.from_numpy(tiles), kernel, padding=(1, 2, 2)).numpy()

    volume = np.random.default_rng(2).random((1, 20, 61, 47)).astype(np.float32)
    untiled = blur(volume[None])[0]
    stitched = sliding_window(volume, blur, (10, 32, 32), (4, 12, 12), batch_size=2)
    difference = np.abs(stitched - untiled)
    seams = np.abs(sliding_window(volume, blur, (10, 32, 32), 0) - untiled)
    assert difference.max() < 0.05
    assert difference.mean() < 5e-3 and difference.mean() < seams.mean() / 2


def test_3d_memory_is_the_output_plus_one_batch_of_tiles() -> None:
    import tracemalloc

    volume = np.random.default_rng(3).random((1, 64, 128, 128)).astype(np.float32)  # 4 MiB
    tracemalloc.start()
    try:
        out = sliding_window(volume, lambda t: t * 0.5, (16, 32, 32), (4, 8, 8), batch_size=2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(out, volume * 0.5, rtol=1e-5)
    # an image-sized weight array (or a copy of the input) would add another 4 MiB
    assert peak < volume.nbytes + 2**20


def test_tiles_keep_the_size_rounded_to_the_multiple() -> None:
    # 64 px in tiles of at most 32 overlapping by 8: three tiles of 27, rounded up to 28
    image = np.zeros((1, 64, 64), dtype=np.float32)
    seen = set()

    def record(tiles: np.ndarray) -> np.ndarray:
        seen.add(tiles.shape[2:])
        return tiles

    sliding_window(image, record, 32, 8, multiple=2)
    assert seen == {(28, 28)}
