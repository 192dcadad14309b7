"""``napari-unet evaluate``: score a model on labelled images (pixel and instance metrics)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from napari_unet.cli._options import add_prediction_arguments, prediction_config
from napari_unet.io import (
    DataError,
    find_dsb_samples,
    find_pairs,
    read_dsb_sample,
    read_image,
)

HELP = "predict labelled images and print pixel and instance metrics (DSB score, AP, PQ)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet evaluate``."""
    parser.add_argument("--model", required=True, help="model file (*.pt) or 'default'")
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=Path, help="folder of images")
    data.add_argument("--labels", type=Path, help="folder of label images (same file stems)")
    data.add_argument(
        "--dsb",
        type=Path,
        help="DSB 2018 folder (<id>/images/<id>.png + <id>/masks/*.png, or images/ + labels/)",
    )
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
    settings = parser.add_argument_group("prediction")
    settings.add_argument(
        "--resize",
        type=int,
        metavar="N",
        help="resize images and labels to N x N first (256 = the reference protocol)",
    )
    add_prediction_arguments(settings)
    settings.add_argument("--quiet", action="store_true", help="no progress bar")


def load_evaluation_data(args: argparse.Namespace) -> tuple[list[str], list[Any], list[Any]]:
    """Names, images and labels from ``--images/--labels`` and/or ``--dsb``.

    Raises
    ------
    DataError
        If no data is named, a folder is missing or empty, or a file is unreadable.
    """
    if args.images is None and args.labels is None and args.dsb is None:
        raise DataError("give --images DIR and --labels DIR, or --dsb DIR.")
    if (args.images is None) != (args.labels is None):
        raise DataError("--images and --labels go together; give both folders.")
    names: list[str] = []
    images: list[Any] = []
    labels: list[Any] = []
    pairs = []
    if args.images is not None:
        pairs += find_pairs(args.images, args.labels)
    if args.dsb is not None:
        if (args.dsb / "images").is_dir() and (args.dsb / "labels").is_dir():
            pairs += find_pairs(args.dsb / "images", args.dsb / "labels")
        else:
            for sample in find_dsb_samples(args.dsb):
                image, label = read_dsb_sample(sample)
                names.append(sample.name)
                images.append(image)
                labels.append(label)
    for image_path, label_path in pairs:
        names.append(image_path.stem)
        images.append(read_image(image_path))
        labels.append(read_image(label_path))
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DataError(f"images {repeated[:5]} appear twice; give each image once.")
    return names, images, labels


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the table (or JSON); returns the exit code."""
    from tqdm import tqdm

    from napari_unet.evaluation import evaluate_events
    from napari_unet.prediction import DEFAULT_POSTPROCESS, resolve_model

    config = prediction_config(args)
    model = resolve_model(args.model, config.device)
    names, images, labels = load_evaluation_data(args)
    events = evaluate_events(
        model, images, labels, config, args.resize, names=names, overlay_dir=args.save_overlays
    )
    with tqdm(total=len(names), unit="image", disable=args.quiet, file=sys.stderr) as bar:
        while True:
            try:
                next(events)
            except StopIteration as finished:
                report = finished.value
                break
            bar.update(1)
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
