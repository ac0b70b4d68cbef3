"""The per-test guard: budget + event log, fed by the transport seam, read by tests and reports."""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import httpx2
import openai
from openai._base_client import AsyncAPIClient, SyncAPIClient

from . import retry, wire
from .budget import Budget, Clock
from .config import Settings
from .errors import LLMGuardInterrupt
from .events import AttemptEvent, Stats

if TYPE_CHECKING:
    from .transport import Layer

ClientT = TypeVar("ClientT", bound=openai.OpenAI | openai.AsyncOpenAI)


class Guard:
    """What the ``llm_guard`` fixture hands a test: time left, stats, and ``guard(client)``."""

    def __init__(
        self,
        settings: Settings,
        *,
        test_id: str,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        async_sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        layers: Sequence[Layer] = (),
    ) -> None:
        self.settings = settings
        self.layers = list(layers)
        self.test_id = test_id
        self.budget = Budget(settings, test_id=test_id, clock=clock)
        self.events: list[AttemptEvent] = []
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._lock = threading.Lock()
        self._backoff_before_next = 0.0
        self._attempt_caps: dict[int, float] = {}

    # -- what tests use -------------------------------------------------------------

    @property
    def model(self) -> str | None:
        return self.settings.model

    @property
    def stats(self) -> Stats:
        return Stats.of(self.snapshot())

    def remaining(self) -> float:
        """Seconds left before this test's deadline (``math.inf`` without one)."""
        return self.budget.remaining()

    def snapshot(self) -> list[AttemptEvent]:
        with self._lock:
            return list(self.events)

    def guard(self, client: ClientT) -> ClientT:
        """A copy of ``client`` whose retries are the guard's (the SDK's own are turned off).

        Works for ``OpenAI``, ``AsyncOpenAI``, ``AzureOpenAI`` and ``AsyncAzureOpenAI``.
        Traffic of unguarded clients is still capped and counted at the transport seam;
        this adds budget-aware retries on top.
        """
        if not isinstance(client, (SyncAPIClient, AsyncAPIClient)):
            raise TypeError(
                f"llm_guard.guard() takes an openai client (OpenAI, AsyncOpenAI, AzureOpenAI, ...), "
                f"got {type(client).__name__}"
            )
        guarded = client.with_options(max_retries=0)
        if isinstance(guarded, AsyncAPIClient):
            guarded._send_request = retry.async_sender(self, guarded._send_request)  # type: ignore[method-assign]
        else:
            guarded._send_request = retry.sync_sender(self, guarded._send_request)  # type: ignore[method-assign]
        return guarded

    # -- what the retry loop uses ---------------------------------------------------

    def sleep(self, seconds: float) -> None:
        self._note_backoff(seconds)
        self._sleep(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self._note_backoff(seconds)
        await self._async_sleep(seconds)

    def _note_backoff(self, seconds: float) -> None:
        with self._lock:
            self._backoff_before_next += seconds

    # -- what the transport seam uses -----------------------------------------------

    def begin(self, request: httpx2.Request) -> AttemptEvent:
        """Check the budget, cap the attempt's timeouts by the deadline, open its event."""
        retry_count = request.headers.get("x-stainless-retry-count", "0")
        is_retry = retry_count.isdigit() and int(retry_count) > 0
        self.budget.check_start(self.snapshot(), new_call=not is_retry)
        with self._lock:
            event = AttemptEvent(
                test=self.test_id,
                endpoint=wire.endpoint_of(request),
                path=request.url.path,
                model=wire.model_of(request),
                start=self._clock(),
                wall_start=time.time(),
                retry=is_retry,
                backoff=self._backoff_before_next,
            )
            self._backoff_before_next = 0.0
            self.events.append(event)
        self.cap_attempt(event, request, self.budget.attempt_timeout())
        return event

    def cap_attempt(self, event: AttemptEvent, request: httpx2.Request, seconds: float) -> None:
        """Lower the attempt's time cap (body included) and its request's timeouts; a layer uses it
        for the call_timeout of the endpoint it chose."""
        cap = min(seconds, self._attempt_caps.get(id(event), seconds))
        self._attempt_caps[id(event)] = cap
        if math.isinf(cap):  # no deadline, no call_timeout: the client's own timeouts stand
            return
        timeouts = request.extensions.get("timeout") or {}
        request.extensions = {
            **request.extensions,
            "timeout": {phase: min(cap, timeouts.get(phase) or cap) for phase in ("connect", "read", "write", "pool")},
        }

    def fail(self, event: AttemptEvent, error: BaseException) -> None:
        """A transport error ended the attempt; raises when the test cannot absorb it."""
        self._finish(event, type(error).__name__, error=str(error) or None)
        if not isinstance(error, LLMGuardInterrupt):
            self._check_failure(event)

    def responded(self, event: AttemptEvent, response: httpx2.Response) -> bool:
        """Headers are in. An error status ends the attempt now; returns whether it has ended."""
        event.status = response.status_code
        if response.status_code < 400:
            return False
        event.retry_after = retry.parse_retry_after(response.headers)
        self._finish(event, f"HTTP {response.status_code}")
        self._check_failure(event)
        return True

    def progress(self, event: AttemptEvent) -> None:
        """A chunk arrived: the per-chunk read timeout restarted, so check the totals here."""
        try:
            self.budget.check_progress(self.snapshot())
        except LLMGuardInterrupt:
            self._finish(event, "deadline", error="cut at the deadline while the body was arriving")
            raise
        cap = self._attempt_caps.get(id(event), 0.0)
        if self._clock() - event.start > cap:
            raise httpx2.ReadTimeout(f"the attempt took longer than its {cap:.2f} s cap (call_timeout or deadline)")

    def succeeded(self, event: AttemptEvent, tokens: int | None) -> None:
        self._finish(event, "ok")
        event.tokens = tokens
        self.budget.check_tokens(self.snapshot())

    def closed_early(self, event: AttemptEvent) -> None:
        """The caller stopped reading the body: the attempt counts as answered."""
        self._finish(event, "ok", error="body not read to the end")

    def _finish(self, event: AttemptEvent, outcome: str, *, error: str | None = None) -> None:
        if event.end is not None:
            return
        event.end = self._clock()
        event.outcome = outcome
        event.error = error
        self._attempt_caps.pop(id(event), None)

    def _check_failure(self, event: AttemptEvent) -> None:
        try:
            self.budget.check_failure(self.snapshot(), event)
        except LLMGuardInterrupt as exc:
            # The message lists every attempt with its error; chaining would print the
            # failed attempt's whole httpcore traceback above it in the test report.
            raise exc from None
