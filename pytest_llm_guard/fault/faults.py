"""The fault values: what the server does with one request, checked when they are built.

Values only: no sockets and no API formats here. The server applies them
(``server.py``); how an error or a broken body looks on the wire is the dialect's
business (``openai_api.py``, ``anthropic_api.py``), so the same ``Fault.status(429)``
becomes an OpenAI error body on an OpenAI route and Anthropic's on ``/v1/messages``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CutStream",
    "Fault",
    "Hang",
    "Malformed",
    "Ok",
    "Paced",
    "Reset",
    "Stall",
    "Status",
    "StreamError",
    "Trickle",
]


def seconds(what: str, value: Any) -> float:
    """``value`` as a float of seconds, or a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def count(what: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


def error_code(what: str, value: Any) -> int:
    """``value`` as an HTTP error code (400 to 599), or a ValueError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
        raise ValueError(
            f"{what} needs an HTTP error code from 400 to 599, got {value!r}; use Fault.ok() for a normal answer"
        )
    return value


def header_pairs(what: str, headers: Any) -> tuple[tuple[str, str], ...]:
    """``headers`` (a mapping or pairs) as a tuple of pairs, or a ValueError naming ``what``."""
    pairs = tuple(headers.items()) if isinstance(headers, Mapping) else tuple(headers)
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str) or re.search(r"[\r\n]", name + value):
            raise ValueError(f"{what} header {name!r}: {value!r} must be str without CR/LF")
    return pairs


@dataclass(frozen=True)
class Fault:
    """What the server does with one request. Build values with the constructors below."""

    def __post_init__(self) -> None:
        if type(self) is Fault:
            raise TypeError("Fault() is abstract; build faults with Fault.ok(), Fault.status(503), ...")

    @staticmethod
    def ok(delay: float = 0.0, *, headers: Mapping[str, str] | None = None) -> Ok:
        """Answer normally after ``delay`` seconds: a slow but healthy upstream. ``headers`` are
        added to the answer (a ``Set-Cookie`` as a CDN sends one, say)."""
        return Ok(delay, headers or ())

    @staticmethod
    def hang() -> Hang:
        """Read the request, never answer, until the client gives up, ``reset()`` or ``stop()``."""
        return Hang()

    @staticmethod
    def status(
        code: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        should_retry: bool | None = None,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
    ) -> Status:
        """Answer with an HTTP error and the API's error body (rate limits, outages, auth)."""
        return Status(code, retry_after, retry_after_ms, should_retry, headers or (), message)

    @staticmethod
    def reset(after_bytes: int = 0) -> Reset:
        """Abort the connection with a TCP RST after ``after_bytes`` bytes of the real response."""
        return Reset(after_bytes)

    @staticmethod
    def trickle(interval: float = 0.05, chunk_size: int = 1, *, headers: bool = False) -> Trickle:
        """Send the body ``chunk_size`` bytes every ``interval`` s: a stalling upstream. With
        ``headers=True`` the status line and headers trickle too (no client read timeout fires)."""
        return Trickle(interval, chunk_size, headers)

    @staticmethod
    def malformed() -> Malformed:
        """Answer 200 with a body that is not valid JSON (or an SSE event that is not)."""
        return Malformed()

    @staticmethod
    def cut_stream(after_chunks: int) -> CutStream:
        """Send ``after_chunks`` SSE events, then drop the connection before the stream's last event."""
        return CutStream(after_chunks)

    @staticmethod
    def stall(after_chunks: int = 0) -> Stall:
        """Send the head at once and the body's first ``after_chunks`` chunks (a stream's events), then
        nothing until the client gives up: a model that never starts (0), or stops mid-answer. Never the
        whole answer: a body that is not a stream stalls after its head."""
        return Stall(after_chunks)

    @staticmethod
    def paced(interval: float) -> Paced:
        """Send the head at once, then each chunk of the body (a stream's events) ``interval`` s after the
        one before: a slow but steady model."""
        return Paced(interval)

    @staticmethod
    def stream_error(after_chunks: int = 1, code: int = 529, *, message: str | None = None) -> StreamError:
        """Answer 200, send ``after_chunks`` SSE events, then the API's error event for HTTP ``code``
        (Anthropic's ``event: error`` with ``overloaded_error`` for 529) and end the stream: an upstream
        that fails after it began to answer. A request that is not streamed gets the HTTP error instead."""
        return StreamError(after_chunks, code, message)


@dataclass(frozen=True)
class Ok(Fault):
    """See Fault.ok()."""

    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "delay", seconds("Fault.ok(delay=...)", self.delay))
        object.__setattr__(self, "headers", header_pairs("Fault.ok", self.headers))


@dataclass(frozen=True)
class Hang(Fault):
    """See Fault.hang()."""


@dataclass(frozen=True)
class Status(Fault):
    """See Fault.status()."""

    code: int
    retry_after: float | str | None = None
    retry_after_ms: float | None = None
    should_retry: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()
    message: str | None = None

    def __post_init__(self) -> None:
        error_code("Fault.status(code)", self.code)
        if self.retry_after is not None and not isinstance(self.retry_after, str):
            seconds("Fault.status(retry_after=...)", self.retry_after)
        if self.retry_after_ms is not None:
            seconds("Fault.status(retry_after_ms=...)", self.retry_after_ms)
        if self.should_retry is not None and not isinstance(self.should_retry, bool):
            raise ValueError(f"Fault.status(should_retry=...) must be True, False or None, not {self.should_retry!r}")
        object.__setattr__(self, "headers", header_pairs("Fault.status", self.headers))
        if isinstance(self.retry_after, str):
            header_pairs("Fault.status", [("retry-after", self.retry_after)])

    @property
    def error_message(self) -> str:
        """The message the error body carries."""
        return self.message or f"Injected fault: HTTP {self.code}"

    def response_headers(self) -> list[tuple[str, str]]:
        """The headers this fault adds to the error answer, in the order they are sent."""
        headers = []
        if self.retry_after is not None:
            headers.append(("retry-after", str(self.retry_after)))
        if self.retry_after_ms is not None:
            headers.append(("retry-after-ms", str(self.retry_after_ms)))
        if self.should_retry is not None:
            headers.append(("x-should-retry", "true" if self.should_retry else "false"))
        return headers + list(self.headers)


@dataclass(frozen=True)
class Reset(Fault):
    """See Fault.reset()."""

    after_bytes: int = 0

    def __post_init__(self) -> None:
        count("Fault.reset(after_bytes=...)", self.after_bytes, 0)


@dataclass(frozen=True)
class Trickle(Fault):
    """See Fault.trickle()."""

    interval: float = 0.05
    chunk_size: int = 1
    headers: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", seconds("Fault.trickle(interval=...)", self.interval))
        count("Fault.trickle(chunk_size=...)", self.chunk_size, 1)
        if not isinstance(self.headers, bool):
            raise ValueError(f"Fault.trickle(headers=...) must be True or False, got {self.headers!r}")


@dataclass(frozen=True)
class Malformed(Fault):
    """See Fault.malformed()."""


@dataclass(frozen=True)
class CutStream(Fault):
    """See Fault.cut_stream()."""

    after_chunks: int

    def __post_init__(self) -> None:
        count("Fault.cut_stream(after_chunks)", self.after_chunks, 0)


@dataclass(frozen=True)
class Stall(Fault):
    """See Fault.stall()."""

    after_chunks: int = 0

    def __post_init__(self) -> None:
        count("Fault.stall(after_chunks)", self.after_chunks, 0)


@dataclass(frozen=True)
class Paced(Fault):
    """See Fault.paced()."""

    interval: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", seconds("Fault.paced(interval)", self.interval))


@dataclass(frozen=True)
class StreamError(Fault):
    """See Fault.stream_error()."""

    after_chunks: int = 1
    code: int = 529
    message: str | None = None

    def __post_init__(self) -> None:
        count("Fault.stream_error(after_chunks)", self.after_chunks, 0)
        error_code("Fault.stream_error(code=...)", self.code)

    @property
    def error_message(self) -> str:
        """The message the error event carries."""
        return self.message or f"Injected fault: HTTP {self.code} error in the middle of the stream"
