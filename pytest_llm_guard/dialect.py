"""Everything API-specific, one object per dialect: the rest of the package asks, never knows.

A dialect answers the questions the guard, the cassettes, the breakers and the reports
have about a request or a response: is it LLM traffic, which route and model is it,
is it an SDK retry, how many tokens did it use, has a stream reached its end, which
headers carry keys, and how a configured endpoint of one of its kinds is addressed.

Only the OpenAI API (``kind = "openai"`` and ``kind = "azure"`` endpoints) ships today.
Adding another API — the Anthropic Messages API, whose SDK also runs on httpx2 — means
one new :class:`Dialect` subclass appended to :data:`DIALECTS` (plus its routes in the
fault server, ``fault/``); nothing else in the package changes.

Light to import (httpx2 is imported where a request is built), so configuration can
validate endpoint kinds before any guarded test runs.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2


class Dialect:
    """The questions every dialect answers; subclasses fill them in."""

    name: str = ""
    kinds: tuple[str, ...] = ()
    """The endpoint ``kind`` values (``[[tool.pytest_llm_guard.endpoints]]``) this dialect addresses."""
    key_headers: frozenset[str] = frozenset()
    """Request headers that carry credentials: never written, never shown."""

    def claims(self, request: httpx2.Request) -> bool:
        """Is this request LLM traffic of this dialect?"""
        raise NotImplementedError

    def route_of(self, path: str) -> str:
        """The API route without the base URL's prefix, the same for every endpoint serving it."""
        raise NotImplementedError

    def model_of(self, request: httpx2.Request, body: Any) -> str | None:
        """The model a request asks for (``body`` is its parsed JSON, or None)."""
        raise NotImplementedError

    def retry_number(self, request: httpx2.Request) -> int:
        """How many times the SDK that sent ``request`` has retried it already (0: a new call)."""
        return 0

    def max_retries(self) -> int | None:
        """For an SDK retry being sent now: the ``max_retries`` its client allows, when it can be told."""
        return None

    def mark_retry(self, request: httpx2.Request, retries_taken: int) -> None:
        """Tag a retried request as its SDK's own retry loop would, so a server sees which attempt it is."""

    def reader(self, content_type: str) -> BodyReader:
        """Follows one response body as it arrives: is it a true answer, and how many tokens did it use?"""
        raise NotImplementedError

    def address(
        self,
        kind: str,
        base_url: str,
        api_version: str | None,
        request: httpx2.Request,
        model: str | None,
        key: str | None,
    ) -> tuple[httpx2.URL, httpx2.Headers]:
        """URL and headers with which an endpoint of ``kind`` must receive ``request``."""
        raise NotImplementedError


@dataclass(frozen=True)
class Usage:
    """Tokens a response reports: in all, and (where it says) of the prompt and of the answer."""

    total: int
    input: int | None = None
    output: int | None = None


class BodyReader:
    """One response body, chunk by chunk. The base reader accepts any body (audio, images...)."""

    usage: Usage | None = None
    ended: bool = True
    """Whether the body reached what ends it (a stream's end event); a plain body ends when it ends."""
    events_expected: bool = False
    """A stream of events, which must reach its end event to be whole."""
    events: int = 0

    def feed(self, chunk: bytes) -> str | None:
        """Take a chunk before it reaches the caller; returns what is wrong with the body so far, if anything."""
        return None

    def finish(self) -> str | None:
        """The transport reported the end; returns what is wrong with the whole body, if anything."""
        return None


class _Decoding(BodyReader):
    """Hands a ``gzip``/``deflate`` body to its reader decompressed (servers compress JSON and streams)."""

    def __init__(self, reader: BodyReader, encoding: str) -> None:
        import zlib

        self._reader = reader
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding == "gzip" else zlib.MAX_WBITS)
        self.events_expected = reader.events_expected

    def _sync(self) -> None:
        self.usage, self.ended, self.events = self._reader.usage, self._reader.ended, self._reader.events

    def feed(self, chunk: bytes) -> str | None:
        try:
            problem = self._reader.feed(self._zlib.decompress(chunk))
        except Exception:  # zlib.error: a broken compressed body
            problem = "a compressed body that does not decompress"
        self._sync()
        return problem

    def finish(self) -> str | None:
        problem = self._reader.finish()
        self._sync()
        return problem


def decoding(reader: BodyReader, content_encoding: str) -> BodyReader:
    """``reader`` for a body sent with ``content_encoding``: decompressed where the stdlib can; a body in
    another encoding (br, zstd) is passed unread, neither judged nor counted."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return reader
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Decoding(reader, "gzip" if "gzip" in encoding else "deflate")
    return BodyReader()


# -- OpenAI (and Azure OpenAI) ---------------------------------------------------------

_OPENAI_ROUTE = re.compile(
    r"/(chat/completions|completions|embeddings|responses|moderations|models|audio|images|batches)(/|$)"
)
_GENERATION_ROUTE = re.compile(
    r"/(chat/completions|completions|embeddings|responses|moderations|images/(generations|edits)|audio/speech)/?$"
)
"""Routes that ask a model for an answer (what costs tokens), as a client other than the SDK sends them."""
_PROMPT_KEYS = ("messages", "input", "prompt")
_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")
# The routes AzureOpenAI sends to /openai/deployments/{model}/... (openai/lib/azure.py).
_AZURE_DEPLOYMENT_ROUTES = frozenset(
    {
        "/completions",
        "/chat/completions",
        "/embeddings",
        "/audio/transcriptions",
        "/audio/translations",
        "/audio/speech",
        "/images/generations",
        "/images/edits",
    }
)


def _usage(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict) and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")  # Responses API stream: response.completed
    if not isinstance(usage, dict):
        return None

    def count(*keys: str) -> int | None:
        return next((usage[k] for k in keys if isinstance(usage.get(k), int)), None)

    prompt, completion = count("prompt_tokens", "input_tokens"), count("completion_tokens", "output_tokens")
    total = count("total_tokens")
    if total is None and prompt is None and completion is None:
        return None
    return Usage(total if total is not None else (prompt or 0) + (completion or 0), prompt, completion)


class _JsonReader(BodyReader):
    """A JSON body: it must parse; ``usage`` gives the tokens."""

    _LIMIT = 8 * 1024 * 1024

    def __init__(self) -> None:
        self._body = bytearray()

    def feed(self, chunk: bytes) -> str | None:
        if len(self._body) <= self._LIMIT:
            self._body += chunk
        return None

    def finish(self) -> str | None:
        if len(self._body) > self._LIMIT:
            return None  # too large to keep: neither judged nor counted
        try:
            self.usage = _usage(json.loads(self._body))
        except (ValueError, UnicodeDecodeError):
            return "malformed JSON"
        return None


_END_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
"""Responses API events that end a stream (chat completions end with ``data: [DONE]``)."""


class _EventStreamReader(BodyReader):
    """Server-sent events: each ``data:`` must be JSON, and the stream must reach its end event."""

    events_expected = True

    def __init__(self) -> None:
        self._pending = bytearray()
        self.events = 0
        self.ended = False

    def feed(self, chunk: bytes) -> str | None:
        self._pending += chunk
        while True:
            end = self._pending.find(b"\n\n")
            if end < 0:
                return None
            event = bytes(self._pending[:end])
            del self._pending[: end + 2]
            problem = self._event(event)
            if problem:
                return problem

    def _event(self, event: bytes) -> str | None:
        lines = event.replace(b"\r\n", b"\n").split(b"\n")
        data = b"\n".join(line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:"))
        if not data:
            return None  # a comment or a keep-alive
        self.events += 1
        if data.strip() == b"[DONE]":
            self.ended = True
            return None
        try:
            payload = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return f"malformed JSON in event {self.events} of a stream"
        if isinstance(payload, dict):
            self.usage = _usage(payload) or self.usage
            self.ended = self.ended or payload.get("type") in _END_TYPES
        return None

    def finish(self) -> str | None:
        problem = self._event(bytes(self._pending)) if self._pending.strip() else None
        self._pending.clear()
        if problem or self.ended:
            return problem
        return f"stream ended before its end event after {self.events} events"


_STAINLESS_CLIENTS = frozenset({"openai._base_client", "anthropic._base_client"})
"""The modules whose ``request()`` runs the SDK's retry loop (both SDKs send ``x-stainless-retry-count``)."""


class OpenAIDialect(Dialect):
    """The OpenAI HTTP API as the ``openai`` SDK speaks it, including ``AzureOpenAI``'s addressing."""

    name = "openai"
    kinds = ("openai", "azure")
    key_headers = frozenset({"authorization", "api-key", "openai-organization", "openai-project"})

    def claims(self, request: httpx2.Request) -> bool:
        # The SDK tags its requests x-stainless-*. Another client's request is LLM traffic when it asks
        # a model for an answer: a POST to a generation route whose JSON names a model (or an Azure
        # deployment) and a prompt. A path that merely contains /images/ or /models is not.
        if "x-stainless-lang" in request.headers:
            return True
        if request.method != "POST" or not _GENERATION_ROUTE.search(request.url.path):
            return False
        body = request_json(request)
        if not isinstance(body, dict) or not any(key in body for key in _PROMPT_KEYS):
            return False
        return isinstance(body.get("model"), str) or bool(_AZURE_DEPLOYMENT.search(request.url.path))

    def route_of(self, path: str) -> str:
        match = _OPENAI_ROUTE.search(path)
        return path[match.start() :] if match else path

    def model_of(self, request: httpx2.Request, body: Any) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            return body["model"]
        match = _AZURE_DEPLOYMENT.search(request.url.path)
        return match.group(1) if match else None

    def retry_number(self, request: httpx2.Request) -> int:
        count = request.headers.get("x-stainless-retry-count", "0")
        return int(count) if count.isdigit() else 0

    def mark_retry(self, request: httpx2.Request, retries_taken: int) -> None:
        request.headers["x-stainless-retry-count"] = str(retries_taken)

    def max_retries(self) -> int | None:
        # The retry count travels in a header, the limit does not: it is the ``max_retries`` local of the
        # SDK's ``request()`` loop up the stack (async callers' frames are on it too while the task runs).
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_code.co_name == "request" and frame.f_globals.get("__name__") in _STAINLESS_CLIENTS:
                value = frame.f_locals.get("max_retries")
                return value if isinstance(value, int) else None
            frame = frame.f_back
        return None

    def reader(self, content_type: str) -> BodyReader:
        if "text/event-stream" in content_type:
            return _EventStreamReader()
        if "json" in content_type:
            return _JsonReader()
        return BodyReader()

    def address(
        self,
        kind: str,
        base_url: str,
        api_version: str | None,
        request: httpx2.Request,
        model: str | None,
        key: str | None,
    ) -> tuple[httpx2.URL, httpx2.Headers]:
        import httpx2

        route = self.route_of(request.url.path)
        headers = httpx2.Headers(request.headers)
        params = request.url.params
        if kind == "azure":
            deployment = f"/deployments/{model}" if model and route in _AZURE_DEPLOYMENT_ROUTES else ""
            url = httpx2.URL(base_url.rstrip("/") + "/openai" + deployment + route)
            params = params.set("api-version", api_version or "")
            bearer = headers.pop("authorization", "").removeprefix("Bearer ")
            headers["api-key"] = key if key is not None else bearer
        else:
            url = httpx2.URL(base_url.rstrip("/") + route)
            if key is not None:
                headers["authorization"] = f"Bearer {key}"
        return url.copy_with(params=params), headers


DIALECTS: tuple[Dialect, ...] = (OpenAIDialect(),)


def dialect_for(request: httpx2.Request) -> Dialect | None:
    """The dialect that claims ``request``, or None: not LLM traffic, the guard lets it pass."""
    for dialect in DIALECTS:
        if dialect.claims(request):
            return dialect
    return None


def for_kind(kind: str) -> Dialect:
    """The dialect that addresses endpoints of ``kind``."""
    return next(d for d in DIALECTS if kind in d.kinds)


ENDPOINT_KINDS: tuple[str, ...] = tuple(kind for d in DIALECTS for kind in d.kinds)
KEY_HEADERS: frozenset[str] = frozenset().union(*(d.key_headers for d in DIALECTS)) | {"x-api-key"}


def request_json(request: httpx2.Request) -> Any:
    """The JSON body of a request, or None when it has none (or it is a stream not read yet)."""
    if not hasattr(request, "_content"):  # a streamed body not read yet (httpx2 raises RequestNotRead)
        return None
    content = request.content
    if not content:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


def origin_of(url: httpx2.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
