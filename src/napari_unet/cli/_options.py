"""Command-line options shared by the sub-commands, built from the settings classes.

Every field of :mod:`napari_unet.config`'s classes is one option named after it
(``learning_rate`` -> ``--learning-rate``; older spellings such as ``--lr`` stay as
aliases), typed, bounded and explained by the field's :class:`~napari_unet.settings.Rule`,
and read back into the class by :func:`config_from_args`, so no sub-command maps
settings by hand and a new field is on the command line at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Collection, Generator
from dataclasses import MISSING
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from napari_unet.config import PredictConfig, default_overlap
from napari_unet.errors import DataError
from napari_unet.io import find_dsb_samples, find_pairs, read_dsb_sample, read_image
from napari_unet.settings import Rule, Settings, option_fields

if TYPE_CHECKING:
    from napari_unet.checkpoint import TrainedModel
    from napari_unet.prediction import Progress

S = TypeVar("S", bound=Settings)

#: Prediction settings that change the results (tiling, device and speed options do not).
RESULT_SETTINGS = (
    "tta",
    "threshold",
    "separate",
    "min_size",
    "seed_threshold",
    "core_threshold",
    "fill_holes",
    "labels_per_plane",
)


def add_overwrite_argument(parser: argparse.ArgumentParser | Any, option: str = "--out") -> None:
    """``--overwrite``: allow writing into a folder holding another model's results."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"write into an {option} folder that holds results of another model or other "
        "settings (refused otherwise, so that two runs never mix their outputs)",
    )


def run_record(
    command: str, model: TrainedModel, config: PredictConfig, **settings: Any
) -> dict[str, Any]:
    """What identifies the results of a run: command, model weights and result settings."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().numpy().tobytes())
    used = config.for_model(model).to_dict()
    return {
        "command": command,
        "model_sha256": digest.hexdigest(),
        "settings": {**{key: used[key] for key in RESULT_SETTINGS}, **settings},
    }


#: How ``--help`` names the value of a number option.
_METAVARS = {"int": "N", "float": "X", "ints": "N", "floats": "X"}


class _Switch(argparse.Action):
    """``--name`` sets True, ``--no-name`` False (BooleanOptionalAction, same help on 3.10)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        both = [text for option in option_strings for text in (option, "--no-" + option[2:])]
        super().__init__(both, dest, nargs=0, **kwargs)

    def __call__(
        self, parser: Any, namespace: Any, values: Any, option_string: str | None = None
    ) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no-"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def flag(name: str) -> str:
    """The command-line flag of an option name: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + name.replace("_", "-")


def _value_parser(rule: Rule) -> Callable[[str], Any]:
    """Text to value for a number option; ``none`` (and the rule's none words) give None."""
    number = int if rule.kind in ("int", "ints") else float
    none_words = {"none", *rule.none_words} if rule.none is not None else set()

    def parse(text: str) -> Any:
        if text.lower() in none_words:
            return None
        try:
            return number(text)
        except ValueError:
            kind = "a whole number" if number is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None

    parse.__name__ = number.__name__  # argparse names the type in its messages
    return parse


def _help(rule: Rule, default: Any) -> str:
    if rule.kind == "bool":
        return f"{rule.help} (default {'on' if default else 'off'})"
    if default is None:
        return f"{rule.help} (default: {rule.none})" if rule.none else rule.help
    if isinstance(default, tuple):
        default = " ".join(str(value) for value in default)
    return f"{rule.help} (default {default})"


def add_config_arguments(
    parser: argparse.ArgumentParser | Any,
    cls: type[Settings],
    *,
    exclude: Collection[str] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """One option per setting of ``cls`` (see :func:`~napari_unet.settings.option_fields`).

    Parameters
    ----------
    parser : argparse.ArgumentParser or argument group
        Where the options go.
    cls : type
        A settings class of :mod:`napari_unet.config`.
    exclude : collection of str
        Option names this command does not offer (each command says why).
    defaults : dict, optional
        Command-line defaults that differ from the field's (None: left to the command,
        such as a model setting left to ``--preset``).
    """
    defaults = defaults or {}
    for name, (item, rule) in option_fields(cls).items():
        if name in exclude:
            continue
        default = defaults.get(name, None if item.default is MISSING else item.default)
        options: dict[str, Any] = {"dest": name, "default": default, "help": _help(rule, default)}
        if rule.kind == "bool":
            options["action"] = _Switch
        elif rule.kind in ("choice", "str"):
            options["choices"] = rule.choices or None
        elif rule.kind in ("ints", "floats"):
            options.update(nargs="+", type=_value_parser(rule), metavar=_METAVARS[rule.kind])
        elif rule.kind in ("int", "float"):
            options.update(type=_value_parser(rule), metavar=_METAVARS[rule.kind])
        elif rule.kind == "device":
            options["metavar"] = "DEVICE"
        parser.add_argument(flag(name), *rule.aliases, **options)


def config_from_args(
    args: argparse.Namespace, cls: type[S], *, exclude: Collection[str] = (), **settings: Any
) -> S:
    """The validated ``cls`` of :func:`add_config_arguments`'s options, plus ``settings``."""
    values = {name: getattr(args, name) for name in option_fields(cls) if name not in exclude}
    return cls.from_options(**{**values, **settings})


def add_prediction_arguments(
    parser: argparse.ArgumentParser | Any, exclude: Collection[str] = ()
) -> None:
    """Every :class:`~napari_unet.config.PredictConfig` setting but ``exclude``."""
    # --overlap left out: 64, or a quarter of a smaller --tile-size (see prediction_config)
    add_config_arguments(parser, PredictConfig, exclude=exclude, defaults={"overlap": None})


def prediction_config(
    args: argparse.Namespace, exclude: Collection[str] = (), **settings: Any
) -> PredictConfig:
    """The validated :class:`PredictConfig` of the options above, plus ``settings``."""
    config_args = argparse.Namespace(**vars(args))
    if config_args.overlap is None:
        config_args.overlap = default_overlap(config_args.tile_size)
    return config_from_args(config_args, PredictConfig, exclude=exclude, **settings)


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
