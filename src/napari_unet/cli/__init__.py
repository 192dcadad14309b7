"""The ``napari-unet`` command line: one sub-command per module of this package.

Each sub-command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``. Errors that the user can fix (bad paths, shapes, settings,
model files) and operating-system errors (disk full, a folder removed mid-run) print one
``error:`` line and exit with code 2. A closed output pipe (``napari-unet predict ... |
head``) ends the run quietly with code 1, as Python's documentation on SIGPIPE advises.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from napari_unet import __version__
from napari_unet.errors import ConfigError, DataError, ModelFileError

#: Sub-commands, in the order ``--help`` lists them.
COMMANDS: tuple[str, ...] = ("train", "predict", "evaluate", "tune", "demo", "export")

#: Exceptions that mean "the input is wrong", not "the program is broken" (OS errors,
#: such as a missing file or a full disk, are reported by :func:`describe_os_error`).
USER_ERRORS = (DataError, ConfigError, ModelFileError)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="Train U-Net models on your microscopy images and segment with them.",
    )
    parser.add_argument("--version", action="version", version=f"napari-unet {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"napari_unet.cli.{name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def describe_os_error(error: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, what to do."""
    reason = error.strerror or str(error) or type(error).__name__
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{reason}{where}; free some space or choose another location, then run again."
    return f"{reason}{where}; check the location, then run again."


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not at exit
        return code
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away: send what is still buffered nowhere, so that Python's
        # final flush does not fail again, and stop without a message.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as error:
        print(f"error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
