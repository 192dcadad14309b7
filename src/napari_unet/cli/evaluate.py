"""``napari-unet evaluate``: score a model on labelled images (pixel and instance metrics)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_unet.cli._options import (
    add_labelled_data_arguments,
    add_overwrite_argument,
    add_prediction_arguments,
    load_labelled_data,
    prediction_config,
    run_record,
    run_with_progress_bar,
)
from napari_unet.io import check_output, check_run_record, write_run_record

HELP = "predict labelled images and print pixel and instance metrics (DSB score, AP, PQ)"

#: Prediction settings without an option here, and why.
NOT_OPTIONS = {
    "labels_per_plane": "evaluate scores 2D images",
    "return_probabilities": "always on: the pixel scores need them",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet evaluate``."""
    parser.add_argument("--model", required=True, help="model file (*.pt) or 'default'")
    add_labelled_data_arguments(parser)
    output = parser.add_argument_group("output")
    output.add_argument("--csv", type=Path, help="write per-image scores to this CSV file")
    output.add_argument(
        "--json",
        action="store_true",
        help="print only the summary, with the post-processing used, as one JSON object",
    )
    output.add_argument(
        "--save-overlays",
        type=Path,
        metavar="DIR",
        help="write image | truth | prediction PNGs to DIR",
    )
    add_overwrite_argument(output, "--save-overlays")
    settings = parser.add_argument_group("prediction")
    settings.add_argument(
        "--resize",
        type=int,
        metavar="N",
        help="resize images and labels to N x N first (256 = the reference protocol)",
    )
    add_prediction_arguments(settings, exclude=NOT_OPTIONS)
    settings.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table (or JSON); returns the exit code."""
    from napari_unet.config import DEFAULT_POSTPROCESS
    from napari_unet.evaluation import evaluate_events
    from napari_unet.prediction import resolve_model

    if args.csv is not None:
        check_output(args.csv, "file", "--csv")
    if args.save_overlays is not None:
        check_output(args.save_overlays, "folder", "--save-overlays")
    config = prediction_config(args, exclude=NOT_OPTIONS)
    model = resolve_model(args.model, config.device)
    record = run_record("evaluate", model, config, resize=args.resize)
    if args.save_overlays is not None:
        check_run_record(args.save_overlays, record, args.overwrite, "--save-overlays")
    names, images, labels = load_labelled_data(args)
    events = evaluate_events(
        images,
        labels,
        model,
        config,
        resize=args.resize,
        names=names,
        overlay_dir=args.save_overlays,
    )
    report = run_with_progress_bar(events, args.quiet, unit="image")
    if args.save_overlays is not None:
        write_run_record(args.save_overlays, record)
    if args.csv is not None:
        report.write_csv(args.csv)
    # The post-processing the scores came from: the options given, else the model's tuned values.
    used = config.for_model(model)
    postprocess = {name: getattr(used, name) for name in DEFAULT_POSTPROCESS}
    if args.json:
        print(json.dumps({**report.summary, "postprocess": postprocess}))
    else:
        print(report.format_table())
        print("post-processing: " + ", ".join(f"{k} {v}" for k, v in postprocess.items()))
        if args.csv is not None:
            print(f"per-image scores: {args.csv}")
        if args.save_overlays is not None:
            print(f"overlays: {args.save_overlays}")
    return 0
