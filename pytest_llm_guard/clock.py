"""The one clock: every time the guard reads or waits passes through a :class:`Clock`.

Why one: the deadline, the attempt caps, the breakers' cooldowns, Retry-After pacing,
backoff and the ledger's timestamps must agree on what "now" is, and a test of that
logic should run on a :class:`FakeClock` in microseconds, exactly, whatever the load of
the machine. The guard of a test holds its clock and hands it to every stage.

Only what is physically real stays outside: the SIGALRM timer and socket timeouts run
in real seconds (their durations are computed from the clock), and the fault server
keeps real time. ``now`` is monotonic (durations, deadlines); ``wall`` is the time of
day (timelines, breakers shared between processes, HTTP dates).
"""

from __future__ import annotations

import time


class Clock:
    """Real time: the default of every guard, router and session.

    Its readings are the ``time`` functions themselves, not methods that call them: an attempt reads the
    clock several times, and a Python frame per reading is what it would cost.
    """

    now = staticmethod(time.monotonic)
    """Monotonic seconds, for durations and deadlines."""
    wall = staticmethod(time.time)
    """Seconds since the epoch, for timelines and for what other processes read."""

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    async def async_sleep(self, seconds: float) -> None:
        import asyncio  # loaded by whatever runs the coroutine already

        await asyncio.sleep(seconds)


REAL = Clock()
"""The real clock, shared: it holds no state."""


class FakeClock(Clock):
    """Time that moves only when slept through or advanced: waits take no time and are exact.

    A guard on a fake clock still meets real time where it is physical: an attempt's
    socket timeouts are the time left on the fake clock, in real seconds, and the alarm
    fires only once the fake clock has reached its time, so code that hangs in real time
    is not cut by it. Use it to test timing logic (backoff, Retry-After, cooldowns,
    deadline arithmetic); ``slept`` lists every wait, in order.
    """

    def __init__(self, start: float = 1000.0, *, wall: float = 1_800_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self.slept: list[float] = []
        """Every ``sleep`` and ``async_sleep``, in seconds, in order."""

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass, as if the code under test had worked that long."""
        self._now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(max(0.0, seconds))

    async def async_sleep(self, seconds: float) -> None:
        import asyncio

        self.sleep(seconds)
        await asyncio.sleep(0)  # still a point where other tasks run, as a real sleep is
