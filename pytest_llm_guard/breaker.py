"""Endpoint health as a pure state machine: circuit breakers, rate-limit cooldowns, retry tokens.

Why pure: the same record is shared by every pytest-xdist worker through the state
store (``state.py``), so the transitions take the time as an argument (wall-clock
seconds, comparable across processes) and do no I/O; the store applies them under
its lock. Tests drive them with a fake clock.

One :class:`EndpointHealth` per endpoint holds:

- a :class:`Breaker` per model (pybreaker-like): *closed* until ``failures``
  consecutive failures, or a failure share of at least ``failure_rate`` over the
  last ``window`` attempts once ``min_calls`` are in (judged as each failure comes
  in: a success never opens a breaker); then *open* for ``cooldown``
  seconds; then *half-open*, letting one probe through at a time; the probe's
  success closes it, its failure re-opens it with the cooldown doubled up to
  ``cooldown_max``;
- ``not_before``: a 429's Retry-After, honoured by every test until it passes;
- a gRPC-style retry token bucket: each failed attempt takes a token (a 429 does not: its
  Retry-After is honoured instead), each
  success puts back ``token_ratio``; the endpoint takes retries only while more
  than half the tokens are left, so a dying endpoint cannot become a retry storm
  even before its breaker opens.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from dataclasses import dataclass, field
from typing import Any

from .config import Settings
from .errors import LLMGuardInterrupt
from .retry import is_retryable_error

_ERRORS_KEPT = 3
_TRANSITIONS_KEPT = 50


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    THROTTLED = "throttled"
    """429: the endpoint is up but asks us to slow down (not a breaker failure)."""
    NEUTRAL = "neutral"
    """The attempt says nothing about the endpoint (the test was interrupted, a bug of ours)."""


def classify(status: int | None, error: BaseException | None) -> Outcome:
    """Timeouts, connection errors, 408 and 5xx count against an endpoint; other 4xx prove it is up."""
    if error is not None:
        if isinstance(error, LLMGuardInterrupt) or not isinstance(error, Exception):
            return Outcome.NEUTRAL
        return Outcome.FAILURE if is_retryable_error(error) else Outcome.NEUTRAL
    assert status is not None
    if status == 429:
        return Outcome.THROTTLED
    if status == 408 or status >= 500:
        return Outcome.FAILURE
    return Outcome.SUCCESS


def describe_error(status: int | None, error: BaseException | None) -> str:
    """One line for "last errors": ``HTTP 503`` or ``ReadTimeout: timed out``; the whole message, its
    line breaks made spaces (it is one item of a list on one line)."""
    if error is None:
        return f"HTTP {status}"
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return " ".join(text.split())


def clock_time(when: float) -> str:
    """Wall-clock time of day with tenths, for messages (``14:03:07.2``)."""
    return time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when * 10) % 10}"


@dataclass(frozen=True)
class Verdict:
    """May an attempt go to this endpoint now? ``wait`` > 0: yes, after that many seconds."""

    ok: bool
    reason: str = ""
    wait: float = 0.0
    probe: bool = False


@dataclass
class Breaker:
    """The breaker of one (endpoint, model)."""

    state: str = "closed"
    consecutive: int = 0
    recent: str = ""
    """The last ``window`` outcomes, oldest first: ``1`` failure, ``0`` success."""
    opened_at: float | None = None
    cooldown: float | None = None
    probe_until: float | None = None
    errors: list[str] = field(default_factory=list)
    trips: int = 0
    why: str = ""
    transitions: list[dict[str, Any]] = field(default_factory=list)
    """The last state changes, oldest first: ``{"time", "from", "to", "why"}``, for reports."""

    def _move(self, now: float, to: str, why: str) -> None:
        change = {"time": now, "from": self.state, "to": to, "why": why}
        self.transitions = [*self.transitions, change][-_TRANSITIONS_KEPT:]
        self.state = to

    def next_probe(self) -> float | None:
        if self.state == "open" and self.opened_at is not None and self.cooldown is not None:
            return self.opened_at + self.cooldown
        if self.state == "half_open":
            return self.probe_until
        return None

    def admit(self, now: float, lease: float) -> Verdict:
        """Closed: yes. Open: no until the cooldown ends, then yes as the one probe. Half-open: one probe at a time."""
        if self.state == "closed":
            return Verdict(True)
        due = self.next_probe()
        if due is not None and now < due:
            return Verdict(False, self.describe(now))
        if self.state == "open":
            self._move(now, "half_open", "cooldown over: one probe")
        self.probe_until = now + lease
        return Verdict(True, probe=True)

    def record(self, outcome: Outcome, now: float, error: str | None, policy: Settings) -> None:
        if outcome is Outcome.FAILURE and error:
            self.errors = [*self.errors, f"[{clock_time(now)}] {error}"][-_ERRORS_KEPT:]
        if self.state == "open":
            return  # a late answer to an attempt sent before the trip changes nothing
        if self.state == "half_open":
            if outcome is Outcome.SUCCESS:
                self._close(now)
            elif outcome is Outcome.FAILURE:
                cooldown = min((self.cooldown or policy.breaker_cooldown) * 2, policy.breaker_cooldown_max)
                self._open(now, cooldown, f"when its probe failed (cooldown now {cooldown:g} s)")
            else:
                self.probe_until = None  # no verdict: the next caller probes
            return
        if outcome not in (Outcome.SUCCESS, Outcome.FAILURE):
            return
        failed = outcome is Outcome.FAILURE
        self.consecutive = self.consecutive + 1 if failed else 0
        self.recent = (self.recent + ("1" if failed else "0"))[-policy.breaker_window :]
        why = self._trip_reason(policy) if failed else None
        if why:
            self._open(now, policy.breaker_cooldown, why)

    def _trip_reason(self, policy: Settings) -> str | None:
        if policy.breaker_failures is not None and self.consecutive >= policy.breaker_failures:
            return f"after {self.consecutive} consecutive failures"
        calls, failures = len(self.recent), self.recent.count("1")
        if (
            policy.breaker_failure_rate is not None
            and calls >= policy.breaker_min_calls
            and failures / calls >= policy.breaker_failure_rate
        ):
            return f"after {failures} failures in the last {calls} attempts"
        return None

    def _open(self, now: float, cooldown: float, why: str) -> None:
        self._move(now, "open", why)
        self.opened_at, self.cooldown, self.probe_until = now, cooldown, None
        self.trips, self.why = self.trips + 1, why

    def _close(self, now: float) -> None:
        self._move(now, "closed", "its probe succeeded")
        self.consecutive, self.recent = 0, ""
        self.opened_at = self.cooldown = self.probe_until = None

    def describe(self, now: float) -> str:
        """What a refused test reads: state, why, the last errors and when the next probe is due."""
        if self.state == "closed":
            text = f"breaker closed ({self.consecutive} consecutive failures)"
        elif self.state == "open":
            text = f"breaker open since {clock_time(self.opened_at or now)} {self.why}"
        else:
            text = "breaker half-open, a probe is in flight"
        if self.errors:
            text += f"; last errors: {' '.join(self.errors)}"
        due = self.next_probe()
        if due is not None:
            text += f"; next probe at {clock_time(due)} (in {max(0.0, due - now):.1f} s)"
        return text


@dataclass
class EndpointHealth:
    """Everything shared about one endpoint: its breakers, its rate-limit cooldown, its retry tokens."""

    breakers: dict[str, Breaker] = field(default_factory=dict)
    not_before: float = 0.0
    throttled_by: str = ""
    tokens: float | None = None

    @classmethod
    def load(cls, record: dict[str, Any]) -> EndpointHealth:
        breakers = {model: Breaker(**value) for model, value in record.get("breakers", {}).items()}
        return cls(
            breakers=breakers,
            not_before=record.get("not_before", 0.0),
            throttled_by=record.get("throttled_by", ""),
            tokens=record.get("tokens"),
        )

    def dump(self, record: dict[str, Any]) -> None:
        """Into ``record`` as plain data (its lists copied: the record is written, this object may live on)."""
        breakers = {
            model: {**vars(b), "errors": [*b.errors], "transitions": [*b.transitions]}
            for model, b in self.breakers.items()
        }
        record.clear()
        record.update(vars(self), breakers=breakers)

    def settled(self, model: str, now: float, policy: Settings) -> bool:
        """Healthy with nothing pending: the model's breaker closed with no failure in its window, every
        retry token there, no Retry-After to wait out. Only a failure can change such a record."""
        breaker = self.breakers.get(model)
        return (
            breaker is not None
            and breaker.state == "closed"
            and not breaker.consecutive
            and "1" not in breaker.recent
            and (self.tokens is None or self.tokens >= policy.retry_tokens)
            and self.not_before <= now
        )

    def unchanged_by(self, model: str, outcome: Outcome, now: float, policy: Settings) -> bool:
        """Would :meth:`record` leave the record as it is? An attempt that says nothing (neutral) to a
        closed breaker; a success to a settled one whose window is all successes already."""
        breaker = self.breakers.get(model)
        if outcome is Outcome.NEUTRAL:
            return breaker is not None and breaker.state == "closed"
        return (
            outcome is Outcome.SUCCESS
            and self.settled(model, now, policy)
            and self.tokens is not None
            and len(self.breakers[model].recent) >= policy.breaker_window
        )

    def breaker(self, model: str) -> Breaker:
        return self.breakers.setdefault(model, Breaker())

    def admit(
        self, model: str, now: float, policy: Settings, *, retry: bool, lease: float, max_wait: float = 0.0
    ) -> Verdict:
        """Check cooldown and retry tokens first (they refuse without touching the breaker), then the breaker."""
        tokens = policy.retry_tokens if self.tokens is None else self.tokens
        if retry and tokens <= policy.retry_tokens / 2:
            return Verdict(
                False,
                f"retry budget spent ({tokens:.1f} of {policy.retry_tokens:g} tokens; retries resume above "
                f"{policy.retry_tokens / 2:g}, each success adds {policy.retry_token_ratio:g})",
            )
        wait = self.not_before - now
        if wait > max_wait:
            return Verdict(
                False,
                f"rate-limited until {clock_time(self.not_before)} (in {wait:.1f} s) by {self.throttled_by}",
                wait=wait,
            )
        verdict = self.breaker(model).admit(now, lease)
        return dataclasses.replace(verdict, wait=wait) if verdict.ok and wait > 0 else verdict

    def peek(self, model: str, now: float, policy: Settings, *, retry: bool) -> Verdict:
        """:meth:`admit` without taking a probe: for predicting where a retry would go."""
        copy = EndpointHealth.load(dataclasses.asdict(self))
        return copy.admit(model, now, policy, retry=retry, lease=0.0)

    def record(
        self,
        model: str,
        outcome: Outcome,
        now: float,
        policy: Settings,
        *,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        tokens = policy.retry_tokens if self.tokens is None else self.tokens
        if outcome is Outcome.SUCCESS:
            self.tokens = min(policy.retry_tokens, tokens + policy.retry_token_ratio)
        elif outcome is Outcome.FAILURE:  # a 429 is the endpoint pacing us, honoured through not_before
            self.tokens = max(0.0, tokens - 1)
        if outcome is Outcome.THROTTLED and retry_after is not None and now + retry_after > self.not_before:
            self.not_before, self.throttled_by = now + retry_after, f"HTTP 429 Retry-After {retry_after:g} s"
        self.breaker(model).record(outcome, now, error, policy)
