"""Training-step throughput of the U-Net presets, against this machine's matmul rate.

For each preset this times full training steps (forward, BCE loss, backward, Adam step)
on random 256x256 RGB batches of 8, counts the FLOPs of one step with
``torch.utils.flop_counter.FlopCounterMode``, and reports images per second and the
achieved FLOP rate as a share of the float32 matrix-multiply rate measured in the same
run (a large square ``torch.mm``), i.e. how close the step comes to the machine's peak.

Usage::

    python benchmarks/bench_train.py                 # tiny, fast, reference
    python benchmarks/bench_train.py --quick         # tiny and fast, fewer steps
    python benchmarks/bench_train.py --presets fast --channels-last --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.losses import compute_loss
from napari_unet.model import build_model


def matmul_rate(size: int = 2048, seconds: float = 3.0) -> float:
    """Float32 FLOP/s of a ``size`` x ``size`` matrix product (best of repeated runs)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def step_flops(network: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of one forward + backward pass (the optimizer step is negligible)."""
    with FlopCounterMode(display=False) as counter:
        loss = compute_loss("bce", network(x), t, torch.ones_like(t))
        loss.backward()
    network.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def bench_preset(
    preset: str, size: int, batch: int, steps: int, channels_last: bool
) -> dict[str, float]:
    """Time ``steps`` training steps of ``preset`` after two warm-up steps."""
    torch.manual_seed(0)
    network = build_model(preset=preset, in_channels=3).train()
    x = torch.rand(batch, 3, size, size)
    t = (torch.rand(batch, 1, size, size) > 0.5).float()
    w = torch.ones_like(t)
    flops = step_flops(network, x, t)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        compute_loss("bce", network(x), t, w).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    return {"s_per_step": seconds, "images_per_s": batch / seconds, "flop_rate": flops / seconds,
            "gflop_per_step": flops / 1e9}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=None, help="default tiny fast reference")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per preset")
    parser.add_argument("--quick", action="store_true", help="tiny and fast, 2 timed steps")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    presets = args.presets or (["tiny", "fast"] if args.quick else ["tiny", "fast", "reference"])
    steps = args.steps or (2 if args.quick else 5)
    peak = matmul_rate()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"channels_last={args.channels_last}; float32 matmul: {peak / 1e9:.1f} GFLOP/s"
    )
    print(f"{'preset':<10} {'GFLOP/step':>10} {'s/step':>8} {'images/s':>9} {'GFLOP/s':>8} {'of matmul':>9}")
    for preset in presets:
        r = bench_preset(preset, args.size, args.batch, steps, args.channels_last)
        print(
            f"{preset:<10} {r['gflop_per_step']:>10.1f} {r['s_per_step']:>8.2f} "
            f"{r['images_per_s']:>9.2f} {r['flop_rate'] / 1e9:>8.1f} {r['flop_rate'] / peak:>9.0%}"
        )
    # A second matmul measurement shows whether the machine was equally free throughout.
    print(f"float32 matmul again: {matmul_rate() / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
