"""Distributed training helpers for ``torchrun`` / Slurm ``srun`` (PyTorch DDP).

:func:`init_from_env` joins the process group that ``torchrun`` / ``srun`` describe in the
environment (NCCL on GPUs, gloo on CPU); :func:`napari_unet.training.train_events` calls it,
wraps the network in ``DistributedDataParallel`` (:func:`wrap_model`), gives every rank its
own random patch stream (:func:`rank_rng`), reduces validation over ranks (:func:`validate`)
and writes files on rank 0 only (:func:`is_main_process`).
"""

from __future__ import annotations

import atexit
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in a ``torchrun`` job (``world_size == 1``: not distributed)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def environment_group() -> ProcessGroup:
    """Rank and world size from the environment (``torchrun`` or Slurm's ``srun``)."""
    env = os.environ
    if "WORLD_SIZE" in env:
        return ProcessGroup(
            int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
        )
    return ProcessGroup()


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed run (which writes nothing)."""
    return environment_group().is_main


def init_from_env(device: torch.device) -> tuple[ProcessGroup, torch.device]:
    """Join the process group described by the environment, if any.

    Uses NCCL when training on CUDA (each rank on ``cuda:LOCAL_RANK``) and gloo on a CPU.
    A no-op returning ``(ProcessGroup(), device)`` outside ``torchrun``.
    """
    import torch
    import torch.distributed as dist

    group = environment_group()
    if not group.active:
        return group, device
    if device.type == "cuda":
        device = torch.device("cuda", group.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            rank=group.rank,
            world_size=group.world_size,
        )
        atexit.register(_destroy)
    return group, device


def _destroy() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``network`` in ``DistributedDataParallel`` (gradients averaged over ranks).

    Buffers (BatchNorm statistics) are broadcast from rank 0 at every forward pass.
    """
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=ids)


def rank_rng(rng: np.random.Generator, seed: int, group: ProcessGroup, epoch: int = 0) -> None:
    """Give this rank its own random stream in place (patches and augmentation).

    ``(seed, rank, epoch)`` seeds it, so ranks never draw the same patches and a resumed
    run (``epoch`` > 0) does not replay the first epochs' streams.
    """
    if group.active:
        fresh = np.random.default_rng([seed, group.rank, epoch])
        rng.bit_generator.state = fresh.bit_generator.state


def validate(
    run: Any, planes: Sequence[Any], group: ProcessGroup
) -> tuple[float, dict[str, float]]:
    """Validation of a training run, shared out over ranks and reduced.

    Every rank scores its share of the planes with the run's own ``validate`` (one plane
    at a time) and the sums are all-reduced, so every rank gets the single-process means
    (loss over planes, Dice/IoU over scored planes) and takes the same decisions (best
    model, learning-rate drop, early stop). BatchNorm buffers are first taken from rank 0.
    """
    import torch
    import torch.distributed as dist

    if not group.active:
        return run.validate(planes)
    for buffer in run.network.buffers():
        dist.broadcast(buffer.data, src=0)
    sums = torch.zeros(5, dtype=torch.float64)
    for plane in list(planes)[group.rank :: group.world_size]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # mean of no score: unscored plane
            loss, metrics = run.validate([plane])
        sums[0] += loss
        sums[1] += 1
        if math.isfinite(metrics["dice"]):
            sums[2] += metrics["dice"]
            sums[3] += metrics["iou"]
            sums[4] += 1
    dist.all_reduce(sums)
    loss_sum, n, dice_sum, iou_sum, scored = sums.tolist()
    nan = float("nan")
    return (loss_sum / n if n else nan), {
        "dice": dice_sum / scored if scored else nan,
        "iou": iou_sum / scored if scored else nan,
    }


def all_mean(value: float, group: ProcessGroup) -> float:
    """Mean of ``value`` over ranks (the value itself outside a distributed run)."""
    import torch
    import torch.distributed as dist

    if not group.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor[0]) / group.world_size


def all_max(value: float, group: ProcessGroup) -> float:
    """Largest ``value`` over ranks (the value itself outside a distributed run)."""
    import torch
    import torch.distributed as dist

    if not group.active:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor[0])


def any_rank(flag: bool, group: ProcessGroup) -> bool:
    """Whether ``flag`` is true on any rank (``flag`` itself outside a distributed run), so
    that every rank takes a decision based on its own clock at the same step."""
    return all_max(float(flag), group) > 0


def quiet_unless_main() -> bool:
    """Silence stdout on non-zero ranks (one progress line per run); True on rank 0."""
    import sys

    if is_main_process():
        return True
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    return False


__all__ = [
    "ProcessGroup",
    "all_mean",
    "all_max",
    "any_rank",
    "environment_group",
    "init_from_env",
    "is_main_process",
    "quiet_unless_main",
    "rank_rng",
    "validate",
    "wrap_model",
]
