"""Where a training run writes: the model file, the CSV log and the resume checkpoint.

:func:`check_output_paths` checks the three paths before any work; a
:class:`RunOutputs` writes each of them atomically as a run goes
(:func:`napari_unet.training.train_events` calls it after each epoch).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from napari_unet.checkpoint import save_model, save_payload
from napari_unet.errors import ConfigError
from napari_unet.io import atomic_write, check_output
from napari_unet.training_run import LOG_COLUMNS, TrainingRun


def default_checkpoint_path(out: str | Path) -> Path:
    """Resume checkpoint written next to a model file: ``model.pt`` -> ``model.ckpt.pt``."""
    out = Path(out)
    return out.with_name(f"{out.stem}.ckpt.pt")


def check_output_paths(
    out: str | Path | None,
    log_csv: str | Path | None = None,
    checkpoint: str | Path | None = None,
) -> tuple[Path | None, Path | None, Path | None]:
    """The model, log and checkpoint paths of a run, checked before any work.

    ``checkpoint`` defaults to :func:`default_checkpoint_path` of ``out`` (none without
    ``out``). Each path must name a file (an existing one is replaced) that can be written:
    see :func:`napari_unet.io.check_output`.

    Returns
    -------
    model, log, checkpoint : Path or None

    Raises
    ------
    DataError
        A path is a folder or another non-file, a folder on the way is a file, or the
        folder does not take new files.
    ConfigError
        Two outputs are the same file.
    """
    model = Path(out) if out is not None else None
    log = Path(log_csv) if log_csv is not None else None
    if checkpoint is not None:
        state: Path | None = Path(checkpoint)
    else:
        state = default_checkpoint_path(model) if model is not None else None
    named = {"out (--out)": model, "log_csv (--log)": log, "checkpoint": state}
    given = {option: path for option, path in named.items() if path is not None}
    for option, path in given.items():
        check_output(path, "file", option)
    if len({path.resolve() for path in given.values()}) < len(given):
        raise ConfigError(
            f"{', '.join(given)} must be different files; give the log or the checkpoint "
            "another path."
        )
    return model, log, state


@dataclass(frozen=True)
class RunOutputs:
    """Where a run writes (None: not written); every write is atomic."""

    model: Path | None = None
    log: Path | None = None
    checkpoint: Path | None = None

    def save_model(self, run: TrainingRun) -> None:
        if self.model is not None:
            network, metadata = run.best_network(), run.metadata()
            save_model(self.model, network, run.model_config, metadata, run.config.half_precision)

    def save_log(self, run: TrainingRun) -> None:
        """Rewrite the whole CSV log atomically (a reader never sees a half row)."""
        if self.log is not None:
            with atomic_write(self.log) as tmp, open(tmp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(run.history)

    def save_checkpoint(self, run: TrainingRun) -> None:
        if self.checkpoint is not None:
            save_payload(self.checkpoint, run.to_checkpoint())
