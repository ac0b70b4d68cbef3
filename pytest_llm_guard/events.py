"""One small record per LLM attempt: what every report and budget reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class AttemptEvent:
    """One HTTP attempt at an LLM endpoint, as seen at the httpx2 client seam.

    ``start``/``end`` are read from the guard's clock (monotonic seconds);
    ``wall_start`` is ``time.time()`` at the start, for timelines.
    """

    test: str
    endpoint: str
    path: str
    model: str | None
    start: float
    wall_start: float
    retry: bool = False
    backoff: float = 0.0
    end: float | None = None
    outcome: str = "pending"
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None
    tokens: int | None = None
    source: str = "live"
    """"live", or what a layer made of it ("replayed", "recorded", ...)."""
    endpoint_name: str | None = None
    """The configured endpoint that took the attempt (``endpoints.py``); None for other URLs."""
    failover_to: str | None = None
    """After this attempt failed, the call's next attempt goes to this other endpoint, with no backoff."""

    @property
    def duration(self) -> float:
        return 0.0 if self.end is None else self.end - self.start

    @property
    def failed(self) -> bool:
        return self.outcome not in ("ok", "pending")

    def describe(self) -> str:
        line = f"{self.endpoint}{self.path} model={self.model or '?'}: {self.outcome}"
        if self.endpoint_name:
            line = f"[{self.endpoint_name}] {line}"
        if self.error:
            line += f" ({self.error})"
        line += f" after {self.duration:.2f} s"
        if self.retry_after is not None:
            line += f", retry-after {self.retry_after:g} s"
        if self.backoff:
            line += f", after {self.backoff:.2f} s backoff"
        if self.failover_to:
            line += f"; failover to {self.failover_to}"
        return line

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stats:
    """Totals of one test's attempts (``llm_guard.stats``)."""

    calls: int = 0
    attempts: int = 0
    retries: int = 0
    failures: int = 0
    network_seconds: float = 0.0
    backoff_seconds: float = 0.0
    tokens: int = 0
    replayed: int = 0
    recorded: int = 0
    live: int = 0
    failovers: int = 0

    @classmethod
    def of(cls, events: Sequence[AttemptEvent]) -> Stats:
        return cls(
            calls=sum(not e.retry for e in events),
            attempts=len(events),
            retries=sum(e.retry for e in events),
            failures=sum(e.failed for e in events),
            network_seconds=sum(e.duration for e in events),
            backoff_seconds=sum(e.backoff for e in events),
            tokens=sum(e.tokens or 0 for e in events),
            replayed=sum(e.source == "replayed" for e in events),
            recorded=sum(e.source == "recorded" for e in events),
            live=sum(e.source == "live" for e in events),
            failovers=sum(e.failover_to is not None for e in events),
        )
