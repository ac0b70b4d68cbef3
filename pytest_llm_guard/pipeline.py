"""The request pipeline: what a guarded request meets, in one order, built once per test.

The order, outermost first, and why each stage sits where it does::

    guarded client's retry loop (retry.py)
        outside the seam: each retry is a new attempt, which the seam opens, budgets and caps
      -> the seam (transport.py): opens the attempt; the budget (budget.py) says no or caps it
        one place for the limits: every attempt passes it, the SDK's own retries and the
        application's loops included, whoever made them
        -> cassette layer (cassettes/layer.py)
            outside routing: a replay needs no endpoint, so it spends no breaker probe
          -> routing layer (routing.py): endpoint and breaker
              next to the network: only what goes out is fed to an endpoint's health
            -> the client's own transport (vcrpy's stubs or mocks included) -> network
      <- the answer's status and Retry-After are parsed once, by its dialect, into the attempt
         (``dialects.hear``) where it is made: here, or by the cassette's replay; a stream is
         read ahead to its first content here (the seam's ``ahead``), so what fails before it
         fails the attempt inside every layer: routing fails over, the cassette records nothing
      <- the seam watches the body: deadline and cap per chunk, usage at the end

:func:`build` makes the chain for a test once; :meth:`Pipeline.client_for` hands the seam a
view of the client whose transport runs it, per attempt, without rebuilding anything: one small
object per attempt is both the view and its transport.

A stage gets an :class:`AttemptContext`: the attempt's record, the test's clock, and the
time left and caps as numbers and one narrow action (lower this attempt's cap). It never
gets the guard, so no stage can call back up into what called it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import httpx2

from .clock import Clock
from .deferred import NETWORK
from .dialects import hear
from .ledger import Attempt, Ledger

Send = Callable[[httpx2.Request], httpx2.Response]
AsyncSend = Callable[[httpx2.Request], Awaitable[httpx2.Response]]


class AttemptContext(NamedTuple):
    """What a stage may know and do about one attempt (built by the seam, per attempt).

    A named tuple: immutable like a frozen dataclass, and made at a third of its cost (each attempt makes one).
    """

    attempt: Attempt
    """The typed record of the attempt; a stage writes on it what it alone knows."""
    clock: Clock
    """The test's clock: a stage that waits (a Retry-After, a paced replay) waits on it."""
    remaining: Callable[[], float]
    """Seconds left before the test's deadline (``math.inf`` without one)."""
    attempt_cap: Callable[[], float]
    """The cap an attempt started now would get: the deadline's time left or ``call_timeout``."""
    cap: Callable[[httpx2.Request, float, str], None]
    """Lower this attempt's cap (body included) to ``seconds``, named after the limit that set it."""
    ledger: Ledger
    """The test's attempts so far, read-only here: a refusal tells their story."""
    network: bool = True
    """The client sends through httpx2's own network transport, not a mock: only then may a breaker's
    probe go beside the attempt, over the network (``probes.py``)."""


class Layer(Protocol):
    """Something between the seam and the transport (cassettes, routing).

    A layer sees one attempt at the transport level: it may answer it itself (a replay,
    an ``httpx2.Response`` whose stream is not read yet), refuse it (raise an ``httpx2``
    error or an ``LLMGuardInterrupt``), rewrite it, or pass it on with ``send``. The seam
    has already opened the attempt; a layer records on it what it alone knows
    (source, endpoint, failover).
    """

    def handle(self, request: httpx2.Request, ctx: AttemptContext, send: Send) -> httpx2.Response: ...

    async def handle_async(self, request: httpx2.Request, ctx: AttemptContext, send: AsyncSend) -> httpx2.Response: ...


@dataclass(frozen=True)
class Pipeline:
    """A test's layers, outermost first, fixed for the test."""

    layers: tuple[Layer, ...] = ()

    def client_for(
        self,
        client: object,
        request: httpx2.Request,
        context: Callable[[bool], AttemptContext],
        *,
        ahead: Callable[[httpx2.Response], httpx2.Response] | None = None,
        ahead_async: Callable[[httpx2.Response], Awaitable[httpx2.Response]] | None = None,
    ) -> object:
        """The client as httpx2 sees it, with the layers in front of its transport.

        httpx2 keeps doing its own work around the transport (response.request, cookies,
        elapsed time), so a response a layer makes itself is a complete httpx2 response.
        ``context`` makes the attempt's context, told whether the client's transport is the network's.
        ``ahead`` (``ahead_async``) gets each response the transport itself makes, before any layer.
        """
        inner = client._transport_for_url(request.url)  # type: ignore[attr-defined]
        ctx = context(isinstance(inner, NETWORK))
        return _AttemptClient(client, inner, self.layers, ctx, ahead, ahead_async)


def build(*, cassette: Layer | None = None, routing: Layer | None = None) -> Pipeline:
    """The chain, in its one order (see the module's docstring): cassette outside routing."""
    return Pipeline(tuple(layer for layer in (cassette, routing) if layer is not None))


class _AttemptClient(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """Stands in for a client inside ``_send_single_request`` for one attempt, and is the transport it
    hands out there: the layers, innermost the client's own transport (vcrpy's stubs and mocks included).

    One object per attempt for both roles: httpx2 asks the client for its transport, then sends through it.
    """

    __slots__ = ("_client", "_inner", "_layers", "_ctx", "_ahead", "_ahead_async")

    def __init__(
        self,
        client: object,
        inner: object,
        layers: tuple[Layer, ...],
        ctx: AttemptContext,
        ahead: Callable[[httpx2.Response], httpx2.Response] | None,
        ahead_async: Callable[[httpx2.Response], Awaitable[httpx2.Response]] | None,
    ) -> None:
        self._client = client
        self._inner = inner
        self._layers = layers
        self._ctx = ctx
        self._ahead = ahead
        self._ahead_async = ahead_async

    # -- the client's part ------------------------------------------------------------

    def _transport_for_url(self, url: httpx2.URL) -> _AttemptClient:
        return self

    # What httpx2's ``_send_single_request`` reads of every answer, forwarded without a failed look-up
    # first (``__getattr__`` runs only after one, which raises and catches an AttributeError).
    @property
    def cookies(self) -> object:
        return self._client.cookies  # type: ignore[attr-defined]

    @property
    def _default_encoding(self) -> object:
        return self._client._default_encoding  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    # -- the transport's part ---------------------------------------------------------

    def handle_request(self, request: httpx2.Request, depth: int = 0) -> httpx2.Response:
        if depth == len(self._layers):
            response = hear(self._ctx.attempt, self._inner.handle_request(request))  # type: ignore[attr-defined]
            return response if self._ahead is None else self._ahead(response)
        return self._layers[depth].handle(request, self._ctx, lambda r: self.handle_request(r, depth + 1))

    async def handle_async_request(self, request: httpx2.Request, depth: int = 0) -> httpx2.Response:
        if depth == len(self._layers):
            response = hear(self._ctx.attempt, await self._inner.handle_async_request(request))  # type: ignore[attr-defined]
            return response if self._ahead_async is None else await self._ahead_async(response)
        return await self._layers[depth].handle_async(
            request, self._ctx, lambda r: self.handle_async_request(r, depth + 1)
        )
