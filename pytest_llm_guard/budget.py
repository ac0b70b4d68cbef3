"""Per-test spending: what a test may still use, and the one place that says no.

The budget decides; it reads the ledger's running totals (never re-scans attempts)
and leaves the wording of its refusals to ``report.py``.
"""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import logging
import math

from . import report
from .clock import REAL, Clock
from .config import Settings
from .errors import LLMBudgetExceeded
from .ledger import Attempt, Ledger

log = logging.getLogger("pytest_llm_guard")


class Budget:
    """Deadline, retry, call and token limits of one test, checked against its ledger."""

    def __init__(self, settings: Settings, ledger: Ledger, *, clock: Clock = REAL) -> None:
        self.settings = settings
        self.ledger = ledger
        self.clock = clock
        self.started = clock.now()
        self._deadline_at = math.inf if settings.deadline is None else self.started + settings.deadline

    def elapsed(self) -> float:
        return self.clock.now() - self.started

    def remaining(self, now: float | None = None) -> float:
        """Seconds left before the deadline (``math.inf`` without one); ``now``: the clock's time, when the
        caller has just read it."""
        return self._deadline_at - (self.clock.now() if now is None else now)

    def attempt_cap(self) -> tuple[float, str | None]:
        """The most one attempt may take now, body included, and the limit that sets it."""
        remaining = self.remaining()
        call_timeout = self.settings.call_timeout
        if call_timeout is not None and call_timeout <= remaining:
            return call_timeout, "call_timeout"
        if math.isinf(remaining):
            return math.inf, None
        return max(0.0, remaining), "deadline"

    def attempt_cap_seconds(self) -> float:
        """:meth:`attempt_cap`'s seconds alone (what a pipeline stage is told)."""
        return self.attempt_cap()[0]

    def refuse_start(self, *, new_call: bool, now: float | None = None) -> tuple[str, str] | None:
        """Before an attempt: no time left, or (for a new call) no call budget? The budget and why."""
        if self.remaining(now) <= 0:
            return "deadline", "no time left to start another attempt"
        limit = self.settings.calls
        if new_call and limit is not None and self.ledger.calls >= limit:
            return "calls", f"a call beyond the {limit} allowed was about to be sent"
        return None

    def check_failure(self, failed: Attempt) -> None:
        """After a failed attempt: may the test absorb it, and can a retry still make it?"""
        if self.remaining() <= 0:
            raise self.exceeded("deadline", "the deadline passed during the attempt")
        # A failed attempt followed by a failover is not a retry: the call moved on to an endpoint it
        # had not tried, at most max_endpoints - 1 times (routing.py); its time still counts.
        counted = self.ledger.counted_failures
        if self.settings.retries is not None and counted > self.settings.retries:
            if failed.cause and "call_timeout" in failed.cause:
                from .learned import LEARNED_CALL_TIMEOUT  # here: a session without learned limits never loads it

                learned = (
                    f" (learned from {self.settings.learned_timeouts} as p99 x learned_factor: raise learned_factor "
                    "or learned_floor, or learn again with --llm-learn-timeouts if the model became slower)"
                    if failed.cause == LEARNED_CALL_TIMEOUT
                    else ""
                )
                raise self.exceeded(
                    "call_timeout",
                    f"{report.plural(counted, 'failed attempt')}, the last cut at its {failed.cause} "
                    f"({failed.cap:.2f} s){learned}, and retries={self.settings.retries} absorbs no more",
                )
            free = self.ledger.failures - counted
            what = report.plural(counted, "failed attempt") + " charged to retries"
            if free:
                what += f" (and {report.plural(free, 'failed attempt')} followed by a failover, not charged)"
            raise self.exceeded("retries", what)
        wait = failed.retry_after if failed.failover_to is None else None  # a failover does not wait
        if wait is not None and wait > self.remaining():
            raise self.exceeded(
                "deadline",
                f"the server asked to wait {wait:g} s before retrying; "
                f"only {self.remaining():.2f} s remain, so the test fails now instead of sleeping into a certain miss",
            )

    def check_progress(self, now: float | None = None) -> None:
        """While a body streams in: the read timeout restarts per chunk, the deadline does not. ``now``: the
        clock's time, when the caller has just read it."""
        if self.remaining(now) <= 0:
            raise self.exceeded("deadline", "the deadline passed while the response was still arriving")

    def check_spending(self) -> None:
        """After an answer: tokens, and money where prices are configured."""
        limit = self.settings.tokens
        if limit is not None and self.ledger.tokens > limit:
            raise self.exceeded("tokens", f"{self.ledger.tokens} tokens used")
        money = self.settings.cost
        if money is not None and (self.ledger.cost or 0.0) > money:
            spent = self.ledger.cost or 0.0
            raise self.exceeded("cost", f"{spent:.4f} {self.settings.currency} spent")

    def exceeded(self, budget: str, what: str, *, in_call: bool = True) -> LLMBudgetExceeded:
        """The exception that ends the test, worded by ``report.py``, and logged as it happens."""
        message = report.budget_message(
            budget, what, self.settings, self.ledger, elapsed=self.elapsed(), in_call=in_call
        )
        log.error("%s", message.splitlines()[0])
        return LLMBudgetExceeded(budget, message, in_call=in_call)
