"""Training engine: from image/label pairs to a trained, self-describing model file.

:func:`train_events` is a generator that yields :class:`TrainEvent` progress (one per
step and one per epoch) and returns a :class:`TrainResult`, so a GUI can show progress
and cancel, and a script can simply iterate. :func:`train` runs it to the end.

What one run does (the reference recipe unless configured otherwise):

- Each plane (each volume, for a 3D model) is normalised (percentile by default; stored in
  the model file so prediction repeats it) and its targets are built once
  (:func:`napari_unet.data.make_targets`).
- Training draws random square (3D: ``(Z, Y, X)``) patches (:mod:`napari_unet.patches`),
  augmented by default; an epoch is ``steps_per_epoch`` batches (default: enough patches to
  cover the training area about once, and at least :data:`MIN_PATCHES_PER_EPOCH`);
  ``max_minutes`` ends a run on a wall-clock budget.
- After each epoch the network is evaluated on the **whole** validation images, one at a
  time (any size works): validation loss (mean over images), and pixel Dice/IoU of the
  thresholded foreground channel (mean over images; an image with no object in both truth
  and prediction scores 1).
- Adam; the best model by validation Dice (the score reported; the loss breaks ties) is
  kept (and written to ``out`` whenever it improves, so a crash or cancel never loses
  it); learning rate x0.1 on a plateau of
  ``plateau_patience`` epochs down to ``min_lr`` (or one-cycle / cosine schedules); early
  stopping; a CSV log per epoch; a resume checkpoint per epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_unet.allocator import reuse_freed_memory
from napari_unet.annotations import split_held_out_slab
from napari_unet.checkpoint import (
    TrainedModel,
    load_model,
)
from napari_unet.colour_augment import ModalitySampler
from napari_unet.config import ModelConfig, TrainConfig
from napari_unet.data import prepare_training_planes, replay_planes, split_planes
from napari_unet.ddp import all_max, all_mean, init_from_env, rank_rng, wrap_model
from napari_unet.ddp import validate as distributed_validate
from napari_unet.errors import ConfigError
from napari_unet.events import plain_form
from napari_unet.io import as_image
from napari_unet.modality import classify_modality
from napari_unet.model import select_device
from napari_unet.patches import PatchSampler, PlaneData
from napari_unet.settings import check
from napari_unet.training_outputs import (
    RunOutputs,
    check_output_paths,
)
from napari_unet.training_run import (
    TrainingRun,
    checkpoint_model_config,
    read_checkpoint,
)

#: Fewest patches an epoch draws by default: one 256 px image at patch size 256 would
#: otherwise make an epoch of a single step, whose validation says nothing.
MIN_PATCHES_PER_EPOCH = 32

#: Why a run ended (``TrainResult.stop_reason``, the model's ``metadata["stop_reason"]``).
STOP_REASONS = ("epochs", "cancelled", "early stopping", "time budget")


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
        One row per epoch with the :data:`~napari_unet.training_run.LOG_COLUMNS`.
    model_path, log_path, checkpoint_path : Path or None
        Where the model, the CSV log and the resume checkpoint were written.
    cancelled : bool
        The ``stop`` event ended the run.
    stopped_early : bool
        Early stopping ended the run.
    out_of_time : bool
        The wall-clock budget (``TrainConfig.max_minutes``) ended the run.
    stop_reason : str
        Why the run ended, one of :data:`STOP_REASONS` (also in the model's metadata).
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
    out_of_time: bool = False
    stop_reason: str = "epochs"


@dataclass(frozen=True)
class _Budget:
    """The run's wall-clock budget (``TrainConfig.max_minutes``), the same on every rank."""

    started: float
    seconds: float | None
    group: Any

    @classmethod
    def start(cls, max_minutes: float | None, group: Any) -> _Budget:
        """A budget of ``max_minutes`` from now (None: no limit)."""
        return cls(time.monotonic(), None if max_minutes is None else 60.0 * max_minutes, group)

    def fraction(self) -> float:
        """The share of the budget used, the largest over ranks (0 without a limit)."""
        if self.seconds is None:
            return 0.0
        return all_max((time.monotonic() - self.started) / self.seconds, self.group)

    def spent(self) -> bool:
        """Whether the time is up (on any rank: all of them stop at the same step)."""
        return self.fraction() >= 1.0


def _split(n_planes: int, fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """Seeded train/validation indices; validation = training when a split is impossible."""
    if fraction <= 0 or n_planes < 2:
        return list(range(n_planes)), list(range(n_planes)), "training data (no split)"
    n_val = min(max(1, round(n_planes * fraction)), n_planes - 1)
    order = np.random.default_rng(seed).permutation(n_planes)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist()), f"fraction {fraction}"


def _check_dimensions(
    config: TrainConfig, model_config: ModelConfig, init_model: TrainedModel | None
) -> None:
    """Refuse an ``init`` model of other dimensions than the run's, and 3D-only settings
    for a 2D model."""
    wanted = config.model.ndim
    if init_model is not None and init_model.config.ndim != wanted:
        have = init_model.config.ndim
        raise ConfigError(
            f"init {init_model.source!r} is a {have}D model (ndim {have}) but this run trains "
            f"a {wanted}D model (ndim {wanted}); fine-tune it with ndim={have} (--ndim {have}) "
            "or train from scratch."
        )
    check(
        config.patch_depth is None or model_config.ndim == 3,
        "patch_depth is for 3D models (ndim=3); leave it unset for a 2D model.",
    )
    # Modalities are told apart per plane and the colour/zoom steps work on planes.
    check(
        model_config.ndim == 2
        or not (config.sampling == "modality" or config.colour_augment or config.scale_augment),
        "sampling='modality', colour_augment and scale_augment are for 2D models; "
        "use sampling='area' or 'image' and the default augmentation for a 3D model.",
    )


def _as_images(images: Sequence[Any], what: str) -> list[Any]:
    """Each of ``images`` as :func:`napari_unet.io.as_image` gives it (paths read)."""
    return [as_image(image, f"{what} image {index}") for index, image in enumerate(images)]


def _prepare_data(
    images: Sequence[Any],
    labels: Sequence[Any],
    val_images: Sequence[Any] | None,
    val_labels: Sequence[Any] | None,
    config: TrainConfig,
    model_config: ModelConfig,
    data_description: dict[str, Any] | None,
    fine_tune: bool = False,
) -> tuple[list[PlaneData], list[PlaneData], dict[str, Any], list[str] | None]:
    """Training and validation planes (all read and checked), their description, and
    each training plane's modality with ``sampling="modality"`` (else None).

    A fine-tune (``fine_tune``) also trains on :func:`replay_planes` (validation stays
    the caller's data)."""
    # Paths are read here; arrays are checked to be images.
    images, labels = _as_images(images, "training"), _as_images(labels, "training label")
    if val_images is not None and val_labels is not None:
        val_images = _as_images(val_images, "validation")
        val_labels = _as_images(val_labels, "validation label")
    prepare = dict(
        in_channels=model_config.in_channels,
        normalization=model_config.normalization,
        target=model_config.target,
        label_mode=config.label_mode,
        ndim=model_config.ndim,
        anisotropy=model_config.anisotropy,
    )
    modalities = None
    if config.sampling == "modality":
        # Told from the planes as read, before normalisation; split once (a lazy image is
        # read once), the planes then go on as the training images.
        images, labels, _ = split_planes(images, labels)
        modalities = [classify_modality(plane) for plane in images]
    train_planes = prepare_training_planes(
        images, labels, contact_weight=config.contact_weight, **prepare
    )
    replayed, replayed_modalities = replay_planes(config, model_config) if fine_tune else ([], [])
    if val_images is not None and val_labels is not None:
        val_planes = prepare_training_planes(val_images, val_labels, what="validation", **prepare)
        validation = "explicit"
    elif model_config.ndim == 3 and len(train_planes) == 1 and config.val_fraction > 0:
        # One volume: its last planes validate (normalised and labelled with the rest).
        sparse = config.label_mode == "sparse"
        train_part, val_part = split_held_out_slab(train_planes[0], config.val_fraction, sparse)
        train_planes, val_planes = [train_part], [val_part]
        validation = f"held-out Z slab ({val_planes[0].shape[0]} planes)"
    else:
        train_index, val_index, validation = _split(
            len(train_planes), config.val_fraction, config.seed
        )
        val_planes = [train_planes[i] for i in val_index]
        train_planes = [train_planes[i] for i in train_index]
        modalities = None if modalities is None else [modalities[i] for i in train_index]
    if validation != "explicit" and config.contact_weight != 1:
        # Validation unweighted: contact weights imply instance or mask labels, whose
        # unweighted planes count every pixel once (weights None).
        val_planes = [dataclasses.replace(plane, weights=None) for plane in val_planes]
    train_planes += replayed
    if modalities is not None:
        modalities += replayed_modalities
    description = {
        # planes, or volumes of a 3D model (ndim 3)
        "ndim": model_config.ndim,
        "train_planes": len(train_planes),
        **({"replayed_samples": len(replayed)} if replayed else {}),
        "val_planes": len(val_planes),
        "train_pixels": int(sum(plane.size for plane in train_planes)),
        "validation": validation,
        "label_mode": config.label_mode,
        **(data_description or {}),
    }
    return train_planes, val_planes, description, modalities


def patch_shape(
    config: TrainConfig, model_config: ModelConfig, planes: Sequence[PlaneData]
) -> tuple[int, ...]:
    """The training patch shape: ``(S, S)`` for a 2D model; ``(D, S, S)`` for a 3D one,
    ``D`` = ``config.patch_depth``, or when None the same physical extent as ``S`` (``S``
    over the anisotropy) but no deeper than the deepest training volume."""
    side = config.patch_size
    if model_config.ndim == 2:
        return side, side
    depth = config.patch_depth
    if depth is None:
        deepest = max(plane.shape[0] for plane in planes)
        depth = min(deepest, max(1, round(side / model_config.anisotropy)))
    return depth, side, side


def _patch_sampler(
    planes: Sequence[PlaneData],
    config: TrainConfig,
    model_config: ModelConfig,
    group: Any,
    modalities: list[str] | None,
) -> tuple[PatchSampler, int]:
    """The seeded patch sampler of the training planes, and the steps of an epoch.

    ``modalities`` (each plane's) are given with ``sampling="modality"``.
    """
    rng = np.random.default_rng(config.seed)
    rank_rng(rng, config.seed, group)  # each rank its own patches
    shape = patch_shape(config, model_config, planes)
    if modalities is not None or config.colour_augment or config.scale_augment:
        sampler: PatchSampler = ModalitySampler(
            planes,
            shape,
            config.augment,
            rng,
            modalities,
            config.colour_augment,
            config.scale_augment,
            sampling="image" if modalities is not None else config.sampling,
        )
    else:
        sampler = PatchSampler(planes, shape, config.sampling, config.augment, rng)
    steps_per_epoch = config.steps_per_epoch or auto_steps_per_epoch(
        sampler.patches_per_epoch(), config.batch_size, group.world_size
    )
    return sampler, steps_per_epoch


def auto_steps_per_epoch(patches: int, batch_size: int, world_size: int = 1) -> int:
    """Steps of an epoch when none are given: ``patches`` (the data's area once) over all
    ranks together, and at least :data:`MIN_PATCHES_PER_EPOCH` patches, so that a small
    image set still gets an epoch whose validation means something."""
    return math.ceil(max(patches, MIN_PATCHES_PER_EPOCH) / (batch_size * world_size))


def _train_steps(
    run: TrainingRun,
    sampler: PatchSampler,
    stop: threading.Event | None,
    model_path: Path | None,
    budget: _Budget,
) -> Generator[TrainEvent, None, tuple[list[float], str | None]]:
    """The steps of one epoch, one event each; returns their losses and why they stopped
    early (``"cancelled"``, ``"time budget"``) or None."""
    config = run.config
    losses: list[float] = []
    threads = config.resolved_loader_threads(run.device)
    batches = sampler.epoch_batches(config.batch_size, run.steps_per_epoch, threads)
    # A CPU step reuses the activation memory the previous one freed, rather than having
    # the kernel map and zero it afresh (napari_unet.allocator says how much that saves).
    # Validation (whole images, other sizes) runs with the allocator's defaults, so that
    # kept blocks fitting none of its sizes do not add to its peak.
    reuse = reuse_freed_memory() if run.device.type == "cpu" else contextlib.nullcontext()
    with reuse, contextlib.closing(batches):  # closing: stops the loader threads
        for step, batch in enumerate(batches, start=1):
            value = run.train_step(batch)
            if not math.isfinite(value):
                raise run.diverged("training", model_path)
            losses.append(value)
            used = budget.fraction()
            run.pace_schedule(used)
            yield TrainEvent(
                "step",
                run.epoch + 1,
                config.epochs,
                step,
                run.steps_per_epoch,
                float(np.mean(losses)),
                learning_rate=run.learning_rate,
                elapsed_s=run.elapsed(),
            )
            if stop is not None and stop.is_set():
                return losses, "cancelled"
            if used >= 1.0:
                return losses, "time budget"
    return losses, None


def _epoch(
    run: TrainingRun,
    sampler: PatchSampler,
    val_planes: Sequence[PlaneData],
    group: Any,
    outputs: RunOutputs,
    stop: threading.Event | None,
    budget: _Budget,
) -> Generator[TrainEvent, None, str | None]:
    """One epoch: steps, validation, files, its event; returns why the run ends (one of
    :data:`STOP_REASONS`) or None to go on."""
    if run.best_state is not None:
        # Stopped, or out of time, during the last validation: no further step starts.
        if stop is not None and stop.is_set():
            return "cancelled"
        if budget.spent():
            return "time budget"
    losses, ended = yield from _train_steps(run, sampler, stop, outputs.model, budget)
    cancelled = ended == "cancelled"
    if cancelled and run.best_state is not None:
        return ended  # a partial epoch is neither validated nor checkpointed
    val_loss, val_metrics = distributed_validate(run, val_planes, group)
    if not math.isfinite(val_loss):
        raise run.diverged("validation", outputs.model)
    train_loss = all_mean(float(np.mean(losses)), group)
    row, improved = run.record_epoch(train_loss, val_loss, val_metrics)
    if improved:
        outputs.save_model(run)
    outputs.save_log(run)
    if not cancelled:
        outputs.save_checkpoint(run)
    yield TrainEvent(
        "epoch",
        run.epoch,
        run.config.epochs,
        len(losses),
        run.steps_per_epoch,
        train_loss,
        val_loss,
        dict(val_metrics),
        row["learning_rate"],
        run.elapsed(),
    )
    if ended is None and run.should_stop_early():
        return "early stopping"
    return ended


def _finish(
    run: TrainingRun, outputs: RunOutputs, ended: str
) -> Generator[TrainEvent, None, TrainResult]:
    """Save the final model (complete metadata), yield ``done`` and return the result."""
    run.stop_reason = ended
    outputs.save_model(run)
    model_path = outputs.model
    model = TrainedModel(
        run.best_network().to(run.device),
        run.model_config,
        run.metadata(),
        run.device,
        str(model_path) if model_path is not None else "memory",
    )
    last_loss = run.history[-1]["train_loss"] if run.history else math.nan
    yield TrainEvent(
        "done",
        run.epoch,
        run.config.epochs,
        run.steps_per_epoch,
        run.steps_per_epoch,
        last_loss,
        run.best_val_loss,
        dict(run.best_metrics),
        run.learning_rate,
        run.elapsed(),
    )
    checkpoint = outputs.checkpoint
    return TrainResult(
        model=model,
        best_epoch=run.best_epoch,
        best_val_loss=run.best_val_loss,
        history=[dict(row) for row in run.history],
        model_path=model_path,
        log_path=outputs.log,
        cancelled=ended == "cancelled",
        stopped_early=ended == "early stopping",
        checkpoint_path=checkpoint if checkpoint is not None and checkpoint.exists() else None,
        out_of_time=ended == "time budget",
        stop_reason=ended,
    )


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
    **overrides: Any,
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
        ``config.max_minutes`` ends it likewise, validating that step's epoch first.
    checkpoint : str or Path, optional
        Where to write the resume checkpoint each epoch; defaults to
        :func:`~napari_unet.training_outputs.default_checkpoint_path` of ``out`` (none
        without ``out``).
    data_description : dict, optional
        Plain-typed description of the data, stored in the model metadata.
    **overrides
        :class:`TrainConfig` fields overriding ``config`` (e.g. ``epochs=2``); see
        :meth:`~napari_unet.settings.Settings.with_overrides`.

    Raises
    ------
    DataError
        Inconsistent or empty data (raised before anything is written).
    ConfigError
        Invalid settings or output paths (raised before any work), a failed write;
        :class:`TrainingDivergedError` if the loss becomes NaN/inf.
    ModelFileError
        Unreadable ``init`` or ``resume`` file, or a damaged ``resume`` checkpoint (all
        checked before the first epoch).

    Examples
    --------
    >>> cfg = TrainConfig(model=ModelConfig.from_preset("tiny", in_channels=1), epochs=2)
    >>> result = train(images, labels, cfg, out="nuclei.pt")  # doctest: +SKIP
    >>> result.best_epoch, result.history[-1]["val_dice"]  # doctest: +SKIP
    """
    config = TrainConfig.with_overrides(config, overrides)
    if resume is not None and init is not None:
        raise ConfigError("give either resume (continue a run) or init (fine-tune), not both.")
    check((val_images is None) == (val_labels is None), "give both val_images and val_labels.")
    try:
        # Under torchrun: join the process group (NCCL on this rank's GPU, gloo on a CPU).
        group, device = init_from_env(select_device(config.device))
    except ValueError as error:
        raise ConfigError(str(error)) from error
    budget = _Budget.start(config.max_minutes, group)
    # Only rank 0 writes the model, log and checkpoint; their paths are checked first.
    outputs = (
        RunOutputs(*check_output_paths(out, log_csv, checkpoint)) if group.is_main else RunOutputs()
    )

    # Model config and starting weights come from the resumed run or the init model.
    resume_payload = read_checkpoint(resume) if resume is not None else None
    init_model = load_model(init, device="cpu") if init is not None else None
    if resume_payload is not None:
        model_config = checkpoint_model_config(resume_payload, str(resume))
    else:
        model_config = init_model.config if init_model is not None else config.model
    _check_dimensions(config, model_config, init_model)
    # A resumed fine-tune replays the samples as the run it continues did.
    fine_tune = init is not None or (
        resume_payload is not None
        and isinstance(resume_payload.get("metadata"), dict)
        and resume_payload["metadata"].get("init") is not None
    )
    train_planes, val_planes, description, modalities = _prepare_data(
        images, labels, val_images, val_labels, config, model_config, data_description, fine_tune
    )

    sampler, steps_per_epoch = _patch_sampler(train_planes, config, model_config, group, modalities)
    rng = sampler.rng
    if resume_payload is not None:
        run = TrainingRun.from_checkpoint(
            resume_payload, str(resume), config, device, steps_per_epoch, rng, description
        )
        if not group.is_main:  # the checkpoint holds rank 0's stream only
            rank_rng(rng, config.seed, group, run.epoch)
    else:
        run = TrainingRun.fresh(
            config, model_config, device, steps_per_epoch, rng, description, init_model
        )
    if group.active:
        run.train_network = wrap_model(run.network, device)

    ended = None
    while run.epoch < config.epochs and ended is None:
        ended = yield from _epoch(run, sampler, val_planes, group, outputs, stop, budget)
    return (yield from _finish(run, outputs, ended or "epochs"))


train = plain_form(train_events, "train", "Train a network and return its :class:`TrainResult`.")
