"""What makes a recording answer a request: a canonical key per request, and why a miss missed.

Pure functions over request-like objects (``method``, ``parsed_uri``, ``port``, ``body``),
so the cassette index (``vcr_bridge.py``) and miss messages (``layer.py``) agree.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable
from typing import Any

from ..dialects import DIALECTS

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
"""``json.dumps`` with these options builds an encoder per call; a key needs one per process."""


def canonical_body(body: Any, ignore: frozenset[str] = frozenset()) -> str:
    """JSON compared canonically (key order ignored, ignored paths dropped); other bodies as text.

    ``ignore`` holds dotted paths: ``user``, ``stream_options.include_usage``, ``messages[*].name``
    (``[*]``: every item of a list).
    """
    if body in (None, b"", ""):
        return ""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw
    for path in ignore:
        _drop(obj, path.split("."))
    return _CANONICAL.encode(obj)


def _drop(obj: Any, parts: list[str]) -> None:
    """Remove the field at ``parts`` (one dotted path's names) from parsed JSON, in place."""
    name, every = (parts[0][:-3], True) if parts[0].endswith("[*]") else (parts[0], False)
    if not isinstance(obj, dict) or name not in obj:
        return
    if len(parts) == 1:
        del obj[name]
        return
    for item in obj[name] if every and isinstance(obj[name], list) else [] if every else [obj[name]]:
        _drop(item, parts[1:])


def route_of(path: str) -> str:
    """The API route as the dialects see it, so a renamed base URL still matches."""
    for dialect in DIALECTS:
        route = dialect.route_of(path)
        if route != path:
            return route
    return path


_PARTS: dict[str, Callable[[Any, frozenset[str]], str]] = {
    "method": lambda request, ignore: request.method.upper(),
    "scheme": lambda request, ignore: request.parsed_uri.scheme,
    "host": lambda request, ignore: request.parsed_uri.hostname or "",
    "port": lambda request, ignore: str(request.port),
    "path": lambda request, ignore: route_of(request.parsed_uri.path),
    "query": lambda request, ignore: "&".join(sorted(query.split("&"))) if (query := request.parsed_uri.query) else "",
    "body": lambda request, ignore: canonical_body(request.body, ignore),
}
"""How each matched part of a request reads: built once, not per look-up."""


def request_key(request: Any, match_on: tuple[str, ...], ignore: frozenset[str]) -> tuple[str, ...]:
    """The index key: one string per matched part, so equal requests share a bucket."""
    return tuple([_PARTS[name](request, ignore) for name in match_on])


def closest(
    sent: tuple[str, ...], recorded: Iterable[tuple[Any, tuple[str, ...]]], match_on: tuple[str, ...]
) -> tuple[Any, list[str]] | None:
    """The recorded request most like the one sent (by key), with a readable diff of what differs."""
    sent_parts = dict(zip(match_on, sent, strict=True))
    best: tuple[float, Any, list[str]] | None = None
    for stored, key in recorded:
        parts = dict(zip(match_on, key, strict=True))
        differs = [name for name in match_on if parts[name] != sent_parts[name]]
        body_ratio = difflib.SequenceMatcher(None, parts.get("body", ""), sent_parts.get("body", "")).ratio()
        score = -len(differs) + body_ratio
        if best is None or score > best[0]:
            best = (score, stored, _describe_differences(differs, parts, sent_parts))
    return None if best is None else (best[1], best[2])


def _describe_differences(differs: list[str], recorded: dict[str, str], sent: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for name in differs:
        if name != "body":
            lines.append(f"{name}: recorded {recorded[name]!r}, sent {sent[name]!r}")
            continue
        lines.append("body (recorded -> sent):")
        lines.extend(
            "  " + line
            for line in difflib.unified_diff(
                _pretty(recorded[name]), _pretty(sent[name]), "recorded", "sent", n=1, lineterm=""
            )
        )
    return lines or ["nothing in the matched parts: every recording of it was already replayed in this test"]


def _pretty(canonical: str) -> list[str]:
    try:
        return json.dumps(json.loads(canonical), indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    except ValueError:
        return canonical.splitlines()
