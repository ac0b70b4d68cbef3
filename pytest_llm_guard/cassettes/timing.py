"""The time a recorded answer took: kept beside its body, and waited out again on replay.

What a cassette keeps, in each interaction's response (seconds from the attempt's start,
to the millisecond)::

    timing:
      headers: 0.412                 # the status line and headers arrived
      chunks: [0.51, 0.53, 0.98]     # each chunk of the body arrived, as the transport delivered it
      sizes: [131, 129, 24]          # and its bytes

vcrpy and pytest-recording ignore the key; a cassette without it replays at once.

A replay delivers the body in the recorded chunks (when the stored body is what arrived:
a decompressed, pretty-printed or redacted body is split into its events instead, each at
the time its last byte arrived) and, at a speed above 0, waits for each on the test's
clock, so the deadline and the attempt's cap see a paced replay as they see live time.
"""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import bisect
import math
from collections.abc import Callable, Sequence
from itertools import accumulate, pairwise
from typing import TYPE_CHECKING, Any

import httpx2

from ..streams import chunk_due

if TYPE_CHECKING:
    from ..clock import Clock
    from ..ledger import Attempt

TIMING = "timing"
"""The key of a recorded response that holds its timing."""


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0), 3)


class Stopwatch:
    """The arrival times of one answer being recorded, from its attempt's start."""

    def __init__(
        self, clock: Callable[[], float], start: float, read_ahead: tuple[float, Sequence[float]] | None = None
    ) -> None:
        """``read_ahead``: the seam read the answer's first chunks before this layer saw it; their
        times (and the headers') are taken from it, not from when they are handed on."""
        self._clock = clock
        self._start = start
        answered, self._ahead = read_ahead if read_ahead is not None else (clock(), [])
        self.headers = _ms(answered - start)
        self._handed = 0
        self.chunks: list[float] = []
        self.sizes: list[int] = []

    def chunk(self, size: int) -> None:
        ahead = self._ahead[self._handed] if self._handed < len(self._ahead) else None
        self._handed += 1
        if size:
            self.chunks.append(_ms((ahead if ahead is not None else self._clock()) - self._start))
            self.sizes.append(size)

    def stored(self) -> dict[str, Any]:
        return {"headers": self.headers, "chunks": list(self.chunks), "sizes": list(self.sizes)}


def _numbers(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values
    )


def problem(timing: Any) -> str | None:
    """What is wrong with a response's ``timing`` as read from a file, or None (absent is fine)."""
    if timing is None:
        return None
    if not isinstance(timing, dict):
        return "is not a mapping"
    if not _numbers([timing.get("headers", 0)]):
        return "headers is not a number of seconds"
    chunks, sizes = timing.get("chunks", []), timing.get("sizes", [])
    if not (_numbers(chunks) and _numbers(sizes)):
        return "chunks and sizes must be lists of non-negative numbers"
    if len(chunks) != len(sizes):
        return f"has {len(chunks)} chunk times for {len(sizes)} sizes"
    if any(later < earlier for earlier, later in pairwise(chunks)):
        return "chunk times go backwards"
    return None


def pieces(
    body: bytes, timing: dict[str, Any] | None, split: Callable[[bytes], list[bytes]]
) -> list[tuple[float, bytes]]:
    """The body in the pieces a replay delivers, each with its recorded arrival (seconds from the start).

    The recorded chunks when their sizes add up to the stored body; else ``split(body)`` (its
    events), each piece at the time the recorded chunk holding its last byte arrived, found in
    proportion (what was stored differs from what arrived: decompressed, pretty-printed, redacted).
    Without timing: ``split(body)``, every piece at once.
    """
    if not timing:
        return [(0.0, piece) for piece in split(body)]
    chunks, sizes = timing.get("chunks") or [], [int(size) for size in timing.get("sizes") or []]
    if not chunks:
        return [(float(timing.get("headers", 0.0)), piece) for piece in split(body)]
    if sum(sizes) == len(body):
        ends = list(accumulate(sizes))
        return [(float(at), body[end - size : end]) for at, size, end in zip(chunks, sizes, ends, strict=True)]
    arrived = list(accumulate(sizes))
    out, end = [], 0
    for piece in split(body):
        end += len(piece)
        position = end * arrived[-1] / max(len(body), 1)
        out.append((float(chunks[min(bisect.bisect_left(arrived, position), len(chunks) - 1)]), piece))
    return out


class Pacer:
    """Waits out a recorded answer on the test's clock, at ``speed`` times the recorded pace.

    Each wait is one call, :meth:`until` (or :meth:`until_async`), bounded by ``due()``: the
    latest time (on the clock) the next piece may arrive, by default the end of the attempt's
    cap. When ``due`` comes first, the wait ends there and ``late(phase, offset)`` is raised, as
    a live attempt is cut at its cap: a replay can fail a budget test as live time would. A
    wait that raises (cut, or interrupted by the deadline's alarm) calls ``on_cut`` first.
    """

    def __init__(
        self,
        clock: Clock,
        attempt: Attempt,
        speed: float,
        *,
        due: Callable[[], float] | None = None,
        late: Callable[[str, float], BaseException] | None = None,
        on_cut: Callable[[], None] = lambda: None,
    ) -> None:
        self._clock = clock
        self._attempt = attempt
        self.speed = speed
        self._due = due or self._budgets_due
        self._late = late or self._budget_cut
        self._on_cut = on_cut

    def _wait(self, offset: float, phase: str) -> tuple[float, BaseException | None]:
        until, due = self._attempt.start + offset / self.speed, self._due()
        return min(until, due) - self._clock.now(), self._late(phase, offset) if due < until else None

    def until(self, offset: float, phase: str) -> None:
        """Wait until the piece recorded ``offset`` seconds after the start is due (``phase`` names it)."""
        wait, late = self._wait(offset, phase)
        try:
            if wait > 0:
                self._clock.sleep(wait)
            if late is not None:
                raise late
        except BaseException:
            self._on_cut()
            raise

    async def until_async(self, offset: float, phase: str) -> None:
        wait, late = self._wait(offset, phase)
        try:
            if wait > 0:
                await self._clock.async_sleep(wait)
            if late is not None:
                raise late
        except BaseException:
            self._on_cut()
            raise

    def _budgets_due(self) -> float:
        """The end of the attempt's cap, or sooner a stream budget (first token, idle gap) the seam keeps."""
        return min(self._attempt.start + self._attempt.cap, chunk_due(self._attempt)[0])

    def _budget_cut(self, phase: str, offset: float) -> BaseException:
        """The limit that came first: a stream budget (its own message, cause recorded by the seam) or the cap."""
        when, error = chunk_due(self._attempt)
        return error if when < self._attempt.start + self._attempt.cap else self._cap_cut(phase, offset)

    def _cap_cut(self, phase: str, offset: float) -> BaseException:
        """The attempt's cap ends before the recording's next piece: a read timeout, as live."""
        attempt = self._attempt
        attempt.cause = attempt.cap_by
        cap = f"{attempt.cap:.2f} s cap ({attempt.cap_by})"
        what = (
            f"no response headers within the attempt's {cap}"
            if phase == "headers"
            else (f"the attempt took longer than its {cap}")
        )
        return httpx2.ReadTimeout(
            f"{what}: the cassette is replayed as recorded (replay speed {self.speed:g}), where its {phase} "
            f"arrived after {offset:.2f} s. Replay it faster (llm_cassette(speed=...), --llm-replay-speed; "
            "0 replays at once) or give the call more time."
        )
