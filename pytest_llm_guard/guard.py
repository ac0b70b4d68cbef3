"""The per-test guard: the ledger, the budget and the test's pipeline, fed by the transport seam.

What a request meets, in order, is written down once, in ``pipeline.py``.

Only the seam and the layers write attempts; the budget, the retry policy and
reports read them.
"""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import asyncio
import functools
import logging
import math
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import httpx2

from . import reads, report, retry, streams
from .alarm import Alarm
from .budget import Budget
from .clock import REAL, Clock
from .config import Settings
from .dialects import Dialect, Usage, key_variables, origin_of
from .errors import LLMGuardInterrupt
from .ledger import CALL, Attempt, Call, Category, Ledger, Stats
from .pipeline import AttemptContext, Pipeline
from .prices import Prices
from .scrub import Scrubber
from .streams import StreamClock

if TYPE_CHECKING:
    from .endpoints import Endpoint, EndpointSet
    from .learned import Learned, Limits

log = logging.getLogger("pytest_llm_guard")

CLIENT_TIMEOUT = "pytest_llm_guard.client_timeout"
"""Request extension: the timeouts the client asked for, before the guard capped them."""

ClientT = TypeVar("ClientT")


class Guard:
    """What the ``llm_guard`` fixture hands a test: time left, stats, and ``guard(client)``."""

    def __init__(
        self,
        settings: Settings,
        *,
        test_id: str,
        clock: Clock = REAL,
        scrubber: Scrubber | None = None,
        prices: Prices | None = None,
        on_attempt: Callable[[Attempt], None] | None = None,
        endpoints: EndpointSet | None = None,
        learned: Learned | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        """The test's one clock: its budget, alarm, layers, backoff and ledger read and wait on it."""
        self._now = clock.now
        """Its reading, made once: every attempt's stream clock keeps it."""
        self.endpoints = endpoints
        """The configured endpoints: every attempt to one carries its name, refused ones too."""
        self.test_id = test_id
        self.scrubber = scrubber or Scrubber(
            headers=settings.scrub_headers,
            body_fields=settings.scrub_body_fields,
            patterns=settings.scrub_patterns,
            key_variables=(*key_variables(), *(e.api_key_env for e in endpoints.endpoints if e.api_key_env))
            if endpoints is not None
            else key_variables(),
        )
        """Everything this test writes for people or to disk passes it (``scrub.py``)."""
        self.prices = prices or Prices()
        self.learned = learned
        """Per-model limits learned from earlier runs (``learned.py``), when configured."""
        self.on_attempt = on_attempt
        """Called with every attempt as it ends (the ``pytest_llm_guard_attempt`` hook)."""
        self._limited = (
            settings.first_token_timeout is not None
            or settings.idle_timeout is not None
            or endpoints is None
            or any(e.first_token_timeout is not None or e.idle_timeout is not None for e in endpoints.endpoints)
        )
        """Whether a first-token or idle limit may be set on an attempt by the settings or an endpoint (or,
        when ``learned`` is set, by what was learned): only then does every attempt get a stream clock at
        its start, told to move the header timer when a limit is lowered; otherwise only a stream gets one
        (:meth:`stream_clock`)."""
        self.ledger = Ledger(test_id)
        self.budget = Budget(settings, self.ledger, clock=clock)
        self.pipeline = Pipeline()
        """The layers between the seam and the transport, built once for the test (``pipeline.build``)."""
        self.alarm: Alarm | None = None
        """The main thread's SIGALRM schedule while the test runs, where the platform has one."""
        self._deadline_deferred = False
        self._main_thread = threading.main_thread().ident
        """The thread the alarm interrupts (read per test: a fork makes its own main thread)."""
        self._threads_before = {thread.ident for thread in threading.enumerate()}
        """Threads alive before the test: the backstop names those the test started and waits for."""
        self.interruptible = False
        """True while the test's own code runs (setup, call, teardown): the alarm raises only then,
        never inside pytest's bookkeeping between phases."""

    def arm(self, alarm: Alarm) -> None:
        """The deadline binds the whole test: at the deadline, and at deadline + ``timeout_grace``
        for code that swallowed the first interruption."""
        self.alarm = alarm
        deadline = self.settings.deadline
        if deadline is None:
            return
        alarm.at(self.budget.started + deadline, self._deadline_passed)
        alarm.at(self.budget.started + deadline + self.settings.timeout_grace, self._backstop)

    def _deadline_passed(self) -> None:
        if not self.interruptible:
            return
        in_flight = [a for a in self.ledger.snapshot() if a.end is None]
        if in_flight and _event_loop_running() and not self._deadline_deferred:
            # An async attempt is cut inside its own task (its timeouts are capped at the deadline),
            # where the test's code can see the exception; raising here would break the event loop.
            self._deadline_deferred = True
            self.alarm.at(self.clock.now() + _ASYNC_DEFERRAL, self._deadline_passed)  # type: ignore[union-attr]
            return
        for attempt in in_flight:
            attempt.cause = "deadline"
            self._close(attempt, "cut", Category.CUT, error="cut at the deadline")
        arriving = any(a.status is not None for a in in_flight)
        error = self.budget.exceeded(
            "deadline",
            "the deadline passed while the response was still arriving"
            if arriving
            else "the deadline passed during the attempt"
            if in_flight
            else "the deadline passed while the test was running its own code, outside any LLM call "
            "(a sleep, a backoff, a loop)",
            in_call=bool(in_flight),
        )
        if _event_loop_running():
            error.awaiting = _awaiting()
        raise error

    def _backstop(self) -> None:
        if not self.interruptible:
            return
        import pytest

        grace = self.settings.timeout_grace
        started = [t.name for t in threading.enumerate() if not t.daemon and t.ident not in self._threads_before]
        why = (
            f"{report.plural(len(started), 'thread')} it started still {'runs' if len(started) == 1 else 'run'} "
            f"({', '.join(started)}), and its main thread is most likely waiting for "
            f"{'it' if len(started) == 1 else 'them'} (a join, an executor's shutdown), unless it caught the "
            "deadline's LLMBudgetExceeded. A worker thread's LLM attempts are cut at their cap, but its own code "
            "(sleeps, loops) is not interrupted: give that code its own timeout, or wait for it with one "
            "(`future.result(timeout=...)`, `thread.join(timeout=...)`)"
            if started
            else "the code under test caught the deadline's LLMBudgetExceeded (an `except BaseException:`?) "
            "or blocked the signal"
        )
        pytest.fail(
            f"Timeout: {self.test_id} is still running {grace:g} s after its LLM deadline "
            f"(deadline={self.settings.deadline:g} s): {why}. "
            "pytest-llm-guard's backstop at deadline + timeout_grace ended it.",
            pytrace=False,
        )

    def outlived(self) -> str | None:
        """The failure of a test still running past deadline + ``timeout_grace``: its code swallowed
        the deadline and the backstop, so it must not pass whatever it returned."""
        deadline, grace = self.settings.deadline, self.settings.timeout_grace
        elapsed = self.budget.elapsed()
        if deadline is None or elapsed <= deadline + grace:
            return None
        message = report.budget_message(
            "deadline",
            f"the test ran on {elapsed - deadline:.2f} s past its deadline, beyond the backstop at "
            f"timeout_grace={grace:g} s after it",
            self.settings,
            self.ledger,
            elapsed=elapsed,
            in_call=False,
        )
        return (
            f"LLMBudgetExceeded: {message}\n"
            "Its code swallowed LLMBudgetExceeded (an `except BaseException:` or a bare `except:` around "
            "the code the deadline interrupted), so it ran on and returned; pytest-llm-guard fails it. "
            "Catch `Exception` there, or re-raise pytest_llm_guard.LLMGuardInterrupt."
        )

    # -- what tests use -------------------------------------------------------------

    @property
    def model(self) -> str | None:
        return self.settings.model

    @property
    def stats(self) -> Stats:
        return self.ledger.stats()

    @property
    def events(self) -> list[Attempt]:
        """Every attempt so far, oldest first (a copy)."""
        return self.ledger.snapshot()

    def remaining(self) -> float:
        """Seconds left before this test's deadline (``math.inf`` without one)."""
        return self.budget.remaining()

    def guard(self, client: ClientT) -> ClientT:
        """A copy of ``client`` whose retries are the guard's (the SDK's own are turned off).

        Works for the clients of every dialect's SDK (``dialects/``: the openai and anthropic
        clients, sync and async).
        Traffic of unguarded clients is still capped and counted at the transport seam;
        this adds budget-aware retries on top.
        """
        return retry.guarded_client(self._retry_context(), client, routed=False)

    def fixture_client(self, client: ClientT) -> ClientT:
        """:meth:`guard`, and the client's calls are routed over the configured endpoints."""
        return retry.guarded_client(self._retry_context(), client, routed=True)

    def _retry_context(self) -> retry.RetryContext:
        return retry.RetryContext(self.test_id, self.settings, self.budget.remaining, self.clock)

    # -- what the retry loop uses ---------------------------------------------------

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)

    async def async_sleep(self, seconds: float) -> None:
        await self.clock.async_sleep(seconds)

    # -- what the seam uses ---------------------------------------------------------

    def context(self, attempt: Attempt, network: bool = True) -> AttemptContext:
        """What the pipeline's stages may know and do about ``attempt`` (never the guard itself)."""
        return AttemptContext(
            attempt,
            self.clock,
            self.budget.remaining,
            self.budget.attempt_cap_seconds,
            lambda request, seconds, by: self.cap(attempt, request, seconds, by),
            self.ledger,
            network,
        )

    def begin(self, request: httpx2.Request, dialect: Dialect) -> Attempt:
        """Open the attempt, check the budget, cap the attempt's timeouts by the time left."""
        url = request.url
        self.scrubber.learn(request.headers, str(url) if url.query else "")
        call: Call | None = request.extensions.get(CALL)
        by, max_retries = None, None
        if call is None:  # a client the guard does not wrap: its SDK's own retries are told by a header
            number = dialect.retry_number(request) + 1
            kind = "first" if number == 1 else "retry"
            call_number = self.ledger.new_call() if number == 1 else max(1, self.ledger.calls)
            if number > 1:
                by, max_retries = "sdk", dialect.max_retries()
        else:
            call.attempts += 1
            number = call.attempts
            kind = "first" if number == 1 else "failover" if call.failover_to else "retry"
            if number == 1:
                call.number = self.ledger.new_call()
            else:
                by = "guard"
            call_number = call.number
        origin, path, owner = self._place(url)
        start = self.clock.now()
        attempt = Attempt(
            test=self.test_id,
            call=call_number,
            number=number,
            kind=kind,
            endpoint=origin,
            path=path,
            model=dialect.model_of(request),
            start=start,
            wall_start=self.clock.wall(),
            by=by,
            sdk_max_retries=max_retries,
            endpoint_name=owner.name if owner is not None else None,
            dialect=dialect.name,
        )
        if call is not None:
            call.last = attempt
        if self._limited or self.learned is not None:
            attempt.stream = StreamClock(attempt, self._now, lowered=functools.partial(self._rearm, attempt))
        first_token, idle = self.settings.first_token_timeout, self.settings.idle_timeout
        if first_token is not None or idle is not None:
            attempt.stream.limit(first_token, idle)
        refusal = self.budget.refuse_start(new_call=kind == "first", now=start)
        if refusal is not None:
            attempt.source = "refused"
            self.ledger.open(attempt)
            self._close(attempt, "LLMBudgetExceeded", Category.REFUSED, error=f"{refusal[0]} budget spent")
            raise self.budget.exceeded(*refusal)
        self.ledger.open(attempt)
        # The cap reads the clock anew: the header timer it sets falls due just before the deadline's own
        # alarm, so a hang is cut there as a ReadTimeout of the attempt.
        self.cap(attempt, request, *self.budget.attempt_cap())
        if self.learned is not None:
            self.cap_learned(attempt, request)
        return attempt

    def _place(self, url: httpx2.URL) -> tuple[str, str, Endpoint | None]:
        """Where a request goes (origin, path, configured endpoint): the endpoints keep it per URL."""
        if self.endpoints is not None:
            return self.endpoints.place(url)
        return origin_of(url), url.path, None

    def stream_clock(self, attempt: Attempt) -> StreamClock:
        """The attempt's stream clock, made now for a stream of an attempt that had none (no limit of its
        could be lowered: see ``_limited``)."""
        clock = attempt.stream
        if clock is None:
            clock = attempt.stream = StreamClock(attempt, self._now)
        return clock  # type: ignore[no-any-return]

    def learned_limits(self, attempt: Attempt) -> Limits | None:
        """What earlier runs learned of the attempt's model at its endpoint (``learned.py``), if anything."""
        if self.learned is None:
            return None
        return self.learned.limits(attempt.endpoint_name or attempt.endpoint, attempt.model)

    def cap_learned(self, attempt: Attempt, request: httpx2.Request) -> None:
        """The model's learned call_timeout and first_token_timeout, where each is below the limit already
        set: never above the marker's, the configuration's or the time left."""
        limits = self.learned_limits(attempt)
        if limits is None:
            return
        if limits.call is not None:
            from .learned import LEARNED_CALL_TIMEOUT  # loaded already: the session read the limits

            self.cap(attempt, request, limits.call, LEARNED_CALL_TIMEOUT)
        if limits.first_token is not None and attempt.stream is not None:
            attempt.stream.limit(limits.first_token, None, " (learned)")

    def cap(self, attempt: Attempt, request: httpx2.Request, seconds: float, by: str | None) -> None:
        """Lower the attempt's time cap (body included) and its request's timeouts.

        ``by`` names the limit, so an attempt cut by it can say which; a layer lowers the cap
        for the call_timeout of the endpoint it chose.
        """
        if seconds >= attempt.cap:
            return
        # The client's own timeouts, kept apart from our caps: a guarded client sends the same
        # request object again on a retry, and each attempt is capped afresh.
        extensions = request.extensions
        timeouts = extensions.get(CLIENT_TIMEOUT)
        if timeouts is None:
            timeouts = extensions[CLIENT_TIMEOUT] = extensions.get("timeout") or {}
        longest = -math.inf  # the client's longest timeout; none at all: the cap binds only below infinity
        for given in timeouts.values():
            if given is not None and given > longest:
                longest = given
        attempt.cap, attempt.cap_by = seconds, by
        attempt.cap_binds = seconds < (longest if longest != -math.inf else math.inf)
        if attempt.headers_timer is not None:
            self._rearm(attempt)
        capped = {}  # each phase's timeout, never above the cap (a loop: this runs on every attempt)
        for phase in ("connect", "read", "write", "pool"):
            given = timeouts.get(phase)
            capped[phase] = given if given and given < seconds else seconds
        request.extensions = {**extensions, "timeout": capped}

    def _rearm(self, attempt: Attempt) -> None:
        """A limit was lowered while the headers are awaited: their timer moves to the new time."""
        if isinstance(attempt.headers_timer, int) or attempt.headers_timer == _WORKER:
            self.headers_in(attempt)
            self.await_headers(attempt)
        elif isinstance(attempt.headers_timer, asyncio.TimerHandle):
            self.headers_in(attempt)
            self.await_headers_async(attempt)

    def await_headers(self, attempt: Attempt) -> None:
        """A status line and headers trickling in never time out by themselves: cut them at the cap (or
        the first token's limit), by the alarm in the main thread, by the reads themselves in any
        other (``reads.py``)."""
        due = streams.due_of(attempt, headers=True)
        if math.isinf(due.when):
            return
        if threading.get_ident() != self._main_thread:
            reads.due(self.clock.now, due.when, due)
            attempt.headers_timer = _WORKER
        elif self.alarm is not None:
            attempt.headers_timer = self.alarm.at(due.when, lambda: self._headers_late(attempt))

    def await_headers_async(self, attempt: Attempt) -> None:
        due = streams.due_of(attempt, headers=True)
        if math.isinf(due.when):
            return
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        if task is None:
            return

        def late() -> None:
            attempt.headers_timer = "late"
            task.cancel()

        attempt.headers_timer = loop.call_at(loop.time() + due.when - self.clock.now(), late)

    def headers_in(self, attempt: Attempt) -> None:
        timer, attempt.headers_timer = attempt.headers_timer, None
        if timer is None:
            return
        if timer == _WORKER:
            reads.clear()
        elif isinstance(timer, int) and self.alarm is not None:
            self.alarm.cancel(timer)
        elif isinstance(timer, asyncio.TimerHandle):
            timer.cancel()

    def headers_late(self, attempt: Attempt) -> bool:
        """After an async cancellation: was it the header timer's? (then the task was not cancelled)"""
        if attempt.headers_timer != "late":
            return False
        attempt.headers_timer = None
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):  # Python 3.11+: the cancellation was ours
            task.uncancel()
        return True

    def late_headers_error(self, attempt: Attempt) -> httpx2.ReadTimeout:
        due = streams.due_of(attempt, headers=True)
        attempt.cause = due.cause
        return httpx2.ReadTimeout(due.message)

    def _headers_late(self, attempt: Attempt) -> None:
        attempt.headers_timer = None
        raise self.late_headers_error(attempt)

    def fail(self, attempt: Attempt, error: BaseException) -> None:
        """An error ended the attempt; raises when the test cannot absorb it.

        A layer that refused the attempt has written its reason already (``attempt.error``).
        """
        given = attempt.error if attempt.source == "refused" else None
        if isinstance(error, LLMGuardInterrupt):
            self._close(attempt, type(error).__name__, category_of(error), error=given or _first_line(error))
            return
        if isinstance(error, httpx2.TimeoutException) and attempt.cause is None:
            attempt.cause = streams.cause_of(attempt, error)
            if attempt.cause is None and attempt.cap_binds:
                attempt.cause = attempt.cap_by  # the client's timeouts were ours: the cap cut it
        if not self._close(attempt, type(error).__name__, category_of(error), error=given or str(error) or None):
            return
        self._check_failure(attempt)

    def responded(self, attempt: Attempt, response: httpx2.Response) -> bool:
        """Headers are in. An error status ends the attempt now; returns whether it has ended."""
        if response.status_code < 400:
            return False
        refused = response.status_code in (401, 403)
        error = f"the endpoint refused the credentials; {key_source(response.request)}" if refused else None
        self._close(attempt, f"HTTP {response.status_code}", Category.of_status(response.status_code), error=error)
        self._check_failure(attempt)
        return True

    def progress(self, attempt: Attempt) -> float:
        """A chunk arrived: the per-chunk read timeout restarted, so check the totals here. Returns the
        clock's time it read."""
        now = self.clock.now()
        try:
            self.budget.check_progress(now)
        except LLMGuardInterrupt:
            attempt.cause = "deadline"
            self._close(attempt, "cut", Category.CUT, error="cut at the deadline while the body was arriving")
            raise
        if now - attempt.start > attempt.cap:
            attempt.cause = attempt.cap_by
            raise httpx2.ReadTimeout(f"the attempt took longer than its {attempt.cap:.2f} s cap ({attempt.cap_by})")
        return now

    def succeeded(self, attempt: Attempt, usage: Usage | None) -> None:
        if usage is not None:
            attempt.tokens, attempt.input_tokens, attempt.output_tokens = usage.total, usage.input, usage.output
            attempt.cache_tokens = usage.cache
            if self.prices.by_model:  # no prices configured: no cost
                attempt.cost = self.prices.cost(attempt.model, usage.total, usage.input, usage.output)
        self._close(attempt, "ok", Category.OK)
        self.budget.check_spending()

    def closed_early(self, attempt: Attempt) -> None:
        """The caller stopped reading the body: the attempt counts as answered."""
        self._close(attempt, "ok", Category.OK, error="body not read to the end")

    def _close(self, attempt: Attempt, outcome: str, category: Category, *, error: str | None = None) -> bool:
        if not self.ledger.close(attempt, self.clock.now(), outcome, category, error=error):
            return False
        if log.isEnabledFor(logging.INFO):
            log.info("%s: attempt %s", self.test_id, report.describe(attempt))
        if self.on_attempt is not None:
            self.on_attempt(attempt)
        return True

    def _check_failure(self, attempt: Attempt) -> None:
        try:
            self.budget.check_failure(attempt)
        except LLMGuardInterrupt as exc:
            # The message lists every attempt with its error; chaining would print the
            # failed attempt's whole httpcore traceback above it in the test report.
            raise exc from None


def key_source(request: httpx2.Request) -> str:
    """Where the key a request carried came from: the environment variable holding it, if one does."""
    value = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    for header in ("api-key", "x-api-key"):
        value = value or request.headers.get(header, "").strip()
    if not value:
        return "the request carried no key"
    names = sorted(name for name, held in os.environ.items() if held.strip() == value)
    if names:
        return f"the key came from {' / '.join(names)}"
    return "the key was passed to the client directly (no environment variable holds it)"


_WORKER = "worker"
"""``Attempt.headers_timer`` of an attempt whose headers are awaited outside the main thread."""

_ASYNC_DEFERRAL = 0.5
"""Seconds the alarm leaves an async attempt's own, deadline-capped timeouts to end it in its task."""


def _event_loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _awaiting() -> tuple[tuple[str, int, str], ...]:
    """Where the running loop's tasks wait, each from its outermost coroutine down the ``await`` chain."""
    found = []
    for task in asyncio.all_tasks():
        awaited = task.get_coro()
        while awaited is not None:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                found.append((frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
            awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return tuple(found)


def category_of(error: BaseException) -> Category:
    """The category of an attempt the error ended: our body watchers' errors carry theirs
    (``category``, set where they are raised); httpx2's own are told by type."""
    given = getattr(error, "category", None)
    if isinstance(given, Category):
        return given
    if isinstance(error, httpx2.TimeoutException):
        return Category.TIMEOUT
    if isinstance(error, asyncio.CancelledError):
        return Category.CUT
    return Category.CONNECTION


def _first_line(error: BaseException) -> str | None:
    text = str(error).strip()
    return text.splitlines()[0] if text else None
