"""``napari-unet tune``: choose a model's post-processing on labelled validation images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from napari_unet.cli._options import (
    SCORING_NOT_OPTIONS,
    add_config_arguments,
    add_prediction_arguments,
    add_scoring_arguments,
    config_from_args,
    load_labelled_data,
    prediction_config,
    run_with_progress_bar,
    trusted_model,
)
from napari_unet.config import PostprocessGrid
from napari_unet.modality import MIN_MODALITY_IMAGES

if TYPE_CHECKING:
    from napari_unet.tuning import TuningResult

HELP = "choose the post-processing (thresholds, minimum size) on labelled images; store it"


#: Prediction settings without an option here, and why: the grid varies the post-processing
#: (``separate`` and ``fill_holes`` keep their defaults there), and those of every scoring
#: command.
NOT_OPTIONS = {
    "threshold": "the grid's --thresholds",
    "seed_threshold": "the grid's --seed-thresholds",
    "core_threshold": "the grid's --core-thresholds",
    "min_size": "the grid's --min-sizes",
    "separate": "tuning splits touching objects as prediction does by default",
    "fill_holes": "tuning fills holes as prediction does by default",
    **SCORING_NOT_OPTIONS,
    "stack": "tune scores 2D images",
    "anisotropy": "tune scores 2D images",
    "volume_method": "tune scores 2D images",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet tune``."""
    add_scoring_arguments(parser)
    grid = parser.add_argument_group("values to try")
    add_config_arguments(grid, PostprocessGrid)
    grid.add_argument(
        "--rank-by",
        choices=["f1_50", "dsb_score"],
        default="f1_50",
        help="mean score that picks the best settings (default f1_50: F1 at IoU 0.5)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--out",
        type=Path,
        help="write the model with the best settings stored in it here (default: only print)",
    )
    output.add_argument(
        "--half",
        action="store_true",
        help="store the weights as float16 (default: as in the model file given)",
    )
    output.add_argument(
        "--per-modality",
        action="store_true",
        help="also choose and store settings for each modality (fluorescence, brightfield, "
        "H&E) with enough images; prediction picks them from the image",
    )
    output.add_argument(
        "--min-modality-images",
        type=int,
        default=MIN_MODALITY_IMAGES,
        metavar="N",
        help=f"fewest images of a modality for its own settings (default {MIN_MODALITY_IMAGES}); "
        "others use the overall ones",
    )
    output.add_argument(
        "--holdout-splits",
        type=int,
        default=0,
        metavar="N",
        help="also estimate the score of settings chosen on other images: N random halvings",
    )
    settings = parser.add_argument_group("prediction")
    add_prediction_arguments(settings, exclude=NOT_OPTIONS)
    settings.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Tune, print the best rows, optionally write the tuned model; returns the exit code."""
    from napari_unet.errors import ConfigError
    from napari_unet.io import check_output
    from napari_unet.prediction import resolve_model
    from napari_unet.tuning import tune_events

    grid = config_from_args(args, PostprocessGrid)
    if args.min_modality_images < 1:
        raise ConfigError(
            f"--min-modality-images must be 1 or more, got {args.min_modality_images}."
        )
    if args.holdout_splits < 0:
        raise ConfigError(f"--holdout-splits must be 0 or more, got {args.holdout_splits}.")
    if args.out is not None:
        check_output(args.out, "file", "--out")
    config = prediction_config(args, exclude=NOT_OPTIONS)
    model = resolve_model(trusted_model(args.model, args.trust_package_code), config.device)
    names, images, labels = load_labelled_data(args)
    events = tune_events(
        images, labels, model, config, grid=grid, rank_by=args.rank_by, names=names
    )
    result = run_with_progress_bar(events, args.quiet, unit="step")
    print(f"{len(images)} images, model target {model.config.target}, ranked by {args.rank_by}")
    print(result.format_table())
    best = ", ".join(f"{key} {value:g}" for key, value in result.best.items())
    print(f"best: {best}")
    if args.holdout_splits:
        held_out = result.holdout_scores(args.holdout_splits)
        print(
            f"{args.rank_by} of settings chosen on one half, scored on the other "
            f"({args.holdout_splits} random halvings): {held_out.mean():.4f} "
            f"+- {held_out.std():.4f} (best on all images: {result.rows[0][args.rank_by]:.4f})"
        )
    if args.per_modality:
        _print_per_modality(result, args.min_modality_images)
    if args.out is not None:
        source = args.images or args.dsb
        result.apply(
            model,
            f"{len(images)} images of {source} (napari-unet tune, {args.rank_by})",
            per_modality=args.per_modality,
            min_images=args.min_modality_images,
        )
        path = model.save(args.out, half_precision=True if args.half else None)
        print(f"wrote {path}: prediction now uses these settings when none are given")
    return 0


def _print_per_modality(result: TuningResult, min_images: int) -> None:
    """Each modality's best rows, and which modalities fall back to the overall values."""
    chosen = result.per_modality(min_images)
    for modality, modality_result in chosen.items():
        count = len(modality_result.modalities)
        print(f"\n{modality} ({count} images):")
        print(modality_result.format_table(3))
    counts = {kind: result.modalities.count(kind) for kind in set(result.modalities)}
    for modality, count in sorted(counts.items()):
        if modality not in chosen:
            print(f"{modality}: {count} image(s), under {min_images}: uses the overall settings")
