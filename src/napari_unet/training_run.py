"""One training run: its state, its step and validation, and its resume checkpoint.

:class:`TrainingRun` holds the network, optimiser, schedule, patch stream and the progress
so far; :func:`napari_unet.training.train_events` drives it epoch by epoch. A resume
checkpoint (``model.ckpt.pt``) is a model file (:mod:`napari_unet.checkpoint`) of the last
epoch's weights plus a ``training_state`` dictionary of plain types, written by
:meth:`TrainingRun.to_checkpoint` and read back by :meth:`TrainingRun.from_checkpoint`,
which checks every part first (the ``*_problem`` functions here, each returning a short
description of the first problem or None): a damaged or tampered checkpoint is refused
with one line before any epoch runs, never used half-way.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from napari_unet import __version__
from napari_unet.checkpoint import TrainedModel, model_payload, read_payload
from napari_unet.config import ModelConfig
from napari_unet.errors import ConfigError, ModelFileError, TrainingDivergedError
from napari_unet.losses import compute_loss
from napari_unet.metrics import pixel_metrics
from napari_unet.model import build_model
from napari_unet.patches import PlaneData
from napari_unet.training_state import (
    is_number,
    optimizer_problem,
    plain_rng_state,
    restore_rng_state,
    rng_problem,
    scheduler_problem,
)

if TYPE_CHECKING:
    from napari_unet.config import TrainConfig

#: Tag of a training state (a plain model file has none).
CHECKPOINT_FORMAT = "napari-unet-training-state"
#: Layers whose running statistics a fine-tune keeps (``TrainConfig.freeze_batchnorm``).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
#: The submodules each ``TrainConfig.freeze`` choice keeps fixed in a fine-tune.
FROZEN_PARTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "encoder": ("encoders",),
    "encoder+bottleneck": ("encoders", "bottleneck"),
}
#: Columns of the CSV log and of the history rows, one row per epoch.
LOG_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_dice",
    "val_iou",
    "learning_rate",
    "elapsed_s",
)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_row(row: Any) -> bool:
    return isinstance(row, dict) and all(is_number(row.get(key)) for key in LOG_COLUMNS)


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(key, str) and is_number(number) for key, number in value.items()
    )


#: Each plain part of a training state and the test its value must pass (optimizer,
#: scheduler, weights and random state are checked against the run that takes them).
STATE_PARTS: dict[str, Callable[[Any], bool]] = {
    "epoch": _is_count,
    "optimizer": lambda value: isinstance(value, dict),
    "schedule": lambda value: isinstance(value, str),
    "scheduler": lambda value: isinstance(value, dict),
    "history": lambda value: isinstance(value, list) and all(map(_is_row, value)),
    "best_state_dict": lambda value: value is None or isinstance(value, dict),
    "best_epoch": _is_count,
    "best_val_loss": is_number,
    "best_metrics": _is_metrics,
    "epochs_since_best": _is_count,
    "elapsed_s": lambda value: is_number(value) and 0 <= value < math.inf,
    "rng": lambda value: isinstance(value, dict),
}


def _shown(value: Any) -> str:
    """A value for a message: itself when short, else its type."""
    text = repr(value)
    return text if len(text) <= 40 else f"a {type(value).__name__}"


def state_problem(state: Any) -> str | None:
    """What is wrong with the plain parts of a training state (types, consistency)."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        return "it holds no training state"
    missing = [key for key in STATE_PARTS if key not in state]
    if missing:
        return f"its training state lacks {', '.join(missing)}"
    for key, test in STATE_PARTS.items():
        if not test(state[key]):
            return f"its {key} is {_shown(state[key])}"
    epoch = state["epoch"]
    if not (
        len(state["history"]) == epoch
        and state["best_epoch"] <= epoch
        and state["epochs_since_best"] <= epoch
    ):
        return f"its history, best_epoch and epochs_since_best do not fit epoch {epoch}"
    if state["best_state_dict"] is None and epoch > 0:
        return "its best weights are missing"
    return None


def weights_problem(network: nn.Module, weights: Any, what: str) -> str | None:
    """What keeps ``weights`` from loading into ``network`` (names, shapes)."""
    if not isinstance(weights, dict) or not all(
        isinstance(value, torch.Tensor) for value in weights.values()
    ):
        return f"its {what} are not a set of tensors"
    expected = network.state_dict()
    if weights.keys() != expected.keys():
        return f"its {what} do not fit the network of its config"
    wrong = [name for name, value in expected.items() if weights[name].shape != value.shape]
    if wrong:
        return f"its {what} do not fit the network of its config ({wrong[0]})"
    return None


def seeded_network(model_config: ModelConfig, seed: int) -> nn.Module:
    """The network with seeded initial weights, leaving torch's global random state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(model_config)


class TrainingRun:
    """One training run: network, optimiser, schedule, patch stream and progress so far.

    :meth:`to_checkpoint` writes all of it and :meth:`from_checkpoint` reads it back (checked
    in full), so that a resumed run continues exactly as if it had not stopped.
    """

    def __init__(
        self,
        config: TrainConfig,
        model_config: ModelConfig,
        network: nn.Module,
        device: torch.device,
        steps_per_epoch: int,
        rng: np.random.Generator | None = None,
        data_description: dict[str, Any] | None = None,
        init_source: str | None = None,
    ) -> None:
        self.config = config
        self.model_config = model_config
        self.network = network
        self.device = device
        self.steps_per_epoch = steps_per_epoch
        # The patch stream (PatchSampler draws from it); saved with the checkpoint.
        self.rng = rng if rng is not None else np.random.default_rng(config.seed)
        self.data_description = dict(data_description or {})
        self.init_source = init_source
        # The init model's tuned post-processing, kept: its probabilities are what the
        # fine-tuned model starts from, and defaults would undo the tuning.
        self.postprocess: dict[str, Any] | None = None
        # Fine-tuning on a few images: BatchNorm keeps the init model's statistics.
        self.freeze_batchnorm = config.freeze_batchnorm and init_source is not None
        # Fine-tuning: the frozen parts keep the init model's weights and BatchNorm
        # statistics, and no gradient is computed through them (a cheaper step).
        frozen = FROZEN_PARTS[config.freeze] if init_source is not None else ()
        self.frozen = frozen_modules(network, frozen)
        for module in self.frozen:
            module.requires_grad_(False)
        self.cuda = device.type == "cuda"
        # channels-last convolutions on CUDA, and for 3D models on a CPU too: on this
        # project's CPU a 2D training step measured 10-20% slower than NCHW for the fast
        # preset and within noise for tiny (benchmarks/bench_train.py), while a tiny 3D step
        # (2 x 32 x 64 x 64 patches) took 3.1-4.4 s channels-last against 4.4-5.5 s.
        channels_last = torch.channels_last_3d if model_config.ndim == 3 else torch.channels_last
        faster = self.cuda or model_config.ndim == 3
        self.memory_format = channels_last if faster else torch.contiguous_format
        network.to(memory_format=self.memory_format)
        # What the training step calls: the network, or its DistributedDataParallel wrapper.
        self.train_network: nn.Module = network
        trained = [parameter for parameter in network.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.Adam(trained, lr=config.learning_rate)
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
        self.started = time.perf_counter()
        # Why the run ended (napari_unet.training.STOP_REASONS); None while it runs.
        self.stop_reason: str | None = None

    # -- the training state, out and back in ---------------------------------------------

    def to_checkpoint(self) -> dict[str, Any]:
        """A model-file dictionary of the current weights plus the whole training state."""
        payload = model_payload(self.network, self.model_config, self.metadata())
        payload["training_state"] = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.config.schedule,
            "scheduler": self.scheduler.state_dict(),
            "history": [dict(row) for row in self.history],
            "best_state_dict": self.best_state,
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "best_metrics": dict(self.best_metrics),
            "epochs_since_best": self.epochs_since_best,
            "elapsed_s": self.elapsed(),
            "rng": plain_rng_state(self.rng),
            "train_config": self.config.to_dict(),
        }
        return payload

    @classmethod
    def fresh(
        cls,
        config: TrainConfig,
        model_config: ModelConfig,
        device: torch.device,
        steps_per_epoch: int,
        rng: np.random.Generator,
        data_description: dict[str, Any] | None = None,
        init_model: TrainedModel | None = None,
    ) -> TrainingRun:
        """A new run: seeded initial weights, or those of ``init_model`` (fine-tuning)."""
        network = seeded_network(model_config, config.seed)
        if init_model is not None:
            network.load_state_dict(init_model.network.state_dict())
        network.to(device)
        init_source = init_model.source if init_model is not None else None
        run = cls(
            config,
            model_config,
            network,
            device,
            steps_per_epoch,
            rng,
            data_description,
            init_source,
        )
        if init_model is not None and init_model.metadata.get("postprocess"):
            run.postprocess = inherited_postprocess(init_model.metadata["postprocess"], init_source)
        return run

    @classmethod
    def from_checkpoint(
        cls,
        payload: dict[str, Any],
        source: str,
        config: TrainConfig,
        device: torch.device,
        steps_per_epoch: int,
        rng: np.random.Generator,
        data_description: dict[str, Any] | None = None,
    ) -> TrainingRun:
        """The run that :meth:`to_checkpoint` saved, continuing under ``config``.

        ``config.epochs`` is the new total; the schedule's state is kept when
        ``config.schedule`` is the one saved. Every part is checked before it is used.

        Raises
        ------
        ModelFileError
            On the first missing, mistyped or misshapen part, naming ``source``.
        """
        model_config = checkpoint_model_config(payload, source)
        network = seeded_network(model_config, config.seed)
        state = payload["training_state"]
        problem = state_problem(state) or weights_problem(
            network, payload.get("state_dict"), "weights"
        )
        if problem is None and state["best_state_dict"] is not None:
            problem = weights_problem(network, state["best_state_dict"], "best weights")
        if problem is None:
            network.load_state_dict(payload["state_dict"])
            saved = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
            init_source = saved.get("init") if isinstance(saved.get("init"), str) else None
            # The optimiser state fits the parts the run trained: it keeps its freeze.
            config = dataclasses.replace(config, freeze=saved_freeze(saved))
            run = cls(
                config,
                model_config,
                network.to(device),
                device,
                steps_per_epoch,
                rng,
                data_description,
                init_source,
            )
            if isinstance(saved.get("postprocess"), dict):
                run.postprocess = dict(saved["postprocess"])
            problem = run._restore(state)
        if problem is not None:
            raise ModelFileError(
                f"{source!r} is a damaged resume checkpoint: {problem}. Resume from an intact "
                "*.ckpt.pt, or start again from the saved model with init (--init)."
            )
        return run

    def _restore(self, state: dict[str, Any]) -> str | None:
        """Take the training state (its plain parts already checked); returns a problem."""
        same_schedule = state["schedule"] == self.config.schedule
        problem = (
            optimizer_problem(self.optimizer, state["optimizer"])
            or (scheduler_problem(self.scheduler, state["scheduler"]) if same_schedule else None)
            or rng_problem(self.rng, state["rng"])
        )
        if problem is not None:
            return problem
        self.optimizer.load_state_dict(state["optimizer"])
        if same_schedule:
            self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(self.rng, state["rng"])
        self.epoch = state["epoch"]
        self.history = [dict(row) for row in state["history"]]
        self.best_state = state["best_state_dict"]
        self.best_epoch = state["best_epoch"]
        self.best_val_loss = float(state["best_val_loss"])
        self.best_metrics = dict(state["best_metrics"])
        self.epochs_since_best = state["epochs_since_best"]
        self.elapsed_before = float(state["elapsed_s"])
        return None

    # -- progress --------------------------------------------------------------------------

    @property
    def learning_rate(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def elapsed(self) -> float:
        """Seconds of training, the interrupted runs before a resume included."""
        return self.elapsed_before + time.perf_counter() - self.started

    def record_epoch(
        self, train_loss: float, val_loss: float, val_metrics: dict[str, float]
    ) -> tuple[dict[str, Any], bool]:
        """Count a finished epoch: history row, best model, plateau schedule.

        Returns the history row and whether this epoch is the best so far (see
        :meth:`is_better`).
        """
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_dice": val_metrics["dice"],
            "val_iou": val_metrics["iou"],
            "learning_rate": self.learning_rate,
            "elapsed_s": round(self.elapsed(), 2),
        }
        self.history.append(row)
        improved = self.is_better(val_loss, val_metrics)
        if improved:
            self.best_val_loss, self.best_epoch = val_loss, self.epoch
            self.best_metrics = dict(val_metrics)
            self.best_state = self.state_dict_copy()
            self.epochs_since_best = 0
        else:
            self.epochs_since_best += 1
        if self.config.schedule == "plateau":
            self.scheduler.step(val_loss)
        return row, improved

    def is_better(self, val_loss: float, val_metrics: dict[str, float]) -> bool:
        """Whether an epoch beats the best: by validation Dice (the score reported), else loss."""
        dice, best = val_metrics.get("dice", math.nan), self.best_metrics.get("dice", math.nan)
        if math.isfinite(dice) and math.isfinite(best) and dice != best:
            return dice > best
        if math.isfinite(dice) != math.isfinite(best):
            return math.isfinite(dice)
        return val_loss < self.best_val_loss

    def should_stop_early(self) -> bool:
        patience = self.config.early_stopping_patience
        return patience is not None and self.epochs_since_best >= patience

    def metadata(self) -> dict[str, Any]:
        """What a model file of this run records about its training."""
        return {
            "train_config": self.config.to_dict(),
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "val_metrics": dict(self.best_metrics),
            "epochs_run": self.epoch,
            "stop_reason": self.stop_reason,
            "history": [dict(row) for row in self.history],
            "elapsed_s": round(self.elapsed(), 2),
            "data": self.data_description,
            "init": self.init_source,
            "device": str(self.device),
            "torch_version": str(torch.__version__),
            "napari_unet_version": __version__,
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"postprocess": dict(self.postprocess)} if self.postprocess else {}),
        }

    def best_network(self) -> nn.Module:
        """A CPU copy of the best network so far (the current one before any validation)."""
        best = build_model(self.model_config)
        best.load_state_dict(
            self.best_state if self.best_state is not None else self.state_dict_copy()
        )
        return best.eval()

    def diverged(self, where: str, model_path: Path | None) -> TrainingDivergedError:
        kept = (
            f" The last good model is kept in {str(model_path)!r}."
            if model_path is not None and self.best_state is not None
            else ""
        )
        return TrainingDivergedError(
            f"the {where} loss became NaN or infinite at epoch {self.epoch + 1}; lower the "
            f"learning rate (now {self.learning_rate:g}) or check the images for extreme "
            f"values.{kept}"
        )

    # -- the maths of a step and of validation -----------------------------------------

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
        if self.freeze_batchnorm:
            for module in self.network.modules():
                if isinstance(module, BATCH_NORMS):
                    module.eval()
        for module in self.frozen:
            module.eval()
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

    def pace_schedule(self, fraction: float) -> None:
        """Keep a per-step schedule at least ``fraction`` (0..1) of the way through.

        Under a time budget (``max_minutes``) a run may end long before its ``epochs``:
        a cosine or one-cycle schedule is then moved on with the clock (``fraction`` =
        the budget's share used), so that the rate has come down when the time is up.
        A schedule ahead of the clock, or a run without a budget, is left alone.
        """
        if not self.per_step_schedule or self.config.max_minutes is None:
            return
        length = self._schedule_length()
        step = min(length, math.ceil(fraction * length))
        if step <= self.scheduler.last_epoch:
            return
        if self.config.schedule == "onecycle":
            self.scheduler.last_epoch = step - 1
            self.scheduler.step()  # OneCycleLR's rate (and momentum) is a function of the step
            return
        # Cosine annealing's closed form; the scheduler's next step continues from it.
        low = self.config.min_lr
        rate = low + (self.config.learning_rate - low) * (1 + math.cos(math.pi * step / length)) / 2
        self.scheduler.last_epoch = step
        for group in self.optimizer.param_groups:
            group["lr"] = rate

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


def saved_freeze(metadata: dict[str, Any]) -> str:
    """The ``freeze`` a run saved in its metadata; ``"none"`` for runs from before it."""
    saved = metadata.get("train_config")
    freeze = saved.get("freeze", "none") if isinstance(saved, dict) else "none"
    return freeze if freeze in FROZEN_PARTS else "none"


def frozen_modules(network: nn.Module, parts: tuple[str, ...]) -> list[nn.Module]:
    """The submodules of ``network`` named in ``parts`` that it has."""
    return [
        getattr(network, name)
        for name in parts
        if isinstance(getattr(network, name, None), nn.Module)
    ]


def inherited_postprocess(tuned: dict[str, Any], init_source: str | None) -> dict[str, Any]:
    """The init model's tuned post-processing values, marked as taken over by a fine-tune."""
    origin = tuned.get("tuned_on", "unknown data")
    return {**tuned, "tuned_on": f"{origin}, for the model fine-tuned ({init_source})"}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The payload of a resume checkpoint: a readable file with a training state."""
    payload = read_payload(path)
    state = payload.get("training_state") if isinstance(payload, dict) else None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(
            f"{str(path)!r} is not a resume checkpoint (those end in .ckpt.pt and are written "
            "next to the model during training); to start from a model file use init instead."
        )
    return payload


def checkpoint_model_config(payload: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig.from_dict(payload["config"])
    except (ConfigError, KeyError, TypeError, AttributeError) as error:
        raise ModelFileError(
            f"{source!r} is a damaged resume checkpoint: its model config is invalid ({error}). "
            "Resume from an intact *.ckpt.pt, or start again with init (--init)."
        ) from None
