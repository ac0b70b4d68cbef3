"""Shared rate limits: requests and tokens per minute of each endpoint and model, for the whole session.

Why shared: under ``pytest -n 8`` every worker sends its own requests, and together they pass an
account's requests- and tokens-per-minute limits and collect 429s. The limits live in the state store
(``state.py``), so every worker and every machine on the same store takes its turn from one count.

The arithmetic is GCRA (the generic cell rate algorithm): one time per limit in a store record, the
*theoretical arrival time* of the next request. A request costing ``cost`` (1 under ``rpm``, its
tokens under ``tpm``) moves that time on by ``cost * 60 / limit`` seconds, and may be sent once no
more than ``burst`` units lie ahead of it; the wait until then is its turn. A turn is taken in one
``StateStore.update``, so two workers never take the same one, and turns are served in the order they
were taken. The functions here are pure (the time is an argument, like ``breaker.py``);
:class:`RateLimiter` reads the clock and the store.

What a request meets (``routing.py``, once its endpoint is chosen, before it is sent): its turn at
once; a wait for it, on the test's clock, when the wait fits in the test's time left; else a refusal
at once naming the limit, as a Retry-After longer than the time left is refused. Tokens are estimated
from the request (``Dialect.estimated_tokens``) and corrected by the answer's usage when the attempt
ends: the difference is charged, or given back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .clock import Clock
    from .config import Settings
    from .endpoints import Endpoint
    from .ledger import Attempt
    from .state import StateStore

_EPSILON = 1e-9
"""Seconds below which a wait is arithmetic's rounding, not a wait."""


@dataclass(frozen=True)
class Limit:
    """One limit of an endpoint and model: ``per_minute`` units (requests or tokens), ``burst`` at once."""

    name: str
    """``rpm`` or ``tpm``: also its field in the store record."""
    per_minute: float
    burst: float
    source: str = "default"
    """Where it was set, for messages."""

    @property
    def interval(self) -> float:
        """Seconds one unit takes up."""
        return 60.0 / self.per_minute

    def __str__(self) -> str:
        return f"{self.name} {self.per_minute:g}"


@dataclass(frozen=True)
class Turn:
    """A request's turn: ``wait`` seconds from the time asked about; ``refused`` when that is too long."""

    wait: float = 0.0
    by: Limit | None = None
    """The limit that made it wait (or refused it)."""
    refused: bool = False


def take(record: dict[str, Any], demands: Sequence[tuple[Limit, float]], now: float, max_wait: float) -> Turn:
    """Take a request's turn under every limit (``(limit, cost)``), editing ``record``; or refuse it, leaving
    ``record`` as it was, when the turn is ``max_wait`` seconds away or more."""
    wait, by = 0.0, None
    for limit, cost in demands:
        ahead = max(float(record.get(limit.name, now)), now) + cost * limit.interval
        due = ahead - limit.burst * limit.interval - now
        if due > wait + _EPSILON:
            wait, by = due, limit
    if by is not None and wait >= max_wait:
        return Turn(wait, by, refused=True)
    for limit, cost in demands:
        record[limit.name] = max(float(record.get(limit.name, now)), now) + cost * limit.interval
    return Turn(wait, by)


def correct(record: dict[str, Any], limit: Limit, difference: float, now: float) -> None:
    """Charge ``difference`` units a turn's estimate missed (give them back when negative): the next turns
    move by what the request really cost. A limit whose units are all free stays free."""
    record[limit.name] = max(float(record.get(limit.name, now)), now) + difference * limit.interval


def limits(endpoint: Endpoint, settings: Settings, endpoints_source: str) -> tuple[Limit, ...]:
    """The limits of ``endpoint``: its own ``rpm``/``tpm``, else the options'. A minute's tokens may go at once,
    as providers' token buckets allow; requests go ``rpm_burst`` at once, the rest spaced out."""
    found = []
    burst = endpoint.rpm_burst or settings.rpm_burst
    for name, own, default in (("rpm", endpoint.rpm, settings.rpm), ("tpm", endpoint.tpm, settings.tpm)):
        value = own if own is not None else default
        if value is None:
            continue
        source = f"endpoint {endpoint.name} in {endpoints_source}" if own is not None else settings.source_of(name)
        found.append(Limit(name, value, burst if name == "rpm" else value, source))
    return tuple(found)


class RateLimiter:
    """The session's shared limits at work: turns taken and estimates corrected in the state store."""

    def __init__(self, store: StateStore, clock: Clock, endpoints_source: str) -> None:
        self.store = store
        self.clock = clock
        """Turns are compared across processes, so they keep the time of day (``Clock.wall``)."""
        self.endpoints_source = endpoints_source

    @staticmethod
    def _key(endpoint: Endpoint, model: str) -> str:
        return f"ratelimit:{endpoint.name}:{model}"

    def turn(
        self,
        endpoint: Endpoint,
        model: str,
        tokens: Callable[[], int],
        attempt: Attempt,
        settings: Settings,
        *,
        after: float,
        max_wait: float,
    ) -> Turn:
        """Take the turn of a request, to be sent ``after`` seconds from now at the earliest, within ``max_wait``
        seconds from now; the turn's wait counts from ``after``. ``tokens`` estimates what the request costs
        (asked only under a ``tpm`` limit); once the turn is taken, the attempt's end corrects the estimate
        by its usage."""
        found = limits(endpoint, settings, self.endpoints_source)
        if not found:
            return Turn()
        tpm = next((limit for limit in found if limit.name == "tpm"), None)
        estimate = tokens() if tpm is not None else 0
        demands = [(limit, float(estimate) if limit is tpm else 1.0) for limit in found]
        key = self._key(endpoint, model)
        now = self.clock.wall() + after
        turn = self.store.update(key, lambda record: take(record, demands, now, max_wait - after))
        if not turn.refused and tpm is not None:
            attempt.on_end = lambda ended: self._settle(key, tpm, estimate, ended)
        return turn

    def _settle(self, key: str, tpm: Limit, estimate: int, attempt: Attempt) -> None:
        """The answer said what the request cost: charge or give back the difference (an answer without
        usage, a failed attempt, keeps its estimate)."""
        used = attempt.tokens
        if used is None or used == estimate:
            return
        now = self.clock.wall()
        self.store.update(key, lambda record: correct(record, tpm, used - estimate, now))

    @staticmethod
    def refusal(turn: Turn, endpoint: Endpoint, model: str, remaining: float) -> str:
        """Why a request was refused its turn, and what to do: the breaker refusal's reason for this endpoint."""
        limit = turn.by
        assert limit is not None
        what = "requests" if limit.name == "rpm" else "tokens"
        return (
            f"its shared rate limit {limit} (set by {limit.source}) for model {model} gives this request its turn "
            f"in {turn.wait:.1f} s, but this test has {max(0.0, remaining):.1f} s left; raise the test's deadline, "
            f"send fewer {what} to {endpoint.name} in the session, or raise {limit.name} if the account allows more"
        )
