"""``napari-unet tune``: choose a model's post-processing on labelled validation images."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_unet.cli._options import (
    add_config_arguments,
    add_labelled_data_arguments,
    add_prediction_arguments,
    config_from_args,
    load_labelled_data,
    prediction_config,
    run_with_progress_bar,
)
from napari_unet.config import PostprocessGrid

HELP = "choose the post-processing (thresholds, minimum size) on labelled images; store it"


#: Prediction settings without an option here, and why: the grid varies the post-processing
#: (``separate`` and ``fill_holes`` keep their defaults there), and it scores 2D images.
NOT_OPTIONS = {
    "threshold": "the grid's --thresholds",
    "seed_threshold": "the grid's --seed-thresholds",
    "core_threshold": "the grid's --core-thresholds",
    "min_size": "the grid's --min-sizes",
    "separate": "tuning splits touching objects as prediction does by default",
    "fill_holes": "tuning fills holes as prediction does by default",
    "labels_per_plane": "tune scores 2D images",
    "return_probabilities": "always on: tuning re-uses them",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet tune``."""
    parser.add_argument("--model", required=True, help="model file (*.pt) or 'default'")
    add_labelled_data_arguments(parser)
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
    if args.holdout_splits < 0:
        raise ConfigError(f"--holdout-splits must be 0 or more, got {args.holdout_splits}.")
    if args.out is not None:
        check_output(args.out, "file", "--out")
    config = prediction_config(args, exclude=NOT_OPTIONS)
    model = resolve_model(args.model, config.device)
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
    if args.out is not None:
        source = args.images or args.dsb
        result.apply(model, f"{len(images)} images of {source} (napari-unet tune, {args.rank_by})")
        path = model.save(args.out, half_precision=True if args.half else None)
        print(f"wrote {path}: prediction now uses these settings when none are given")
    return 0
