"""Command-line options shared by the sub-commands that predict (predict, evaluate).

One definition of each option and one translation into :class:`PredictConfig`, so the
commands cannot drift apart.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_unet.prediction import PredictConfig


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
