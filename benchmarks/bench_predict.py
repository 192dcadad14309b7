"""Prediction speed and memory on a CPU.

Prints two tables:

1. Speed, per preset (tiny, fast, reference): megapixels per second for segmenting
   one RGB image (2048 x 2048; 1024 x 1024 with ``--quick``) end to end
   (normalisation, tiling, network, blending, watershed), and the achieved FLOP
   rate of the network as a share of the float32 matmul rate measured in the same
   run: for the inference network on a 512 x 512 tile (BatchNorm folded, channels
   last), for the plain eager network on the same tile, and for the whole
   end-to-end call (network FLOPs / wall time).
2. Memory (Linux): peak resident memory of a fresh process that segments a lazily
   generated dask stack of N x 2048 x 2048 float32 planes (never materialised)
   into a Zarr store on disk with :func:`napari_unet.blockwise.segment_to_zarr` (one block
   a plane, one thread), for 16 and 64 planes (16 with
   ``--quick``): the peak must stay far under the stack's size and not grow with N.

Weights are random: speed does not depend on them. On a shared machine each
network call is paired with a matmul measurement taken just before it and the
median ratio of 5 pairs is reported; the end-to-end time is one call after a
warm-up call (the one that counts the FLOPs), against the mean of the matmul
rates measured before and after it.

Usage::

    python benchmarks/bench_predict.py [--quick] [--threads N] [--compile]

``--compile`` adds columns for ``PredictConfig(compile=True)``: the one-off compile
time of the 512 x 512 graph, then the network and end-to-end rates once compiled.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.checkpoint import TrainedModel
from napari_unet.config import ModelConfig
from napari_unet.model import build_model
from napari_unet.prediction import PredictConfig, TilePredictor, auto_tile_size, predict

PRESETS = ("tiny", "fast", "reference")


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls, after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
    """float32 matmul FLOP/s (best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_time(lambda: a @ b, repeats)


def network_flops(network: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(x)
    return counter.get_total_flops()


def random_model(preset: str, in_channels: int = 3) -> TrainedModel:
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, in_channels=in_channels)
    return TrainedModel(build_model(config).eval(), config)


def synthetic_rgb(size: int, seed: int = 0) -> np.ndarray:
    """Bright noisy discs on a dark background, RGB uint8."""
    rng = np.random.default_rng(seed)
    image = rng.normal(30, 8, (size, size)).astype(np.float32)
    rows, cols = np.ogrid[:size, :size]
    for r, c, radius in zip(*rng.integers(0, size, (2, size)), rng.integers(6, 16, size)):
        box = (slice(max(r - radius, 0), r + radius), slice(max(c - radius, 0), c + radius))
        disc = (rows[box[0]] - r) ** 2 + (cols[:, box[1]] - c) ** 2 <= radius**2
        image[box][disc] += 150
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def paired_ratio(function: Callable[[], object], flops: int, pairs: int = 5) -> tuple[float, float]:
    """FLOP rate of ``function`` as a share of the matmul rate measured right before it.

    On a shared machine the load changes from second to second, so each call is
    paired with a matmul measurement taken just before it; the median over the
    pairs is reported with the best rate of the function.
    """
    function()
    ratios, rates = [], []
    for _ in range(pairs):
        matmul = matmul_rate(repeats=3)
        start = time.perf_counter()
        function()
        rate = flops / (time.perf_counter() - start)
        ratios.append(rate / matmul)
        rates.append(rate)
    return float(np.median(ratios)), max(rates)


def end_to_end(
    image: np.ndarray, model: TrainedModel, config: PredictConfig
) -> tuple[float, float]:
    """Seconds of one ``predict`` call after a warm-up call, and the mean matmul rate around it."""
    predict(image, model, config)
    matmul_before = matmul_rate()
    start = time.perf_counter()
    predict(image, model, config)
    seconds = time.perf_counter() - start
    return seconds, (matmul_before + matmul_rate()) / 2


def speed_table(image_size: int, compiled: bool) -> Iterator[dict[str, float | str]]:
    """One row per preset, as soon as it is measured."""
    image = synthetic_rgb(image_size)
    tile_input = torch.rand(1, 3, 512, 512)
    fast_input = tile_input.contiguous(memory_format=torch.channels_last)
    for preset in PRESETS:
        model = random_model(preset)
        fast_net = TilePredictor(model).network
        tile_flops = network_flops(fast_net, tile_input)
        with torch.inference_mode():
            net_ratio, net_rate = paired_ratio(lambda net=fast_net: net(fast_input), tile_flops)
            eager_ratio, _ = paired_ratio(lambda net=model.network: net(tile_input), tile_flops)
        config = PredictConfig()  # automatic tile size, as a user gets it
        with FlopCounterMode(display=False) as counter:
            predict(image, model, config)
        total_flops = counter.get_total_flops()
        seconds, matmul = end_to_end(image, model, config)
        row: dict[str, float | str] = {
            "preset": preset,
            "tile": auto_tile_size(model.config, model.device, 1, config.overlap),
            "mpx_per_s": image_size**2 / 1e6 / seconds,
            "seconds": seconds,
            "matmul_gflops": matmul / 1e9,
            "net_gflops": net_rate / 1e9,
            "net_ratio": net_ratio,
            "eager_ratio": eager_ratio,
            "end_to_end_ratio": total_flops / seconds / matmul,
        }
        if compiled:
            compiled_net = TilePredictor(model, compile=True).network
            start = time.perf_counter()
            with torch.inference_mode():
                compiled_net(fast_input)  # compiles the 512x512 graph
            row["compile_s"] = time.perf_counter() - start
            with torch.inference_mode():
                row["compiled_ratio"], _ = paired_ratio(
                    lambda net=compiled_net: net(fast_input), tile_flops
                )
            seconds, matmul = end_to_end(image, model, PredictConfig(compile=True))
            row["compiled_mpx_per_s"] = image_size**2 / 1e6 / seconds
            row["compiled_end_to_end_ratio"] = total_flops / seconds / matmul
        yield row


def resident_mib() -> tuple[float, float]:
    """Current and peak resident memory of this process in MiB (Linux ``/proc``).

    ``VmHWM`` is the peak of this process image only; ``getrusage``'s
    ``ru_maxrss`` would also count the parent's memory at the fork before exec.
    """
    with open("/proc/self/status", encoding="ascii") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def memory_child(n_planes: int, size: int, preset: str) -> dict[str, float]:
    """Segment a lazy N x size x size stack into a Zarr store; report resident memory."""
    import dask.array as da

    from napari_unet.blockwise import segment_to_zarr

    def plane(block_id: tuple[int, int, int]) -> np.ndarray:
        return synthetic_rgb(size, seed=block_id[0])[None, ..., 0].astype(np.float32)

    stack = da.map_blocks(plane, dtype=np.float32, chunks=((1,) * n_planes, (size,), (size,)))
    model = random_model(preset, in_channels=1)
    baseline, _ = resident_mib()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        result = segment_to_zarr(
            stack,
            f"{folder}/labels.zarr",
            model,
            PredictConfig(),
            block=size,
            ome=False,
            scheduler_name="threads",
            workers=1,
        )
    return {
        "planes": n_planes,
        "stack_mib": stack.nbytes / 2**20,
        "labels_mib": stack.size * result.dtype.itemsize / 2**20,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": resident_mib()[1],
        "seconds": time.perf_counter() - start,
    }


def memory_table(
    plane_counts: list[int], size: int, preset: str, threads: int
) -> Iterator[dict[str, float]]:
    """One row per stack length, each measured in a fresh process."""
    for n_planes in plane_counts:
        # A fresh process per run, so that each peak is its own.
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                str(n_planes),
                "--size",
                str(size),
                "--preset",
                preset,
                "--threads",
                str(threads),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        yield json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024 px image, 16-plane stack only")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=2048, help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="tiny", help="preset of the memory run (default tiny)")
    parser.add_argument(
        "--compile", action="store_true", help="also time PredictConfig(compile=True)"
    )
    parser.add_argument(
        "--part", choices=("all", "speed", "memory"), default="all", help="which table(s) to run"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.size, args.preset)))
        return

    print(f"torch {torch.__version__}, {args.threads} threads")
    if args.part in ("all", "speed"):
        print_speed(1024 if args.quick else 2048, args.compile)
    if args.part in ("all", "memory"):
        print_memory([16] if args.quick else [16, 64], args.preset, args.threads)


def print_speed(image_size: int, compiled: bool) -> None:
    """Print the speed table, row by row."""
    print(
        f"\nSpeed: one {image_size}x{image_size} RGB image, end to end; network on a 512x512 tile"
    )
    header = [
        "preset",
        "auto tile",
        "Mpx/s",
        "s/image",
        "matmul GF/s",
        "net GF/s",
        "net/matmul",
        "eager/matmul",
        "end-to-end/matmul",
    ]
    if compiled:
        header += ["compile s", "compiled net/matmul", "compiled Mpx/s", "compiled e2e/matmul"]
    print(" | ".join(header), flush=True)
    for row in speed_table(image_size, compiled):
        line = (
            f"{row['preset']} | {row['tile']} | {row['mpx_per_s']:.3f} | {row['seconds']:.1f} | "
            f"{row['matmul_gflops']:.0f} | {row['net_gflops']:.0f} | {row['net_ratio']:.0%} | "
            f"{row['eager_ratio']:.0%} | {row['end_to_end_ratio']:.0%}"
        )
        if compiled:
            line += (
                f" | {row['compile_s']:.0f} | {row['compiled_ratio']:.0%} | "
                f"{row['compiled_mpx_per_s']:.3f} | {row['compiled_end_to_end_ratio']:.0%}"
            )
        print(line, flush=True)


def print_memory(counts: list[int], preset: str, threads: int) -> None:
    """Print the memory table, row by row."""
    print(f"\nMemory: lazy dask stack of N x 2048 x 2048 float32 -> Zarr labels ({preset} preset)")
    print("planes | stack MiB | labels MiB | RSS before MiB | peak RSS MiB | seconds", flush=True)
    for row in memory_table(counts, 2048, preset, threads):
        print(
            f"{row['planes']} | {row['stack_mib']:.0f} | {row['labels_mib']:.0f} | "
            f"{row['baseline_rss_mib']:.0f} | {row['peak_rss_mib']:.0f} | {row['seconds']:.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
