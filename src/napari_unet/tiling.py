"""Sliding-window (tiled) inference in any number of dimensions: grid, blending, stitching.

Pure numpy, independent of the network: :func:`sliding_window` takes any
*predictor* callable mapping a batch of tiles ``(N, C, *tile)`` (``(N, C, h, w)`` for
planes, ``(N, C, d, h, w)`` for volumes) to a batch of outputs ``(N, C_out, *tile)``
(the pattern of MONAI's ``sliding_window_inference``).

Tiles overlap; each output tile is weighted by a window that is 1 in its interior
and falls smoothly (a raised cosine) towards the tile's edges over the overlap,
and the weighted sum is divided by the summed weights. The window is never zero,
so every pixel is covered with a positive weight and a model that predicts a
constant gives exactly that constant, while a CNN's less reliable tile borders
are blended away without seams. The window is a product of one ramp per axis and the
tiles a product of one row of starts per axis, so the summed weights are a product of
one sum per axis: the output is the only image-sized array the stitching allocates
(a volume's memory is the output plus one batch of tiles).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Generator, Sequence

import numpy as np

from napari_unet.events import plain_form

#: ``predictor(tiles (N, C, *tile) float32) -> outputs (N, C_out, *tile)``.
Predictor = Callable[[np.ndarray], np.ndarray]
#: A size given once for every axis, or one per axis.
PerAxis = int | Sequence[int]


def per_axis(value: PerAxis, ndim: int) -> tuple[int, ...]:
    """``value`` as one int per axis (an int is repeated ``ndim`` times)."""
    if isinstance(value, (int, np.integer)):
        return (int(value),) * ndim
    values = tuple(int(v) for v in value)
    if len(values) != ndim:
        raise ValueError(f"expected {ndim} sizes (one per axis), got {values}")
    return values


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


def grid_axes(
    shape: Sequence[int], tile_size: PerAxis, overlap: PerAxis, multiple: PerAxis = 1
) -> tuple[tuple[int, ...], list[list[int]]]:
    """Tile side and tile starts along each axis of ``shape`` (see :func:`tile_grid`)."""
    ndim = len(shape)
    tiles, overlaps, multiples = (per_axis(v, ndim) for v in (tile_size, overlap, multiple))
    sides = tuple(fit_tile(n, t, o, m) for n, t, o, m in zip(shape, tiles, overlaps, multiples))
    starts = [tile_starts(n, side, o) for n, side, o in zip(shape, sides, overlaps)]
    return sides, starts


def tile_grid(
    shape: Sequence[int], tile_size: PerAxis, overlap: PerAxis, multiple: PerAxis = 1
) -> list[tuple[slice, ...]]:
    """Tiles covering an image or volume, as one slice per axis, all of one size.

    Parameters
    ----------
    shape : sequence of int
        Spatial shape: ``(height, width)`` of an image, ``(Z, Y, X)`` of a volume (any
        size, smaller or larger than a tile).
    tile_size : int or sequence of int
        Largest tile side, for every axis or per axis. Tiles are shrunk to cover the
        image evenly (see :func:`fit_tile`) and never exceed it.
    overlap : int or sequence of int
        Minimum overlap between neighbouring tiles, in pixels, for every axis or per axis.
    multiple : int or sequence of int
        Round tile sides up to this multiple (per axis) where the image allows it.

    Returns
    -------
    list of tuple of slice
        Row-major order: the last axis varies fastest.
    """
    return _tiles(*grid_axes(shape, tile_size, overlap, multiple))


def _tiles(sides: Sequence[int], starts: list[list[int]]) -> list[tuple[slice, ...]]:
    """Every tile of the grid whose sides and starts per axis are given."""
    return [
        tuple(slice(start, start + side) for start, side in zip(corner, sides))
        for corner in itertools.product(*starts)
    ]


def _ramp(size: int, overlap: int) -> np.ndarray:
    """1D window: raised cosine from near 0 to 1 over ``overlap`` pixels at each end."""
    distance = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float64)
    if overlap <= 0:
        return np.ones(size)
    # (d + 1) / (overlap + 1) > 0 keeps the weight positive at the very edge.
    return 0.5 - 0.5 * np.cos(np.pi * np.minimum(distance + 1, overlap + 1) / (overlap + 1))


def blend_window(shape: Sequence[int], overlap: PerAxis) -> np.ndarray:
    """Blending weights of a tile of ``shape``: float32, 1 inside, > 0 everywhere."""
    overlaps = per_axis(overlap, len(shape))
    ramps = [_ramp(size, o) for size, o in zip(shape, overlaps)]
    return functools.reduce(np.multiply.outer, ramps).astype(np.float32)


def _weight_sums(
    shape: Sequence[int], sides: Sequence[int], starts: list[list[int]], overlaps: Sequence[int]
) -> list[np.ndarray]:
    """Per axis, the sum of every tile's ramp: their outer product is the summed window."""
    sums = []
    for length, side, axis_starts, o in zip(shape, sides, starts, overlaps):
        total = np.zeros(length)
        for start in axis_starts:
            total[start : start + side] += _ramp(side, o)
        sums.append(total)
    return sums


def sliding_window_events(
    image: np.ndarray,
    predictor: Predictor,
    tile_size: PerAxis,
    overlap: PerAxis = 32,
    batch_size: int = 1,
    multiple: PerAxis = 1,
) -> Generator[int, None, np.ndarray]:
    """Tiled prediction of one image or volume, yielding the tiles done after each batch.

    Parameters
    ----------
    image : array_like
        ``(C, H, W)`` image or ``(C, Z, Y, X)`` volume of network input (already
        normalised); any array whose slices give numpy arrays (only one batch of tiles
        is read at a time).
    predictor : callable
        Maps ``(N, C, *tile)`` float32 tiles to ``(N, C_out, *tile)`` outputs.
    tile_size : int or sequence of int
        Largest tile side(s), for every axis or per axis; see :func:`tile_grid`.
    overlap : int or sequence of int
        Minimum overlap of neighbouring tiles in pixels (and the blending width), for
        every axis or per axis.
    batch_size : int
        Tiles passed to ``predictor`` at once.
    multiple : int or sequence of int
        Preferred tile-side multiple (e.g. ``2**depth`` of a U-Net), or one per axis.

    Yields
    ------
    int
        Number of tiles predicted so far.

    Returns
    -------
    np.ndarray
        ``(C_out, *image.shape[1:])`` float32: the blended predictions.
    """
    if len(image.shape) < 3:
        raise ValueError(
            f"expected a (C, H, W) image or a (C, Z, Y, X) volume, got shape {image.shape}"
        )
    shape = tuple(image.shape[1:])
    overlaps = per_axis(overlap, len(shape))
    sides, starts = grid_axes(shape, tile_size, overlaps, multiple)
    tiles = _tiles(sides, starts)
    window = blend_window(sides, overlaps)
    output: np.ndarray | None = None
    for begin in range(0, len(tiles), batch_size):
        batch_tiles = tiles[begin : begin + batch_size]
        batch = np.stack([np.asarray(image[(slice(None), *tile)]) for tile in batch_tiles])
        predicted = np.asarray(predictor(np.ascontiguousarray(batch, dtype=np.float32)))
        if predicted.shape[0] != len(batch_tiles) or predicted.shape[2:] != sides:
            raise ValueError(
                f"the predictor returned shape {predicted.shape} for tiles of shape {batch.shape}; "
                "it must keep the batch size and the spatial size"
            )
        if output is None:
            output = np.zeros((predicted.shape[1], *shape), dtype=np.float32)
        for tile, tile_out in zip(batch_tiles, predicted):
            output[(slice(None), *tile)] += tile_out * window
        yield begin + len(batch_tiles)
    assert output is not None  # tile_grid always returns at least one tile
    # Divide by the summed window one axis at a time, in place (no image-sized weights).
    for axis, sums in enumerate(_weight_sums(shape, sides, starts, overlaps)):
        view = [1] * output.ndim
        view[axis + 1] = -1
        output /= sums.astype(np.float32).reshape(view)
    return output


sliding_window = plain_form(
    sliding_window_events,
    "sliding_window",
    "Tiled prediction of one ``(C, H, W)`` image or ``(C, Z, Y, X)`` volume.",
)
