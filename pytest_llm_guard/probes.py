"""Half-open probes off the test's clock: a breaker's probe sent beside a test's attempt.

Why: when an open breaker's cooldown ends, the next request routed to its endpoint used
to be the probe, and an endpoint that still hangs cost that test a whole attempt
timeout. While another endpoint can take the test's request, the routing layer sends the
request there and hands a copy for the probed endpoint to the session's :class:`Prober`,
which sends it from a thread of its own. The copy's answer only feeds the breaker (closed
again, or re-opened with its cooldown doubled); the test's ledger keeps it as a
:class:`~ledger.Probe`, never as an attempt. With no other endpoint available the probe
is the test's attempt, as before (``routing.py``); so it is for a client with a transport of its
own (a mock) and while a library answers httpx2's network transport (vcrpy's cassettes): a
mocked or replaying suite sends nothing more to the network.

A probe:

- goes out through a network transport of its own (the environment's proxies and
  certificates, as an SDK's default client), below every layer of the pipeline and below
  any patch a cassette library puts on httpx2's transport later (the next test's vcrpy
  cassette): nothing of it reaches a cassette, the seam or the test's budgets. A thread, not a task, so an
  async client's probe does not depend on (or outlive) its event loop;
- is judged as an attempt is: by its status, and for a stream by its first
  content-bearing event, after which it is closed;
- ends within its bound, the cap the test's attempt would have had on that endpoint.
  The session's end waits :data:`SETTLE` seconds for the probes still out, then leaves
  them (their answers would only update a session that is over): their daemon threads
  close their connections when their bound ends, and record nothing after the end.

Under xdist one worker probes per half-open window: the breaker leases the probe through
the state store (``breaker.py``) before anything is sent, as for an attempt.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable

import httpx2

from . import reads
from .clock import REAL
from .dialects import Dialect, decoding, retry_after

THREAD = "pytest-llm-guard probe"
"""How a probe's thread is named (then ``of <endpoint>``)."""
SETTLE = 0.05
"""Seconds the session's end waits for the probes still out before leaving them."""

Report = Callable[[int | None, BaseException | None, float | None], None]
"""Told a probe's answer: its status (None when it failed before one), its error, its Retry-After."""


Send = Callable[[httpx2.HTTPTransport, httpx2.Request], httpx2.Response]
_HTTPX2 = os.path.dirname(httpx2.__file__)


def _httpx2_own(method: object) -> bool:
    code = getattr(method, "__code__", None)
    return code is not None and code.co_filename.startswith(_HTTPX2)


def intercepted() -> bool:
    """Whether a library answers httpx2's network transport now (vcrpy patches it while a cassette is
    active): a probe beside the attempt would then either land in its cassette or leave a suite that
    replays, so the probe is the attempt, as the library expects."""
    return not (
        _httpx2_own(httpx2.HTTPTransport.handle_request) and _httpx2_own(httpx2.AsyncHTTPTransport.handle_async_request)
    )


def copy(addressed: httpx2.Request, body: bytes, bound: float) -> httpx2.Request:
    """The probe's request: the call's request as the probed endpoint must receive it (``Endpoint.address``)
    with its ``body``, nothing of the pipeline's extensions, and every timeout at the probe's ``bound``."""
    limit = None if math.isinf(bound) else bound
    return httpx2.Request(
        addressed.method,
        addressed.url,
        headers=addressed.headers,
        content=body,
        extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), limit)},
    )


def outcome(status: int | None, error: BaseException | None) -> str:
    """A probe's outcome in an attempt's words: ``ok``, ``HTTP <status>`` or the error's name."""
    if error is not None:
        return type(error).__name__
    return f"HTTP {status}" if status is not None and status >= 400 else "ok"


class Prober:
    """The session's probes in flight: each in a daemon thread, left behind at the session's end."""

    def __init__(self) -> None:
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = False

    def send(self, request: httpx2.Request, dialect: Dialect, bound: float, report: Report, *, name: str) -> None:
        """Send ``request`` now, in the background; ``report`` gets its answer (unless the session ended).

        Called while nothing patches httpx2's network send (:func:`intercepted`): the thread keeps that
        send, so a cassette library patching it later (the next test's cassette) never sees the probe.
        """
        network: Send = httpx2.HTTPTransport.handle_request
        args = (request, dialect, bound, report, network)
        thread = threading.Thread(target=self._run, args=args, name=name, daemon=True)
        with self._lock:
            if self._closed:
                return
            self._threads.add(thread)
        thread.start()

    def _run(self, request: httpx2.Request, dialect: Dialect, bound: float, report: Report, network: Send) -> None:
        try:
            answer = ask(request, dialect, bound, network)
            with self._lock:  # the session's end waits for a report under way, never for one after it
                if not self._closed:
                    report(*answer)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the probes out now (at most ``timeout`` seconds); True when none is left."""
        until = None if timeout is None else REAL.now() + timeout
        with self._lock:
            out = list(self._threads)
        for thread in out:
            thread.join(None if until is None else max(0.0, until - REAL.now()))
        return not any(thread.is_alive() for thread in out)

    def close(self) -> None:
        """The session ends: wait :data:`SETTLE` seconds, then record no probe's answer any more."""
        self.wait(SETTLE)
        with self._lock:
            self._closed = True


def ask(
    request: httpx2.Request, dialect: Dialect, bound: float, network: Send
) -> tuple[int | None, BaseException | None, float | None]:
    """Send one probe and judge it as an attempt is judged: its status, a stream's first content.

    Returns the status (None when it failed before one), the error that failed it, the Retry-After
    of an error status. Every read ends within ``bound`` seconds of the start (``reads.py``, where the
    seam is installed; the request's own timeouts are at most ``bound`` everywhere).
    """
    started = REAL.now()
    client = httpx2.Client()  # only for its transports: the environment's proxies and certificates, as an SDK's
    reads.catch_up()  # its transport may be the first to load httpcore2 in this session
    if not math.isinf(bound):
        reads.due(REAL.now, started + bound, f"the probe got no answer within its {bound:.2f} s cap")
    try:
        response = network(client._transport_for_url(request.url), request)  # type: ignore[arg-type]
        try:
            status = response.status_code
            if status >= 400:
                return status, None, retry_after(response)
            return status, _first_content(response, dialect, started + bound), None
        finally:
            response.close()
    except Exception as exc:
        return None, exc, None
    finally:
        reads.clear()
        client.close()


def _first_content(response: httpx2.Response, dialect: Dialect, until: float) -> BaseException | None:
    """A stream is read to its first content-bearing event (what fails before it fails the probe)."""
    reader = decoding(
        dialect.reader(response.headers.get("content-type", "")), response.headers.get("content-encoding", "")
    )
    if not reader.events_expected:
        return None
    for chunk in response.stream:  # type: ignore[union-attr]
        problem = reader.feed(chunk)
        if problem:
            return httpx2.RemoteProtocolError(f"{problem} in the probe's {response.status_code}")
        if reader.content or reader.ended:
            return None
        if REAL.now() > until:
            return httpx2.ReadTimeout("the probe's stream sent no content within its cap")
    problem = reader.finish()
    return httpx2.RemoteProtocolError(f"{problem} in the probe's stream") if problem else None
