"""The one seam: every httpx2 request of a guarded test passes through here.

We wrap ``httpx2.Client._send_single_request`` (and the async twin), the step where a
client hands one request to its transport. Sitting above the transport means every
transport is covered — the real one, vcrpy's stubs, mock transports — and a library
that patches transports (vcrpy, respx-style mocks) keeps working underneath us. The
patch is installed when a guarded test starts and removed when it ends; unguarded
tests run the untouched httpx2 code.

Per request: the dialect says whether it is LLM traffic (``dialects/``); the guard
opens its attempt (``guard.py``); the guard's layers run in front of the client's own
transport; the response body is watched as it arrives (deadline, attempt cap and stream budgets
per chunk, usage and the end of a stream at the end).

A streamed answer is read ahead up to its first content-bearing event (its dialect says
which) where the transport answered, below the layers (:class:`_Ahead`): an error event, a
cut or a missed ``first_token_timeout`` before it fails the attempt there, where routing,
the SDK's retries and the guard's treat it like a dropped connection, since nothing has
reached the caller yet. What was read is then handed on unchanged, and the rest as it comes.

In a test that is not guarded, the seam only marks an LLM request; whether it left the
process is known where httpcore2's connection pool receives it (:class:`_Live`).
"""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import asyncio
import math
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx2

from . import reads, streams
from .dialects import Dialect, decoding, dialect_for, header
from .errors import LLMGuardConfigError, LLMGuardInterrupt
from .ledger import Attempt, Category

if TYPE_CHECKING:
    from .guard import Guard
    from .streams import Due, StreamClock

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
        reads.install()


def _unpatch() -> None:
    global _saved
    if not _guards and not _watchers and _saved is not None:
        httpx2.Client._send_single_request, httpx2.AsyncClient._send_single_request = _saved  # type: ignore[method-assign]
        reads.uninstall()
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
    guard = _guards[-1] if _guards else None  # current(), without its call: every request of the test asks
    dialect = dialect_for(request) if guard is not None else None
    if dialect is None:
        _unguarded(request)
        return _saved[0](client, request)  # type: ignore[index,operator]
    if reads.pending:  # httpcore2 was not loaded when the seam went in: it may be now (a client built since)
        reads.catch_up()
    attempt = guard.begin(request, dialect)  # type: ignore[union-attr]
    guard.await_headers(attempt)  # type: ignore[union-attr]

    def ahead(response: httpx2.Response) -> httpx2.Response:
        guard.headers_in(attempt)  # type: ignore[union-attr]
        reading = _ahead(response, guard, attempt, dialect)  # type: ignore[arg-type]
        return response if reading is None else reading.read()

    try:
        view = guard.pipeline.client_for(  # type: ignore[union-attr]
            client,
            request,
            lambda network: guard.context(attempt, network),  # type: ignore[union-attr]
            ahead=ahead,
        )
        response = _saved[0](view, request)  # type: ignore[index,operator]
    except BaseException as exc:
        guard.headers_in(attempt)  # type: ignore[union-attr]
        guard.fail(attempt, exc)  # type: ignore[union-attr]
        raise
    if attempt.headers_timer is not None:  # a layer answered (the transport's answer stopped it already)
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
    guard = _guards[-1] if _guards else None
    dialect = dialect_for(request) if guard is not None else None
    if dialect is None:
        _unguarded(request)
        return await _saved[1](client, request)  # type: ignore[index,operator]
    if reads.pending:
        reads.catch_up()
    attempt = guard.begin(request, dialect)  # type: ignore[union-attr]
    guard.await_headers_async(attempt)  # type: ignore[union-attr]

    async def ahead(response: httpx2.Response) -> httpx2.Response:
        guard.headers_in(attempt)  # type: ignore[union-attr]
        reading = _ahead(response, guard, attempt, dialect)  # type: ignore[arg-type]
        return response if reading is None else await reading.read_async()

    try:
        view = guard.pipeline.client_for(  # type: ignore[union-attr]
            client,
            request,
            lambda network: guard.context(attempt, network),  # type: ignore[union-attr]
            ahead_async=ahead,
        )
        response = await _saved[1](view, request)  # type: ignore[index,operator]
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
    if attempt.headers_timer is not None:  # a layer answered (the transport's answer stopped it already)
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


_END = b"pytest_llm_guard.end"
"""What the next read returns at the end of a body (a marker no chunk is)."""


class _Reading:
    """One body read chunk by chunk: its dialect's reader judges each chunk, each read ends at the first
    limit due (the attempt's cap, its first token, the idle gap: ``streams.py``)."""

    def __init__(
        self, response: httpx2.Response, guard: Guard, attempt: Attempt, dialect: Dialect, *, decoded: bool
    ) -> None:
        self._inner = response.stream
        reader = dialect.reader(header(response.headers, b"content-type"))
        self._reader = reader if decoded else decoding(reader, header(response.headers, b"content-encoding"))
        self._attempt = attempt
        self._status = response.status_code
        self._now = guard.clock.now
        self._fixed: Due | None = None
        """The one limit on every read of a body that is not a stream of events, when no idle gap is
        limited: the attempt's cap, the same for each read (a stream's limits move with its chunks)."""
        if self._reader.events_expected:
            self._clock: StreamClock | None = guard.stream_clock(attempt)
        else:
            self._clock = clock = attempt.stream
            if clock is not None:
                clock.content = True  # an answer that is not a stream of events begins with its headers
            if clock is None or clock.idle is None:
                self._fixed = streams.due_of(attempt)
        self._reads = 0
        self._chunks: Any = None
        """The one iterator over the inner stream."""

    def _next(self) -> bytes:
        """The next chunk (or :data:`_END`), its read ending at the first limit due (the caller asks for it
        now: a gap is the server's from here)."""
        self._chunks = self._chunks or iter(self._inner)  # type: ignore[call-overload]
        due = self._fixed or self._due()
        if math.isinf(due.when):
            return next(self._chunks, _END)
        reads.due(self._now, due.when, due)
        try:
            return next(self._chunks, _END)
        finally:
            reads.clear()

    async def _next_async(self) -> bytes:
        self._chunks = self._chunks or self._inner.__aiter__()  # type: ignore[union-attr]
        due = self._fixed or self._due()
        if not math.isinf(due.when):
            reads.due(self._now, due.when, due)
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return _END
        finally:
            reads.clear()

    def _due(self) -> Due:
        """The limit on the next read of a stream (asked for now: a gap is the server's from here)."""
        self._clock.asked()  # type: ignore[union-attr]
        return self._clock.due()  # type: ignore[no-any-return,union-attr]

    def _judge(self, chunk: bytes, now: float) -> None:
        """Feed a chunk that arrived at ``now`` to the reader; raises what is wrong with the body so far."""
        if self._attempt.first_chunk is None:
            self._attempt.first_chunk = now - self._attempt.start
        problem = self._reader.feed(chunk)
        self._reads += 1
        if self._fixed is None:  # no limit moves with the chunks of a body read under a fixed one
            self._clock.arrived(  # type: ignore[union-attr]
                self._reader.events if self._reader.events_expected else self._reads, self._reader.content
            )
        if problem:
            error = LLMStreamError if self._reader.error_event else LLMMalformedResponse
            raise error(f"{problem} in a {self._status} from {self._attempt.endpoint}")

    def _named(self, exc: BaseException) -> BaseException:
        """The body broke off: a stream cut short is named as such."""
        if (
            self._reader.events_expected
            and isinstance(exc, httpx2.TransportError)
            and not isinstance(exc, (httpx2.TimeoutException, LLMMalformedResponse, LLMStreamCut, LLMStreamError))
        ):
            return LLMStreamCut(
                f"stream from {self._attempt.endpoint} ended before its end event after "
                f"{self._reader.events} events ({type(exc).__name__}: {exc})"
            )
        return exc

    def _unfinished(self) -> BaseException | None:
        """The body ended: what is wrong with it as a whole, if anything."""
        problem = self._reader.finish()
        if not problem:
            return None
        if self._reader.ended:
            return LLMMalformedResponse(f"{problem} in a {self._status} from {self._attempt.endpoint}")
        return LLMStreamCut(f"{problem}, from {self._attempt.endpoint}")


def _ahead(response: httpx2.Response, guard: Guard, attempt: Attempt, dialect: Dialect) -> _Ahead | None:
    """A stream still to be read, to be read ahead; None for any other answer, which is handed on as it is."""
    events = dialect.streams(header(response.headers, b"content-type"))
    if events and response.status_code < 400 and not response.is_stream_consumed:
        return _Ahead(response, guard, attempt, dialect)
    attempt.read_ahead = (guard.clock.now(), ())
    if not events and attempt.stream is not None:
        attempt.stream.content = True  # an answer that is not a stream of events begins with its headers
    return None


class _Ahead(_Reading, httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A stream read ahead to its first content where the transport answered, below every layer.

    What fails before the first content-bearing event (its dialect says which: an error
    event, a cut, a missed ``first_token_timeout``) is raised there, so the routing layer
    feeds it to the endpoint's health and fails over, the cassette layer records nothing,
    and the seam fails the attempt before anything reaches the caller. The chunks read are
    then handed on unchanged, followed by the rest; the seam's :class:`_Watch` judges them all.
    """

    def __init__(self, response: httpx2.Response, guard: Guard, attempt: Attempt, dialect: Dialect) -> None:
        super().__init__(response, guard, attempt, dialect, decoded=False)
        self._response = response
        self._read: list[bytes] = []
        self._arrived: list[float] = []
        attempt.read_ahead = (self._now(), self._arrived)

    def _waiting(self) -> bool:
        reader = self._reader
        return self._status < 400 and reader.events_expected and not (reader.content or reader.ended)

    def _took(self, chunk: bytes) -> bool:
        """Keep a chunk read ahead; False at the end of the body."""
        if chunk is _END:
            ended = self._unfinished()
            if ended is not None:
                raise ended
            return False
        self._read.append(chunk)
        now = self._now()
        self._arrived.append(now)
        self._judge(chunk, now)
        return True

    def read(self) -> httpx2.Response:
        if not self._waiting() or self._response.is_stream_consumed:
            return self._response
        try:
            while self._waiting() and self._took(self._next()):
                pass
        except BaseException as exc:
            self._response.close()
            if not isinstance(exc, Exception):
                raise
            raise self._named(exc) from None
        self._response.stream = self
        return self._response

    async def read_async(self) -> httpx2.Response:
        if not self._waiting() or self._response.is_stream_consumed:
            return self._response
        try:
            while self._waiting() and self._took(await self._next_async()):
                pass
        except BaseException as exc:
            await self._response.aclose()
            if not isinstance(exc, Exception):
                raise
            raise self._named(exc) from None
        self._response.stream = self
        return self._response

    def __iter__(self) -> Iterator[bytes]:
        yield from self._read
        self._read = []
        yield from self._chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._read:
            yield chunk
        self._read = []
        async for chunk in self._chunks:
            yield chunk

    def close(self) -> None:
        self._inner.close()  # type: ignore[union-attr]

    async def aclose(self) -> None:
        await self._inner.aclose()  # type: ignore[union-attr]


class _Watch(_Reading):
    """A body being read by the caller: deadline, cap and stream budgets per chunk; checked by its
    dialect; usage counted at the end."""

    def __init__(
        self, response: httpx2.Response, guard: Guard, attempt: Attempt, dialect: Dialect, *, decoded: bool = False
    ) -> None:
        super().__init__(response, guard, attempt, dialect, decoded=decoded)
        self._guard = guard
        self._done = False
        self._response = weakref.ref(response)

    def _chunk(self, chunk: bytes) -> None:
        self._judge(chunk, self._guard.progress(self._attempt))

    def _error(self, exc: BaseException) -> BaseException:
        """The body broke off: fail the attempt, naming a cut stream as such. Returns what to raise."""
        exc = self._named(exc)
        self._done = True
        self._guard.fail(self._attempt, exc)
        return exc

    def _end(self) -> None:
        self._done = True
        error = self._unfinished()
        if error is not None:
            self._guard.fail(self._attempt, error)
            raise error
        self._guard.succeeded(self._attempt, self._reader.usage)
        response = self._response()
        if self._reader.parsed is not None and response is not None:
            response.json = _Parsed(self._reader.parsed, self._response)  # type: ignore[method-assign]

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


class _Parsed:
    """A watched JSON body's ``response.json``: the first call without arguments gets the object the
    watcher parsed (the SDK's own parse of the same bytes, made once); any other parses the body anew."""

    __slots__ = ("_parsed", "_response")

    def __init__(self, parsed: Any, response: weakref.ref[httpx2.Response]) -> None:
        self._parsed = parsed
        self._response = response

    def __call__(self, **kwargs: Any) -> Any:
        parsed, self._parsed = self._parsed, None
        if parsed is None or kwargs:
            return httpx2.Response.json(self._response(), **kwargs)  # type: ignore[arg-type]
        return parsed


class _WatchedStream(_Watch, httpx2.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        try:
            while (chunk := self._next()) is not _END:
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
            while (chunk := await self._next_async()) is not _END:
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
