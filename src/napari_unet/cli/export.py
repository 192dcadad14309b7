"""``napari-unet export``: write a model as a bioimage.io package or an ONNX file."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export a model as a bioimage.io package (.zip) or an ONNX file (.onnx)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the options of ``napari-unet export``."""
    parser.add_argument(
        "--model",
        required=True,
        help="model file (*.pt), bioimage.io package exported by napari-unet, or 'default'",
    )
    parser.add_argument(
        "--format",
        choices=("bioimageio", "onnx"),
        help="output format (default: from the --out suffix, .zip or .onnx)",
    )
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    package = parser.add_argument_group("bioimage.io package")
    package.add_argument("--name", help="package name (default generated from the model)")
    package.add_argument("--description", help="one-paragraph summary of the model")
    package.add_argument(
        "--author",
        action="append",
        dest="authors",
        help="author name (repeat for several; default 'napari-unet developers')",
    )
    package.add_argument(
        "--license",
        default="BSD-3-Clause",
        help="SPDX licence id of the weights (default BSD-3-Clause)",
    )
    package.add_argument(
        "--doc",
        type=Path,
        help="model card (Markdown); default docs/model_card.md for the bundled model, "
        "else one generated from the training metadata",
    )
    package.add_argument(
        "--sample",
        type=Path,
        help="image the test input/output is cropped from (default: a bundled sample)",
    )
    package.add_argument(
        "--tag", action="append", dest="tags", default=[], help="extra tag (repeatable)"
    )
    package.add_argument(
        "--no-test",
        action="store_true",
        help="skip bioimage.io's own test of the package before writing it",
    )


def run(args: argparse.Namespace) -> int:
    """Export the model; print where it went."""
    from napari_unet.checkpoint import load_model
    from napari_unet.export import FORMAT_SUFFIXES, export_model
    from napari_unet.io import check_output

    check_output(args.out, "file", "--out")
    model = load_model(args.model, device="cpu")
    fmt = args.format
    if fmt is None:
        fmt = {suffix: name for name, suffix in FORMAT_SUFFIXES.items()}.get(
            args.out.suffix.lower()
        )
    options = {}
    if fmt == "bioimageio":
        options = {
            "name": args.name,
            "description": args.description,
            "authors": args.authors or ("napari-unet developers",),
            "license": args.license,
            "documentation": args.doc,
            "sample": args.sample,
            "tags": args.tags,
            "test": not args.no_test,
        }
    path = export_model(model, args.out, fmt, **options)
    tested = " (passed bioimage.io's test)" if fmt == "bioimageio" and not args.no_test else ""
    print(f"wrote {fmt or 'model'} export: {path}{tested}")
    return 0
