"""Parsers of option values: each accepts what pyproject.toml, ini files, the environment,
the command line and markers give it (strings included), and says what it accepts in
``description``, which configuration errors quote."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def number(kind: type, minimum: float, *, positive: bool) -> Callable[[Any], Any]:
    """A parser for a non-negative (or positive) int/float that also reads strings."""
    what = ("a positive " if positive else "a non-negative ") + ("whole number" if kind is int else "number")

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(what)
        if isinstance(value, str):
            value = value.strip()
            try:
                value = int(value) if kind is int else float(value)
            except ValueError:
                raise ValueError(what) from None
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ValueError(what)
        if math.isnan(value) or math.isinf(value) or value < minimum or (positive and value == 0):
            raise ValueError(what)
        return kind(value)

    parse.description = what  # type: ignore[attr-defined]
    return parse


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Allow "off"/"none" (or ``None`` in a marker) to switch a limit off."""

    def parse_optional(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off", "")):
            return None
        return parse(value)

    parse_optional.description = f"{parse.description}, or none/off"  # type: ignore[attr-defined]
    return parse_optional


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


boolean.description = "true or false"  # type: ignore[attr-defined]


def text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a string")
    return value.strip() or None


text.description = "a string"  # type: ignore[attr-defined]


def choice(*allowed: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or value.strip().lower() not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
        return value.strip().lower()

    parse.description = f"one of {', '.join(allowed)}"  # type: ignore[attr-defined]
    return parse


def names(value: Any) -> tuple[str, ...]:
    """A list of names or patterns: a TOML array, or a comma-separated string elsewhere."""
    if isinstance(value, str):
        value = [part for part in value.split(",")]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of strings")
    return tuple(v.strip() for v in value if v.strip())


names.description = "a list of strings (comma-separated outside pyproject.toml)"  # type: ignore[attr-defined]


def patterns(value: Any) -> tuple[str, ...]:
    """Regular expressions, each compiled here so a typo is a usage error, not a crash mid-test."""
    import re

    found = names(value)
    for pattern in found:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
    return found


patterns.description = "a list of regular expressions (comma-separated outside pyproject.toml)"  # type: ignore[attr-defined]


def subset(*allowed: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> tuple[str, ...]:
        found = names(value)
        if not found or not set(found) <= set(allowed):
            raise ValueError("subset")
        return found

    parse.description = f"a non-empty list drawn from {', '.join(allowed)}"  # type: ignore[attr-defined]
    return parse


def fraction(value: Any) -> float:
    parsed = number(float, 0, positive=True)(value)
    if parsed > 1:
        raise ValueError("a fraction")
    return parsed


fraction.description = "a number above 0 and at most 1"  # type: ignore[attr-defined]


seconds = optional(number(float, 0, positive=True))
count = optional(number(int, 1, positive=True))


_AGE_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def _age(value: Any) -> float:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"45s"`` or a number of days, as seconds."""
    if isinstance(value, str) and value.strip()[-1:].lower() in _AGE_UNITS:
        amount, unit = value.strip()[:-1], value.strip()[-1].lower()
        return number(float, 0, positive=True)(amount) * _AGE_UNITS[unit]
    return number(float, 0, positive=True)(value) * _AGE_UNITS["d"]


_age.description = "an age such as 90d, 12h or 30m (a bare number is days)"  # type: ignore[attr-defined]
age = optional(_age)


def dotted_paths(value: Any) -> tuple[str, ...]:
    """JSON paths such as ``metadata``, ``stream_options.include_usage`` or ``messages[*].name``."""
    import re

    found = names(value)
    for path in found:
        if not re.fullmatch(r"[^.\[\]]+(\[\*\])?(\.[^.\[\]]+(\[\*\])?)*", path):
            raise ValueError(f"{path!r} is not a dotted path (name.name, name[*].name)")
    return found


dotted_paths.description = "a list of dotted JSON paths such as metadata, messages[*].name"  # type: ignore[attr-defined]
