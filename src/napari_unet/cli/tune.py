"""``napari-unet tune``: choose a model's post-processing on labelled validation images."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_unet.cli._options import (
    add_labelled_data_arguments,
    add_trust_option,
    load_labelled_data,
    run_with_progress_bar,
    trusted_model,
)

HELP = "choose the post-processing (thresholds, minimum size) on labelled images; store it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet tune``."""
    parser.add_argument(
        "--model", required=True, help="model file (*.pt), bioimage.io package or 'default'"
    )
    add_trust_option(parser)
    add_labelled_data_arguments(parser)
    grid = parser.add_argument_group("values to try")
    grid.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    grid.add_argument(
        "--seed-thresholds",
        type=float,
        nargs="+",
        default=[0.4, 0.5, 0.6],
        help="contour models only",
    )
    grid.add_argument(
        "--core-thresholds",
        type=float,
        nargs="+",
        default=[0.0, 0.85, 0.9],
        help="hysteresis; 0 = off",
    )
    grid.add_argument("--min-sizes", type=int, nargs="+", default=[8, 16, 32])
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
    settings.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    settings.add_argument("--tile", type=int, help="largest tile side (default: from free memory)")
    settings.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    settings.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Tune, print the best rows, optionally write the tuned model; returns the exit code."""
    from napari_unet.errors import ConfigError
    from napari_unet.prediction import PredictConfig, default_overlap, resolve_model
    from napari_unet.tuning import PostprocessGrid, tune_events

    grid = PostprocessGrid(
        tuple(args.thresholds),
        tuple(args.seed_thresholds),
        tuple(args.core_thresholds),
        tuple(args.min_sizes),
    )
    if args.holdout_splits < 0:
        raise ConfigError(f"--holdout-splits must be 0 or more, got {args.holdout_splits}.")
    config = PredictConfig(
        tile_size=args.tile, overlap=default_overlap(args.tile), tta=args.tta, device=args.device
    )
    model = resolve_model(trusted_model(args.model, args.trust_package_code), config.device)
    names, images, labels = load_labelled_data(args)
    events = tune_events(model, images, labels, grid, args.rank_by, config, names=names)
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
