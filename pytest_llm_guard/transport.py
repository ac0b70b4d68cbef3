"""The one seam: every httpx2 request of a guarded test passes through here.

We wrap ``httpx2.Client._send_single_request`` (and the async twin), the step where a
client hands one request to its transport. Sitting above the transport means every
transport is covered — the real one, vcrpy's stubs, mock transports — and a library
that patches transports (vcrpy, respx-style mocks) keeps working underneath us. The
patch is installed when a guarded test starts and removed when it ends; unguarded
tests run the untouched httpx2 code.

Per request: the dialect says whether it is LLM traffic (``dialects/``); the guard
opens its attempt (``guard.py``); the guard's layers run in front of the client's own
transport; the response body is watched as it arrives (deadline and attempt cap per
chunk, usage and the end of a stream at the end).

In a test that is not guarded, the seam only marks an LLM request; whether it left the
process is known where httpcore2's connection pool receives it (:class:`_Live`).
"""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING

import httpx2

from . import worker_reads
from .dialects import Dialect, decoding, dialect_for
from .errors import LLMGuardConfigError, LLMGuardInterrupt
from .ledger import Attempt, Category

if TYPE_CHECKING:
    from .guard import Guard

_guards: list[Guard] = []
"""Active guards, innermost last (a pytester session inside a guarded test nests one)."""
_watchers: list[Callable[[httpx2.Request], None]] = []
"""While a test that is not guarded runs: told of each LLM request that leaves the process (it may
refuse it by raising)."""
_saved: tuple[object, object] | None = None
_UNGUARDED = "pytest_llm_guard.unguarded"
"""``request.extensions`` key of an unguarded LLM request's :class:`_Live` (httpcore2 gets the same dict)."""


def check_seam() -> None:
    """Fail with a usage error, not mid-test, if httpx2 no longer has the method we wrap."""
    if not all(hasattr(cls, "_send_single_request") for cls in (httpx2.Client, httpx2.AsyncClient)):
        raise LLMGuardConfigError(
            f"pytest-llm-guard: httpx2 {httpx2.__version__} has no Client._send_single_request, the seam "
            "the guard wraps. Install the httpx2 version the openai SDK depends on "
            "(pip install 'openai>=3,<4'), or report the new httpx2 release."
        )


def current() -> Guard | None:
    """The guard LLM traffic goes through now, if any."""
    return _guards[-1] if _guards else None


def _patch() -> None:
    global _saved
    if _saved is None:
        _saved = (httpx2.Client._send_single_request, httpx2.AsyncClient._send_single_request)
        httpx2.Client._send_single_request = _send_single_request  # type: ignore[method-assign]
        httpx2.AsyncClient._send_single_request = _send_single_request_async  # type: ignore[method-assign]
        worker_reads.install()


def _unpatch() -> None:
    global _saved
    if not _guards and not _watchers and _saved is not None:
        httpx2.Client._send_single_request, httpx2.AsyncClient._send_single_request = _saved  # type: ignore[method-assign]
        worker_reads.uninstall()
        _saved = None


def activate(guard: Guard) -> None:
    """Route LLM traffic of this process through ``guard`` until :func:`deactivate`."""
    _patch()
    _guards.append(guard)


def deactivate(guard: Guard) -> None:
    """Undo :func:`activate`; the last one out restores httpx2's own methods."""
    _guards.remove(guard)
    _unpatch()


def watch(watcher: Callable[[httpx2.Request], None]) -> None:
    """While a test that is not guarded runs, tell ``watcher`` of its LLM requests that go live
    (nothing else is done)."""
    _patch()
    _watch_the_network()
    _watchers.append(watcher)


def unwatch(watcher: Callable[[httpx2.Request], None]) -> None:
    _watchers.remove(watcher)
    _unpatch()


class _Live:
    """An unguarded LLM request, told to its watcher only if it reaches httpcore2's connection pool.

    The seam sees requests that never leave the process: vcrpy and pytest-recording answer
    from a cassette by replacing httpx2's transports, ``httpx2.MockTransport`` and any
    transport a test installs answer in place of the network transport. All of them answer
    above the pool; only a request httpx2's network transport hands on reaches it. (respx
    and pytest-httpx patch httpcore and httpx, not httpcore2 and httpx2: they never see
    httpx2's traffic.) A transport that reaches the network without httpcore2 is not seen:
    where liveness cannot be known, nothing is said.
    """

    __slots__ = ("request", "watcher")

    def __init__(self, request: httpx2.Request, watcher: Callable[[httpx2.Request], None]) -> None:
        self.request = request
        self.watcher = watcher


def _unguarded(request: httpx2.Request) -> None:
    if _watchers and dialect_for(request) is not None:
        request.extensions[_UNGUARDED] = _Live(request, _watchers[-1])


def _watch_the_network() -> None:
    """Wrap httpcore2's pools once per process: the request of a :class:`_Live` mark is told there.

    Cheap for every other request (one dictionary look-up), so it stays for the session. An
    httpcore2 without these pools leaves requests unseen: nothing is said, rather than a guess.
    """
    import httpcore2

    sync_pool, async_pool = getattr(httpcore2, "ConnectionPool", None), getattr(httpcore2, "AsyncConnectionPool", None)
    if sync_pool is None or async_pool is None or getattr(sync_pool.handle_request, "_llm_guard", False):
        return
    real, real_async = sync_pool.handle_request, async_pool.handle_async_request

    def handle_request(pool: httpcore2.ConnectionPool, request: httpcore2.Request) -> httpcore2.Response:
        live = request.extensions.get(_UNGUARDED)
        if live is not None:
            live.watcher(live.request)
        return real(pool, request)

    async def handle_async_request(
        pool: httpcore2.AsyncConnectionPool, request: httpcore2.Request
    ) -> httpcore2.Response:
        live = request.extensions.get(_UNGUARDED)
        if live is not None:
            live.watcher(live.request)
        return await real_async(pool, request)

    handle_request._llm_guard = handle_async_request._llm_guard = True  # type: ignore[attr-defined]
    sync_pool.handle_request = handle_request  # type: ignore[method-assign]
    async_pool.handle_async_request = handle_async_request  # type: ignore[method-assign]


def _send_single_request(client: httpx2.Client, request: httpx2.Request) -> httpx2.Response:
    guard = current()
    dialect = dialect_for(request) if guard is not None else None
    if dialect is None:
        _unguarded(request)
        return _saved[0](client, request)  # type: ignore[index,operator]
    attempt = guard.begin(request, dialect)  # type: ignore[union-attr]
    guard.await_headers(attempt)  # type: ignore[union-attr]
    try:
        response = _saved[0](guard.pipeline.client_for(client, request, guard.context(attempt)), request)  # type: ignore[index,operator]
    except BaseException as exc:
        guard.headers_in(attempt)  # type: ignore[union-attr]
        guard.fail(attempt, exc)  # type: ignore[union-attr]
        raise
    guard.headers_in(attempt)  # type: ignore[union-attr]
    try:
        ended = guard.responded(attempt, response)  # type: ignore[union-attr]
    except BaseException:  # the test cannot absorb this answer: its connection goes back now
        response.close()
        raise
    if not ended:
        _watch(response, guard, attempt, dialect, _WatchedStream)  # type: ignore[union-attr,arg-type]
    return response


async def _send_single_request_async(client: httpx2.AsyncClient, request: httpx2.Request) -> httpx2.Response:
    guard = current()
    dialect = dialect_for(request) if guard is not None else None
    if dialect is None:
        _unguarded(request)
        return await _saved[1](client, request)  # type: ignore[index,operator]
    attempt = guard.begin(request, dialect)  # type: ignore[union-attr]
    guard.await_headers_async(attempt)  # type: ignore[union-attr]
    try:
        response = await _saved[1](guard.pipeline.client_for(client, request, guard.context(attempt)), request)  # type: ignore[index,operator]
    except asyncio.CancelledError:
        if not guard.headers_late(attempt):  # type: ignore[union-attr]
            guard.headers_in(attempt)  # type: ignore[union-attr]
            guard.fail(attempt, asyncio.CancelledError())  # type: ignore[union-attr]
            raise
        error = guard.late_headers_error(attempt)  # type: ignore[union-attr]
        guard.fail(attempt, error)  # type: ignore[union-attr]
        raise error from None
    except BaseException as exc:
        guard.headers_in(attempt)  # type: ignore[union-attr]
        guard.fail(attempt, exc)  # type: ignore[union-attr]
        raise
    guard.headers_in(attempt)  # type: ignore[union-attr]
    try:
        ended = guard.responded(attempt, response)  # type: ignore[union-attr]
    except BaseException:
        await response.aclose()
        raise
    if not ended:
        _watch(response, guard, attempt, dialect, _WatchedAsyncStream)  # type: ignore[union-attr,arg-type]
    return response


def _watch(response: httpx2.Response, guard: Guard, attempt: Attempt, dialect: Dialect, kind: type[_Watch]) -> None:
    """Watch the body as it arrives; a body a mock transport handed over whole (decoded) is judged at once."""
    if response.is_stream_consumed:
        kind(response, guard, attempt, dialect, decoded=True).whole(response.content)
    else:
        response.stream = kind(response, guard, attempt, dialect)  # type: ignore[assignment]


class LLMMalformedResponse(httpx2.RemoteProtocolError):
    """A successful status whose body is not what the API sends: JSON that does not parse, a broken event.

    A transport error, so the SDK and the guard's retries treat it like a dropped connection
    (retried while nothing has reached the caller yet); never written to a cassette.
    """

    category = Category.MALFORMED


class LLMStreamCut(httpx2.RemoteProtocolError):
    """A stream that ended before its dialect's end event: the answer is partial."""

    category = Category.CUT


class LLMStreamError(httpx2.RemoteProtocolError):
    """A stream whose server sent its API's error event after the 200 (an upstream failing mid-answer):
    the attempt failed, like a dropped connection."""

    category = Category.SERVER


class _Watch:
    """A body being read: deadline and cap per chunk; checked by its dialect; usage counted at the end."""

    def __init__(
        self, response: httpx2.Response, guard: Guard, attempt: Attempt, dialect: Dialect, *, decoded: bool = False
    ) -> None:
        self._inner = response.stream
        reader = dialect.reader(response.headers.get("content-type", ""))
        self._reader = reader if decoded else decoding(reader, response.headers.get("content-encoding", ""))
        self._guard = guard
        self._attempt = attempt
        self._status = response.status_code
        self._done = False

    def _chunk(self, chunk: bytes) -> None:
        if self._attempt.first_chunk is None:
            self._attempt.first_chunk = self._guard.since_start(self._attempt)
        self._guard.progress(self._attempt)
        problem = self._reader.feed(chunk)
        if problem:
            error = LLMStreamError if self._reader.error_event else LLMMalformedResponse
            raise error(f"{problem} in a {self._status} from {self._attempt.endpoint}")

    def _error(self, exc: BaseException) -> BaseException:
        """The body broke off: fail the attempt, naming a cut stream as such. Returns what to raise."""
        if (
            self._reader.events_expected
            and isinstance(exc, httpx2.TransportError)
            and not isinstance(exc, (httpx2.TimeoutException, LLMMalformedResponse, LLMStreamCut, LLMStreamError))
        ):
            exc = LLMStreamCut(
                f"stream from {self._attempt.endpoint} ended before its end event after "
                f"{self._reader.events} events ({type(exc).__name__}: {exc})"
            )
        self._done = True
        self._guard.fail(self._attempt, exc)
        return exc

    def _end(self) -> None:
        self._done = True
        problem = self._reader.finish()
        if problem:
            error: BaseException = (
                LLMMalformedResponse(f"{problem} in a {self._status} from {self._attempt.endpoint}")
                if self._reader.ended
                else LLMStreamCut(f"{problem}, from {self._attempt.endpoint}")
            )
            self._guard.fail(self._attempt, error)
            raise error
        self._guard.succeeded(self._attempt, self._reader.usage)

    def whole(self, body: bytes) -> None:
        try:
            self._chunk(body)
        except (Exception, LLMGuardInterrupt) as exc:
            raised = self._error(exc)
            raise raised from None
        self._end()

    def _closed(self) -> None:
        """After the inner stream closed (a cassette records on close, before the attempt ends)."""
        if self._done:
            return
        if self._reader.events_expected and self._reader.ended:
            self._end()  # the SDK closes a stream at its end event, before the transport's end
        else:
            self._done = True
            self._guard.closed_early(self._attempt)


class _WatchedStream(_Watch, httpx2.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:  # type: ignore[union-attr]
                self._chunk(chunk)
                yield chunk
        except (Exception, LLMGuardInterrupt) as exc:
            raised = self._error(exc)
            if raised is exc:
                raise
            raise raised from None  # the message says it all; httpcore's frames add nothing
        self._end()

    def close(self) -> None:
        try:
            self._inner.close()  # type: ignore[union-attr]
        finally:
            self._closed()


class _WatchedAsyncStream(_Watch, httpx2.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:  # type: ignore[union-attr]
                self._chunk(chunk)
                yield chunk
        except (Exception, LLMGuardInterrupt) as exc:
            raised = self._error(exc)
            if raised is exc:
                raise
            raise raised from None
        self._end()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()  # type: ignore[union-attr]
        finally:
            self._closed()
