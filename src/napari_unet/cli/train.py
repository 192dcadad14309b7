"""``napari-unet train``: train a model on image/label folders and save it to one file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_unet.cli._options import (
    add_config_arguments,
    add_trust_option,
    config_from_args,
    trusted_model,
)
from napari_unet.config import ModelConfig, TrainConfig
from napari_unet.errors import DataError
from napari_unet.settings import option_fields

HELP = "train a U-Net on image/label folders (or a DSB 2018 folder) and save the model"

#: Settings without an option, and why.
NOT_OPTIONS = {"in_channels": "read from the training images"}
#: Model settings the command line leaves to --preset unless given.
FROM_PRESET = {name: None for name in option_fields(ModelConfig) if name not in NOT_OPTIONS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet train``."""
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=Path, metavar="DIR", help="folder of training images")
    data.add_argument(
        "--labels", type=Path, metavar="DIR", help="folder of label images (same file stems)"
    )
    data.add_argument(
        "--dsb",
        type=Path,
        metavar="DIR",
        help="DSB 2018 folder (<id>/images/<id>.png + <id>/masks/*.png, or images/ + labels/)",
    )
    data.add_argument("--val-images", type=Path, metavar="DIR", help="folder of validation images")
    data.add_argument("--val-labels", type=Path, metavar="DIR", help="folder of validation labels")
    data.add_argument(
        "--val-dsb", type=Path, metavar="DIR", help="DSB 2018 folder used for validation"
    )
    model = parser.add_argument_group(
        "model",
        "settings not given (architecture, base filters, depth) come from --preset; --ndim 3 "
        "trains a native 3D model on (Z, Y, X) volumes, whose --anisotropy is read from the "
        "images' voxel size when not given",
    )
    model.add_argument(
        "--out", type=Path, required=True, metavar="MODEL", help="model file to write (*.pt)"
    )
    add_config_arguments(
        model, ModelConfig, exclude=NOT_OPTIONS, defaults={**FROM_PRESET, "preset": "fast"}
    )
    model.add_argument("--init", metavar="MODEL", help="model file (or 'default') to fine-tune")
    add_trust_option(model)
    model.add_argument(
        "--resume", type=Path, metavar="CKPT", help="resume checkpoint (*.ckpt.pt) to continue"
    )
    run = parser.add_argument_group("training")
    add_config_arguments(run, TrainConfig, exclude=[*FROM_PRESET, *NOT_OPTIONS])
    run.add_argument(
        "--log", type=Path, metavar="CSV", help="CSV log (default: next to --out, *.csv)"
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    """Read training (and validation) pairs as the options say."""
    from napari_unet.data import load_dsb, load_pairs_from_folders

    if (args.dsb is None) == (args.images is None and args.labels is None):
        raise DataError("give either --dsb DIR or both --images DIR and --labels DIR.")
    if args.dsb is None and (args.images is None or args.labels is None):
        raise DataError("--images and --labels go together; give both folders.")
    if (args.val_images is None) != (args.val_labels is None):
        raise DataError("--val-images and --val-labels go together; give both folders.")
    if args.val_dsb is not None and args.val_images is not None:
        raise DataError("give --val-dsb or --val-images/--val-labels, not both.")
    if args.dsb is not None:
        images, labels = load_dsb(args.dsb)
        description = {"train_source": str(args.dsb)}
    else:
        images, labels = load_pairs_from_folders(args.images, args.labels)
        description = {"train_source": f"{args.images} + {args.labels}"}
    val_images = val_labels = None
    if args.val_dsb is not None:
        val_images, val_labels = load_dsb(args.val_dsb)
        description["val_source"] = str(args.val_dsb)
    elif args.val_images is not None:
        val_images, val_labels = load_pairs_from_folders(args.val_images, args.val_labels)
        description["val_source"] = f"{args.val_images} + {args.val_labels}"
    return images, labels, val_images, val_labels, description


def file_anisotropy(args: argparse.Namespace) -> float | None:
    """The Z step over the XY pixel size that the ``--images`` files record (ImageJ or OME
    voxel size); None when none records one.

    Raises
    ------
    DataError
        If the files record different anisotropies (one 3D model takes one).
    """
    from napari_unet.io import find_pairs
    from napari_unet.metadata import anisotropy_from, image_metadata

    if args.images is None:
        return None
    found = {}
    for image_path, _ in find_pairs(args.images, args.labels):
        value = anisotropy_from(image_metadata(image_path))
        if value is not None:
            found[image_path.name] = value
    if found and max(found.values()) > 1.001 * min(found.values()):
        shown = ", ".join(f"{name}: {value:.3g}" for name, value in list(found.items())[:4])
        raise DataError(
            f"the images' voxel sizes give different anisotropies ({shown}); a 3D model "
            "takes one: give --anisotropy, or resample the volumes to one voxel size."
        )
    return next(iter(found.values()), None)


def run(args: argparse.Namespace) -> int:
    """Train and report; user errors propagate to the CLI frame (exit code 2)."""
    from tqdm import tqdm

    from napari_unet.data import infer_in_channels
    from napari_unet.ddp import quiet_unless_main
    from napari_unet.training import train_events
    from napari_unet.training_outputs import check_output_paths

    if not quiet_unless_main():
        args.quiet = True  # under torchrun, rank 0 alone shows progress and the summary
    log = args.log if args.log is not None else args.out.with_suffix(".csv")
    check_output_paths(args.out, log)  # before reading any data: a bad --out fails at once
    images, labels, val_images, val_labels, description = _load(args)
    if args.ndim == 3 and args.anisotropy is None:
        args.anisotropy = file_anisotropy(args)
        if args.anisotropy is not None:
            description["anisotropy_from"] = "the images' voxel size"
    config = config_from_args(
        args, TrainConfig, exclude=NOT_OPTIONS, in_channels=infer_in_channels(images, labels)
    )
    events = train_events(
        images,
        labels,
        config,
        val_images=val_images,
        val_labels=val_labels,
        out=args.out,
        resume=args.resume,
        init=trusted_model(args.init, args.trust_package_code),
        log_csv=log,
        data_description=description,
    )
    bar = None
    result = None
    try:
        while True:
            event = next(events)
            if event.kind == "step" and not args.quiet:
                if bar is None:
                    bar = tqdm(
                        total=event.steps_per_epoch,
                        desc=f"epoch {event.epoch}/{event.epochs}",
                        unit="step",
                        file=sys.stderr,
                        leave=False,
                    )
                bar.update(1)
                bar.set_postfix(loss=f"{event.train_loss:.4f}")
            elif event.kind == "epoch":
                if bar is not None:
                    bar.close()
                    bar = None
                metrics = event.val_metrics or {}
                print(
                    f"epoch {event.epoch}/{event.epochs}  train_loss {event.train_loss:.4f}  "
                    f"val_loss {event.val_loss:.4f}  val_dice {metrics.get('dice', 0):.4f}  "
                    f"val_iou {metrics.get('iou', 0):.4f}  lr {event.learning_rate:.2e}  "
                    f"{event.elapsed_s:.0f}s",
                    flush=True,
                )
    except StopIteration as finished:
        result = finished.value
    finally:
        if bar is not None:
            bar.close()
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    how = {"cancelled": "cancelled", "early stopping": "stopped early"}.get(
        result.stop_reason, "done"
    )
    if result.out_of_time:
        how = f"stopped on the time budget ({config.max_minutes:g} min)"
    print(
        f"{how}: best epoch {result.best_epoch} (val_loss {result.best_val_loss:.4f}, "
        f"val_dice {best.get('val_dice', float('nan')):.4f}, "
        f"val_iou {best.get('val_iou', float('nan')):.4f}) after "
        f"{result.model.metadata.get('elapsed_s', 0):.0f}s"
    )
    print(f"model: {result.model_path}")
    print(f"log: {result.log_path}")
    if result.checkpoint_path is not None:
        print(f"resume checkpoint: {result.checkpoint_path}")
    return 0
