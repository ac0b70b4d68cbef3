"""Everything API-specific, one object per dialect: the rest of the package asks, never knows.

A dialect answers the questions the guard, the retry loop, the cassettes, the breakers
and the reports have about a request, a response or a client: is it LLM traffic, which
route and model, how long the server asks us to wait and whether to retry at all, how
many tokens a body used and whether a stream reached its end, which headers and
environment variables carry keys, how an endpoint of one of its kinds is addressed, and
how its SDK's client hands each attempt to the guard's retry loop.

:data:`DIALECTS` is in claim order: Anthropic before OpenAI, since both SDKs tag their
requests with the same SDK headers. Adding an API is one module here plus its routes in the
fault server (``fault/``).

Light to import (no SDK, no httpx2 at load), so configuration can validate endpoint
kinds before any guarded test runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import default_dialect
from .anthropic import AnthropicDialect
from .base import BodyReader, Dialect, Usage, decoding, header, origin_of, parse_retry_after, request_json
from .openai import OpenAIDialect

if TYPE_CHECKING:
    from collections.abc import Iterable

    import httpx2

    from ..ledger import Attempt

__all__ = [
    "DEFAULT_KIND",
    "DIALECTS",
    "ENDPOINT_KINDS",
    "KEY_HEADERS",
    "BodyReader",
    "Dialect",
    "Usage",
    "decoding",
    "dialect_for",
    "for_client",
    "for_kind",
    "key_variables",
    "load_sdks",
    "of_response",
    "retry_after",
    "hear",
    "header",
    "origin_of",
    "parse_retry_after",
    "request_json",
]

DIALECTS: tuple[Dialect, ...] = (AnthropicDialect(), OpenAIDialect())
DEFAULT_KIND = default_dialect.KIND
"""The kind of the endpoint a session has when it configures none, and of the default model."""


def dialect_for(request: httpx2.Request) -> Dialect | None:
    """The dialect that claims ``request``, or None: not LLM traffic, the guard lets it pass."""
    for dialect in DIALECTS:
        if dialect.claims(request):
            return dialect
    return None


def for_kind(kind: str) -> Dialect:
    """The dialect that addresses endpoints of ``kind``."""
    return next(d for d in DIALECTS if kind in d.kinds)


def named(name: str | None) -> Dialect | None:
    """The dialect called ``name`` (an attempt records its dialect by name), or None."""
    return _BY_NAME.get(name)  # type: ignore[arg-type]


_BY_NAME = {d.name: d for d in DIALECTS}
"""Routing asks for an attempt's dialect by its name on every attempt it judges."""


def for_client(client: Any) -> Dialect | None:
    """The dialect whose SDK built ``client``, or None."""
    return next((d for d in DIALECTS if d.owns_client(client)), None)


_HTTP = Dialect()
"""HTTP's own rules, for a response no dialect claims."""


def of_response(response: httpx2.Response) -> Dialect:
    """The dialect of the request ``response`` answers (HTTP's plain rules when none claims it, or a
    response was made without one)."""
    request = getattr(response, "_request", None)
    return (dialect_for(request) if request is not None else None) or _HTTP


def retry_after(response: httpx2.Response) -> float | None:
    """Seconds the server asks to wait before the next attempt, read by the response's dialect."""
    return of_response(response).retry_after(response.headers)


def hear(attempt: Attempt, response: httpx2.Response) -> httpx2.Response:
    """Note on the attempt what its answer's headers say: the status and, for an error, the
    Retry-After, parsed here once; the retry policy, the routing layer and the guard read
    ``attempt.retry_after``. Called where an answer is made: the transport, or a cassette's replay."""
    attempt.status = response.status_code
    attempt.retry_after = retry_after(response) if response.status_code >= 400 else None
    return response


def load_sdks(kinds: Iterable[str]) -> None:
    """Import the installed SDKs of these endpoint kinds (their client fixtures build clients of them).

    Only those: an SDK the suite imports itself is loaded at collection, and one nobody uses
    would cost every session its import time (the anthropic SDK's is over a second).
    """
    import importlib

    wanted = set(kinds)
    for dialect in DIALECTS:
        if wanted.isdisjoint(dialect.kinds):
            continue
        try:
            importlib.import_module(dialect.sdk)
        except ImportError:
            continue  # an optional SDK (the anthropic extra) not installed


def key_variables() -> tuple[str, ...]:
    """Every dialect's environment variables that hold API keys."""
    return tuple(name for d in DIALECTS for name in d.key_variables)


ENDPOINT_KINDS: tuple[str, ...] = tuple(kind for d in DIALECTS for kind in d.kinds)
KEY_HEADERS: frozenset[str] = frozenset().union(*(d.key_headers for d in DIALECTS))
