"""Training-step throughput of the U-Net presets, against this machine's matmul rate.

For each preset this times full training steps (forward, BCE loss, backward, Adam step)
on random 256x256 RGB batches of 8, counts the FLOPs of one step with
``torch.utils.flop_counter.FlopCounterMode``, and reports images per second and the
achieved FLOP rate as a share of the float32 matrix-multiply rate measured in the same
run (a large square ``torch.mm``), i.e. how close the step comes to the machine's peak.

Both memory layouts are timed, alternating step by step so that a machine shared with
other work slows both alike: NCHW (PyTorch's default, what :mod:`napari_unet.training`
uses on CPU) and channels-last (what it uses on CUDA). Each row's time is the fastest of
its timed steps (the least disturbed by other processes).

Usage::

    python benchmarks/bench_train.py                 # tiny, fast, reference
    python benchmarks/bench_train.py --quick         # tiny and fast, fewer steps
    OMP_NUM_THREADS=1 python benchmarks/bench_train.py --threads 1 --clock cpu  # shared machine
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.losses import compute_loss
from napari_unet.model import build_model


def matmul_rate(clock: Callable[[], float], size: int = 2048, repeats: int = 8) -> float:
    """Float32 FLOP/s of a ``size`` x ``size`` matrix product (best of ``repeats`` runs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
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


def make_step(preset: str, size: int, batch: int, channels_last: bool) -> Callable[[], None]:
    """A closure running one training step (forward, loss, backward, Adam) on a fixed batch."""
    torch.manual_seed(0)
    network = build_model(preset=preset, in_channels=3).train()
    x = torch.rand(batch, 3, size, size)
    t = (torch.rand(batch, 1, size, size) > 0.5).float()
    w = torch.ones_like(t)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        compute_loss("bce", network(x), t, w).backward()
        optimizer.step()

    step()  # warm-up (oneDNN picks its kernels on the first call)
    return step


def bench_preset(
    preset: str, size: int, batch: int, steps: int, clock: Callable[[], float]
) -> dict[str, float]:
    """Fastest step time of each layout over ``steps`` alternating timed steps."""
    network = build_model(preset=preset, in_channels=3).train()
    flops = step_flops(network, torch.rand(batch, 3, size, size), torch.ones(batch, 1, size, size))
    runners = {
        "nchw": make_step(preset, size, batch, False),
        "cl": make_step(preset, size, batch, True),
    }
    best = {name: math.inf for name in runners}
    for _ in range(steps):
        for name, step in runners.items():
            start = clock()
            step()
            best[name] = min(best[name], clock() - start)
    return {"flops": flops, **best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=None, help="default tiny fast reference")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per preset and layout")
    parser.add_argument("--quick", action="store_true", help="tiny and fast, 2 timed steps")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time steps and matmuls by wall clock (default) or by this process's CPU time; "
        "with one thread on a shared machine, cpu is the fair measure",
    )
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = args.presets or (["tiny", "fast"] if args.quick else ["tiny", "fast", "reference"])
    steps = args.steps or (2 if args.quick else 4)
    before = matmul_rate(clock)
    results = {preset: bench_preset(preset, args.size, args.batch, steps, clock) for preset in presets}
    after = matmul_rate(clock)
    # The machine's rate is the better of the two measurements: a lower one was disturbed
    # (other work, or thread pools still starting), and dividing by it would flatter the ratio.
    peak = max(before, after)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.size}x{args.size}, "
        f"batch {args.batch}, {args.clock} clock; float32 matmul before/after: "
        f"{before / 1e9:.1f}/{after / 1e9:.1f} GFLOP/s, ratios against the higher"
    )
    print(
        f"{'preset':<10} {'layout':<6} {'GFLOP/step':>10} {'s/step':>7} {'images/s':>9} "
        f"{'GFLOP/s':>8} {'of matmul':>9}"
    )
    for preset, result in results.items():
        for layout in ("nchw", "cl"):
            seconds = result[layout]
            rate = result["flops"] / seconds
            print(
                f"{preset:<10} {layout:<6} {result['flops'] / 1e9:>10.1f} {seconds:>7.2f} "
                f"{args.batch / seconds:>9.2f} {rate / 1e9:>8.1f} {rate / peak:>9.0%}"
            )


if __name__ == "__main__":
    main()
