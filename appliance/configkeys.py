"""What a configuration key is, and the value parsers keys are built from.

Both schemas use them: the node's global keys (``appliance/config.py``) and the per-model keys
``models.<name>.*`` (``appliance/modelsettings.py``). A parser takes what YAML or a ``--set``
override gave (a string, a number, a bool, a list) and returns the typed value, or raises
:class:`Invalid` with a message that is shown after the key's path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping


class Invalid(ValueError):
    """A value that does not parse; the message is shown after the key path."""


@dataclass(frozen=True)
class Key:
    """One configuration key: its dotted name, where it lands, its parser, default and doc."""

    name: str
    section: str            # attribute of the typed holder ("" for a top-level field)
    attr: str
    parse: Callable[[Any], Any]
    default: Any
    doc: str
    secret: bool = False


def assemble(schema: Iterable[Key], parsed: Mapping[str, Any], sections: Mapping[str, type],
             cls: type, extra: Mapping[str, Mapping[str, Any]] | None = None) -> Any:
    """``cls`` built from parsed values: each key lands in its section's dataclass or on top.

    ``extra`` adds fields no key holds, by section (``""`` for the top).
    """
    fields: dict[str, dict[str, Any]] = {name: {} for name in ("", *sections)}
    for section, values in (extra or {}).items():
        fields[section].update(values)
    for key in schema:
        fields[key.section][key.attr] = parsed[key.name]
    return cls(**fields[""], **{name: section(**fields[name]) for name, section in sections.items()})


def integer(value: Any) -> int:
    if isinstance(value, bool):
        raise Invalid(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    raise Invalid(f"expected an integer, got {value!r}")


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise Invalid(f"expected true or false, got {value!r}")


def string(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise Invalid(f"expected a string, got {type(value).__name__}")
    return str(value)


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = string(value).strip().lower()
        if text not in choices:
            raise Invalid(f"unknown value {value!r}; valid: {', '.join(choices)}")
        return text
    return parse


def non_negative(value: Any) -> int:
    number = integer(value)
    if number < 0:
        raise Invalid(f"must be 0 or more, got {number}")
    return number


def positive(value: Any) -> int:
    number = integer(value)
    if number < 1:
        raise Invalid(f"must be 1 or more, got {number}")
    return number


def number_between(low: float, high: float) -> Callable[[Any], float]:
    """A parser of a number (fractions allowed) in ``(low, high]``."""
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise Invalid(f"expected a number, got {value!r}")
        try:
            number = float(str(value).strip())
        except ValueError:
            raise Invalid(f"expected a number, got {value!r}") from None
        if not low < number <= high:
            raise Invalid(f"must be more than {low:g} and at most {high:g}, got {number:g}")
        return number
    return parse


def items(value: Any) -> list[str]:
    """A YAML list or a comma-separated string, as stripped strings (empty items kept)."""
    listed = value if isinstance(value, list) else string(value).split(",")
    return [string(item).strip() for item in listed]


def value_of(key: Key, holder: Any) -> Any:
    """``key``'s typed value in ``holder`` as a config file spells it (tuples as comma lists)."""
    value = getattr(getattr(holder, key.section) if key.section else holder, key.attr)
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    return value if isinstance(value, (bool, int, str)) else str(value)
