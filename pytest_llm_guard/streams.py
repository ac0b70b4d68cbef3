"""Stream budgets: an answer's first content by ``first_token_timeout``, no gap longer than ``idle_timeout``.

A read timeout restarts with every byte, so it never fires on a trickle; one total cap long
enough for a five-minute answer is far too long for a dead endpoint. These two tell "nothing
yet" and "stalled" apart, beside the attempt's cap (``call_timeout``, the deadline).

An attempt that may need one carries a :class:`StreamClock` (``attempt.stream``): a stream of
events, or any attempt where a first-token or idle limit may be set; any other is bounded by its
cap alone (:func:`due_of`). The guard sets its limits,
the seam (``transport.py``) tells it of every chunk and bounds each read by :meth:`StreamClock.due`
(``reads.py``); a replay that keeps recorded time asks :func:`chunk_due` when its next chunk
must be there at the latest. First content is a stream's first content-bearing event (its
dialect says which); for an answer that is not an event stream, its response headers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx2

if TYPE_CHECKING:
    from .ledger import Attempt


class Due:
    """When the next chunk (or the headers) must be there at the latest, the limit that says so, and
    the timeout's message when it is not: formatted only when asked for (most reads never time out),
    and what its ``str()`` is, so a read that ends at ``when`` can carry it unformatted (``reads.py``)."""

    __slots__ = ("when", "cause", "_message", "_args")

    def __init__(self, when: float, cause: str | None, message: Callable[..., str], *args: object) -> None:
        self.when = when
        self.cause = cause
        self._message = message
        self._args = args

    @property
    def message(self) -> str:
        return self._message(*self._args)

    def __str__(self) -> str:
        return self.message


class StreamClock:
    """One attempt's stream budgets, and what has arrived so far."""

    __slots__ = ("attempt", "now", "_lowered", "first_token", "idle", "content", "chunks", "_last", "_asked")

    def __init__(
        self, attempt: Attempt, now: Callable[[], float], *, lowered: Callable[[], None] = lambda: None
    ) -> None:
        """``lowered`` is told when a limit is lowered (the guard moves its timer for the headers)."""
        self.attempt = attempt
        self.now = now
        self._lowered = lowered
        self.first_token: tuple[float, str] | None = None
        """(seconds from the attempt's start to its first content, the limit's name)."""
        self.idle: tuple[float, str] | None = None
        """(the longest gap between two chunks, the limit's name)."""
        self.content = False
        """First content arrived (or, for an answer that is not an event stream, its headers)."""
        self.chunks = 0
        """Chunks arrived: a stream's events, as its dialect counts them, else the body's reads."""
        self._last: float | None = None
        self._asked: float | None = None

    def limit(self, first_token: float | None, idle: float | None, by: str = "") -> None:
        """Lower the limits (never raise them); ``by`` follows each limit's name (`` of endpoint X``)."""
        before = self.first_token, self.idle
        if first_token is not None and (self.first_token is None or first_token < self.first_token[0]):
            self.first_token = (first_token, "first_token_timeout" + by)
        if idle is not None and (self.idle is None or idle < self.idle[0]):
            self.idle = (idle, "idle_timeout" + by)
        if (self.first_token, self.idle) != before:
            self._lowered()

    def asked(self) -> None:
        """The caller asks for the next chunk: a gap is the server's from here, not while the caller
        was busy with the last chunk."""
        self._asked = self.now()

    def arrived(self, chunks: int, content: bool) -> None:
        """A chunk arrived; ``chunks`` counted so far, ``content``: first content has arrived."""
        self._last = self.now()
        self.chunks = chunks
        self.content = self.content or content

    def due(self, *, headers: bool = False) -> Due:
        """The earliest limit on what comes next: the attempt's cap, the first token, the idle gap."""
        attempt = self.attempt
        due = cap_due(attempt, headers)
        if self.first_token is not None and not self.content:
            seconds, by = self.first_token
            if attempt.start + seconds < due.when:
                due = Due(
                    attempt.start + seconds,
                    by,
                    _first_token_message,
                    seconds,
                    by,
                    headers,
                    attempt.endpoint,
                    attempt.model,
                )
        if self.idle is not None and self.chunks and self._last is not None:
            seconds, by = self.idle
            when = max(self._last, self._asked or self._last) + seconds
            if when < due.when:
                due = Due(when, by, _idle_message, seconds, by, self.chunks, attempt.endpoint, attempt.model)
        return due

    def cause_of(self, error: BaseException) -> str | None:
        """The limit whose timeout ``error`` is (its message is one :meth:`due` gave), else None."""
        return _cause(self.due, error)


def cap_due(attempt: Attempt, headers: bool = False) -> Due:
    """The attempt's cap as a limit on its headers (or its body)."""
    return Due(attempt.start + attempt.cap, attempt.cap_by, _cap_message, attempt.cap, attempt.cap_by, headers)


def due_of(attempt: Attempt, *, headers: bool = False) -> Due:
    """The earliest limit on what comes next of ``attempt``: its cap, and its stream clock's limits where it
    has one (an attempt gets one for a stream, or where a first-token or idle limit may be set)."""
    clock = attempt.stream
    return cap_due(attempt, headers) if clock is None else clock.due(headers=headers)  # type: ignore[no-any-return]


def cause_of(attempt: Attempt, error: BaseException) -> str | None:
    """The limit whose timeout ``error`` is (its message is one :func:`due_of` gave), else None."""
    return _cause(functools.partial(due_of, attempt), error)


def _cause(due: Callable[..., Due], error: BaseException) -> str | None:
    text = str(error)
    return next((limit.cause for limit in (due(), due(headers=True)) if text == limit.message), None)


def chunk_due(attempt: Attempt) -> tuple[float, httpx2.ReadTimeout]:
    """When the next chunk of ``attempt`` is due at the latest (its clock's time; ``math.inf``: no limit),
    and the error to raise when it is missed.

    For a replay that keeps recorded time: a chunk recorded later than this is cut here, as
    a live stream would be, and the seam records which limit cut it.
    """
    clock = attempt.stream
    if clock is None:
        return math.inf, httpx2.ReadTimeout("no limit")
    due = clock.due()
    return due.when, httpx2.ReadTimeout(due.message)


def _where(endpoint: str, model: str | None) -> str:
    return f" from {endpoint}" + (f" (model {model})" if model else "")


def _cap_message(cap: float, by: str | None, headers: bool) -> str:
    if headers:
        return (
            f"no response headers within the attempt's {cap:.2f} s cap ({by}); "
            "the server sent its status line and headers too slowly, or not at all"
        )
    return f"the attempt reached its {cap:.2f} s cap ({by}) while the response was still arriving"


def _first_token_message(seconds: float, by: str, headers: bool, endpoint: str, model: str | None) -> str:
    return (
        f"no first token within {_seconds(seconds)} s ({by}){_where(endpoint, model)}; the endpoint "
        + ("sent no response headers" if headers else "sent its headers but no content")
        + f" in time: raise {by.split()[0]} if this model takes longer to start its answer"
    )


def _idle_message(seconds: float, by: str, chunks: int, endpoint: str, model: str | None) -> str:
    return (
        f"stalled {_seconds(seconds)} s after chunk {chunks} ({by}){_where(endpoint, model)}; the answer "
        f"stopped arriving: raise {by.split()[0]} if this endpoint pauses that long mid-answer"
    )


def _seconds(value: float) -> str:
    """5.0 as ``5.0``, 0.05 as ``0.05``: one decimal, or as many as the value has."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"
