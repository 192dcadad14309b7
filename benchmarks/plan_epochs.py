"""How many epochs of a training recipe fit a wall-clock budget on this machine.

Times, with the real sampler and network, training steps fed as in
:mod:`napari_unet.training` (batches from the sampler, in loader threads on a GPU; bf16
autocast and channels-last on CUDA) and a validation pass, then prints the number of
epochs that fits ``--budget`` seconds. ``benchmarks/gpu_check.sh`` uses it to size GPU
trainings to a lease.

Usage::

    python benchmarks/plan_epochs.py --preset fast --patch-size 256 --budget 300
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet.config import ModelConfig, NormalizationConfig
from napari_unet.data import load_pairs_from_folders, prepare_training_planes
from napari_unet.model import build_model, select_device
from napari_unet.patches import PatchSampler
from napari_unet.training import TrainConfig
from napari_unet.training_run import TrainingRun


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/dsb2018", help="DSB split folder")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--target", default="contour")
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps-per-epoch", type=int, default=200)
    parser.add_argument("--budget", type=float, required=True, help="seconds of training")
    parser.add_argument(
        "--slowdown", type=float, default=1.0, help="factor for runs sharing the device (default 1)"
    )
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = select_device(args.device)
    started = time.perf_counter()
    data = Path(args.data)
    images, labels = load_pairs_from_folders(data / "train" / "images", data / "train" / "labels")
    val_images, val_labels = load_pairs_from_folders(
        data / "val" / "images", data / "val" / "labels"
    )
    config = ModelConfig.from_preset(args.preset, in_channels=3, target=args.target)
    norm = NormalizationConfig()
    loaded = time.perf_counter()
    planes = prepare_training_planes(images[:40], labels[:40], 3, norm, args.target)
    prepare_seconds = loaded - started + (time.perf_counter() - loaded) * len(images) / 40
    sampler = PatchSampler(planes, args.patch_size, "image", True, np.random.default_rng(0))
    network = build_model(config).to(device)
    train_config = TrainConfig(model=config, device=str(device))
    run = TrainingRun(train_config, config, network, device, 1)
    threads = train_config.resolved_loader_threads(device)  # what training will use
    for batch in sampler.epoch_batches(args.batch_size, 3, threads):
        run.train_step(batch)  # warm-up
    start = time.perf_counter()
    for batch in sampler.epoch_batches(args.batch_size, 10, threads):
        run.train_step(batch)
    step = (time.perf_counter() - start) / 10
    val_planes = prepare_training_planes(
        val_images[:8], val_labels[:8], 3, norm, args.target, what="validation"
    )
    run.validate(val_planes[:2])  # warm-up
    start = time.perf_counter()
    run.validate(val_planes)
    validate = (time.perf_counter() - start) * len(val_images) / len(val_planes)
    epoch = (args.steps_per_epoch * step + validate) * args.slowdown
    epochs = max(1, int((args.budget - prepare_seconds) / epoch))
    print(
        f"# {args.preset} {args.patch_size}px on {device}, {threads} loader thread(s): "
        f"{step * 1e3:.0f} ms/step, "
        f"validation {validate:.1f} s, data preparation {prepare_seconds:.0f} s, "
        f"{epoch:.1f} s/epoch x{args.slowdown} -> {epochs} epochs"
    )
    print(epochs)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
