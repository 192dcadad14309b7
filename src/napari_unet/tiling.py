"""Sliding-window (tiled) inference: tile grid, blending weights and stitching.

Pure numpy, independent of the network: :func:`sliding_window` takes any
*predictor* callable mapping a batch of tiles ``(N, C, h, w)`` to a batch of
outputs ``(N, C_out, h, w)`` (the pattern of MONAI's ``sliding_window_inference``).

Tiles overlap; each output tile is weighted by a window that is 1 in its interior
and falls smoothly (a raised cosine) towards the tile's edges over the overlap,
and the weighted sum is divided by the summed weights. The window is never zero,
so every pixel is covered with a positive weight and a model that predicts a
constant gives exactly that constant, while a CNN's less reliable tile borders
are blended away without seams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator

import numpy as np

from napari_unet.events import plain_form

#: ``predictor(tiles (N, C, h, w) float32) -> outputs (N, C_out, h, w)``.
Predictor = Callable[[np.ndarray], np.ndarray]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    The first tile starts at 0 and the last ends at ``length``; the tiles in
    between are spread evenly, so neighbours overlap by at least ``overlap``.

    Parameters
    ----------
    length : int
        Size of the axis, ``>= 1``.
    tile : int
        Tile size along the axis; a tile larger than the axis is one tile at 0.
    overlap : int
        Minimum overlap of neighbouring tiles, ``0 <= overlap < tile``.
    """
    if length <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    count = math.ceil((length - tile) / (tile - overlap)) + 1
    return [int(s) for s in np.linspace(0, length - tile, count).round().astype(int)]


def fit_tile(length: int, max_tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile side that covers ``length`` with as few tiles as ``max_tile`` needs.

    A 2048-pixel axis with ``max_tile=1024`` and ``overlap=64`` needs three tiles;
    tiles of 736 (not 1024) cover it with the same three, wasting far less work.
    The result is rounded up to ``multiple`` (the network's size step) and never
    exceeds ``length``.
    """
    if length <= max_tile:
        return length
    count = math.ceil((length - overlap) / (max_tile - overlap))
    tile = math.ceil((length - overlap) / count) + overlap
    return min(math.ceil(tile / multiple) * multiple, max_tile, length)


def tile_grid(
    shape: tuple[int, int], tile_size: int | tuple[int, int], overlap: int, multiple: int = 1
) -> list[tuple[slice, slice]]:
    """Tiles covering a 2D image, as ``(rows, cols)`` slice pairs, all of one size.

    Parameters
    ----------
    shape : (int, int)
        Height and width of the image (any size, smaller or larger than a tile).
    tile_size : int or (int, int)
        Largest tile height and width. Tiles are shrunk to cover the image evenly
        (see :func:`fit_tile`) and never exceed the image.
    overlap : int
        Minimum overlap between neighbouring tiles, in pixels.
    multiple : int
        Round tile sides up to this multiple where the image allows it.
    """
    tiles = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
    sides = [fit_tile(n, t, overlap, multiple) for n, t in zip(shape, tiles)]
    rows = tile_starts(shape[0], sides[0], overlap)
    cols = tile_starts(shape[1], sides[1], overlap)
    return [(slice(r, r + sides[0]), slice(c, c + sides[1])) for r in rows for c in cols]


def _ramp(size: int, overlap: int) -> np.ndarray:
    """1D window: raised cosine from near 0 to 1 over ``overlap`` pixels at each end."""
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float64)
    if overlap <= 0:
        return np.ones(size)
    # (d + 1) / (overlap + 1) > 0 keeps the weight positive at the very edge.
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(distance + 1, overlap + 1) / (overlap + 1))


def blend_window(shape: tuple[int, int], overlap: int) -> np.ndarray:
    """2D blending weights of a tile: ``(h, w)`` float32, 1 inside, > 0 everywhere."""
    window = np.outer(_ramp(shape[0], overlap), _ramp(shape[1], overlap))
    return window.astype(np.float32)


def sliding_window_events(
    image: np.ndarray,
    predictor: Predictor,
    tile_size: int | tuple[int, int],
    overlap: int = 32,
    batch_size: int = 1,
    multiple: int = 1,
) -> Generator[int, None, np.ndarray]:
    """Tiled prediction of one ``(C, H, W)`` image, yielding the tiles done after each batch.

    Parameters
    ----------
    image : np.ndarray
        ``(C, H, W)`` network input (already normalised).
    predictor : callable
        Maps ``(N, C, h, w)`` float32 tiles to ``(N, C_out, h, w)`` outputs.
    tile_size : int or (int, int)
        Largest tile side(s); see :func:`tile_grid`.
    overlap : int
        Minimum overlap of neighbouring tiles in pixels (and the blending width).
    batch_size : int
        Tiles passed to ``predictor`` at once.
    multiple : int
        Preferred tile-side multiple (e.g. ``2**depth`` of a U-Net).

    Yields
    ------
    int
        Number of tiles predicted so far.

    Returns
    -------
    np.ndarray
        ``(C_out, H, W)`` float32: the blended predictions.
    """
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {image.shape}")
    height, width = image.shape[1:]
    tiles = tile_grid((height, width), tile_size, overlap, multiple)
    first = tiles[0]
    tile_shape = (first[0].stop - first[0].start, first[1].stop - first[1].start)
    window = blend_window(tile_shape, overlap)
    output: np.ndarray | None = None
    weights = np.zeros((height, width), dtype=np.float32)
    for begin in range(0, len(tiles), batch_size):
        batch_tiles = tiles[begin : begin + batch_size]
        batch = np.stack([image[:, rows, cols] for rows, cols in batch_tiles])
        predicted = np.asarray(predictor(np.ascontiguousarray(batch, dtype=np.float32)))
        if predicted.shape[0] != len(batch_tiles) or predicted.shape[2:] != tile_shape:
            raise ValueError(
                f"the predictor returned shape {predicted.shape} for tiles of shape {batch.shape}; "
                "it must keep the batch size and the spatial size"
            )
        if output is None:
            output = np.zeros((predicted.shape[1], height, width), dtype=np.float32)
        for (rows, cols), tile_out in zip(batch_tiles, predicted):
            output[:, rows, cols] += tile_out * window
            weights[rows, cols] += window
        yield begin + len(batch_tiles)
    assert output is not None  # tile_grid always returns at least one tile
    output /= weights
    return output


sliding_window = plain_form(
    sliding_window_events,
    "sliding_window",
    "Tiled prediction of one ``(C, H, W)`` image.",
)
