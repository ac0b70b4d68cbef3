"""What a cassette says about its recordings: when each was recorded, of which model, through
which endpoint, and (in a header) with which plugin, SDK and dialect. Never a key or a query.

In the file, each interaction carries ``recorded: {at, model, endpoint}`` next to its request
and response, and the header is the cassette's ``metadata`` (vcrpy's own top-level key, which
vcrpy and pytest-recording read and keep): ``recorded_with``, ``models``, ``endpoints``. vcrpy
reads only an interaction's ``request`` and ``response``, so both tools replay these files, and
a cassette without any of it stays valid. In memory the stamp rides in the response dict
(``RECORDED``), the one place vcrpy keeps per interaction.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

RECORDED = "recorded"
"""The per-interaction stamp: in the file beside ``request``/``response``, in memory inside the response."""
HEADER = "recorded_with"
_FILE_FIELDS = ("at", "model", "endpoint")
_HEADER_KEYS = (HEADER, "models", "endpoints")


@functools.cache
def _version(distribution: str) -> str | None:
    """Looked up once per process: importlib.metadata scans every installed distribution (~1-2 ms)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def stamp(*, model: str | None, endpoint: str | None, dialect: str | None, sdk: str | None, now: float) -> dict:
    """The stamp of an answer recorded now (``now``: ``time.time()``); ``dialect`` and ``sdk`` mark it
    fresh, so the header is rewritten only when something was recorded anew."""
    at = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    found = {"at": at, "model": model, "endpoint": endpoint, "dialect": dialect}
    if sdk:
        found["sdk"] = f"{sdk} {_version(sdk) or '?'}"
    return {k: v for k, v in found.items() if v}


def recorded_at(response: dict[str, Any]) -> float | None:
    """When an interaction was recorded (``time.time()``), or None for a cassette without stamps."""
    at = (response.get(RECORDED) or {}).get("at") if isinstance(response.get(RECORDED), dict) else None
    try:
        return datetime.strptime(str(at), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def restamped(response: dict[str, Any], now: float) -> dict[str, Any]:
    """The response with its stamp's date moved to ``now`` (an expired answer found unchanged)."""
    fresh = stamp(model=None, endpoint=None, dialect=None, sdk=None, now=now)
    return {**response, RECORDED: {**(response.get(RECORDED) or {}), "at": fresh["at"]}}


def to_file(data: dict[str, Any]) -> dict[str, Any]:
    """vcrpy's cassette dict laid out as written: version, the header, then each interaction's stamp,
    request and response, in that order every time (a stable file diffs only where it changed)."""
    interactions, fresh, stamps = [], None, []
    for interaction in data["interactions"]:
        response = dict(interaction["response"])
        found = response.pop(RECORDED, None)
        entry: dict[str, Any] = {}
        if isinstance(found, dict):
            stamps.append(found)
            fresh = found if "dialect" in found else fresh
            entry[RECORDED] = {k: found[k] for k in _FILE_FIELDS if found.get(k)}
        interactions.append({**entry, "request": interaction["request"], "response": response})
    metadata = dict(data.get("metadata") or {})
    if fresh is not None:
        plugin = _version("pytest-llm-guard")
        metadata[HEADER] = {
            "plugin": f"pytest-llm-guard {plugin or '?'}",
            **{k: fresh[k] for k in ("sdk", "dialect") if fresh.get(k)},
        }
    for name, field in (("models", "model"), ("endpoints", "endpoint")):
        values = sorted({s[field] for s in stamps if s.get(field)})
        metadata.pop(name, None)
        if values:
            metadata[name] = values
    ordered = {k: metadata[k] for k in _HEADER_KEYS if k in metadata}
    ordered |= {k: v for k, v in metadata.items() if k not in _HEADER_KEYS}
    return {
        "version": data.get("version", 1),
        **({"metadata": ordered} if ordered else {}),
        "interactions": interactions,
    }


def from_file(data: Any) -> Any:
    """The file's stamps moved into the responses, where the cassette keeps them in memory."""
    if not isinstance(data, dict) or not isinstance(data.get("interactions"), list):
        return data
    for interaction in data["interactions"]:
        if isinstance(interaction, dict) and isinstance(interaction.get(RECORDED), dict):
            if isinstance(interaction.get("response"), dict):
                interaction["response"][RECORDED] = interaction.pop(RECORDED)
    return data
