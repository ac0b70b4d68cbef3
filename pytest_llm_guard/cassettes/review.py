"""What a re-record changed, cassette by cassette, in words a reviewer reads in one screen.

Pure functions over recorded interactions (a vcrpy request and its response dict), so the
save that keeps an unchanged answer as it was (``vcr_bridge.py``) and the summary that
reports what changed (``report.py``) judge alike. The dialects say what an answer's
volatile fields are (ids, timestamps) and where its assistant text is.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..dialects import DIALECTS, Dialect

Interaction = tuple[Any, dict[str, Any]]
Key = Callable[[Any], tuple[str, ...]]


def _dialect(uri: str) -> Dialect | None:
    path = urlsplit(uri).path
    return next((d for d in DIALECTS if d.serves(path)), None)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _header(headers: dict[str, Any], name: str) -> str:
    for key, values in (headers or {}).items():
        if key.lower() == name and values:
            return _text(values[0] if isinstance(values, list) else values)
    return ""


def _without(value: Any, fields: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without(v, fields) for k, v in value.items() if k not in fields}
    if isinstance(value, list):
        return [_without(v, fields) for v in value]
    return value


def _stable_body(body: str, fields: frozenset[str]) -> Any:
    """The body with its volatile fields dropped: JSON as data, a stream event by event, else the text."""
    try:
        return _without(json.loads(body), fields)
    except ValueError:
        pass
    events = []
    for line in body.splitlines():
        if line.startswith("data:"):
            try:
                events.append(_without(json.loads(line[5:]), fields))
            except ValueError:
                events.append(line)
        elif line.strip() and not line.startswith((":", "id:")):
            events.append(line)
    return events


def essence(request: Any, response: dict[str, Any], *, keep_usage: bool = True) -> Any:
    """What an answer says: status, content type and body without ids and timestamps (and,
    ``keep_usage=False``, without its token counts). Other headers (dates, request ids, rate-limit
    counts, processing times) differ on every call and never make an answer new."""
    dialect = _dialect(request.uri)
    fields = dialect.volatile_fields if dialect is not None else frozenset({"id", "created"})
    if not keep_usage:
        fields = fields | {"usage"}
    body = _text((response.get("body") or {}).get("string"))
    status = (response.get("status") or {}).get("code")
    return status, _header(response.get("headers") or {}, "content-type").split(";")[0], _stable_body(body, fields)


def same_answer(request: Any, old: dict[str, Any], new: dict[str, Any]) -> bool:
    if _text(old["body"]["string"]) == _text(new["body"]["string"]) and old["status"] == new["status"]:
        return True  # as loaded: no need to parse
    return essence(request, old) == essence(request, new)


def answer_text(request: Any, response: dict[str, Any]) -> str:
    dialect = _dialect(request.uri)
    body = _text((response.get("body") or {}).get("string"))
    return dialect.answer_text(body) if dialect is not None else ""


def word_diff(old: str, new: str, limit: int = 160) -> str:
    """The changed words only: ``[-old words-] {+new words+}``, git's --word-diff, cut at ``limit``."""
    a, b = old.split(), new.split()
    parts = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            same = a[i1:i2]
            parts.append(" ".join(same) if len(same) <= 6 else f"{' '.join(same[:3])} … {' '.join(same[-3:])}")
            continue
        if i2 > i1:
            parts.append(f"[-{' '.join(a[i1:i2])}-]")
        if j2 > j1:
            parts.append(f"{{+{' '.join(b[j1:j2])}+}}")
    text = " ".join(p for p in parts if p)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def gist(body: Any) -> tuple[str | None, str]:
    """A request body's model and last user message (``""`` when none), for messages that name a request."""
    text = _text(body)
    try:
        payload = json.loads(text) if text else None
    except ValueError:
        payload = None
    model = payload.get("model") if isinstance(payload, dict) else None
    return model, next((summary for d in DIALECTS if (summary := d.summary(payload))), "")


def describe_request(request: Any) -> str:
    """``model=gpt-4o-mini, last user message 'hi'``: how a message names a recorded request."""
    model, last = gist(request.body)
    return f"model={model or '?'}" + (f", last user message {last!r}" if last else "")


def ids(requests: Iterable[Any], key: Key) -> list[str]:
    """A stable id per recorded request: its match key and which occurrence of that key it is, so
    tests, xdist workers and the session's end name the same recording alike."""
    return ids_of_keys(key(request) for request in requests)


_DIGESTS: dict[tuple[str, ...], str] = {}
"""Each key's digest, once per process (a test and the session's end name the same recordings); emptied
past :data:`_DIGESTS_KEPT` keys, so a long session does not keep every key it ever met."""
_DIGESTS_KEPT = 50_000


def ids_of_keys(keys: Iterable[tuple[str, ...]]) -> list[str]:
    """:func:`ids`, from the requests' keys."""
    seen: dict[tuple[str, ...], int] = defaultdict(int)
    found = []
    for k in keys:
        digest = _DIGESTS.get(k)
        if digest is None:
            if len(_DIGESTS) >= _DIGESTS_KEPT:
                _DIGESTS.clear()
            digest = _DIGESTS[k] = hashlib.sha1(json.dumps(k).encode()).hexdigest()[:12]
        found.append(f"{digest}.{seen[k]}")
        seen[k] += 1
    return found


@dataclass
class Change:
    """One answer that a re-record changed: the request, and the words of the answer that moved."""

    request: str
    diff: str
    note: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"request": self.request, "diff": self.diff, "note": self.note}


@dataclass
class Review:
    """One cassette's re-record: interactions unchanged, changed, added and removed (``unplayed``:
    recordings no test played, still in the file)."""

    path: str
    unchanged: int = 0
    changed: list[Change] = field(default_factory=list)
    added: int = 0
    removed: int = 0

    @property
    def touched(self) -> bool:
        return bool(self.changed or self.added or self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "unchanged": self.unchanged,
            "changed": [c.as_dict() for c in self.changed],
            "added": self.added,
            "removed": self.removed,
        }


def _change(request: Any, old: Interaction, new: dict[str, Any], *, prompt_changed: bool) -> Change:
    before, after = answer_text(old[0], old[1]), answer_text(request, new)
    note = "the request changed" if prompt_changed else ""
    if before == after and not prompt_changed:
        same_words = essence(old[0], old[1], keep_usage=False) == essence(request, new, keep_usage=False)
        note = "only usage changed" if same_words else "the answer's text is the same; other fields changed"
    return Change(describe_request(request), word_diff(before, after) if before != after else "", note)


def review(
    path: str, before: Sequence[Interaction], after: Sequence[Interaction], key: Key, unplayed: Iterable[str] = ()
) -> Review:
    """``before`` (the file when the session started) against ``after`` (the file now).

    Requests recorded before and after are paired by match key: the same answer is unchanged,
    another is changed. What is left pairs by position with a recording of the same route and
    model that was dropped, or that no test played (``unplayed``, ids of :func:`ids` over
    ``before``): an edited prompt is one changed interaction, not one added and one removed.
    """
    result = Review(path)
    skipped = set(unplayed)
    waiting: dict[tuple[str, ...], list[tuple[str, Interaction]]] = defaultdict(list)
    dropped: list[tuple[str, Interaction]] = []  # candidates for an edited request, in file order
    for interaction, iid in zip(before, ids((q for q, _ in before), key), strict=True):
        if iid in skipped:
            dropped.append((iid, interaction))
        else:
            waiting[key(interaction[0])].append((iid, interaction))
    kept: set[str] = set()
    left: list[Interaction] = []
    for (request, response), iid in zip(after, ids((q for q, _ in after), key), strict=True):
        if iid in skipped:  # an unplayed recording, still in the file
            kept.add(iid)
            continue
        candidates = waiting.get(key(request))
        if not candidates:
            left.append((request, response))
            continue
        _, old = candidates.pop(0)
        if same_answer(request, old[1], response):
            result.unchanged += 1
        else:
            result.changed.append(_change(request, old, response, prompt_changed=False))
    dropped += [entry for group in waiting.values() for entry in group]
    for request, response in left:
        slot = _slot(request)
        match = next((entry for entry in dropped if _slot(entry[1][0]) == slot), None)
        if match is None:
            result.added += 1
            continue
        dropped.remove(match)
        result.changed.append(_change(request, match[1], response, prompt_changed=True))
    result.removed = sum(1 for iid, _ in dropped if iid not in kept)
    return result


def _slot(request: Any) -> tuple[str, str]:
    """Route and model: where an edited prompt's new recording takes its old one's place."""
    return urlsplit(request.uri).path, describe_request(request).split(",")[0]
