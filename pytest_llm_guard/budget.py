"""Per-test spending: what a test may still use, and the one place that says no."""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import math
import time
from collections.abc import Callable, Sequence

from .config import OPTIONS, Settings
from .errors import LLMBudgetExceeded
from .events import AttemptEvent, Stats

Clock = Callable[[], float]

_ADVICE = {
    "deadline": "raise `deadline`, or make the endpoint answer faster (see the attempts)",
    "retries": "raise `retries`, or fix what makes the attempts fail (see below)",
    "calls": "raise `calls`, or find the loop that keeps calling",
    "tokens": "raise `tokens`, or send shorter prompts / ask for shorter answers",
}


class Budget:
    """Deadline, retry, call and token limits of one test, checked against its events."""

    def __init__(self, settings: Settings, *, test_id: str, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.test_id = test_id
        self.clock = clock
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def remaining(self) -> float:
        """Seconds left before the deadline (``math.inf`` without one)."""
        if self.settings.deadline is None:
            return math.inf
        return self.settings.deadline - self.elapsed()

    def attempt_timeout(self) -> float:
        """The most one attempt may take now: call_timeout, capped by the deadline."""
        call_timeout = self.settings.call_timeout if self.settings.call_timeout is not None else math.inf
        return max(0.0, min(call_timeout, self.remaining()))

    def check_start(self, events: Sequence[AttemptEvent], *, new_call: bool) -> None:
        """Before an attempt: is there time, and (for a new call) call budget left?"""
        if self.remaining() <= 0:
            raise self.exceeded("deadline", "no time left to start another attempt", events)
        limit = self.settings.calls
        if new_call and limit is not None and Stats.of(events).calls >= limit:
            raise self.exceeded("calls", f"a call beyond the {limit} allowed was about to be sent", events)

    def check_failure(self, events: Sequence[AttemptEvent], failed: AttemptEvent) -> None:
        """After a failed attempt: may the test absorb it, and can a retry still make it?"""
        if self.remaining() <= 0:
            raise self.exceeded("deadline", "the deadline passed during the attempt", events)
        # A failed attempt followed by a failover is not a retry: the call moved on to an endpoint it
        # had not tried, at most max_endpoints - 1 times (routing.py); its time still counts.
        failures = sum(e.failed and e.failover_to is None for e in events)
        if failures > self.settings.retries:
            raise self.exceeded("retries", f"{failures} failed attempts", events)
        wait = failed.retry_after if failed.failover_to is None else None  # a failover does not wait
        if wait is not None and wait > self.remaining():
            raise self.exceeded(
                "deadline",
                f"the server asked to wait {wait:g} s before retrying; "
                f"only {self.remaining():.2f} s remain, so the test fails now instead of sleeping into a certain miss",
                events,
            )

    def check_progress(self, events: Sequence[AttemptEvent]) -> None:
        """While a body streams in: the read timeout restarts per chunk, the deadline does not."""
        if self.remaining() <= 0:
            raise self.exceeded("deadline", "the deadline passed while the response was still arriving", events)

    def check_tokens(self, events: Sequence[AttemptEvent]) -> None:
        limit = self.settings.tokens
        spent = Stats.of(events).tokens
        if limit is not None and spent > limit:
            raise self.exceeded("tokens", f"{spent} tokens used", events)

    def exceeded(self, budget: str, what: str, events: Sequence[AttemptEvent]) -> LLMBudgetExceeded:
        limit = self.settings.deadline if budget == "deadline" else getattr(self.settings, budget)
        unit = " s" if budget == "deadline" else ""
        where = self.settings.source_of(budget)
        last = events[-1] if events else None
        lines = [
            f"LLM {budget} budget spent in {self.test_id}: {what} "
            f"(limit {budget}={limit}{unit}, set by {where}; {self.elapsed():.2f} s elapsed).",
        ]
        if last is not None:
            lines.append(f"Endpoint {last.endpoint}, model {last.model or '?'}.")
        lines.append(f"Attempts ({len(events)}):")
        lines.extend(f"  {i}. {event.describe()}" for i, event in enumerate(events, 1))
        option = OPTIONS[budget]
        lines.append(
            f"What to do: {_ADVICE[budget]}; the limit is set with "
            f"@pytest.mark.llm_budget({budget}=...), {option.flag} or {option.env}."
        )
        return LLMBudgetExceeded(budget, "\n".join(lines))
