"""Seeded fuzzing of image reading: mutated PNG, TIFF and JPEG files never crash or hang.

Every mutated file either reads, or fails with :class:`napari_unet.errors.DataError`
(``io.read_image``), or is declined by the napari reader (``get_reader`` returns None).
"""

from __future__ import annotations

import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from napari_unet import _reader, io
from napari_unet.errors import DataError

N_CASES = 1200
SEED = 19


def seed_files(folder: Path) -> list[Path]:
    """Small valid images of each kind the readers take."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    files = [
        folder / "grey.png",
        folder / "rgb.png",
        folder / "deep.png",
        folder / "plane.tif",
        folder / "stack.tif",
        folder / "tiled.tif",
        folder / "float.tif",
        folder / "photo.jpg",
    ]
    iio.imwrite(files[0], grey)
    iio.imwrite(files[1], np.stack([grey, grey[::-1], grey[:, ::-1]], axis=-1))
    iio.imwrite(files[2], grey.astype(np.uint16) * 200)
    tifffile.imwrite(files[3], grey)
    tifffile.imwrite(files[4], np.stack([grey] * 3), compression="zlib", photometric="minisblack")
    tifffile.imwrite(files[5], np.tile(grey, (2, 2)), tile=(16, 16), compression="zlib")
    tifffile.imwrite(files[6], grey.astype(np.float32) / 255, metadata={"axes": "YX"})
    iio.imwrite(files[7], np.stack([grey] * 3, axis=-1), extension=".jpg")
    return files


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes, a cut, junk inserted, or a field set to extremes."""
    buffer = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:
        for _ in range(rng.integers(1, 9)):
            buffer[rng.integers(len(buffer))] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        del buffer[rng.integers(len(buffer)) :]
    elif kind == 2:
        at = int(rng.integers(len(buffer)))
        buffer[at:at] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    else:
        at = int(rng.integers(max(1, len(buffer) - 4)))
        buffer[at : at + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff"])
    return bytes(buffer)


def test_mutated_images_read_or_fail_with_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a machine with 256 MiB free: a header that declares more is refused unread.
    monkeypatch.setattr(io, "available_memory", lambda: 256 * 2**20)
    seeds = [(path.suffix, path.read_bytes()) for path in seed_files(tmp_path)]
    rng = np.random.default_rng(SEED)
    outcomes = {"read": 0, "DataError": 0, "declined": 0}
    slowest = 0.0
    start = time.perf_counter()
    for case in range(N_CASES):
        suffix, data = seeds[case % len(seeds)]
        path = tmp_path / "fuzz" / f"case{case}{suffix}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(mutate(data, rng))
        began = time.perf_counter()
        try:
            image = io.read_image(path)
            assert isinstance(image, np.ndarray)
            outcomes["read"] += 1
        except DataError:
            outcomes["DataError"] += 1
        reader = _reader.get_reader(str(path))
        if reader is None:
            outcomes["declined"] += 1
        else:
            try:
                layers = reader(str(path))
                assert all(isinstance(data, np.ndarray) for data, _, _ in layers)
            except DataError:
                pass
        slowest = max(slowest, time.perf_counter() - began)
        path.unlink()
    assert slowest < 5, f"one file took {slowest:.1f} s"
    assert time.perf_counter() - start < 60
    # The mutations reach both outcomes: some files still read, many are refused.
    assert outcomes["read"] > 50 and outcomes["DataError"] > 300, outcomes
