"""Every exception napari-unet raises for a user to act on, in one place.

Each message says what is wrong and what to change. All of them derive from
:class:`NapariUnetError`, so a script can catch the project's errors apart from bugs; the
built-in base next to it (``ValueError``, ``RuntimeError``) keeps ``except ValueError``
working for callers that used it before.
"""

from __future__ import annotations


class NapariUnetError(Exception):
    """Base class of every error napari-unet raises on purpose."""


class ConfigError(NapariUnetError, ValueError):
    """A setting is out of range or inconsistent; the message says what to change."""


class DataError(NapariUnetError, ValueError):
    """Input data is missing, unreadable or inconsistent; the message says what to fix."""


class ModelFileError(NapariUnetError, ValueError):
    """A model file is missing, corrupt, hostile or of another format."""


class TrainingDivergedError(ConfigError):
    """The loss became NaN or infinite; the message says what to change."""


class SaveError(NapariUnetError, OSError):
    """A layer cannot be saved in the chosen format; the message says what to choose.

    An ``OSError``, not a ``ValueError``: napari reads a writer's ``ValueError`` as
    "this writer does not apply" and shows only its own generic warning.
    """


class WorkerProcessError(NapariUnetError, RuntimeError):
    """The child process could not start, or ended without a result (killed, out of memory)."""


def short_reason(error: BaseException, limit: int = 160) -> str:
    """The first line of ``error``'s message (else its type name), at most ``limit`` characters.

    For quoting a library's error inside one of ours: torch, zipfile and YAML messages
    run to many lines, and torch's advise loading with ``weights_only=False``, the
    opposite of what to do with a hostile file, so lines naming it are dropped.
    """
    lines = [
        line.strip()
        for line in str(error).splitlines()
        if line.strip() and "weights_only" not in line and "WeightsUnpickler" not in line
    ]
    reason = lines[0] if lines else type(error).__name__
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"
