"""The one seam: every httpx2 request of a guarded test passes through here.

We wrap ``httpx2.Client._send_single_request`` (and the async twin), the step where a
client hands one request to its transport. Sitting above the transport means every
transport is covered — the real one, vcrpy's stubs, mock transports — and a library
that patches transports (vcrpy, respx-style mocks) keeps working underneath us. The
patch is installed when a guarded test starts and removed when it ends; unguarded
tests run the untouched httpx2 code.
"""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

import httpx2

from . import wire
from .errors import LLMGuardConfigError, LLMGuardInterrupt
from .events import AttemptEvent

if TYPE_CHECKING:
    from .guard import Guard

_BODY_LIMIT = 8 * 1024 * 1024
"""Bytes of a response kept to read its ``usage``; larger bodies are not counted."""

Send = Callable[[httpx2.Request], httpx2.Response]
AsyncSend = Callable[[httpx2.Request], Awaitable[httpx2.Response]]


class Layer(Protocol):
    """Something between the guard and the transport (cassettes, endpoint breakers).

    A layer sees one attempt at the transport level: it may answer it itself (a replay,
    an ``httpx2.Response`` whose stream is not read yet), refuse it (raise an ``httpx2``
    error or an ``LLMGuardInterrupt``), rewrite it, or pass it on with ``send``. The guard
    has already opened the attempt's event; a layer may annotate it.
    """

    def handle(self, request: httpx2.Request, event: AttemptEvent, send: Send) -> httpx2.Response: ...

    async def handle_async(self, request: httpx2.Request, event: AttemptEvent, send: AsyncSend) -> httpx2.Response: ...


ClientT = TypeVar("ClientT", httpx2.Client, httpx2.AsyncClient)

_guards: list[Guard] = []
"""Active guards, innermost last (a pytester session inside a guarded test nests one)."""
_saved: tuple[object, object] | None = None


def check_seam() -> None:
    """Fail the session at start, not mid-test, if httpx2 no longer has the method we wrap."""
    if not all(hasattr(cls, "_send_single_request") for cls in (httpx2.Client, httpx2.AsyncClient)):
        raise LLMGuardConfigError(
            f"pytest-llm-guard: httpx2 {httpx2.__version__} has no Client._send_single_request, the seam "
            "the guard wraps. Install the httpx2 version the openai SDK depends on "
            "(pip install 'openai>=3,<4'), or report the new httpx2 release."
        )


def current() -> Guard | None:
    """The guard LLM traffic goes through now, if any."""
    return _guards[-1] if _guards else None


def activate(guard: Guard) -> None:
    """Route LLM traffic of this process through ``guard`` until :func:`deactivate`."""
    global _saved
    if not _guards:
        _saved = (httpx2.Client._send_single_request, httpx2.AsyncClient._send_single_request)
        httpx2.Client._send_single_request = _send_single_request  # type: ignore[method-assign]
        httpx2.AsyncClient._send_single_request = _send_single_request_async  # type: ignore[method-assign]
    _guards.append(guard)


def deactivate(guard: Guard) -> None:
    """Undo :func:`activate`; the last guard out restores httpx2's own methods."""
    global _saved
    _guards.remove(guard)
    if not _guards and _saved is not None:
        httpx2.Client._send_single_request, httpx2.AsyncClient._send_single_request = _saved  # type: ignore[method-assign]
        _saved = None


def _original_sync(client: httpx2.Client, request: httpx2.Request) -> httpx2.Response:
    assert _saved is not None
    return _saved[0](client, request)  # type: ignore[operator]


async def _original_async(client: httpx2.AsyncClient, request: httpx2.Request) -> httpx2.Response:
    assert _saved is not None
    return await _saved[1](client, request)  # type: ignore[operator]


def _send_single_request(client: httpx2.Client, request: httpx2.Request) -> httpx2.Response:
    guard = current()
    if guard is None or not wire.is_llm_request(request):
        return _original_sync(client, request)
    event = guard.begin(request)
    try:
        response = _original_sync(_through_layers(client, request, guard, event), request)
    except BaseException as exc:
        guard.fail(event, exc)
        raise
    return _watched(guard, event, response, _WatchedStream)


async def _send_single_request_async(client: httpx2.AsyncClient, request: httpx2.Request) -> httpx2.Response:
    guard = current()
    if guard is None or not wire.is_llm_request(request):
        return await _original_async(client, request)
    event = guard.begin(request)
    try:
        response = await _original_async(_through_layers(client, request, guard, event), request)
    except BaseException as exc:
        guard.fail(event, exc)
        raise
    return _watched(guard, event, response, _WatchedAsyncStream)


def _watched(guard: Guard, event: AttemptEvent, response: httpx2.Response, stream: type[_Watch]) -> httpx2.Response:
    """An error status has ended the attempt already; any other body is watched as it arrives."""
    if not guard.responded(event, response):
        response.stream = stream(response, guard, event)  # type: ignore[assignment]
    return response


def _through_layers(client: ClientT, request: httpx2.Request, guard: Guard, event: AttemptEvent) -> ClientT:
    """The client as httpx2 sees it, with the guard's layers in front of its transport.

    httpx2 keeps doing its own work around the transport (response.request, cookies,
    elapsed time), so a response a layer makes itself is a complete httpx2 response.
    """
    if not guard.layers:
        return client
    return _ClientView(client, _LayeredTransport(client._transport_for_url(request.url), guard.layers, event))  # type: ignore[return-value]


class _ClientView:
    """Stands in for a client inside ``_send_single_request``, handing out another transport."""

    def __init__(self, client: httpx2.Client | httpx2.AsyncClient, transport: _LayeredTransport) -> None:
        self._client = client
        self._transport = transport

    def _transport_for_url(self, url: httpx2.URL) -> _LayeredTransport:
        return self._transport

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)


class _LayeredTransport(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """Runs the layers, innermost the client's own transport (vcrpy's stubs and mocks included)."""

    def __init__(self, inner: object, layers: list[Layer], event: AttemptEvent) -> None:
        self._inner = inner
        self._layers = layers
        self._event = event

    def handle_request(self, request: httpx2.Request, depth: int = 0) -> httpx2.Response:
        if depth == len(self._layers):
            return self._inner.handle_request(request)  # type: ignore[attr-defined]
        return self._layers[depth].handle(request, self._event, lambda r: self.handle_request(r, depth + 1))

    async def handle_async_request(self, request: httpx2.Request, depth: int = 0) -> httpx2.Response:
        if depth == len(self._layers):
            return await self._inner.handle_async_request(request)  # type: ignore[attr-defined]
        return await self._layers[depth].handle_async(
            request, self._event, lambda r: self.handle_async_request(r, depth + 1)
        )


class _Watch:
    """Shared bookkeeping of a body being read: deadline per chunk, usage at the end."""

    def __init__(self, response: httpx2.Response, guard: Guard, event: AttemptEvent) -> None:
        self._inner = response.stream
        self._content_type = response.headers.get("content-type", "")
        self._guard = guard
        self._event = event
        self._body = bytearray()
        self._done = False

    def _chunk(self, chunk: bytes) -> None:
        if len(self._body) <= _BODY_LIMIT:
            self._body += chunk
        self._guard.progress(self._event)

    def _error(self, exc: BaseException) -> None:
        self._done = True
        self._guard.fail(self._event, exc)

    def _end(self) -> None:
        self._done = True
        tokens = wire.tokens_of(self._content_type, bytes(self._body)) if len(self._body) <= _BODY_LIMIT else None
        self._guard.succeeded(self._event, tokens)

    def _closing(self) -> None:
        if self._done:
            return
        if wire.stream_finished(self._content_type, bytes(self._body)):
            self._end()
        else:
            self._done = True
            self._guard.closed_early(self._event)


class _WatchedStream(_Watch, httpx2.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:  # type: ignore[union-attr]
                self._chunk(chunk)
                yield chunk
        except (Exception, LLMGuardInterrupt) as exc:
            self._error(exc)
            raise
        self._end()

    def close(self) -> None:
        self._closing()
        self._inner.close()  # type: ignore[union-attr]


class _WatchedAsyncStream(_Watch, httpx2.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:  # type: ignore[union-attr]
                self._chunk(chunk)
                yield chunk
        except (Exception, LLMGuardInterrupt) as exc:
            self._error(exc)
            raise
        self._end()

    async def aclose(self) -> None:
        self._closing()
        await self._inner.aclose()  # type: ignore[union-attr]
