"""Training engine: from image/label pairs to a trained, self-describing model file.

:func:`train_events` is a generator that yields :class:`TrainEvent` progress (one per
step and one per epoch) and returns a :class:`TrainResult`, so a GUI can show progress
and cancel, and a script can simply iterate. :func:`train` runs it to the end.

What one run does (the reference recipe unless configured otherwise):

- Each plane is normalised (percentile by default; the settings are stored in the model
  file so prediction repeats them) and its targets are built once
  (:func:`napari_unet.data.make_targets`).
- Training draws random square patches (:class:`napari_unet.data.PatchSampler`), augmented
  by default; an epoch is ``steps_per_epoch`` batches (default: enough patches to cover the
  training area about once).
- After each epoch the network is evaluated on the **whole** validation images, one at a
  time (any size works): validation loss (mean over images), and pixel Dice/IoU of the
  thresholded foreground channel (mean over images; an image with no object in both truth
  and prediction scores 1).
- Adam; the best model by validation loss is kept (and written to ``out`` whenever it
  improves, so a crash or cancel never loses it); learning rate x0.1 on a plateau of
  ``plateau_patience`` epochs down to ``min_lr`` (or one-cycle / cosine schedules); early
  stopping; a CSV log per epoch; a resume checkpoint per epoch.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from napari_unet import __version__
from napari_unet.allocator import reuse_freed_memory
from napari_unet.checkpoint import (
    TrainedModel,
    load_model,
    model_from_payload,
    model_payload,
    read_payload,
    save_model,
)
from napari_unet.config import ModelConfig, TrainConfig
from napari_unet.data import (
    PatchSampler,
    PlaneData,
    prepare_training_planes,
)
from napari_unet.ddp import all_mean, init_from_env, rank_rng, wrap_model
from napari_unet.ddp import validate as distributed_validate
from napari_unet.errors import ConfigError, ModelFileError, TrainingDivergedError
from napari_unet.io import as_image, atomic_write
from napari_unet.losses import compute_loss
from napari_unet.metrics import pixel_metrics
from napari_unet.model import build_model, select_device
from napari_unet.prediction import run_to_end

CHECKPOINT_FORMAT = "napari-unet-training-state"
#: Columns of the CSV log, one row per epoch.
LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_dice",
    "val_iou",
    "learning_rate",
    "elapsed_s",
)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class TrainEvent:
    """Progress of a run: one ``step`` event per batch, one ``epoch`` event per epoch, ``done``.

    ``train_loss`` is the mean over the epoch so far; validation fields are None on steps.
    """

    kind: Literal["step", "epoch", "done"]
    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    train_loss: float
    val_loss: float | None = None
    val_metrics: dict[str, float] | None = None
    learning_rate: float = 0.0
    elapsed_s: float = 0.0


@dataclass
class TrainResult:
    """Outcome of a run.

    Attributes
    ----------
    model : TrainedModel
        The best model (by validation loss), in eval mode, metadata included.
    best_epoch : int
        Epoch (1-based) of the best model.
    best_val_loss : float
    history : list of dict
        One row per epoch with the :data:`LOG_COLUMNS`.
    model_path, log_path, checkpoint_path : Path or None
        Where the model, the CSV log and the resume checkpoint were written.
    cancelled : bool
        The ``stop`` event ended the run.
    stopped_early : bool
        Early stopping ended the run.
    """

    model: TrainedModel
    best_epoch: int
    best_val_loss: float
    history: list[dict[str, Any]]
    model_path: Path | None
    log_path: Path | None
    cancelled: bool
    stopped_early: bool
    checkpoint_path: Path | None = None


def default_checkpoint_path(out: str | Path) -> Path:
    """Resume checkpoint written next to a model file: ``model.pt`` -> ``model.ckpt.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.ckpt.pt")


def _split(n_planes: int, fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """Seeded train/validation indices; validation = training when a split is impossible."""
    if fraction <= 0 or n_planes < 2:
        return list(range(n_planes)), list(range(n_planes)), "training data (no split)"
    n_val = min(max(1, round(n_planes * fraction)), n_planes - 1)
    order = np.random.default_rng(seed).permutation(n_planes)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist()), f"fraction {fraction}"


def _lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


class _Run:
    """State of one training run (kept out of the generator for readability)."""

    def __init__(
        self,
        config: TrainConfig,
        model_config: ModelConfig,
        network: nn.Module,
        device: torch.device,
        steps_per_epoch: int,
    ) -> None:
        self.config = config
        self.model_config = model_config
        self.network = network
        self.device = device
        self.steps_per_epoch = steps_per_epoch
        self.cuda = device.type == "cuda"
        # channels-last convolutions on CUDA only: on this project's CPU a training step
        # measured 10-20% slower than NCHW for the fast preset (128 and 256 px patches) and
        # within noise for tiny (benchmarks/bench_train.py compares both layouts).
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        network.to(memory_format=self.memory_format)
        # What the training step calls: the network, or its DistributedDataParallel wrapper.
        self.train_network: nn.Module = network
        self.optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
        total_steps = config.epochs * steps_per_epoch
        self.per_step_schedule = config.schedule in ("onecycle", "cosine")
        self.scheduler: Any
        if config.schedule == "plateau":
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, factor=0.1, patience=config.plateau_patience, min_lr=config.min_lr
            )
        elif config.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=config.learning_rate, total_steps=total_steps, pct_start=0.2
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=total_steps, eta_min=config.min_lr
            )
        self.epoch = 0  # completed epochs
        self.history: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = 0
        self.best_val_loss = math.inf
        self.best_metrics: dict[str, float] = {}
        self.epochs_since_best = 0
        self.elapsed_before = 0.0

    def to_device(self, array: np.ndarray, image: bool = False) -> torch.Tensor:
        tensor = torch.from_numpy(array).to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=self.memory_format) if image else tensor

    def autocast(self) -> Any:
        # bf16 mixed precision only on CUDA: on this project's AVX2 CPU a bf16-autocast
        # training step measured ~14x slower than float32 (no native bf16 instructions).
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda)

    def train_step(self, batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
        images, targets, weights = batch
        x = self.to_device(images, image=True)
        t, w = self.to_device(targets), self.to_device(weights)
        self.network.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            outputs = self.train_network(x)
        loss = compute_loss(self.config.loss, outputs, t, w)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        loss.backward()
        self.optimizer.step()
        if self.per_step_schedule and self.scheduler.last_epoch < self._schedule_length():
            self.scheduler.step()
        return value

    def _schedule_length(self) -> int:
        scheduler = self.scheduler
        return scheduler.total_steps - 1 if hasattr(scheduler, "total_steps") else scheduler.T_max

    @torch.no_grad()
    def validate(self, planes: Sequence[PlaneData]) -> tuple[float, dict[str, float]]:
        """Loss and pixel Dice (F1)/IoU on whole planes, each averaged over planes.

        Dice and IoU are :func:`napari_unet.metrics.pixel_metrics` of the foreground channel
        thresholded at probability 0.5, on the pixels that count (annotated, in sparse mode).
        """
        self.network.eval()
        losses, dices, ious = [], [], []
        for plane in planes:
            x = self.to_device(plane.image[None], image=True)
            t = self.to_device(plane.targets[None].astype(np.float32) / 255.0)
            w = (
                torch.ones_like(t)
                if plane.weights is None
                else self.to_device(plane.weights[None].astype(np.float32))
            )
            with self.autocast():
                logits = self.network(x)
            losses.append(float(compute_loss(self.config.loss, logits, t, w)))
            counted = (w[0, 0] > 0).cpu().numpy()
            if not counted.any():
                continue  # a sparse plane without scribbles has nothing to score
            prediction = (logits[0, 0].float() > 0).cpu().numpy()[counted]
            scores = pixel_metrics((t[0, 0] > 0.5).cpu().numpy()[counted], prediction)
            dices.append(scores["f1"])
            ious.append(scores["jaccard"])
        return float(np.mean(losses)), {"dice": float(np.mean(dices)), "iou": float(np.mean(ious))}

    def state_dict_copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.network.state_dict().items()}


def _plain_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state as plain types (its 128-bit integers as strings)."""
    state = copy.deepcopy(rng.bit_generator.state)
    inner = state["state"]
    state["state"] = {key: str(value) for key, value in inner.items()}
    return state


def _restore_rng_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    state = copy.deepcopy(state)
    state["state"] = {key: int(value) for key, value in state["state"].items()}
    rng.bit_generator.state = state


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the whole CSV log atomically (a reader never sees a half row)."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _read_checkpoint(path: str | Path) -> dict[str, Any]:
    payload = read_payload(path)
    state = payload.get("training_state") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{str(path)!r} is not a resume checkpoint (those end in .ckpt.pt and are written "
            "next to the model during training); to start from a model file use init instead."
        )
    return payload


def _as_images(images: Sequence[Any], what: str) -> list[Any]:
    """Each of ``images`` as :func:`napari_unet.io.as_image` gives it (paths read)."""
    return [as_image(image, f"{what} image {index}") for index, image in enumerate(images)]


def train_events(
    images: Sequence[Any],
    labels: Sequence[Any],
    config: TrainConfig | None = None,
    *,
    val_images: Sequence[Any] | None = None,
    val_labels: Sequence[Any] | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    init: str | Path | TrainedModel | None = None,
    log_csv: str | Path | None = None,
    stop: threading.Event | None = None,
    checkpoint: str | Path | None = None,
    data_description: dict[str, Any] | None = None,
) -> Generator[TrainEvent, None, TrainResult]:
    """Train a network, yielding progress events; returns the :class:`TrainResult`.

    Parameters
    ----------
    images, labels : sequence of array-like
        Training pairs (numpy or dask): planes ``(H, W)`` / ``(H, W, C)`` or stacks
        ``(Z, H, W[, C])`` with labels of the image shape minus its channel axis.
    config : TrainConfig, optional
        Settings; defaults to the reference recipe.
    val_images, val_labels : sequence of array-like, optional
        Explicit validation pairs; otherwise ``config.val_fraction`` of the planes.
    out : str or Path, optional
        Model file to write (the best model, rewritten whenever it improves).
    resume : str or Path, optional
        Resume checkpoint (``*.ckpt.pt``) of an interrupted run: weights, optimizer,
        schedule, history and random state continue where they stopped; ``config.epochs``
        is the new total.
    init : str, Path or TrainedModel, optional
        Model to fine-tune (a path, ``"default"`` or a loaded model); its architecture,
        target and normalisation are kept.
    log_csv : str or Path, optional
        CSV log, one row per epoch.
    stop : threading.Event, optional
        When set, the run ends after the current step, keeping the best model.
    checkpoint : str or Path, optional
        Where to write the resume checkpoint each epoch; defaults to
        :func:`default_checkpoint_path` of ``out`` (none without ``out``).
    data_description : dict, optional
        Plain-typed description of the data, stored in the model metadata.

    Raises
    ------
    DataError
        Inconsistent or empty data (raised before anything is written).
    ConfigError
        Invalid settings; :class:`TrainingDivergedError` if the loss becomes NaN/inf.
    ModelFileError
        Unreadable ``init`` or ``resume`` file.
    """
    config = config or TrainConfig()
    if resume is not None and init is not None:
        raise ConfigError("give either resume (continue a run) or init (fine-tune), not both.")
    _check((val_images is None) == (val_labels is None), "give both val_images and val_labels.")
    try:
        device = select_device(config.device)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    # Under torchrun: join the process group (NCCL on this rank's GPU, gloo on a CPU).
    group, device = init_from_env(device)

    # Model config and starting weights come from the resumed run or the init model.
    resume_payload = _read_checkpoint(resume) if resume is not None else None
    init_model = load_model(init, device="cpu") if init is not None else None
    if resume_payload is not None:
        model_config = ModelConfig.from_dict(resume_payload["config"])
    elif init_model is not None:
        model_config = init_model.config
    else:
        model_config = config.model

    # Read and check all data before anything is written (paths are read here).
    images, labels = _as_images(images, "training"), _as_images(labels, "training label")
    if val_images is not None:
        val_images = _as_images(val_images, "validation")
        val_labels = _as_images(val_labels, "validation label")
    prepare = dict(
        in_channels=model_config.in_channels,
        normalization=model_config.normalization,
        target=model_config.target,
        label_mode=config.label_mode,
    )
    planes = prepare_training_planes(
        images, labels, contact_weight=config.contact_weight, **prepare
    )
    if val_images is not None:
        train_planes = planes
        val_planes = prepare_training_planes(val_images, val_labels, what="validation", **prepare)
        validation = "explicit"
    else:
        train_index, val_index, validation = _split(len(planes), config.val_fraction, config.seed)
        train_planes = [planes[i] for i in train_index]
        val_planes = [planes[i] for i in val_index]
        if config.contact_weight != 1:
            # Validation unweighted: contact weights imply instance or mask labels, whose
            # unweighted planes count every pixel once (weights None).
            val_planes = [dataclasses.replace(plane, weights=None) for plane in val_planes]

    rng = np.random.default_rng(config.seed)
    rank_rng(rng, config.seed, group)  # each rank its own patches
    sampler = PatchSampler(train_planes, config.patch_size, config.sampling, config.augment, rng)
    # By default an epoch covers the data once over all ranks together.
    steps_per_epoch = config.steps_per_epoch or max(
        1, math.ceil(sampler.patches_per_epoch() / (config.batch_size * group.world_size))
    )

    with torch.random.fork_rng(devices=[]):  # seeded weights without touching global state
        torch.manual_seed(config.seed)
        network = build_model(model_config)
    if resume_payload is not None:
        network.load_state_dict(model_from_payload(resume_payload, "cpu").network.state_dict())
    elif init_model is not None:
        network.load_state_dict(init_model.network.state_dict())
    network.to(device)
    run = _Run(config, model_config, network, device, steps_per_epoch)
    loader_threads = config.resolved_loader_threads(device)
    if group.active:
        run.train_network = wrap_model(network, device)

    if resume_payload is not None:
        state = resume_payload["training_state"]
        run.optimizer.load_state_dict(state["optimizer"])
        if state["schedule"] == config.schedule:
            run.scheduler.load_state_dict(state["scheduler"])
        run.epoch = int(state["epoch"])
        run.history = list(state["history"])
        run.best_state = state["best_state_dict"]
        run.best_epoch = int(state["best_epoch"])
        run.best_val_loss = float(state["best_val_loss"])
        run.best_metrics = dict(state["best_metrics"])
        run.epochs_since_best = int(state["epochs_since_best"])
        run.elapsed_before = float(state["elapsed_s"])
        _restore_rng_state(rng, state["rng"])
        if not group.is_main:  # the checkpoint holds rank 0's stream only
            rank_rng(rng, config.seed, group, run.epoch)

    if not group.is_main:  # only rank 0 writes the model, log and checkpoint
        out = log_csv = checkpoint = None
    out_path = Path(out) if out is not None else None
    log_path = Path(log_csv) if log_csv is not None else None
    checkpoint_path = (
        Path(checkpoint)
        if checkpoint is not None
        else (default_checkpoint_path(out_path) if out_path is not None else None)
    )
    description = {
        "train_planes": len(train_planes),
        "val_planes": len(val_planes),
        "train_pixels": int(sum(h * w for h, w in (p.shape for p in train_planes))),
        "validation": validation,
        "label_mode": config.label_mode,
        **(data_description or {}),
    }
    init_source = init_model.source if init_model is not None else None
    started = time.perf_counter()

    def elapsed() -> float:
        return run.elapsed_before + time.perf_counter() - started

    def metadata() -> dict[str, Any]:
        return {
            "train_config": config.to_dict(),
            "best_epoch": run.best_epoch,
            "best_val_loss": run.best_val_loss,
            "val_metrics": dict(run.best_metrics),
            "epochs_run": run.epoch,
            "history": [dict(row) for row in run.history],
            "elapsed_s": round(elapsed(), 2),
            "data": description,
            "init": init_source,
            "device": str(device),
            "torch_version": str(torch.__version__),
            "napari_unet_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    def best_network() -> nn.Module:
        best = build_model(model_config)
        best.load_state_dict(
            run.best_state if run.best_state is not None else run.state_dict_copy()
        )
        return best.eval()

    def save_best() -> None:
        if out_path is not None:
            save_model(out_path, best_network(), model_config, metadata(), config.half_precision)

    def save_checkpoint() -> None:
        if checkpoint_path is None:
            return
        payload = model_payload(run.network, model_config, metadata())
        payload["training_state"] = {
            "format": CHECKPOINT_FORMAT,
            "epoch": run.epoch,
            "optimizer": run.optimizer.state_dict(),
            "schedule": config.schedule,
            "scheduler": run.scheduler.state_dict(),
            "history": [dict(row) for row in run.history],
            "best_state_dict": run.best_state,
            "best_epoch": run.best_epoch,
            "best_val_loss": run.best_val_loss,
            "best_metrics": dict(run.best_metrics),
            "epochs_since_best": run.epochs_since_best,
            "elapsed_s": elapsed(),
            "rng": _plain_rng_state(rng),
            "train_config": config.to_dict(),
        }
        with atomic_write(checkpoint_path) as tmp:
            torch.save(payload, tmp)

    def diverged(where: str) -> TrainingDivergedError:
        kept = (
            f" The last good model is kept in {str(out_path)!r}."
            if out_path is not None and run.best_state is not None
            else ""
        )
        return TrainingDivergedError(
            f"the {where} loss became NaN or infinite at epoch {run.epoch + 1}; lower the "
            f"learning rate (now {_lr(run.optimizer):g}) or check the images for extreme "
            f"values.{kept}"
        )

    cancelled = stopped_early = False
    while run.epoch < config.epochs and not cancelled and not stopped_early:
        losses: list[float] = []
        batches = sampler.epoch_batches(config.batch_size, steps_per_epoch, loader_threads)
        # A CPU step reuses the activation memory the previous one freed, rather than having
        # the kernel map and zero it afresh (napari_unet.allocator says how much that saves).
        # Validation (whole images, other sizes) runs with the allocator's defaults, so that
        # kept blocks fitting none of its sizes do not add to its peak.
        reuse = reuse_freed_memory() if device.type == "cpu" else contextlib.nullcontext()
        with reuse, contextlib.closing(batches):  # closing: stops the loader threads
            for step, batch in enumerate(batches, start=1):
                value = run.train_step(batch)
                if not math.isfinite(value):
                    raise diverged("training")
                losses.append(value)
                yield TrainEvent(
                    "step",
                    run.epoch + 1,
                    config.epochs,
                    step,
                    steps_per_epoch,
                    float(np.mean(losses)),
                    learning_rate=_lr(run.optimizer),
                    elapsed_s=elapsed(),
                )
                if stop is not None and stop.is_set():
                    cancelled = True
                    break
        if cancelled and run.best_state is not None:
            break  # a partial epoch is neither validated nor checkpointed
        val_loss, val_metrics = distributed_validate(run, val_planes, group)
        if not math.isfinite(val_loss):
            raise diverged("validation")
        run.epoch += 1
        row = {
            "epoch": run.epoch,
            "train_loss": all_mean(float(np.mean(losses)), group),
            "val_loss": val_loss,
            "val_dice": val_metrics["dice"],
            "val_iou": val_metrics["iou"],
            "learning_rate": _lr(run.optimizer),
            "elapsed_s": round(elapsed(), 2),
        }
        run.history.append(row)
        if val_loss < run.best_val_loss:
            run.best_val_loss, run.best_epoch = val_loss, run.epoch
            run.best_metrics = dict(val_metrics)
            run.best_state = run.state_dict_copy()
            run.epochs_since_best = 0
            save_best()
        else:
            run.epochs_since_best += 1
        if config.schedule == "plateau":
            run.scheduler.step(val_loss)
        patience = config.early_stopping_patience
        stopped_early = patience is not None and run.epochs_since_best >= patience
        if log_path is not None:
            _write_log(log_path, run.history)
        if not cancelled:
            save_checkpoint()
        yield TrainEvent(
            "epoch",
            run.epoch,
            config.epochs,
            len(losses),
            steps_per_epoch,
            row["train_loss"],
            val_loss,
            dict(val_metrics),
            row["learning_rate"],
            elapsed(),
        )

    save_best()  # final metadata (epochs run, full history, time)
    model = TrainedModel(
        best_network().to(device),
        model_config,
        metadata(),
        device,
        str(out_path) if out_path is not None else "memory",
    )
    last_loss = run.history[-1]["train_loss"] if run.history else math.nan
    yield TrainEvent(
        "done",
        run.epoch,
        config.epochs,
        steps_per_epoch,
        steps_per_epoch,
        last_loss,
        run.best_val_loss,
        dict(run.best_metrics),
        _lr(run.optimizer),
        elapsed(),
    )
    return TrainResult(
        model=model,
        best_epoch=run.best_epoch,
        best_val_loss=run.best_val_loss,
        history=[dict(row) for row in run.history],
        model_path=out_path,
        log_path=log_path,
        cancelled=cancelled,
        stopped_early=stopped_early,
        checkpoint_path=checkpoint_path if checkpoint_path and checkpoint_path.exists() else None,
    )


def train(
    images: Sequence[Any],
    labels: Sequence[Any],
    config: TrainConfig | None = None,
    *,
    val_images: Sequence[Any] | None = None,
    val_labels: Sequence[Any] | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    init: str | Path | TrainedModel | None = None,
    log_csv: str | Path | None = None,
    stop: threading.Event | None = None,
    checkpoint: str | Path | None = None,
    data_description: dict[str, Any] | None = None,
    **overrides: Any,
) -> TrainResult:
    """Run :func:`train_events` to the end and return its :class:`TrainResult`.

    The keyword arguments are those of :func:`train_events`; ``overrides`` are
    :class:`TrainConfig` fields overriding ``config`` (e.g. ``epochs=2``); any other
    name is a ConfigError naming the valid ones.

    Examples
    --------
    >>> cfg = TrainConfig(model=ModelConfig.from_preset("tiny", in_channels=1), epochs=2)
    >>> result = train(images, labels, cfg, out="nuclei.pt")  # doctest: +SKIP
    >>> result.best_epoch, result.history[-1]["val_dice"]  # doctest: +SKIP
    """
    events = train_events(
        images,
        labels,
        TrainConfig.with_overrides(config, overrides),
        val_images=val_images,
        val_labels=val_labels,
        out=out,
        resume=resume,
        init=init,
        log_csv=log_csv,
        stop=stop,
        checkpoint=checkpoint,
        data_description=data_description,
    )
    return run_to_end(events)
