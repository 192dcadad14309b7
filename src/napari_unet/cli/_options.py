"""Command-line options shared by the sub-commands that predict (predict, evaluate, tune).

One definition of each option and one translation into :class:`PredictConfig`, so the
commands cannot drift apart.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_unet.errors import DataError
from napari_unet.io import find_dsb_samples, find_pairs, read_dsb_sample, read_image

if TYPE_CHECKING:
    from napari_unet.prediction import PredictConfig, Progress


def add_prediction_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """Tiling, test-time augmentation, post-processing and device options."""
    parser.add_argument("--tile", type=int, help="largest tile side (default: from free memory)")
    parser.add_argument(
        "--overlap", type=int, help="tile overlap (default 64, at most a quarter of --tile)"
    )
    parser.add_argument("--tile-batch", type=int, default=1, help="tiles per batch (default 1)")
    parser.add_argument("--tta", action="store_true", help="average the 8 flips/rotations")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network: tens of seconds once per tile shape, then faster "
        "tiles (for large images and stacks)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="foreground probability (default: the model's tuned value, else 0.5)",
    )
    parser.add_argument(
        "--min-size",
        type=int,
        help="remove objects under N pixels (default: the model's tuned value, else 8)",
    )
    parser.add_argument(
        "--seed-threshold",
        type=float,
        help="contour models: boundary probability under which pixels seed objects "
        "(default: the model's tuned value, else 0.5)",
    )
    parser.add_argument(
        "--core-threshold",
        type=float,
        help="hysteresis: split objects where the foreground probability is over this, then "
        "grow them to --threshold; 0 turns it off (default: the model's tuned value, else 0)",
    )
    parser.add_argument(
        "--no-separate", action="store_true", help="connected components, no watershed split"
    )
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")


def prediction_config(args: argparse.Namespace, **settings: Any) -> PredictConfig:
    """The validated :class:`PredictConfig` of the options above, plus ``settings``."""
    # imported here so that building the parser (``--help``) does not load torch
    from napari_unet.prediction import PredictConfig, default_overlap

    return PredictConfig(
        tile_size=args.tile,
        overlap=default_overlap(args.tile) if args.overlap is None else args.overlap,
        tile_batch=args.tile_batch,
        tta=args.tta,
        compile=args.compile,
        threshold=args.threshold,
        min_size=args.min_size,
        seed_threshold=args.seed_threshold,
        core_threshold=args.core_threshold,
        separate=not args.no_separate,
        device=args.device,
        **settings,
    )


def add_labelled_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Images with their labels: two folders, or a DSB 2018 folder."""
    data = parser.add_argument_group("data")
    data.add_argument("--images", type=Path, help="folder of images")
    data.add_argument("--labels", type=Path, help="folder of label images (same file stems)")
    data.add_argument(
        "--dsb",
        type=Path,
        help="DSB 2018 folder (<id>/images/<id>.png + <id>/masks/*.png, or images/ + labels/)",
    )


def load_labelled_data(args: argparse.Namespace) -> tuple[list[str], list[Any], list[Any]]:
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


def run_with_progress_bar(
    events: Generator[Progress, None, Any], quiet: bool, unit: str, desc: str | None = None
) -> Any:
    """Drive a generator of progress events under a progress bar on stderr; return its value."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit=unit, disable=quiet, file=sys.stderr) as bar:
        while True:
            try:
                progress = next(events)
            except StopIteration as finished:
                return finished.value
            bar.total = progress.total
            bar.update(progress.done - bar.n)


def add_trust_option(parser: argparse.ArgumentParser | Any) -> None:
    """``--trust-package-code``: let a bioimage.io package's Python code run (off by default)."""
    parser.add_argument(
        "--trust-package-code",
        action="store_true",
        help="allow a bioimage.io package's own Python code to run (its pytorch_state_dict "
        "weights need it); only for packages from a source you trust",
    )


def trusted_model(model: str | None, trust: bool) -> str | Path | None:
    """``model`` as given, or marked trusted (a ``TrustedPath``) with ``--trust-package-code``."""
    if model is None or not trust:
        return model
    from napari_unet.checkpoint import TrustedPath

    return TrustedPath(model)
