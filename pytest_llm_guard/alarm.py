"""The deadline binds the whole test, not only its LLM calls: SIGALRM in the main thread.

Why a signal: an application's own ``time.sleep`` backoff, an ``asyncio.sleep``, a Python
loop, or a server trickling its status line byte by byte never return to the guard, so
only something that interrupts the main thread can end them on time, as pytest-timeout's
signal method does. One interval timer per process, so one schedule serves every event
of a test: the deadline, an attempt's cap while its headers are awaited, the backstop
(deadline + ``timeout_grace``) for code that swallows the deadline's exception, and the
user's own pytest-timeout timeout when it uses the signal method (which would otherwise
replace our timer). Without SIGALRM (Windows) or outside the main thread it is not used.

The application shares that one timer: while the alarm runs, ``signal.alarm``,
``setitimer``/``getitimer`` (``ITIMER_REAL``) and ``signal``/``getsignal`` (``SIGALRM``)
are the alarm's own, which keep the application's timer and handler in the schedule
beside ours (its handler runs at its time; its ``alarm(0)`` cancels only its timer).
A timer armed before the test (a session watchdog in ``conftest.py``) is taken over at
the start and handed back, with the time it has left, at the end.
"""

from __future__ import annotations

__tracebackhide__ = True

import signal
import threading
import types
from collections.abc import Callable
from typing import Any

import pytest

from .clock import REAL

Action = Callable[[], None]


class Alarm:
    """A schedule of actions run in the main thread at their time; an action usually raises."""

    def __init__(self, clock: Callable[[], float] = REAL.now) -> None:
        """``clock``: the guard's ``Clock.now``; the timer itself runs in real seconds."""
        self._clock = clock
        self._real = clock == REAL.now
        """The clock is real time itself: one reading serves the schedule and the timer's expiry."""
        self._events: list[tuple[float, int, Action]] = []
        self._next_id = 0
        self._running = False
        self._below: dict[str, Any] = {}
        """The ``signal`` functions found at the start: the real ones, or an outer alarm's."""
        self._handler: Any = None
        """The application's SIGALRM handler, as it last set it."""
        self._user: tuple[int, float] | None = None
        """The application's timer: its event's handle and its interval."""
        self._frame: Any = None
        self._armed: float | None = None
        """When the timer expires, in real time (``REAL.now``), while it is set."""

    @staticmethod
    def available() -> bool:
        return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()

    def start(self) -> None:
        self._below = {name: getattr(signal, name) for name in _SHARED}
        left, interval = self._below["setitimer"](signal.ITIMER_REAL, 0)
        self._handler = self._below["signal"](signal.SIGALRM, self._fire)
        for name in _SHARED:
            setattr(signal, name, getattr(self, f"_user_{name}"))
        self._running = True
        if left > 0:
            self._user_timer(left, interval)
        self._schedule()

    def stop(self) -> None:
        """Hand the timer back: the application's handler, and what its timer has left."""
        if not self._running:
            return
        self._running = False
        self._armed = None
        left, interval = self._user_left()
        for name, function in self._below.items():
            setattr(signal, name, function)
        self._below["setitimer"](signal.ITIMER_REAL, 0)
        self._below["signal"](signal.SIGALRM, self._handler if self._handler is not None else signal.SIG_DFL)
        if left > 0:
            self._below["setitimer"](signal.ITIMER_REAL, left, interval)

    def at(self, when: float, action: Action) -> int:
        """Run ``action`` at clock time ``when``; returns a handle for :meth:`cancel`."""
        self._next_id += 1
        self._events.append((when, self._next_id, action))
        if self._running:
            self._schedule()
        return self._next_id

    def cancel(self, handle: int) -> None:
        events = self._events  # replaced, never changed in place: a signal may read it meanwhile
        if events and events[-1][1] == handle:  # the latest, as a call's header timer is: a slice, no loop
            self._events = events[:-1]
        else:
            self._events = [event for event in events if event[1] != handle]
        if self._running and (self._armed is None or not self._events):
            self._schedule()  # a timer set already expires by the soonest event left (see _schedule)

    def _schedule(self) -> None:
        """Set the timer for the soonest event, unless it is set for that moment or sooner already.

        A timer that expires before the soonest event is left as it is: :meth:`_fire` then finds
        nothing due and sets it for the soonest. So a call's timer for its headers (its cap, sooner
        than the deadline) comes and goes without a system call: set by the first call, it serves
        the calls after it, at the cost of one early signal per cap's length.
        """
        soonest = min(self._events)[0] if self._events else None  # (when, handle, _): handles are unique
        if soonest is None:
            self._armed = None
            self._below["setitimer"](signal.ITIMER_REAL, 0)
            return
        now = self._clock()
        seconds = max(soonest - now, 1e-4)
        expires = (now if self._real else REAL.now()) + seconds  # real time: a fake clock's moves are not the timer's
        if self._armed is not None and self._armed < expires + _SAME_MOMENT:
            return
        self._armed = expires
        self._below["setitimer"](signal.ITIMER_REAL, seconds)

    def _fire(self, signum: int, frame: object) -> None:
        self._armed = None  # the timer expired
        now = self._clock()
        due = sorted(event for event in self._events if event[0] <= now + 1e-3)
        self._events = [event for event in self._events if event not in due]
        self._frame = frame
        self._schedule()
        users = self._user[0] if self._user is not None else None
        for index, (_, handle, action) in enumerate(due):
            try:
                action()  # raises in the main thread, wherever it was
            except BaseException:
                # The application's timer is never lost, nor ours when its handler raised; one of our
                # exceptions speaks for our other due events (the budget sees the deadline passed).
                rest = [event for event in due[index + 1 :] if users in (handle, event[1])]
                self._events.extend((now, later, pending) for _, later, pending in rest)
                self._schedule()  # they run at the next signal
                raise

    # -- the application's timer and handler, beside ours ---------------------------

    def _user_timer(self, seconds: float, interval: float) -> None:
        if self._user is not None:
            self.cancel(self._user[0])
            self._user = None
        if seconds > 0:
            self._user = (self.at(self._clock() + seconds, self._user_due), interval)

    def _user_left(self) -> tuple[float, float]:
        if self._user is None:
            return 0.0, 0.0
        handle, interval = self._user
        when = next((when for when, event, _ in self._events if event == handle), None)
        return (0.0, 0.0) if when is None else (max(when - self._clock(), 1e-4), interval)

    def _user_due(self) -> None:
        """The application's timer is due: its handler runs, or what SIGALRM does without one."""
        interval = self._user[1] if self._user is not None else 0.0
        self._user = None
        if interval > 0:
            self._user_timer(interval, interval)
        handler = self._handler
        if callable(handler):
            handler(signal.SIGALRM, self._frame)
        elif handler != signal.SIG_IGN:  # the default action: the process ends, as it would have
            self.stop()
            signal.raise_signal(signal.SIGALRM)

    def _user_alarm(self, seconds: int) -> int:
        left, _ = self._user_left()
        self._user_timer(seconds, 0.0)
        # alarm(2) rounds to the nearest second, and never says 0 while a timer was set
        return max(round(left), 1) if left > 0 else 0

    def _user_setitimer(self, which: int, seconds: float, interval: float = 0.0) -> tuple[float, float]:
        if which != signal.ITIMER_REAL:
            return self._below["setitimer"](which, seconds, interval)
        previous = self._user_left()
        self._user_timer(seconds, interval)
        return previous

    def _user_getitimer(self, which: int) -> tuple[float, float]:
        if which != signal.ITIMER_REAL:
            return self._below["getitimer"](which)
        return self._user_left()

    def _user_signal(self, signalnum: int, handler: Any) -> Any:
        if signalnum != signal.SIGALRM or threading.current_thread() is not threading.main_thread():
            return self._below["signal"](signalnum, handler)  # outside the main thread it raises, as it would
        if not (callable(handler) or handler in (signal.SIG_DFL, signal.SIG_IGN)):
            raise TypeError("signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a callable object")
        previous, self._handler = self._handler, handler
        return previous

    def _user_getsignal(self, signalnum: int) -> Any:
        if signalnum != signal.SIGALRM:
            return self._below["getsignal"](signalnum)
        return self._handler


_SHARED = ("alarm", "setitimer", "getitimer", "signal", "getsignal")
_SAME_MOMENT = 1e-3
"""Seconds within which the timer is left as it is rather than set again (``_fire`` runs what is due
within as much)."""
"""The ``signal`` functions the application shares the timer through."""


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
