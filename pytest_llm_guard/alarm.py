"""The deadline binds the whole test, not only its LLM calls: SIGALRM in the main thread.

Why a signal: an application's own ``time.sleep`` backoff, an ``asyncio.sleep``, a Python
loop, or a server trickling its status line byte by byte never return to the guard, so
only something that interrupts the main thread can end them on time, as pytest-timeout's
signal method does. One interval timer per process, so one schedule serves every event
of a test: the deadline, an attempt's cap while its headers are awaited, the backstop
(deadline + ``timeout_grace``) for code that swallows the deadline's exception, and the
user's own pytest-timeout timeout when it uses the signal method (which would otherwise
replace our timer). Without SIGALRM (Windows) or outside the main thread it is not used.
"""

from __future__ import annotations

__tracebackhide__ = True

import signal
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest

Action = Callable[[], None]


class Alarm:
    """A schedule of actions run in the main thread at their time; an action usually raises."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._events: list[tuple[float, int, Action]] = []
        self._next_id = 0
        self._previous: Any = None
        self._running = False

    @staticmethod
    def available() -> bool:
        return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def start(self) -> None:
        self._previous = signal.signal(signal.SIGALRM, self._fire)
        self._running = True
        self._schedule()

    def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous if self._previous is not None else signal.SIG_DFL)

    def at(self, when: float, action: Action) -> int:
        """Run ``action`` at clock time ``when``; returns a handle for :meth:`cancel`."""
        self._next_id += 1
        self._events.append((when, self._next_id, action))
        if self._running:
            self._schedule()
        return self._next_id

    def cancel(self, handle: int) -> None:
        self._events = [event for event in self._events if event[1] != handle]
        if self._running:
            self._schedule()

    def _schedule(self) -> None:
        if not self._events:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        soonest = min(when for when, _, _ in self._events)
        signal.setitimer(signal.ITIMER_REAL, max(soonest - self._clock(), 1e-4))

    def _fire(self, signum: int, frame: object) -> None:
        now = self._clock()
        due = sorted(event for event in self._events if event[0] <= now + 1e-3)
        self._events = [event for event in self._events if event not in due]
        self._schedule()
        for _, _, action in due:
            action()  # raises in the main thread, wherever it was


def with_line_numbers(excinfo: pytest.ExceptionInfo[BaseException]) -> pytest.ExceptionInfo[BaseException]:
    """An exception raised by the alarm's signal handler can carry a traceback entry without a line
    number (CPython), which pytest cannot format: give such entries their frame's line."""
    entries, tb = [], excinfo.tb
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if all(entry.tb_lineno is not None for entry in entries):
        return excinfo
    rebuilt = None
    for entry in reversed(entries):
        line = entry.tb_lineno if entry.tb_lineno is not None else (entry.tb_frame.f_lineno or 1)
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, line)
    value = excinfo.value.with_traceback(rebuilt)
    return pytest.ExceptionInfo.from_exc_info((type(value), value, rebuilt))
