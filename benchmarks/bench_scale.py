"""Segmenting a stack larger than memory on dask.distributed: throughput and peak memory.

Writes a synthetic float32 stack of bright blobs (float32 as after deconvolution or
registration) to an uncompressed Zarr in a temporary folder, chunk by chunk (the stack is
never in memory; by default 64 x 4096 x 4096 = 4.3 GB on disk), then segments it with
:func:`napari_unet.blockwise.segment_to_zarr` on a ``dask.distributed.LocalCluster`` of
1 and of 2 worker processes, and prints a table:
wall time, throughput, and the peak resident memory of the driver and all workers together
(sampled every 0.1 s with psutil), next to the stack's size.

The model is a real, tiny U-Net (depth 1, one filter) whose weights make it a threshold of
the normalised intensity, so the run measures the pipeline (reading, normalisation, tiled
prediction, labelling, stitching, writing), not a network's arithmetic::

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --quick   # 67 MB, under a minute
    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py           # 4.3 GB, several minutes

The wall time includes starting the LocalCluster (a few seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import zarr
from scipy import ndimage as ndi

from napari_unet.blockwise import segment_to_zarr
from napari_unet.checkpoint import save_model
from napari_unet.config import ModelConfig
from napari_unet.model import build_model
from napari_unet.prediction import PredictConfig


def threshold_model(path: Path) -> Path:
    """A depth-1, one-filter U-Net whose output is ``sigmoid(20 * (x - 0.5))``."""
    config = ModelConfig(in_channels=1, base_filters=1, depth=1, target="foreground")
    network = build_model(config)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.zero_()
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.fill_(1.0)
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        network.encoders[0][0].weight[0, 0, 1, 1] = 1.0
        network.encoders[0][3].weight[0, 0, 1, 1] = 1.0
        network.decoders[0].conv[0].weight[0, 0, 1, 1] = 1.0
        network.decoders[0].conv[3].weight[0, 0, 1, 1] = 1.0
        network.head.weight[:, 0] = 20.0
        network.head.bias[:] = -10.0
    return save_model(path, network.eval(), config, {"purpose": "bench_scale"})


def synthetic_chunk(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Noisy bright blobs (about 10-20 px across) on a dark background, uint8."""
    rng = np.random.default_rng(seed)
    coarse = ndi.gaussian_filter(rng.random((shape[0] // 4, shape[1] // 4)), 1.5)
    blobs = np.kron(coarse > np.quantile(coarse, 0.85), np.ones((4, 4), bool))
    noise = rng.integers(0, 30, size=shape, dtype=np.uint8)
    return np.where(blobs, np.uint8(180), np.uint8(30)) + noise


def write_stack(path: Path, planes: int, side: int, chunk: int, dtype: str) -> zarr.Array:
    """An uncompressed Zarr of ``planes x side x side``, written chunk by chunk."""
    array = zarr.create_array(
        str(path),
        shape=(planes, side, side),
        chunks=(1, chunk, chunk),
        dtype=dtype,
        compressors=None,
        fill_value=0,
    )
    seed = 0
    for z in range(planes):
        for y in range(0, side, chunk):
            for x in range(0, side, chunk):
                chunk_data = synthetic_chunk((chunk, chunk), seed).astype(dtype)
                array[z, y : y + chunk, x : x + chunk] = chunk_data
                seed += 1
    return array


class PeakMemory:
    """Peak summed RSS of this process and all its descendants (dask workers)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="67 MB stack instead of 4.3 GB")
    parser.add_argument("--dtype", default="float32", help="pixel type (default float32)")
    parser.add_argument("--planes", type=int, help="number of planes (default 64; quick: 16)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--block", type=int, help="block side (default 1024; quick: 512)")
    parser.add_argument("--dir", type=Path, help="scratch folder (default: system temp)")
    args = parser.parse_args()
    planes, side = (16, 1024) if args.quick else (64, 4096)
    planes = args.planes or planes
    block = args.block or (512 if args.quick else 1024)
    # One tile per block, connected components: the cheapest per-pixel work.
    config = PredictConfig(tile_size=2048, overlap=32, separate=False, min_size=8, fill_holes=False)
    scratch = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=args.dir))
    try:
        started = time.perf_counter()
        write_stack(
            scratch / "stack.zarr", planes, side, 1024 if not args.quick else 512, args.dtype
        )
        stack_bytes = directory_bytes(scratch / "stack.zarr")
        print(
            f"stack {planes} x {side} x {side} {args.dtype}: {stack_bytes / 1e9:.2f} GB on disk, "
            f"written in {time.perf_counter() - started:.0f}s; block {block}, "
            f"cores {os.cpu_count()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
        )
        model = threshold_model(scratch / "threshold.pt")
        rows = []
        for workers in args.workers:
            out = scratch / f"labels_{workers}.zarr"
            with PeakMemory() as memory:
                result = segment_to_zarr(
                    scratch / "stack.zarr",
                    out,
                    model,
                    config,
                    block=block,
                    workers=workers,
                )
            megapixels = planes * side * side / 1e6
            rows.append(
                (
                    workers,
                    result.elapsed_s,
                    megapixels / result.elapsed_s,
                    stack_bytes / 1e6 / result.elapsed_s,
                    memory.peak / 1e9,
                    memory.peak / stack_bytes,
                    result.n_objects,
                    result.merged,
                )
            )
            shutil.rmtree(out)
        header = (
            "workers",
            "wall s",
            "Mpx/s",
            "MB/s",
            "peak RSS GB",
            "peak/stack",
            "objects",
            "merged",
        )
        print(" | ".join(f"{h:>11}" for h in header))
        for row in rows:
            print(
                " | ".join(
                    f"{value:>11}" if isinstance(value, int) else f"{value:>11.3g}" for value in row
                )
            )
        if len(rows) > 1:
            print(f"speed-up with {rows[-1][0]} workers: {rows[0][1] / rows[-1][1]:.2f}x")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
