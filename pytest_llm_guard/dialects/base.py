"""What every dialect answers, and the machinery their answers share (body readers, HTTP's Retry-After).

Nothing here knows an API: the dialects (``openai.py``, ``anthropic.py``) fill the
questions in. Light to import (httpx2 is imported where a request is built).
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..clock import REAL

if TYPE_CHECKING:
    import httpx2


class Dialect:
    """The questions every dialect answers; subclasses fill them in."""

    name: str = ""
    kinds: tuple[str, ...] = ()
    """The endpoint ``kind`` values (``[[tool.pytest_llm_guard.endpoints]]``) this dialect addresses."""
    key_headers: frozenset[str] = frozenset()
    """Request headers that carry credentials: never written, never shown."""
    key_variables: tuple[str, ...] = ()
    """Environment variables its SDK reads keys from: set to a placeholder when a test only replays."""
    base_url_variable: str = ""
    """The environment variable its SDK reads a base URL from."""
    default_base_url: str = ""
    """Where its SDK sends requests when nothing else is said."""
    default_model: str = ""
    """A cheap current model, the default of ``llm_guard.model``."""
    sdk: str = ""
    """The import name of its SDK."""
    client_names: tuple[str, ...] = ()
    """Its SDK's sync and async client classes."""
    sdk_error_name: str = ""
    """The base class of its SDK's errors."""

    def claims(self, request: httpx2.Request) -> bool:
        """Is this request LLM traffic of this dialect?"""
        raise NotImplementedError

    def route_of(self, path: str) -> str:
        """The API route without the base URL's prefix, the same for every endpoint serving it."""
        raise NotImplementedError

    def serves(self, path: str) -> bool:
        """Is ``path`` (a full URL path, or a route) one of this API's routes?"""
        return False

    def model_of(self, request: httpx2.Request) -> str | None:
        """The model a request asks for: its JSON body's ``model``."""
        return request_model(request)

    def summary(self, body: Any, limit: int = 80) -> str:
        """The request's last user message, shortened, for messages about it (a cassette miss)."""
        if not isinstance(body, dict):
            return ""
        return _shorten(_last_user_text(body.get("messages")), limit)

    prompt_fields: tuple[str, ...] = ()
    """Request body fields whose text the model reads (messages, system prompt, tools): what a request costs."""
    answer_limit_fields: tuple[str, ...] = ()
    """Request body fields that cap the answer's tokens, first found wins."""

    def estimated_tokens(self, body: Any) -> int:
        """Tokens a request may cost before its answer says (shared ``tpm`` limits, ``ratelimit.py``): its
        prompt's characters / 4, plus the most its answer may take when the request caps it."""
        if not isinstance(body, dict):
            return 0
        characters = sum(_characters(body.get(name)) for name in self.prompt_fields)
        cap = next((body[k] for k in self.answer_limit_fields if isinstance(body.get(k), int)), 0)
        return -(-characters // 4) + max(0, cap)

    volatile_fields: frozenset[str] = frozenset({"id", "created"})
    """Answer fields (at any depth, in JSON and in each event of a stream) that differ on every call:
    ids and timestamps. A re-recorded answer that differs only in them is the same answer."""

    def answer_text(self, body: str) -> str:
        """The assistant's text in a recorded answer (JSON or an event stream), for a re-record's diff;
        "" when the body is not one of this API's answers."""
        return ""

    def retry_number(self, request: httpx2.Request) -> int:
        """How many times the SDK that sent ``request`` has retried it already (0: a new call)."""
        return 0

    def max_retries(self) -> int | None:
        """For an SDK retry being sent now: the ``max_retries`` its client allows, when it can be told."""
        return None

    def mark_retry(self, request: httpx2.Request, retries_taken: int) -> None:
        """Tag a retried request as its SDK's own retry loop would, so a server sees which attempt it is."""

    def retry_after(self, headers: Mapping[str, str], now: Callable[[], float] = REAL.wall) -> float | None:
        """Seconds the server asks us to wait before the next attempt, if it says."""
        return parse_retry_after(headers, now)

    def should_retry(self, status: int, headers: Mapping[str, str]) -> bool:
        """Is an error response worth another attempt, by this API's rules?"""
        return status >= 400 and (status in RETRYABLE_STATUS or status >= 500)

    stream_reader: Callable[[], BodyReader]
    """Reads this API's server-sent events: their end, error events and usage."""
    json_usage: Callable[[Any], Usage | None]
    """The usage of one JSON answer of this API."""

    def streams(self, content_type: str) -> bool:
        """Whether a body of ``content_type`` is a stream of events (read by :attr:`stream_reader`)."""
        return "text/event-stream" in content_type

    def reader(self, content_type: str) -> BodyReader:
        """Follows one response body as it arrives: is it a true answer, and how many tokens did it use?"""
        if self.streams(content_type):
            return self.stream_reader()
        if "json" in content_type:
            return JsonReader(self.json_usage)
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
        """URL and headers with which an endpoint of ``kind`` must receive ``request``."""
        raise NotImplementedError

    def api_version(self, kind: str, configured: Any, environ: Mapping[str, str]) -> str | None:
        """The ``api_version`` an endpoint of ``kind`` uses; raises ValueError saying what is wrong."""
        if configured is not None:
            raise ValueError(f"api_version is not used by kind = {kind!r}")
        return None

    def owns_client(self, client: Any) -> bool:
        """Was ``client`` built by this dialect's SDK?"""
        return False

    def wrap_client(self, client: Any, wrap_sync: Wrap, wrap_async: Wrap) -> Any:
        """A copy of ``client`` (one :meth:`owns_client` accepts) with its SDK's retries off and every
        attempt passed through ``wrap_sync``/``wrap_async`` (the guard's retry loop)."""
        raise NotImplementedError

    def client_classes(self) -> tuple[type, type]:
        """The SDK's sync and async client classes (imports the SDK)."""
        raise NotImplementedError

    def sdk_error(self) -> type[BaseException] | None:
        """The base class of the SDK's own errors, if the SDK is loaded: one raised at the transport is the
        SDK's (or the guard's refusal dressed as it), never a failure to retry."""
        module = sys.modules.get(self.sdk)
        return getattr(module, self.sdk_error_name, None) if module is not None else None

    def connection_error(self) -> type[BaseException]:
        """The SDK's class for a connection that could not be made (imports the SDK): a refused call is
        raised as one, so the application's own fallback runs."""
        raise NotImplementedError


Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]

RETRYABLE_STATUS = frozenset({408, 409, 429})


def parse_retry_after(headers: Mapping[str, str], now: Callable[[], float] = REAL.wall) -> float | None:
    """HTTP's ``Retry-After``: seconds (fractions allowed), or a date."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        delay = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, delay) if math.isfinite(delay) else None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        return max(0.0, email.utils.mktime_tz(parsed) - now())
    except (TypeError, ValueError, OverflowError):
        return None


def _last_user_text(messages: Any) -> str:
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else ""
    if isinstance(content, list):
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _characters(value: Any) -> int:
    """The characters of every string in a JSON value (a message list, content parts, tool schemas); an
    image or file sent inline (a ``data:`` URL, a base64 source) is not text, and is left to the usage."""
    if isinstance(value, str):
        return 0 if value.startswith("data:") else len(value)
    if isinstance(value, dict):
        inline = value.get("type") == "base64"
        return sum(_characters(v) for k, v in value.items() if not (inline and k == "data"))
    if isinstance(value, list):
        return sum(_characters(v) for v in value)
    return 0


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Usage:
    """Tokens a response reports: in all, and (where it says) of the prompt and of the answer."""

    total: int
    input: int | None = None
    output: int | None = None
    cache: int | None = None
    """Prompt tokens read from or written to a prompt cache, where the API counts them apart."""


class BodyReader:
    """One response body, chunk by chunk. The base reader accepts any body (audio, images...)."""

    usage: Usage | None = None
    ended: bool = True
    """Whether the body reached what ends it (a stream's end event); a plain body ends when it ends."""
    events_expected: bool = False
    """A stream of events, which must reach its end event to be whole."""
    events: int = 0
    error_event: bool = False
    """The server sent its API's error event: the problem :meth:`feed` returned is the server's, not the body's."""
    parsed: Any = None
    """A JSON body's object, parsed once here (None for any other body, or one too large to keep)."""
    content: bool = False
    """A stream's first content-bearing event arrived (its dialect says which): the answer has begun, so
    what goes wrong after it reaches the caller, and what went wrong before it is a failed attempt."""

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
        self.error_event, self.content = self._reader.error_event, self._reader.content
        self.parsed = self._reader.parsed

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


class JsonReader(BodyReader):
    """A JSON body: it must parse; ``usage_of`` reads the tokens from it."""

    _LIMIT = 8 * 1024 * 1024

    def __init__(self, usage_of: Callable[[Any], Usage | None]) -> None:
        self._body = bytearray()
        self._usage_of = usage_of

    def feed(self, chunk: bytes) -> str | None:
        if len(self._body) <= self._LIMIT:
            self._body += chunk
        return None

    def finish(self) -> str | None:
        if len(self._body) > self._LIMIT:
            return None  # too large to keep: neither judged nor counted
        try:
            self.parsed = json.loads(self._body)
            self.usage = self._usage_of(self.parsed)
        except (ValueError, UnicodeDecodeError):
            return "malformed JSON"
        return None


class EventStreamReader(BodyReader):
    """Server-sent events: each ``data:`` must be JSON, and the stream must reach its end event.

    A dialect's subclass says what each event means in :meth:`on_payload` (usage, the end, an error).
    """

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
        name = next((line[6:].strip().decode("utf-8", "replace") for line in lines if line.startswith(b"event:")), "")
        self.events += 1
        return self.on_data(name, data)

    def on_data(self, name: str, data: bytes) -> str | None:
        """One event's data: JSON, handed to :meth:`on_payload`; returns what is wrong with it, if anything."""
        try:
            payload = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return f"malformed JSON in event {self.events} of a stream"
        return self.on_payload(name, payload) if isinstance(payload, dict) else None

    def on_payload(self, name: str, payload: dict[str, Any]) -> str | None:
        return None

    def finish(self) -> str | None:
        problem = self._event(bytes(self._pending)) if self._pending.strip() else None
        self._pending.clear()
        if problem or self.ended:
            return problem
        return f"stream ended before its end event after {self.events} events"


def payloads(body: str) -> list[Any]:
    """The JSON of a recorded answer: the body itself, or each ``data:`` event of a stream."""
    try:
        return [json.loads(body)]
    except ValueError:
        pass
    found = []
    for line in body.splitlines():
        if line.startswith("data:"):
            try:
                found.append(json.loads(line[5:]))
            except ValueError:
                continue
    return found


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


_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
"""A key ``"model"`` and its string value, in JSON text (a quote inside a JSON string is escaped, so
``"model"`` appears unescaped only as a whole string: a key, or a value)."""


def request_model(request: httpx2.Request) -> str | None:
    """The ``model`` a request's JSON body names, or None.

    Read on every attempt, so without parsing the body where ``"model"`` appears in it once, as a
    key with a string value, as in what the SDKs send; any other body is parsed.
    """
    if not hasattr(request, "_content"):  # a streamed body not read yet
        return None
    content = request.content
    if content.count(b'"model"') == 1:
        found = _MODEL.search(content)
        if found is not None:
            value = found.group(1)
            try:
                return json.loads(b'"' + value + b'"') if b"\\" in value else value.decode()
            except (ValueError, UnicodeDecodeError):
                pass
    body = request_json(request)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return body["model"]
    return None


def header(headers: Any, name: bytes) -> str:
    """The value of header ``name`` (lower case), "" when absent: as ``headers.get(name, "")``.

    Read on every attempt, so from httpx2's own list of lowered names where it has one (its
    ``get`` lowers and encodes the name, and works out the headers' encoding, on each call).
    """
    items = getattr(headers, "_list", None)
    if items is None:
        return headers.get(name.decode(), "")  # type: ignore[no-any-return]
    found = None
    for _, key, value in items:
        if key == name:
            if found is not None:  # said twice: joined as httpx2 joins them
                return headers.get(name.decode(), "")  # type: ignore[no-any-return]
            found = value
    if found is None:
        return ""
    return found.decode("ascii") if found.isascii() else headers.get(name.decode(), "")


def has_header(headers: Any, name: bytes) -> bool:
    """Whether header ``name`` (lower case) is there: as ``name in headers``, without its per-call work."""
    items = getattr(headers, "_list", None)
    if items is None:
        return name.decode() in headers
    for _, key, _ in items:
        if key == name:
            return True
    return False


def origin_of(url: httpx2.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
