"""``napari-unet demo``: segment the bundled sample images with a model and score the result.

Needs no display and no data of your own: it writes one label TIFF and one side-by-side
overlay PNG (image | truth | prediction) per sample, a per-image CSV, and prints the
pixel and instance metrics against the samples' shipped labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_unet import io
from napari_unet.checkpoint import load_model
from napari_unet.cli._options import add_overwrite_argument, run_record
from napari_unet.evaluation import evaluate
from napari_unet.prediction import PredictConfig

HELP = "segment the bundled sample images with the bundled (or a given) model and print metrics"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet demo``."""
    parser.add_argument(
        "--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)"
    )
    parser.add_argument(
        "--model", default="default", help="model file (*.pt) or 'default' (the bundled model)"
    )
    parser.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Segment every bundled sample, write labels/overlays/CSV under ``args.out``, print metrics."""
    io.check_output(args.out, "folder", "--out")
    for folder in ("labels", "overlays"):
        io.check_output(args.out / folder, "folder", "--out")
    io.check_output(args.out / "scores.csv", "file", "--out")
    pairs = io.find_pairs(io.SAMPLES_DIR / "images", io.SAMPLES_DIR / "labels")
    model = load_model(args.model, device=args.device)
    config = PredictConfig(tta=args.tta, device=args.device)
    record = run_record("demo", model, config)
    io.check_run_record(args.out, record, args.overwrite, "--out")
    names = [image_path.stem for image_path, _ in pairs]
    images = [io.read_image(image_path) for image_path, _ in pairs]
    labels = [io.read_image(labels_path) for _, labels_path in pairs]
    report = evaluate(
        images,
        labels,
        model,
        config,
        names=names,
        overlay_dir=args.out / "overlays",
        labels_dir=args.out / "labels",
    )
    csv_path = report.write_csv(args.out / "scores.csv")
    io.write_run_record(args.out, record)
    print(
        f"model: {model.source} ({model.config.preset or model.config.architecture}, "
        f"target {model.config.target}) on {model.device}"
    )
    print(report.format_table())
    print(f"labels:   {args.out / 'labels'}/<id>.tif ({len(pairs)} files)")
    print(f"overlays: {args.out / 'overlays'}/<id>.png (image | truth | prediction)")
    print(f"scores:   {csv_path}")
    return 0
