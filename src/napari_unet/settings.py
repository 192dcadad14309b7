"""The validated base of every settings class of :mod:`napari_unet.config`.

A setting is a dataclass field made with :func:`setting`, whose :class:`Rule` (in the
field's metadata) says what values it takes: a bounded whole number or number, one of
some choices, a switch, a device name, a nested settings class, or a tuple of numbers.
:class:`Settings` checks every rule when an object is built, with one message per kind
of rule that says what to change (``epochs must be a whole number >= 1, got 0.``), and
gives every class the same ``to_dict``/``from_dict``, ``replace`` (unknown names
refused), ``with_overrides`` (the rule of the plain functions' ``**overrides``) and
``from_options`` (flat option names: the command line and the widgets).
:func:`option_fields` lists a class's settings by option name; :mod:`napari_unet.cli`
builds its options from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from napari_unet.errors import ConfigError

S = TypeVar("S", bound="Settings")

Kind = Literal["int", "float", "bool", "choice", "str", "device", "config", "ints", "floats"]


@dataclass(frozen=True)
class Rule:
    """What one setting accepts, and how the command line offers it.

    Parameters
    ----------
    help : str
        One line for ``--help``.
    kind : str
        ``int``, ``float``, ``bool``, ``choice`` (one of ``choices``), ``str``, ``device``,
        ``config`` (a nested settings class ``config``, built from a mapping too), or
        ``ints``/``floats`` (a non-empty tuple of such numbers).
    low, high : float, optional
        Bounds of a number (or of every number of a tuple); inclusive unless ``open_low``
        / ``open_high``.
    choices : tuple
        The values of a ``choice``; for a ``str``, those the command line offers.
    none : str, optional
        What None means, if None is allowed (shown in messages and ``--help``).
    hint : str
        Appended to the error message: a value that works.
    aliases : tuple of str
        Older command-line spellings that keep working (``--lr``).
    none_words : tuple of str
        Command-line words meaning None besides ``none`` (``0`` for "never").
    config : type, optional
        The nested settings class of a ``config``.
    prefix : str
        Prefix of a nested class's option names (``normalization_`` + ``mode``).
    """

    help: str
    kind: Kind
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] = ()
    none: str | None = None
    hint: str = ""
    aliases: tuple[str, ...] = ()
    none_words: tuple[str, ...] = ()
    config: type[Settings] | None = None
    prefix: str = ""


def setting(default: Any = MISSING, *, factory: Any = MISSING, **rule: Any) -> Any:
    """A dataclass field with its :class:`Rule`."""
    metadata = {"rule": Rule(**rule)}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def rule_of(item: Field) -> Rule:
    """The :class:`Rule` of a settings field."""
    return item.metadata["rule"]


def check(condition: bool, message: str) -> None:
    """Raise ConfigError(``message``) unless ``condition``."""
    if not condition:
        raise ConfigError(message)


def _number(value: float | None) -> str:
    return f"{value:g}"


def wanted(rule: Rule, plural: bool = False) -> str:
    """What a number rule accepts, in words: ``a whole number from 1 to 64``."""
    integer = rule.kind in ("int", "ints")
    words = ["whole numbers" if plural else "a whole number"] if integer else []
    words = words or ["numbers" if plural else "a number"]
    low, high = rule.low, rule.high
    if low is not None and high is not None:
        if rule.open_low and rule.open_high:
            words.append(f"strictly between {_number(low)} and {_number(high)}")
        elif rule.open_high:
            words.append(f"from {_number(low)} to under {_number(high)}")
        elif rule.open_low:
            words.append(f"over {_number(low)} up to {_number(high)}")
        else:
            words.append(f"from {_number(low)} to {_number(high)}")
    elif low is not None:
        words.append(f"{'>' if rule.open_low else '>='} {_number(low)}")
    elif high is not None:
        words.append(f"{'<' if rule.open_high else '<='} {_number(high)}")
    text = " ".join(words)
    return f"{text}, or None ({rule.none})" if rule.none is not None else text


def _in_bounds(value: Any, rule: Rule) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if rule.kind in ("int", "ints") and not isinstance(value, int):
        return False
    if rule.low is not None and not (value > rule.low if rule.open_low else value >= rule.low):
        return False
    return rule.high is None or (value < rule.high if rule.open_high else value <= rule.high)


def is_device_name(name: str) -> bool:
    """Whether ``name`` is ``auto`` or a device torch knows (available or not)."""
    if name == "auto":
        return True
    import torch  # here: building a config without a device name needs no torch

    try:
        torch.device(name)
    except RuntimeError:
        return False
    return True


def _checked(name: str, value: Any, rule: Rule) -> Any:
    """``value`` checked against ``rule`` (mappings and lists converted); ConfigError if not."""
    if value is None and rule.none is not None:
        return None
    if rule.kind == "config":
        if isinstance(value, Mapping):
            return rule.config.from_dict(value)
        check(
            isinstance(value, rule.config),
            f"{name} must be a {rule.config.__name__} or a mapping, got {type(value).__name__}.",
        )
        return value
    if rule.kind in ("ints", "floats"):
        return _checked_values(name, value, rule)
    hint = f"; {rule.hint}" if rule.hint else ""
    if rule.kind == "choice":
        choices = ", ".join(repr(choice) for choice in rule.choices)
        check(value in rule.choices, f"{name} {value!r} is unknown; use one of {choices}{hint}.")
    elif rule.kind == "bool":
        check(
            isinstance(value, bool) or type(value).__name__ == "bool_",
            f"{name} must be True or False, got {value!r}.",
        )
    elif rule.kind == "str":
        check(isinstance(value, str), f"{name} must be a string, got {value!r}.")
    elif rule.kind == "device":
        check(
            isinstance(value, str) and is_device_name(value),
            f"{name} {value!r} is not a device name; use auto, cpu, cuda, cuda:N or mps.",
        )
    else:
        check(_in_bounds(value, rule), f"{name} must be {wanted(rule)}, got {value!r}{hint}.")
    return value


def _checked_values(name: str, value: Any, rule: Rule) -> tuple[Any, ...]:
    """A non-empty tuple of numbers, each within the rule's bounds."""
    check(
        not isinstance(value, (str, bytes)) and hasattr(value, "__iter__"),
        f"{name} must be a list of values, got {value!r}.",
    )
    values = tuple(value)
    check(bool(values), f"{name} is empty; give at least one value.")
    bad = [v for v in values if not _in_bounds(v, rule)]
    check(not bad, f"{name} must be {wanted(rule, plural=True)}; {bad} are not.")
    return values


def option_fields(cls: type[Settings]) -> dict[str, tuple[Field, Rule]]:
    """Every setting of ``cls`` by its option name, nested settings included.

    The option name is the field name; a nested class's settings carry its ``prefix``
    (``TrainConfig`` lists ``epochs``, the model's ``depth`` and ``normalization_mode``).
    The command line offers each as ``--option-name``.
    """
    options: dict[str, tuple[Field, Rule]] = {}
    for item in dataclasses.fields(cls):
        rule = rule_of(item)
        if rule.kind == "config":
            for name, inner in option_fields(rule.config).items():
                options[rule.prefix + name] = inner
        else:
            options[item.name] = (item, rule)
    return options


class Settings:
    """Base of every settings class: checks each field's :class:`Rule` when built.

    Subclasses are frozen dataclasses whose fields are made with :func:`setting`; they
    add checks across fields in :meth:`_check_together`.
    """

    #: How messages name this kind of settings (``Unknown model setting(s)``).
    WHAT: ClassVar[str] = "settings"
    #: Prefix of the field names in messages (``normalization mode``).
    LABEL: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            checked = _checked(self.LABEL + item.name, value, rule_of(item))
            if checked is not value:
                object.__setattr__(self, item.name, checked)
        self._check_together()

    def _check_together(self) -> None:
        """Checks across settings, after each one passed its own."""

    @classmethod
    def _refuse_unknown(cls, names: Any, known: Any) -> None:
        unknown = sorted(set(names) - set(known))
        check(
            not unknown,
            f"Unknown {cls.WHAT} setting(s) {unknown}; valid settings are {sorted(known)}.",
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary for JSON / model files (nested settings as dictionaries)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        """Inverse of :meth:`to_dict`; missing keys take their default, unknown ones are refused."""
        check(
            isinstance(data, Mapping), f"{cls.WHAT} must be a mapping, got {type(data).__name__}."
        )
        cls._refuse_unknown(data, [item.name for item in dataclasses.fields(cls)])
        return cls(**dict(data))

    def replace(self: S, **changes: Any) -> S:
        """A copy with ``changes`` applied and checked; unknown names are a ConfigError."""
        self._refuse_unknown(changes, [item.name for item in dataclasses.fields(self)])
        if not changes:
            return self  # frozen: nothing to copy
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def with_overrides(cls: type[S], config: S | None, overrides: dict[str, Any]) -> S:
        """``config`` (default: the defaults) with keyword ``overrides`` of its fields.

        The one rule of the plain functions' ``**overrides`` (``predict``, ``evaluate``,
        ``tune``, ``train``).
        """
        return (config if config is not None else cls()).replace(**overrides)

    @classmethod
    def from_options(cls: type[S], **options: Any) -> S:
        """Build from option names (see :func:`option_fields`): the command line and widgets."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            rule = rule_of(item)
            if rule.kind == "config":
                names = [rule.prefix + name for name in option_fields(rule.config)]
                inner = {
                    name[len(rule.prefix) :]: options.pop(name) for name in names if name in options
                }
                if inner:
                    values[item.name] = rule.config.from_options(**inner)
            elif item.name in options:
                values[item.name] = options.pop(item.name)
        cls._refuse_unknown(options, option_fields(cls))
        return cls(**values)
