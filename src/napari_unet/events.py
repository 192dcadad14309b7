"""The contract of the ``*_events`` generator functions and their plain forms.

Every long-running piece of work (training, prediction, evaluation, tuning, export, tiled
prediction) is a generator function that yields progress events and returns its result;
widgets, the CLI and the child process drive it. Scripts call its plain form, made here by
:func:`plain_form` from the one declaration of the generator function.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Generator
from typing import Any, ParamSpec, TypeVar, get_args, get_type_hints

T = TypeVar("T")
P = ParamSpec("P")


def run_to_end(events: Generator[Any, None, T]) -> T:
    """Drive a generator of progress events to its end and return its value."""
    while True:
        try:
            next(events)
        except StopIteration as finished:
            return finished.value


#: Docstring sections of a ``*_events`` function that its plain form shares.
_SHARED_SECTIONS = ("Parameters", "Raises", "Examples")


def _shared_sections(doc: str) -> list[str]:
    """The sections of the numpydoc docstring ``doc`` named in :data:`_SHARED_SECTIONS`."""
    sections = re.split(r"\n(?=\w[\w ]*\n-{3,}\n)", inspect.cleandoc(doc))[1:]
    return [part.strip() for part in sections if part.split("\n")[0] in _SHARED_SECTIONS]


def plain_form(
    events_function: Callable[P, Generator[Any, None, T]], name: str, summary: str
) -> Callable[P, T]:
    """The plain function ``name`` that runs the generator function ``events_function``.

    The plain form (``train``, ``predict``, ``evaluate``, ...) takes the same arguments,
    so one declaration serves both: its signature (what ``help()`` and IDEs show) is the
    generator's, returning the generator's value; its docstring is ``summary``, a line
    naming the generator, and the generator's Parameters, Raises and Examples (which
    show the plain form: it is what scripts call).
    """

    @functools.wraps(events_function)
    def plain(*args: P.args, **kwargs: P.kwargs) -> T:
        return run_to_end(events_function(*args, **kwargs))

    returns = get_args(get_type_hints(events_function)["return"])[-1]
    plain.__signature__ = inspect.signature(events_function).replace(  # type: ignore[attr-defined]
        return_annotation=returns
    )
    plain.__name__ = plain.__qualname__ = name
    runs = f"Runs :func:`{events_function.__name__}` to its end and returns its value."
    plain.__doc__ = "\n\n".join([summary, runs, *_shared_sections(events_function.__doc__ or "")])
    return plain
