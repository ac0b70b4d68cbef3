"""The ``llm_*`` markers of one test, applied over the session's settings: its frozen ``Settings``.

Loaded when collection finds a guarded test (its markers or fixtures): a suite that guards
none never compiles it. Precedence, farthest first: module ``pytestmark``, class, function;
a wrong key or value names the marker and the test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from .config import BREAKER_MARKER, BUDGET_MARKER, CASSETTE_MARKER, MARKER_KEYS, OPTIONS, Settings, suggest
from .errors import LLMGuardConfigError


def apply_markers(
    settings: Settings,
    markers: Iterable[Any],
    where: str,
    *,
    endpoint_names: Sequence[str] = (),
    endpoints_source: str = "",
) -> Settings:
    """One test's settings: every ``llm_*`` marker, given closest first (as ``iter_markers`` yields them).

    Farther markers (module, then class) apply first, so the closest wins per key.
    Wrong keys or values raise :class:`LLMGuardConfigError` naming the marker and the test.
    """
    for marker in reversed(list(markers)):
        source = f"@pytest.mark.{marker.name} on {where}"
        if marker.name == BUDGET_MARKER:
            if marker.args:
                raise LLMGuardConfigError(
                    f"pytest-llm-guard: {source} takes keyword arguments only "
                    f"({', '.join(MARKER_KEYS)}), got positional {marker.args!r}"
                )
            settings = settings.merged(marker.kwargs, source, allowed=MARKER_KEYS)
        elif marker.name == BREAKER_MARKER:
            settings = _breaker_marker(settings, marker, source, endpoint_names, endpoints_source)
        elif marker.name == CASSETTE_MARKER:
            settings = _cassette_marker(settings, marker, source)
    return settings


def _breaker_marker(
    settings: Settings, marker: Any, source: str, endpoint_names: Sequence[str], endpoints_source: str
) -> Settings:
    _refuse_unknown_keys(marker, source, ("endpoints", "on_open"))
    if marker.args:
        raise LLMGuardConfigError(
            f"pytest-llm-guard: {source} takes endpoints=[names] and on_open='fail'|'skip'|'fallback' only, "
            f"got args={marker.args!r} kwargs={marker.kwargs!r}"
        )
    if "on_open" in marker.kwargs:
        settings = settings.merged({"on_open": marker.kwargs["on_open"]}, source)
    if "endpoints" not in marker.kwargs:
        return settings
    chosen = marker.kwargs["endpoints"]
    if isinstance(chosen, str) or not isinstance(chosen, (list, tuple)) or not chosen:
        raise LLMGuardConfigError(f"pytest-llm-guard: {source}: endpoints must be a non-empty list of names")
    unknown_names = [n for n in chosen if n not in endpoint_names]
    if unknown_names:
        raise LLMGuardConfigError(
            f"pytest-llm-guard: {source} names unknown endpoints {', '.join(map(repr, unknown_names))}; "
            f"known endpoints (from {endpoints_source}): {', '.join(endpoint_names)}"
        )
    return dataclasses.replace(settings, endpoints=tuple(chosen), sources={**settings.sources, "endpoints": source})


def _refuse_unknown_keys(marker: Any, source: str, allowed: Sequence[str]) -> None:
    """A mistyped keyword of a marker that is not a budget: named, with the key it is closest to."""
    for key in marker.kwargs:
        if key not in allowed:
            raise LLMGuardConfigError(f"pytest-llm-guard: unknown key {key!r} in {source}; {suggest(key, allowed)}")


CASSETTE_KEYS = ("on_unplayed", "cassette_max_age", "on_expiry", "match_ignore")
"""Options the ``llm_cassette`` marker sets for its test, besides its name and path."""


def _cassette_marker(settings: Settings, marker: Any, source: str) -> Settings:
    """The cassette's name or path, its replay's pace and how it is kept true: each set only when the marker
    gives it, so ``llm_cassette(speed=1)`` keeps the cassette a farther marker chose."""
    _refuse_unknown_keys(marker, source, ("name", "path", "speed", *CASSETTE_KEYS))
    args, kwargs = marker.args, dict(marker.kwargs)
    settings = settings.merged({k: kwargs.pop(k) for k in CASSETTE_KEYS if k in kwargs}, source, allowed=CASSETTE_KEYS)
    if "speed" in kwargs:
        settings = _replay_speed(settings, kwargs.pop("speed"), source)
        if not args and not kwargs:
            return settings
    path = kwargs.pop("path", None)
    name = kwargs.pop("name", args[0] if args else None)
    if kwargs or len(args) > 1 or not (name is None or name is False or isinstance(name, str)):
        raise LLMGuardConfigError(
            f"pytest-llm-guard: {source} takes a cassette name (str), False, or path=...; "
            f"got args={args!r} kwargs={marker.kwargs!r}"
        )
    if path is not None and not isinstance(path, (str, Path)):
        raise LLMGuardConfigError(f"pytest-llm-guard: {source}: path must be a str or Path, got {path!r}")
    return dataclasses.replace(
        settings,
        cassette=name is not False,
        cassette_name=name or None,
        cassette_path=path,
        sources={**settings.sources, "cassette": source},
    )


def _replay_speed(settings: Settings, speed: Any, source: str) -> Settings:
    try:
        parsed = OPTIONS["replay_speed"].parse(speed)
    except ValueError:
        raise LLMGuardConfigError(
            f"pytest-llm-guard: {source}: speed={speed!r} is not valid; speed must be a non-negative number "
            "(0: replay at once, 1: as recorded, 2: twice as fast)"
        ) from None
    sources = {**settings.sources, "replay_speed": source}
    return dataclasses.replace(settings, replay_speed=parsed, sources=sources)


class WrongMarkers:
    """The plugin that errors each test whose ``llm_*`` markers are wrong, at its setup, with what is wrong;
    the others run."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.nodeid in self.errors:
            pytest.fail(self.errors[item.nodeid], pytrace=False)
