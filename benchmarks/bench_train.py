"""Training-step throughput of the U-Net presets, against this machine's matmul rate.

For each preset this times full training steps (forward, BCE loss, backward, Adam step)
on random 256x256 RGB batches of 8, counts the FLOPs of one step with
``torch.utils.flop_counter.FlopCounterMode``, and reports images per second and the
achieved FLOP rate as a share of the float32 matrix-multiply rate measured in the same
run (a large square ``torch.mm``), i.e. how close the step comes to the machine's peak.

On a CPU three variants are timed: ``nchw`` is what :mod:`napari_unet.training` runs there
(PyTorch's default layout, with freed memory kept for reuse by
:func:`napari_unet.allocator.reuse_freed_memory`), ``malloc`` the same with glibc's default
allocator settings (each step maps and zeroes its activations afresh), and ``cl`` the
channels-last layout with freed memory kept. Variants sharing an allocator setting alternate
step by step, so that a machine shared with other work slows them alike. Each row's time is
the fastest of its timed steps (the least disturbed by other processes).

With ``--device cuda`` the variants are float32 NCHW, bf16 autocast NCHW and bf16
autocast channels-last (what :mod:`napari_unet.training` uses on CUDA), and the ratio is
taken against the bf16 matmul rate (the float32 one, TF32 allowed, is printed too).

Usage::

    python benchmarks/bench_train.py                 # tiny, fast, reference
    python benchmarks/bench_train.py --quick         # tiny and fast, fewer steps
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --threads 1 --clock cpu  # shared machine
    python benchmarks/bench_train.py --device cuda --batch 32   # a GPU
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.allocator import reuse_freed_memory
from napari_unet.losses import compute_loss
from napari_unet.model import build_model

#: (channels-last, bf16 autocast, freed memory kept for reuse) of each variant, per device.
VARIANTS = {
    "cpu": {
        "nchw": (False, False, True),
        "malloc": (False, False, False),
        "cl": (True, False, True),
    },
    "cuda": {
        "fp32": (False, False, False),
        "bf16": (False, True, False),
        "bf16-cl": (True, True, False),
    },
}


def matmul_rate(
    clock: Callable[[], float],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    repeats: int = 8,
) -> float:
    """FLOP/s of a square matrix product in ``dtype`` (best of ``repeats`` runs)."""
    size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        start = clock()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / max(clock() - start, 1e-9))
    return best


def step_flops(network: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass (the optimizer step is negligible)."""
    with FlopCounterMode(display=False) as counter:
        loss = compute_loss("bce", network(x), t, torch.ones_like(t))
        loss.backward()
    network.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def make_step(
    preset: str,
    size: int,
    batch: int,
    device: torch.device,
    channels_last: bool,
    bf16: bool,
) -> Callable[[], None]:
    """A closure running one training step (forward, loss, backward, Adam) on a fixed batch."""
    torch.manual_seed(0)
    network = build_model(preset=preset, in_channels=3).train().to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    t = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    w = torch.ones_like(t)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = network(x)
        compute_loss("bce", outputs, t, w).backward()
        optimizer.step()

    for _ in range(3 if device.type == "cuda" else 1):
        step()  # warm-up: oneDNN and cuDNN pick their kernels on the first calls
    return step


def bench_preset(
    preset: str,
    size: int,
    batch: int,
    steps: int,
    clock: Callable[[], float],
    device: torch.device,
) -> dict[str, float]:
    """Fastest step time of each variant over ``steps`` alternating timed steps."""
    network = build_model(preset=preset, in_channels=3).train().to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    flops = step_flops(network, x, torch.ones(batch, 1, size, size, device=device))
    best: dict[str, float] = {}
    for reuse in (False, True):  # one allocator setting at a time: switching it frees memory
        group = {name: v[:2] for name, v in VARIANTS[device.type].items() if v[2] == reuse}
        if not group:
            continue
        with reuse_freed_memory() if reuse else contextlib.nullcontext():
            runners = {
                name: make_step(preset, size, batch, device, channels_last, bf16)
                for name, (channels_last, bf16) in group.items()
            }
            best.update({name: math.inf for name in runners})
            for _ in range(steps):
                for name, step in runners.items():
                    start = clock()
                    step()
                    best[name] = min(best[name], clock() - start)
            del runners  # free the networks while the setting still holds
    return {"flops": flops, **best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=None, help="default tiny fast reference")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per preset and layout")
    parser.add_argument("--quick", action="store_true", help="tiny and fast, 2 timed steps")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time steps and matmuls by wall clock (default) or by this process's CPU time; "
        "with one thread on a shared machine, cpu is the fair measure",
    )
    args = parser.parse_args()
    if args.device.split(":")[0] not in VARIANTS:
        parser.error(f"--device {args.device!r}: use cpu, cuda or cuda:N")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: this PyTorch sees no CUDA device")
        if args.clock == "cpu":
            parser.error("--clock cpu cannot time a GPU; leave it at wall")
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 rows: what a user's GPU does

        def clock() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()

    else:
        clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = args.presets or (["tiny", "fast"] if args.quick else ["tiny", "fast", "reference"])
    steps = args.steps or (2 if args.quick else 4) * (5 if device.type == "cuda" else 1)
    # On CUDA the training step runs in bf16: that product's rate is the peak to compare with.
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    before = matmul_rate(clock, device, peak_dtype)
    results = {
        preset: bench_preset(preset, args.size, args.batch, steps, clock, device)
        for preset in presets
    }
    after = matmul_rate(clock, device, peak_dtype)
    # The machine's rate is the better of the two measurements: a lower one was disturbed
    # (other work, or thread pools still starting), and dividing by it would flatter the ratio.
    peak = max(before, after)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{torch.get_num_threads()} thread(s)"
    )
    extra = ""
    if device.type == "cuda":
        extra = f", float32 (TF32) matmul {matmul_rate(clock, device) / 1e9:.0f} GFLOP/s"
    print(
        f"torch {torch.__version__}, {where}, {args.size}x{args.size}, batch {args.batch}, "
        f"{args.clock} clock; {str(peak_dtype).removeprefix('torch.')} matmul before/after: "
        f"{before / 1e9:.1f}/{after / 1e9:.1f} GFLOP/s, ratios against the higher{extra}"
    )
    print(
        f"{'preset':<10} {'variant':<8} {'GFLOP/step':>10} {'ms/step':>8} {'images/s':>9} "
        f"{'GFLOP/s':>8} {'of matmul':>9}"
    )
    for preset, result in results.items():
        for variant in VARIANTS[device.type]:
            seconds = result[variant]
            rate = result["flops"] / seconds
            print(
                f"{preset:<10} {variant:<8} {result['flops'] / 1e9:>10.1f} {seconds * 1e3:>8.1f} "
                f"{args.batch / seconds:>9.2f} {rate / 1e9:>8.1f} {rate / peak:>9.0%}"
            )


if __name__ == "__main__":
    main()
