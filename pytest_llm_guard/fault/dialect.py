"""What an API dialect gives the server, and the pieces dialects build their answers from.

The server (``server.py``) knows HTTP and how to apply faults; a dialect knows one
API: which method and path it answers, with what body, how its error bodies and a
broken answer look. A dialect is a :class:`Dialect` value whose :class:`Route` table
maps method + path template to an answer builder. The server finds every answer
through a :class:`RouteTable` built from the dialects registered when it is
constructed, so an API is added by writing one module that builds a ``Dialect`` and
registering it in ``__init__.py``.
"""

from __future__ import annotations

import json as _json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

from .faults import count

DEFAULT_MODEL = "fault-model"  # the answer's model when the request names none
__all__ = [
    "Call",
    "DEFAULT_MODEL",
    "Dialect",
    "Reply",
    "Response",
    "Route",
    "RouteTable",
    "choose_reply",
    "chunk",
    "event_stream",
    "json_response",
    "last_user_text",
    "message_text",
    "register",
    "registered",
    "split_words",
    "words",
]


@dataclass
class Response:
    """An answer before it meets the wire (and maybe a fault)."""

    status: int
    headers: list[tuple[str, str]]
    pieces: list[bytes]  # the body as it is written: one piece per chunk of a stream
    streamed: bool = False  # pieces are chunks of an event stream, see event_stream()


def json_response(status: int, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """A JSON answer with its Content-Length."""
    body = _json.dumps(obj).encode()
    return Response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers], [body]
    )


def chunk(data: bytes) -> bytes:
    """``data`` framed as one HTTP/1.1 chunk (``Transfer-Encoding: chunked``)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def event_stream(events: Sequence[bytes]) -> Response:
    """A 200 ``text/event-stream`` answer sent chunked, one chunk per server-sent event.

    The last event must be the one that tells a client the stream is complete (OpenAI's
    ``data: [DONE]``, Anthropic's ``message_stop``): ``Fault.cut_stream`` never sends it nor
    the terminating chunk, ``Fault.stream_error`` sends the dialect's error event instead.
    """
    pieces = [chunk(event) for event in events] + [b"0\r\n\r\n"]
    headers = [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        ("Transfer-Encoding", "chunked"),
    ]
    return Response(200, headers, pieces, streamed=True)


@dataclass(frozen=True)
class Reply:
    """A scripted answer from ``FaultServer.reply()``; each dialect renders it in its own format."""

    content: str | None
    tool_calls: tuple[tuple[str, str], ...]  # (name, arguments as JSON text)
    when: str | Callable[[dict], bool] | None
    model: str | None
    usage: Mapping[str, int]  # overrides of prompt_tokens / completion_tokens / total_tokens

    @classmethod
    def scripted(
        cls,
        text: str | None = None,
        *,
        json: Any = None,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        when: str | Callable[[dict], bool] | None = None,
        model: str | None = None,
        usage: Mapping[str, int] | None = None,
    ) -> Reply:
        """The reply ``FaultServer.reply()`` describes (see there), or a ValueError saying what is wrong."""
        if text is not None and json is not None:
            raise ValueError("reply() takes text= or json=, not both")
        if text is None and json is None and not tool_calls:
            raise ValueError("reply() needs text=, json= or tool_calls=")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"reply(text=...) must be a str, got {text!r}; use json= for objects")
        if when is not None and not isinstance(when, str) and not callable(when):
            raise ValueError(f"reply(when=...) must be None, a substring or a callable, got {when!r}")
        calls = []
        for call in tool_calls or ():
            if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
                raise ValueError(f"each tool call needs a str 'name', got {call!r}")
            arguments = call.get("arguments", {})
            calls.append((call["name"], arguments if isinstance(arguments, str) else _json.dumps(arguments)))
        overrides = dict(usage or {})
        for key, value in overrides.items():
            if key not in ("prompt_tokens", "completion_tokens", "total_tokens"):
                allowed = "prompt_tokens, completion_tokens, total_tokens"
                raise ValueError(f"reply(usage=...) keys are {allowed}; got {key!r}")
            count(f"reply(usage={{{key!r}: ...}})", value, 0)
        content = _json.dumps(json) if json is not None else text
        return cls(content, tuple(calls), when, model, MappingProxyType(overrides))

    def matches(self, body: dict, last_user: str) -> bool:
        if self.when is None:
            return True
        if isinstance(self.when, str):
            return self.when in last_user
        return bool(self.when(body))


def choose_reply(replies: Sequence[Reply], body: dict, last_user: str) -> Reply | None:
    """The most recently added reply that matches, or None for the default answer."""
    return next((r for r in reversed(replies) if r.matches(body, last_user)), None)


def message_text(content: Any) -> str:
    """Text of a message's content: a string, or the text parts of a list of parts (both APIs' shape)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The text of the last ``user`` message, which answers echo; "" when there is none."""
    return next((message_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")


def words(text: str) -> int:
    """Token count used by every dialect: whitespace-separated words, so tests can predict it."""
    return len(text.split())


def split_words(text: str) -> list[str]:
    """Split into word-sized stream pieces whose concatenation is exactly ``text``."""
    return re.findall(r"\s*\S+|\s+$", text)


@dataclass(frozen=True)
class Call:
    """One request as an answer builder sees it."""

    method: str
    path: str
    params: Mapping[str, str]  # the path template's {fields}, percent-decoded
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: dict  # the JSON object sent; {} without a body
    replies: tuple[Reply, ...]  # the server's scripted replies, oldest first


Answer = Callable[[Call, int], Response]
"""Builds the healthy answer; the int is the request's number in the log, for unique ids."""


@dataclass(frozen=True)
class Route:
    """One method + path a dialect answers.

    ``path`` is literal (``/v1/models``) or a template whose ``{name}`` segments match
    one path segment each (``/openai/deployments/{deployment}/embeddings``). ``name`` is
    what ``plan(route=...)`` and ``requests_to(...)`` call it: routes that answer the same
    thing share a name, and with it their fault plan. ``check`` may turn a request
    down first, before its body is checked and the plan consulted: the answer it
    returns is sent as it is, the request logged with no fault. ``generates``: the route
    asks a model for an answer (chat completions, Anthropic's messages); a plan made
    without a route applies to every such route, whichever API the client speaks.
    """

    name: str
    method: str
    path: str
    answer: Answer
    check: Callable[[Call], Response | None] | None = None
    generates: bool = False
    pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if "{" in self.path:
            parts = re.split(r"\{(\w+)\}", self.path)
            regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
            object.__setattr__(self, "pattern", re.compile(regex))

    def match(self, path: str) -> dict[str, str] | None:
        """The template's fields if ``path`` is this route's, else None."""
        if self.pattern is None:
            return {} if path == self.path else None
        found = self.pattern.fullmatch(path)
        return None if found is None else {k: unquote(v) for k, v in found.groupdict().items()}


@dataclass(frozen=True)
class Dialect:
    """One API the server speaks."""

    name: str
    routes: tuple[Route, ...]
    error: Callable[[int, str, Sequence[tuple[str, str]]], Response]  # (status, message, extra headers)
    malformed: Callable[[Call], Response]  # a 200 whose body (or stream event) does not parse
    stream_error: Callable[[int, str], bytes]  # (status, message) -> the event that fails a stream already begun


class RouteTable:
    """Every route of some dialects: literal paths by dictionary, templates in order; first match wins."""

    def __init__(self, dialects: Iterable[Dialect]) -> None:
        self.dialects = tuple(dialects)
        if not self.dialects:
            raise ValueError("a FaultServer needs at least one registered dialect")
        self._exact: dict[tuple[str, str], tuple[Route, Dialect]] = {}
        self._templates: list[tuple[Route, Dialect]] = []
        self.names: dict[str, str] = {}  # route name -> the path of its first route, for messages
        self.generating: set[str] = set()  # names of the routes that ask a model for an answer
        for dialect in self.dialects:
            for route in dialect.routes:
                self.names.setdefault(route.name, route.path)
                if route.generates:
                    self.generating.add(route.name)
                if route.pattern is None:
                    self._exact.setdefault((route.method, route.path), (route, dialect))
                else:
                    self._templates.append((route, dialect))

    @property
    def default(self) -> Dialect:
        """The dialect that answers requests no route claims (the first registered)."""
        return self.dialects[0]

    def find(self, method: str, path: str) -> tuple[Route, Dialect, Mapping[str, str]] | None:
        exact = self._exact.get((method, path))
        if exact is not None:
            return exact[0], exact[1], {}
        for route, dialect in self._templates:
            if route.method == method and (params := route.match(path)) is not None:
                return route, dialect, params
        return None

    def name_for_path(self, path: str) -> str | None:
        """The name of the first route whose path this is, whatever the method."""
        for dialect in self.dialects:
            for route in dialect.routes:
                if route.match(path) is not None:
                    return route.name
        return None

    def name_of(self, route: str) -> str:
        """The route name for a short name or any path one of the routes answers; ValueError if none."""
        name = route if route in self.names else self.name_for_path(route)
        if name is not None:
            return name
        allowed = ", ".join(f"{name!r} ({path})" for name, path in self.names.items())
        raise ValueError(f"unknown route {route!r}; use one of {allowed}")

    def describe(self) -> str:
        """``METHOD path`` of every route, for error messages."""
        return ", ".join(f"{r.method} {r.path}" for d in self.dialects for r in d.routes)


_registered: list[Dialect] = []


def register(dialect: Dialect) -> Dialect:
    """Make servers built from now on answer ``dialect``'s routes too (after those registered before)."""
    if dialect not in _registered:
        _registered.append(dialect)
    return dialect


def registered() -> tuple[Dialect, ...]:
    """The dialects a new ``FaultServer`` answers, in registration order."""
    return tuple(_registered)
