"""Validation pixel F1 against wall-clock training time, from scratch on DSB 2018.

The figure a user feels: how good a model gets within a time budget on this machine.
It trains with :func:`napari_unet.training.train_events` under a wall-clock budget
(default 600 s, counted from the first training step; reading the files is reported
apart; ``--clock cpu`` counts this process's CPU seconds instead, for shared machines)
and prints, after each epoch, the elapsed time (training *and* the per-epoch validation)
and the pixel F1 (Dice) of the thresholded foreground, averaged over validation images as
the reference evaluation does. Per-epoch validation uses a seeded subset of the
validation images (``--val-subset``) to keep its cost small; at the end the best model is
scored on the whole validation set (outside the budget).

The one-cycle schedule needs its length in steps up front, so the first
``--calibration-steps`` steps (inside the budget, with the same settings) measure the
step time, and the run is sized to fill the rest of the budget.

Usage::

    nice -n 10 python benchmarks/bench_time_to_quality.py            # defaults below
    python benchmarks/bench_time_to_quality.py ../shared/data/dsb2018/train --budget 300
"""

from __future__ import annotations

import argparse
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_unet.config import ModelConfig
from napari_unet.data import load_dsb, prepare_training_planes
from napari_unet.metrics import pixel_metrics
from napari_unet.training import TrainConfig, train_events
from napari_unet.training_run import TrainingRun

REPO = Path(__file__).resolve().parents[1]


def full_validation(
    model: torch.nn.Module, config: ModelConfig, images: list, labels: list
) -> float:
    """Mean per-image pixel F1 of ``model`` (threshold 0.5) on every validation image."""
    planes = prepare_training_planes(
        images, labels, config.in_channels, config.normalization, "foreground", what="validation"
    )
    scores = []
    model.eval()
    with torch.no_grad():
        for plane in planes:
            logits = model(torch.from_numpy(plane.image[None]))
            scores.append(pixel_metrics(plane.targets[0] > 0, (logits[0, 0] > 0).numpy())["f1"])
    return float(np.mean(scores))


def calibrate(
    config: TrainConfig, images: list, labels: list, steps: int, clock: Callable[[], float]
) -> float:
    """Seconds per training step with these settings (a few real steps)."""
    model_config = config.model
    planes = prepare_training_planes(
        images[:64],
        labels[:64],
        model_config.in_channels,
        model_config.normalization,
        model_config.target,
    )
    from napari_unet.model import build_model
    from napari_unet.patches import PatchSampler

    network = build_model(model_config)
    run = TrainingRun(config, model_config, network, torch.device("cpu"), steps_per_epoch=10_000)
    sampler = PatchSampler(
        planes, config.patch_size, config.sampling, config.augment, np.random.default_rng(0)
    )
    run.train_step(sampler.batch(config.batch_size))  # warm-up
    start = clock()
    for _ in range(steps):
        run.train_step(sampler.batch(config.batch_size))
    return (clock() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "train_dir",
        nargs="?",
        type=Path,
        default=REPO / ".." / "shared" / "data" / "dsb2018" / "train",
    )
    parser.add_argument("--val-dir", type=Path, default=None, help="default: <train_dir>/../val")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--base-filters", type=int, default=None, help="override the preset")
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--schedule", default="onecycle")
    parser.add_argument("--loss", default="bce+dice")
    parser.add_argument("--sampling", default="image")
    parser.add_argument("--target", default="foreground")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument(
        "--epoch-seconds",
        type=float,
        default=75.0,
        help="training seconds between validations (default 75)",
    )
    parser.add_argument("--val-subset", type=int, default=16, help="validation images per epoch")
    parser.add_argument("--calibration-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the budget counts: wall-clock seconds (default), or this process's CPU "
        "seconds, a fair measure on a machine shared with other work (with one thread, CPU "
        "seconds are the wall-clock time the run takes on one free core)",
    )
    args = parser.parse_args()

    start_load = time.perf_counter()
    images, labels = load_dsb(args.train_dir)
    val_dir = args.val_dir or args.train_dir.parent / "val"
    val_images, val_labels = load_dsb(val_dir)
    subset = np.random.default_rng(args.seed).permutation(len(val_images))[: args.val_subset]
    load_s = time.perf_counter() - start_load

    overrides = {"in_channels": 3, "target": args.target}
    if args.base_filters:
        overrides["base_filters"] = args.base_filters
    model_config = ModelConfig.from_preset(args.preset, **overrides)

    def make_config(epochs: int, steps: int) -> TrainConfig:
        return TrainConfig(
            model=model_config,
            epochs=epochs,
            steps_per_epoch=steps,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            patch_size=args.patch_size,
            loss=args.loss,
            schedule=args.schedule,
            sampling=args.sampling,
            augment=not args.no_augment,
            seed=args.seed,
            early_stopping_patience=None,
            device="cpu",
        )

    clock = time.perf_counter if args.clock == "wall" else time.process_time
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    budget_start = clock()
    step_s = calibrate(make_config(1, 1), images, labels, args.calibration_steps, clock)
    calibration_s = clock() - budget_start
    steps_per_epoch = max(1, round(args.epoch_seconds / step_s))
    # Leave room for per-epoch validation (~1/8 of an epoch's time, measured roughly).
    remaining = args.budget - calibration_s
    epochs = max(1, math.floor(remaining / (args.epoch_seconds * 1.15)))
    config = make_config(epochs, steps_per_epoch)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; data loaded in "
        f"{load_s:.0f}s ({len(images)} train, {len(val_images)} val images); "
        f"{step_s:.2f} {args.clock} s/step -> {epochs} epochs x {steps_per_epoch} steps; "
        f"budget {args.budget:.0f} {args.clock} s"
    )
    print(f"settings: {config.to_dict() | {'model': model_config.to_dict()}}")
    print(
        f"{'epoch':>5} {'wall_s':>7} {'cpu_s':>7} {'steps':>6} {'train_loss':>10} "
        f"{'val_loss':>8} {'val_F1':>7} {'lr':>8}"
    )

    stop = threading.Event()
    events = train_events(
        images,
        labels,
        config,
        val_images=[val_images[i] for i in subset],
        val_labels=[val_labels[i] for i in subset],
        stop=stop,
    )
    while True:
        try:
            event = next(events)
        except StopIteration as finished:
            result = finished.value
            break
        if clock() - budget_start >= args.budget:
            stop.set()
        if event.kind == "epoch":
            print(
                f"{event.epoch:>5} {time.perf_counter() - wall_start:>7.0f} "
                f"{time.process_time() - cpu_start:>7.0f} "
                f"{event.epoch * steps_per_epoch:>6} {event.train_loss:>10.4f} "
                f"{event.val_loss:>8.4f} {event.val_metrics['dice']:>7.4f} "
                f"{event.learning_rate:>8.1e}",
                flush=True,
            )
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    f1 = full_validation(result.model.network, model_config, val_images, val_labels)
    print(
        f"best epoch {result.best_epoch}; training took {wall:.0f} s wall-clock, {cpu:.0f} s CPU; "
        f"full validation set ({len(val_images)} images) pixel F1 of the best model: {f1:.4f}"
    )


if __name__ == "__main__":
    main()
