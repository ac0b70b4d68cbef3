"""A cassette's text as recorded requests and answers, read without vcrpy.

vcrpy's format (``interactions`` of ``request`` and ``response``, our stamps and timing beside
them) parsed once per text per process (shared by every cassette opened on it), each recorded
request as a :class:`Recorded`: what look-up reads (method, URL, body) and the file's fields, from
which ``vcr_bridge`` builds vcrpy's request when recording or a matcher hook needs one. A replay
loads, matches and answers through this module alone, so it never imports vcrpy (with wrapt, some
40 modules and 10 ms of a replaying session); the full YAML loader of vcrpy is imported only for a
file the fast loader leaves to it (anchors, Python tags).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import ParseResult, urlparse

from . import files, metadata
from .matching import request_key
from .timing import TIMING
from .timing import problem as timing_problem

Matcher = Callable[[Any, Any], "bool | None"]
"""``pytest_llm_cassette_match``: the scrubbed request as sent and a recorded one (vcrpy's requests)."""
Key = Callable[..., tuple[str, ...]]
ABANDONED = "abandoned"
"""Cassette metadata: requests whose streamed answer the caller abandoned and that could not be
read to its end, by :func:`note_id`, each with the test, the request and the reason."""


def note_id(key: tuple[str, ...]) -> str:
    return hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12]


class Recorded:
    """A recorded request as look-up reads it (method, URL, body bytes), and the file's fields."""

    __slots__ = ("method", "uri", "body", "parsed_uri", "fields", "vcr", "__weakref__")

    def __init__(self, fields: dict[str, Any], parsed_uri: ParseResult) -> None:
        body = fields["body"]
        self.method, self.uri, self.parsed_uri, self.fields = fields["method"], fields["uri"], parsed_uri, fields
        self.body: bytes | None = body.encode("utf-8") if isinstance(body, str) else body
        self.vcr: Any = None
        """vcrpy's request for it, once ``vcr_bridge.as_vcr`` built it (shared, like this one)."""

    @property
    def port(self) -> int | None:
        return self.parsed_uri.port or {"https": 443, "http": 80}.get(self.parsed_uri.scheme)

    @property
    def headers(self) -> Any:
        return self.fields["headers"]


def _usual(fields: dict[str, Any]) -> bool:
    """Fields a :class:`Recorded` holds as vcrpy would: a text or bytes body, headers as a mapping."""
    body = fields["body"]
    return (body is None or isinstance(body, (str, bytes))) and type(fields["headers"]) is dict


def _full_loader(text: str) -> Any:
    """vcrpy's safe loader (Python tuples, ``BytesIO`` bodies...), for what the fast loader leaves to it."""
    from vcr.serializers import yamlserializer

    return yamlserializer.deserialize(text)


class ReadableYaml:
    """vcrpy's YAML format: read by vcrpy's safe loader, written with readable strings."""

    @staticmethod
    def serialize(cassette_dict: dict[str, Any]) -> str:
        return files.dump_yaml(metadata.to_file(cassette_dict))

    @staticmethod
    def deserialize(text: str) -> Any:
        data = metadata.from_file(files.load_yaml(text, _full_loader))
        problem = _missing_field(data)
        if problem:
            raise ValueError(problem)
        return data


_REQUIRED = {
    "request": ("method", "uri", "body", "headers"),
    "response": ("status", "headers", "body"),
}


def _missing_field(data: Any) -> str | None:
    """What a cassette lacks that replay needs, named by interaction number and field."""
    if not isinstance(data, dict) or not isinstance(data.get("interactions"), list):
        return "it has no 'interactions' list"
    for number, interaction in enumerate(data["interactions"], 1):
        if not isinstance(interaction, dict):
            return f"interaction {number} is not a mapping"
        for part, fields in _REQUIRED.items():
            value = interaction.get(part)
            if not isinstance(value, dict):
                return f"interaction {number} has no {part}"
            missing = [f for f in fields if f not in value]
            if missing:
                return f"interaction {number} has no {part}.{missing[0]}"
        response = interaction["response"]
        if not isinstance(response["status"], dict) or "code" not in response["status"]:
            return f"interaction {number} has no response.status.code"
        if not isinstance(response["body"], dict) or "string" not in response["body"]:
            return f"interaction {number} has no response.body.string"
        timing = timing_problem(response.get(TIMING))
        if timing:
            return f"interaction {number}'s response.{TIMING} {timing}"
    return None


def _as_bytes(response: dict[str, Any]) -> dict[str, Any]:
    """vcrpy's ``compat.convert_to_bytes``: a text body as UTF-8 bytes, as the transport hands it on."""
    try:
        if response["body"]["string"] is not None and not isinstance(response["body"]["string"], bytes):
            response["body"]["string"] = response["body"]["string"].encode("utf-8")
    except (KeyError, TypeError, UnicodeEncodeError):
        pass
    return response


_PARSED: OrderedDict[str, tuple[list, list, dict[str, Any]]] = OrderedDict()
"""Cassettes parsed in this process, by their text: a file is parsed once per session however many
tests use it (a shared cassette, the session's end reading what was not replayed), and again only once
its text changes (recorded into, by this process or another)."""
_PARSED_LIMIT = 16 * 1024 * 1024
"""Characters of cassette text whose parse is kept (some 90 MB with the parse): the least recently used go first."""
_PARSING = threading.Lock()


def parse(text: str) -> tuple[list[Any], list[dict[str, Any]], dict[str, Any]]:
    """A cassette's text as requests (:class:`Recorded`, or vcrpy's own for a field vcrpy reads in a way
    of its own), responses and metadata; raises ValueError or a YAML error.

    The requests and answers are shared by every caller given the same text: never changed in place
    (every change works on a copy: scrubbing, decompressing, restamping)."""
    with _PARSING:
        found = _PARSED.get(text)
        if found is not None:
            _PARSED.move_to_end(text)
    if found is None:
        data = ReadableYaml.deserialize(text)
        uris: dict[str, ParseResult] = {}
        requests = [_request(i["request"], uris) for i in data["interactions"]]
        responses = [_as_bytes(i["response"]) for i in data["interactions"]]
        more = data.get("metadata")
        found = (requests, responses, more if isinstance(more, dict) else {})
        with _PARSING:
            _PARSED[text] = found
            kept = sum(len(t) for t in _PARSED)
            while kept > _PARSED_LIMIT and len(_PARSED) > 1:
                kept -= len(_PARSED.popitem(last=False)[0])
    return list(found[0]), list(found[1]), copy.deepcopy(found[2])


def _request(fields: dict[str, Any], uris: dict[str, ParseResult]) -> Any:
    """A recorded request; a URL is parsed once per file."""
    if not _usual(fields):
        from vcr.request import Request as VcrRequest

        return VcrRequest._from_dict(fields)
    uri = fields["uri"]
    parsed = uris.get(uri)
    if parsed is None:
        parsed = uris[uri] = urlparse(uri)
    return Recorded(fields, parsed)


_KEYS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], tuple[str, ...]]] = weakref.WeakKeyDictionary()
"""The keys of loaded requests, by match rule: a parse is shared by every cassette opened on its text
(:func:`parse`) and its requests are never changed, so a shared cassette is indexed once, not per test."""


def loaded_key(
    request: Any, match_parts: tuple[str, ...], ignore: frozenset[str], key: Key = request_key
) -> tuple[str, ...]:
    """The key of a request as :func:`parse` gave it (shared, never changed): computed once per match rule."""
    keys = _KEYS.get(request)
    if keys is None:
        keys = _KEYS[request] = {}
    found = keys.get((match_parts, ignore))
    if found is None:
        found = keys[(match_parts, ignore)] = key(request, match_parts, ignore)
    return found


def share_keys(recorded: Any, other: Any) -> None:
    """``other`` (vcrpy's request built for ``recorded``) shares its cached keys: keyed once for both."""
    keys = _KEYS.get(recorded)
    if keys is None:
        keys = _KEYS[recorded] = {}
    _KEYS[other] = keys


class Sent:
    """A request as sent, for look-up: what its key reads at once (``matching.request_key``), vcrpy's
    request (headers and all) only when it is needed: to scrub, record or explain a miss."""

    def __init__(self, method: str, uri: str, body: bytes, headers: Any) -> None:
        self.method, self.uri, self.body = method, uri, body
        self._headers = headers
        self.parsed_uri = urlparse(uri)

    @property
    def port(self) -> int | None:
        return self.parsed_uri.port or {"https": 443, "http": 80}.get(self.parsed_uri.scheme)

    @functools.cached_property
    def vcr(self) -> Any:
        """vcrpy's request for it (imports vcrpy: recording, a scrub, a miss)."""
        from vcr.request import Request as VcrRequest

        return VcrRequest(self.method, self.uri, self.body, dict(self._headers))


def playable(recorded: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes, str | None]:
    """A recorded response as status, header pairs, body bytes and reason phrase (the recording unchanged:
    it is shared, and may be replayed again)."""
    body = recorded["body"]["string"] or b""
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = [(name, value) for name, values in recorded["headers"].items() for value in values]
    return recorded["status"]["code"], headers, body, recorded["status"].get("message")
