"""Faults chosen by the URL, so any client (another process, a notebook, curl) can meet one.

A request whose path starts with a fault prefix (``/hang/v1/chat/completions``,
``/s429-2/v1/...``) gets that fault; the rest of the path is answered as usual. A client
picks its fault by its base URL (``http://127.0.0.1:8765/hang/v1``) and needs no plan;
paths without a prefix still follow the server's plan. Counting prefixes
(``s429-2``, ``flaky-3``) count the requests under that exact prefix since the server
started or was last reset; ``limit-N`` counts them per second of the clock.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass

from .faults import Fault, Ok, count

__all__ = ["PREFIXES", "Prefix", "parse", "split"]

_OK = Ok()
_NUMBER = r"\d+(?:\.\d+)?"


@dataclass(frozen=True)
class Prefix:
    """One fault prefix as parsed: the fault, and which of its requests meet it."""

    text: str  # as written in the path, e.g. "s429-2"; requests are counted per text
    fault: Fault
    first: int | None = None  # only the first N requests meet the fault, then answers are normal
    every: int | None = None  # requests 1, N+1, 2N+1, ... meet the fault, the others are normal
    per_second: int | None = None  # the first N requests of each second are normal, the rest meet the fault

    def fault_for(self, n: int, in_second: int = 1) -> Fault:
        """The fault of the ``n``-th request (from 1) under this prefix, the ``in_second``-th of its second."""
        if self.per_second is not None:
            return self.fault if in_second > self.per_second else _OK
        if self.first is not None and n > self.first:
            return _OK
        if self.every is not None and (n - 1) % self.every:
            return _OK
        return self.fault


@dataclass(frozen=True)
class _Form:
    """One kind of prefix: its syntax (for --help and messages), its pattern, the Prefix it builds."""

    syntax: str
    regex: str
    build: Callable[[re.Match[str]], Prefix]
    meaning: str


def _status(m: re.Match[str]) -> Prefix:
    return Prefix(m[0], Fault.status(int(m[1])), first=None if m[2] is None else int(m[2]))


def _limit(m: re.Match[str]) -> Prefix:
    limit = count(f"/{m[0]}: N", int(m[1]), 1)
    message = f"Rate limit reached: {limit} requests per second (fault prefix /{m[0]})"
    return Prefix(m[0], Fault.status(429, message=message), per_second=limit)


def _flaky(m: re.Match[str]) -> Prefix:
    return Prefix(m[0], Fault.status(503), every=count(f"/{m[0]}: N", int(m[1]), 1))


PREFIXES: tuple[_Form, ...] = (
    _Form("hang", "hang", lambda m: Prefix(m[0], Fault.hang()), "read the request, never answer"),
    _Form("delay-S", rf"delay-({_NUMBER})", lambda m: Prefix(m[0], Fault.ok(float(m[1]))), "answer after S seconds"),
    _Form("sCODE[-N]", r"s(\d{3})(?:-(\d+))?", _status, "HTTP error CODE; with N only the first N requests"),
    _Form("flaky-N", r"flaky-(\d+)", _flaky, "HTTP 503 for requests 1, N+1, 2N+1, ...; the others answer"),
    _Form("limit-N", r"limit-(\d+)", _limit, "HTTP 429 beyond N requests in the same second (a rate-limited API)"),
    _Form(
        "trickle[-S]",
        rf"trickle(?:-({_NUMBER}))?",
        lambda m: Prefix(m[0], Fault.trickle(float(m[1] or 0.05), headers=True)),
        "the whole answer, head included, 1 byte every S seconds (0.05): no read timeout fires",
    ),
    _Form(
        "trickle-body[-S]",
        rf"trickle-body(?:-({_NUMBER}))?",
        lambda m: Prefix(m[0], Fault.trickle(float(m[1] or 0.05))),
        "the head at once, then the body 1 byte every S seconds (0.05)",
    ),
    _Form(
        "stall-first",
        "stall-first",
        lambda m: Prefix(m[0], Fault.stall(0)),
        "the head at once, then no chunk of the body: a model that never starts its answer",
    ),
    _Form(
        "stall-after-N",
        r"stall-after-(\d+)",
        lambda m: Prefix(m[0], Fault.stall(int(m[1]))),
        "the head and N stream events, then nothing: an answer stalled midway",
    ),
    _Form(
        "paced-M",
        r"paced-(\d+)",
        lambda m: Prefix(m[0], Fault.paced(int(m[1]) / 1000)),
        "the head at once, then one stream event every M milliseconds: slow but steady",
    ),
    _Form("malformed", "malformed", lambda m: Prefix(m[0], Fault.malformed()), "200 whose body is not JSON"),
    _Form(
        "cut[-N]",
        r"cut(?:-(\d+))?",
        lambda m: Prefix(m[0], Fault.cut_stream(int(m[1] or 1))),
        "N stream events (1), then the connection drops",
    ),
    _Form(
        "stream-error[-N]",
        r"stream-error(?:-(\d+))?",
        lambda m: Prefix(m[0], Fault.stream_error(int(m[1] or 1))),
        "N stream events (1), then the API's error event for a 529 (overloaded)",
    ),
    _Form(
        "reset[-N]",
        r"reset(?:-(\d+))?",
        lambda m: Prefix(m[0], Fault.reset(int(m[1] or 0))),
        "TCP RST after N bytes of the answer (0)",
    ),
)


def parse(segment: str) -> Prefix | None:
    """The prefix a path segment names, None if it names none; ValueError for one that is out of range."""
    for form in PREFIXES:
        found = re.fullmatch(form.regex, segment)
        if found is not None:
            return form.build(found)
    return None


def split(path: str) -> tuple[Prefix | None, str]:
    """``/s429-2/v1/models`` -> (the s429-2 prefix, ``/v1/models``); a path without one comes back whole."""
    first, slash, rest = path.removeprefix("/").partition("/")
    prefix = parse(first)
    return (prefix, slash + rest) if prefix is not None else (None, path)


def unknown(segment: str) -> str:
    """What to say about a first path segment that is no prefix, in front of a path the server answers."""
    names = [re.sub(r"-[A-Z]+$", "", f.syntax.split("[")[0]) for f in PREFIXES]  # "delay-S" -> "delay"
    close = difflib.get_close_matches(segment, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"/{segment} is not a fault prefix; {hint}the prefixes are {', '.join(f.syntax for f in PREFIXES)}"
