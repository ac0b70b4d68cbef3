"""The ledger: one record per attempt, running totals, and the words every count uses.

- A **call** is one request as the code under test sees it: one ``create(...)``.
- An **attempt** is one try of a call. Its **source** says what happened to it:
  ``live`` (sent to an endpoint), ``recorded`` (sent, and its answer written to a
  cassette file), ``replayed`` (answered from a cassette) or ``refused`` (nothing was sent:
  a breaker was open, a budget was spent, a cassette had no answer).
- A **retry** is a further attempt of a call after a failure, after a backoff, charged
  to the ``retries`` budget. A **failover** is a further attempt moved at once (no
  backoff) to an endpoint the call has not tried yet: never a retry, never charged.
  (A call that has tried every endpoint goes back to one it tried: that is a retry.)
- A **refused** attempt sent nothing: it is no retry, failover or failure, never charged.
- **Backoff** is the time from the end of an attempt that did not succeed to the start of
  the next, whoever waited: measured here once (:meth:`Ledger.open`), read everywhere.
- **Network seconds** are the time of live and recorded attempts only.
- A **probe** is a half-open breaker's request sent beside an attempt, off the test's clock
  (``probes.py``): kept apart (:class:`Probe`), it is no attempt and counts in no total.

Budgets, ``llm_guard.stats``, failure messages, the terminal summary and reports all
read these records and totals; only the transport seam and the layers write them.
Totals are updated once per attempt, so a test's thousandth call costs what its first did.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("live", "recorded", "replayed", "refused")


class Category(str, enum.Enum):
    """What came of an attempt, set where the fact is known (the seam, the guard, a layer), never
    read back from the outcome's text. The values are the words reports group by."""

    PENDING = "pending"
    OK = "ok"
    TIMEOUT = "timeout"
    CLIENT = "http_4xx"
    RATE_LIMITED = "http_429"
    SERVER = "http_5xx"
    """An error status of 500 and above (529 overloaded included), or the server's error event in a stream."""
    CONNECTION = "reset"
    MALFORMED = "malformed"
    CUT = "cut"
    REFUSED = "refused"
    REPLAYED = "replayed"

    @classmethod
    def of_status(cls, status: int) -> Category:
        if status < 400:
            return cls.OK
        return cls.RATE_LIMITED if status == 429 else cls.SERVER if status >= 500 else cls.CLIENT


CATEGORIES = tuple(c.value for c in Category if c is not Category.PENDING)
"""What came of an attempt: an answer, a timeout, an error status, a dropped connection (``reset``),
a broken body (``malformed``), a body cut short (``cut``), nothing sent, or a replay."""
NETWORK_SOURCES = frozenset({"live", "recorded"})
CALL = "pytest_llm_guard.call"
"""Request extension holding the :class:`Call` a guarded client's attempts belong to."""


@dataclass
class Call:
    """One call of a guarded client, carried on its request across attempts (``request.extensions[CALL]``).

    The retry loop, the seam and the routing layer share what they know of the call
    here, instead of in headers or side tables.
    """

    routed: bool = False
    """Sent by an ``llm_client`` fixture: the routing layer may choose its endpoint."""
    number: int = 0
    """Its number in the test's ledger, once its first attempt began."""
    attempts: int = 0
    tried: list[str] = field(default_factory=list)
    """Configured endpoints its attempts went to, in order."""
    failover_to: str | None = None
    """Set when the last attempt failed and the next goes to this other endpoint (no backoff)."""
    last: Attempt | None = field(default=None, repr=False)
    """Its latest attempt: the retry policy reads the Retry-After the dialect parsed into it."""


@dataclass
class Attempt:
    """One try of a call, as seen at the httpx2 seam.

    ``start``/``end`` are read from the guard's clock (monotonic seconds);
    ``wall_start`` is the clock's time of day (``Clock.wall``) at the start, for timelines.
    """

    test: str
    call: int
    number: int
    """1 for a call's first attempt."""
    kind: str
    """``first``, ``retry`` or ``failover``."""
    endpoint: str
    path: str
    model: str | None
    start: float
    wall_start: float
    cap: float = float("inf")
    """The most this attempt may take, body included."""
    cap_by: str | None = None
    """The limit that set ``cap``: ``call_timeout``, ``deadline``, or an endpoint's call_timeout."""
    cap_binds: bool = field(default=False, repr=False)
    """Whether ``cap`` is below the client's own timeouts (a timeout then is the cap's doing)."""
    headers_timer: Any = field(default=None, repr=False, compare=False)
    """While the response headers are awaited: the timer that cuts the attempt at its cap."""
    stream: Any = field(default=None, repr=False, compare=False)
    """Its stream budgets and what has arrived so far (``streams.StreamClock``), set by the guard."""
    read_ahead: tuple[float, list[float]] | None = field(default=None, repr=False, compare=False)
    """When the transport answered and when each chunk read ahead to the first content arrived (clock
    times), set by the seam's read-ahead: a recording keeps the times the answer truly arrived at."""
    backoff: float = 0.0
    """Seconds between the end of the failed attempt before it and its start, whoever waited (the
    guard's backoff, a Retry-After, the SDK's own backoff, the application's ``sleep``): set once, by the ledger."""
    by: str | None = None
    """Who made it, when it followed a failure: ``guard`` (a guarded client's retry or failover), ``sdk``
    (the SDK's own retry loop, told by its retry-count header) or ``app`` (a new call after a failed attempt)."""
    sdk_max_retries: int | None = None
    """For an SDK retry: the ``max_retries`` its client allows, when it can be told."""
    end: float | None = None
    source: str = "live"
    outcome: str = "pending"
    """``ok``, ``HTTP <status>``, or the error's name (``ReadTimeout``, ``LLMCassetteMiss``, ...)."""
    result: Category = Category.PENDING
    """The outcome's category, given by whoever ended the attempt."""
    cause: str | None = None
    """Which limit cut the attempt, when one did (as ``cap_by``, or ``first_token_timeout``, ``idle_timeout``)."""
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    tokens: int | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_tokens: int | None = None
    """Prompt tokens read from or written to a prompt cache, where the API counts them apart."""
    cost: float | None = None
    """Money, from ``tokens`` and the configured prices of ``model``; None without a price."""
    first_chunk: float | None = None
    """Seconds from the attempt's start to the first chunk of its body."""
    endpoint_name: str | None = None
    """The configured endpoint that took the attempt; None for other URLs."""
    dialect: str | None = None
    """The API the attempt spoke (``openai``, ``anthropic``: ``dialects/``)."""
    failover_to: str | None = None
    """After this attempt failed, the call's next attempt went to this other endpoint."""
    limit_wait: float = 0.0
    """Seconds it waited for its turn under a shared rate limit before it was sent (``ratelimit.py``)."""
    limit_by: str | None = None
    """The shared rate limit it waited for (``rpm 600``)."""
    on_end: Callable[[Attempt], None] | None = field(default=None, repr=False, compare=False)
    """Called with the attempt once it has ended (a shared tpm limit corrects its estimate by the usage)."""

    @property
    def duration(self) -> float:
        return 0.0 if self.end is None else self.end - self.start

    @property
    def failed(self) -> bool:
        """Sent (or answered from a cassette) and failed; a refused attempt sent nothing, so it never failed."""
        return self.source != "refused" and self.result not in (Category.OK, Category.PENDING)

    @property
    def retry(self) -> bool:
        return self.kind == "retry"

    @property
    def category(self) -> str:
        """What came of it, in a few words reports group by: see :data:`CATEGORIES`."""
        if self.source in ("refused", "replayed"):
            return self.source
        return self.result._value_  # the member's value, without the descriptor's calls: a hot path reads it

    def to_dict(self) -> dict[str, Any]:
        record = dict(vars(self))  # flat: every field is a plain value
        del record["headers_timer"], record["stream"], record["cap_binds"], record["result"], record["on_end"]
        record["category"] = self.category
        return record


@dataclass
class Probe:
    """A half-open breaker's probe sent beside one of the test's attempts, off its clock (``probes.py``).

    Its answer only feeds the endpoint's breaker: it is no attempt, retry or failure of the test, counts
    in no total and no budget. ``start``/``end`` are the test's clock, like an attempt's.
    """

    endpoint_name: str
    model: str | None
    call: int
    """The test's call whose attempt it went beside."""
    beside: str
    """The endpoint that attempt went to meanwhile."""
    start: float
    end: float | None = None
    outcome: str = "pending"
    """As an attempt's: ``ok``, ``HTTP <status>``, or the error's name (``ReadTimeout``)."""
    breaker: str = ""
    """What its answer did to the breaker, in a few words."""

    def describe(self) -> str:
        """One line for people: ``probe of primary (beside ...): ReadTimeout, still hanging: breaker open ...``."""
        what = f"probe of {self.endpoint_name} (beside call {self.call}'s attempt to {self.beside})"
        if self.end is None:
            return f"{what}: no answer yet when the test ended; its answer updates the breaker"
        return f"{what}: {self.outcome}, {self.breaker}"

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "text": self.describe()}


@dataclass(frozen=True)
class Stats:
    """A test's totals in the ledger's words (``llm_guard.stats``)."""

    calls: int = 0
    attempts: int = 0
    retries: int = 0
    failovers: int = 0
    failures: int = 0
    """Failed attempts, whatever followed them."""
    live: int = 0
    recorded: int = 0
    replayed: int = 0
    refused: int = 0
    network_seconds: float = 0.0
    backoff_seconds: float = 0.0
    tokens: int = 0
    cost: float | None = None
    """Money spent, where prices are configured for the models used (None: no price known)."""


class Ledger:
    """The attempts of one test and their running totals; thread-safe (code under test may use threads)."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.attempts: list[Attempt] = []
        self.calls = 0
        self.retries = 0
        self.failovers = 0
        self.failures = 0
        self.counted_failures = 0
        """Failures the ``retries`` budget absorbs: failed attempts not followed by a failover."""
        self.tokens = 0
        self.cost: float | None = None
        self.network_seconds = 0.0
        self.backoff_seconds = 0.0
        self.by_source = dict.fromkeys(SOURCES, 0)
        self.probes: list[Probe] = []
        """Half-open probes sent beside its attempts (``probes.py``): in no total."""
        self._lock = threading.RLock()  # re-entered when the deadline's alarm interrupts an update

    def open(self, attempt: Attempt) -> None:
        """A call counts from its first attempt; the rest counts when the attempt ends (a layer may
        still change its kind, its source or its wait until then).

        Backoff is defined here, once: the time from the end of the attempt before it, when that
        one did not succeed, to its start. A new call after a failure is the application's retry.
        """
        with self._lock:
            previous = self.attempts[-1] if self.attempts else None
            if previous is not None and previous.end is not None and previous.category not in ("ok", "replayed"):
                attempt.backoff = max(0.0, attempt.start - previous.end)
                if attempt.kind == "first":
                    attempt.by = "app"
            self.attempts.append(attempt)
            if attempt.kind == "first":
                self.calls += 1

    def probe(self, probe: Probe) -> None:
        """Keep a probe sent beside one of the attempts; it counts nowhere."""
        with self._lock:
            self.probes.append(probe)

    def new_call(self) -> int:
        """The number the next call gets."""
        return self.calls + 1

    def close(
        self, attempt: Attempt, end: float, outcome: str, category: Category, *, error: str | None = None
    ) -> bool:
        """End an attempt once; returns False when it had ended already."""
        with self._lock:
            if attempt.end is not None:
                return False
            attempt.end, attempt.outcome, attempt.result, attempt.error = end, outcome, category, error
            if attempt.source == "refused":
                pass  # nothing was sent: not a retry, not a failover, not a failure; never charged
            elif attempt.kind == "retry":
                self.retries += 1
            elif attempt.kind == "failover":
                self.failovers += 1
            self.backoff_seconds += attempt.backoff
            self.by_source[attempt.source] += 1
            if attempt.source in NETWORK_SOURCES:
                self.network_seconds += end - attempt.start
            if attempt.failed:
                self.failures += 1
                if attempt.failover_to is None:
                    self.counted_failures += 1
            self.tokens += attempt.tokens or 0
            if attempt.cost is not None:
                self.cost = (self.cost or 0.0) + attempt.cost
        if attempt.on_end is not None:
            attempt.on_end(attempt)
        return True

    def change_source(self, attempt: Attempt, source: str) -> None:
        """Correct what happened to an attempt after it ended (a recording that was never saved is
        ``live``), so every count tells what is on disk."""
        with self._lock:
            if attempt.end is not None:
                self.by_source[attempt.source] -= 1
                self.by_source[source] += 1
                if (attempt.source in NETWORK_SOURCES) != (source in NETWORK_SOURCES):
                    sign = 1 if source in NETWORK_SOURCES else -1
                    self.network_seconds += sign * (attempt.end - attempt.start)
            attempt.source = source

    def snapshot(self) -> list[Attempt]:
        with self._lock:
            return list(self.attempts)

    def stats(self) -> Stats:
        with self._lock:
            return Stats(
                calls=self.calls,
                attempts=len(self.attempts),
                retries=self.retries,
                failovers=self.failovers,
                failures=self.failures,
                live=self.by_source["live"],
                recorded=self.by_source["recorded"],
                replayed=self.by_source["replayed"],
                refused=self.by_source["refused"],
                network_seconds=self.network_seconds,
                backoff_seconds=self.backoff_seconds,
                tokens=self.tokens,
                cost=self.cost,
            )


def attribution(attempts: Iterable[Mapping[str, Any]], duration: float) -> list[dict[str, Any]]:
    """Where a test's wall time went: its attempts by category, its waits, and the rest (its own code).

    ``backoff`` is the attempts' own (``Attempt.backoff``, set by the ledger), summed as
    ``Stats.backoff_seconds`` sums it; ``rate-limit wait`` the turns waited for under shared rate limits.
    Reads attempt records (``Attempt.to_dict()``), so it serves the xdist
    controller too. Attempts made at the same time (threads, ``asyncio.gather``) can add up
    to more than the test took; ``other`` is then 0.
    """
    seconds: dict[str, float] = dict.fromkeys(CATEGORIES, 0.0)
    counts: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
    backoff = waited = 0.0
    for attempt in attempts:
        category = attempt["category"] if attempt["category"] in seconds else "reset"
        end = attempt["end"] if attempt["end"] is not None else attempt["start"]
        seconds[category] += end - attempt["start"]
        counts[category] += 1
        if attempt["end"] is not None:  # as the ledger's total counts it: when the attempt ends
            backoff += attempt["backoff"]
            waited += attempt.get("limit_wait") or 0.0
    parts: list[dict[str, Any]] = [
        {"what": category, "seconds": seconds[category], "attempts": counts[category]}
        for category in CATEGORIES
        if counts[category]
    ]
    if backoff:
        parts.append({"what": "backoff", "seconds": backoff})
    if waited:
        parts.append({"what": "rate-limit wait", "seconds": waited})
    spent = sum(part["seconds"] for part in parts)
    parts.append({"what": "other", "seconds": max(0.0, duration - spent)})
    return parts


def amplification(attempts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Logical calls whose attempts came from more than one retry layer, each with its count per layer.

    A logical call is a call and the calls the application made again after it failed (``by ==
    "app"``, the same path and model): its own retry loop. Within a call, attempts are the
    SDK's own retries (``by == "sdk"``) or the guard's (``by == "guard"``, failovers not counted).
    Layers multiply: an SDK allowing 2 retries inside a loop of 5 sends 15 attempts where one
    layer would send 3 or 5. Reads attempt records (``Attempt.to_dict()``); refused attempts sent nothing.
    """
    chains: list[list[Mapping[str, Any]]] = []
    for attempt in attempts:
        if attempt["source"] == "refused":
            continue
        last = chains[-1][-1] if chains else None
        again = (
            last is not None
            and attempt["kind"] == "first"
            and attempt["by"] == "app"
            and (attempt["path"], attempt["model"]) == (chains[-1][0]["path"], chains[-1][0]["model"])
        )
        if last is not None and (attempt["call"] == last["call"] or again):
            chains[-1].append(attempt)
        else:
            chains.append([attempt])
    found = []
    for chain in chains:
        layers = {
            "sdk": sum(1 for a in chain if a["by"] == "sdk"),
            "app": sum(1 for a in chain if a["kind"] == "first" and a["by"] == "app"),
            "guard": sum(1 for a in chain if a["by"] == "guard" and a["kind"] == "retry"),
        }
        if sum(1 for count in layers.values() if count) < 2:
            continue
        limits = sorted({a["sdk_max_retries"] for a in chain if a.get("sdk_max_retries") is not None})
        found.append(
            {
                "call": chain[0]["call"],
                "attempts": len(chain),
                "calls": layers["app"] + 1,
                "retries_by": layers,
                "sdk_max_retries": limits[-1] if limits else None,
                "switch_off": "sdk" if layers["sdk"] else "app",
            }
        )
    return found
