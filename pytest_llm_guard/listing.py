"""``pytest --llm-cassettes``: every cassette under the root directory, the tests that use it, and orphans.

The tests are collected (markers, shared names and ``path=`` resolved as a run would
resolve them) and none runs. A cassette no collected test uses is an orphan, usually
left by a deleted or renamed test: the listing prints the command that deletes the
orphans and never deletes anything itself. Ages come from the dates each interaction
carries (``cassettes/metadata.py``); a file's time says nothing after a git checkout.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .audit import cassettes
from .keys import ITEM_SETTINGS

if TYPE_CHECKING:
    import pytest

    from .config import Settings

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True)
class Entry:
    """One cassette file: who uses it and what it holds."""

    path: Path
    tests: tuple[str, ...]
    size: int
    interactions: int | None
    """None: the file cannot be read as a cassette."""
    models: tuple[str, ...]
    oldest: float | None
    """When its oldest answer was recorded (``time.time()``), for files that say."""

    @property
    def orphan(self) -> bool:
        return not self.tests


def _models(data: Mapping[str, Any]) -> tuple[str, ...]:
    header = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    if isinstance(header.get("models"), list):
        return tuple(str(m) for m in header["models"])
    found = set()
    for interaction in data.get("interactions") or ():
        try:
            model = json.loads(interaction["request"]["body"]).get("model")
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if isinstance(model, str):
            found.add(model)
    return tuple(sorted(found))


def _oldest(data: Mapping[str, Any]) -> float | None:
    dates = []
    for interaction in data.get("interactions") or ():
        at = interaction.get("recorded", {}).get("at") if isinstance(interaction, dict) else None
        try:
            dates.append(datetime.strptime(str(at), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
        except ValueError:
            continue
    return min(dates) if dates else None


def entry(path: Path, tests: Iterable[str]) -> Entry:
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_Loader)
    except (yaml.YAMLError, ValueError):
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("interactions"), list):
        return Entry(path, tuple(sorted(tests)), len(text.encode()), None, (), None)
    held = len(data["interactions"])
    return Entry(path, tuple(sorted(tests)), len(text.encode()), held, _models(data), _oldest(data))


def listing(root: Path, used: Mapping[Path, Iterable[str]]) -> list[Entry]:
    """Every cassette under ``root`` (as ``--llm-audit`` finds them), with the tests that use it
    (``used``: each collected test's cassette path, resolved)."""
    by_path = {path.resolve(): tests for path, tests in used.items()}
    return [entry(path, by_path.get(path.resolve(), ())) for path in cassettes(root)]


def lines(entries: list[Entry], root: Path, now: float, *, strict: bool) -> list[str]:
    """The listing as the terminal shows it, orphans marked, and the command that deletes them."""
    from .report import days, plural

    shown = [(str(e.path.relative_to(root)) if e.path.is_relative_to(root) else str(e.path), e) for e in entries]
    out = []
    for name, e in shown:
        held = plural(e.interactions, "interaction") if e.interactions is not None else "not readable as a cassette"
        age = f"{days(now - e.oldest)} old" if e.oldest is not None else "age unknown (no recorded dates)"
        models = ", ".join(e.models) or "no model"
        used = ", ".join(e.tests) if e.tests else "ORPHAN: no collected test uses it"
        out.append(f"{name}: {_size(e.size)}, {held}, {models}, {age}; {used}")
    orphans = [name for name, e in shown if e.orphan]
    out.append(f"{plural(len(entries), 'cassette')} under {root}, {plural(len(orphans), 'orphan')}")
    if orphans:
        out.append(
            "Orphans are judged against the tests collected now (run it on the whole suite). To delete them: "
            + shlex.join(["rm", *orphans])
            + ("" if strict else " (--llm-strict makes orphans exit 1, for CI)")
        )
    return out


def _size(size: int) -> str:
    return f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB"


def used_by(items: list[pytest.Item], base: Settings) -> dict[Any, list[str]]:
    """Each cassette a collected test would use, with its tests (pytest-recording's ``vcr`` tests too)."""
    from .cassettes import path_for

    used: dict[Any, list[str]] = {}
    for item in items:
        settings = item.stash.get(ITEM_SETTINGS, None)
        if settings is None and item.get_closest_marker("vcr") is not None:
            settings = base
        if settings is not None and settings.cassette:
            used.setdefault(path_for(item.path, item.name, settings), []).append(item.nodeid)
    return used
