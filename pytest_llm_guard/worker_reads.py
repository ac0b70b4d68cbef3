"""A worker thread's attempt is cut in its own thread, never in the main one.

SIGALRM interrupts only the main thread (``alarm.py``), so an attempt made in another
thread whose status line and headers trickle in (each byte restarts httpx2's read
timeout) is bounded where it reads: while that thread awaits an attempt's headers, each
read of the connection waits at most until the attempt's cap, and a read after it raises
``httpcore2.ReadTimeout``, which httpx2 turns into ``httpx2.ReadTimeout`` in that thread,
where the application's own ``except`` sees it. Installed with the seam (``transport.py``),
so unguarded tests read through untouched httpcore2 code.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpcore2
from httpcore2._backends.sync import SyncStream

_limit = threading.local()
"""Per thread: (clock, clock time the headers are due, the timeout's message), while awaited."""
_saved: Any = None


def install() -> None:
    global _saved
    if _saved is None:
        _saved = SyncStream.read
        SyncStream.read = _read  # type: ignore[method-assign]


def uninstall() -> None:
    global _saved
    if _saved is not None:
        SyncStream.read, _saved = _saved, None  # type: ignore[method-assign]


def due(clock: Callable[[], float], when: float, message: str) -> None:
    """This thread's reads end at ``when`` (by ``clock``) with ``message``, until :func:`clear`."""
    _limit.due = (clock, when, message)


def clear() -> None:
    _limit.due = None


def _read(stream: SyncStream, max_bytes: int, timeout: float | None = None) -> bytes:
    limit = getattr(_limit, "due", None)
    if limit is None:
        return _saved(stream, max_bytes, timeout)
    clock, when, message = limit
    left = when - clock()
    if left <= 0:
        raise httpcore2.ReadTimeout(message)
    try:
        return _saved(stream, max_bytes, left if timeout is None else min(timeout, left))
    except httpcore2.ReadTimeout:
        if when - clock() > 0:
            raise
        raise httpcore2.ReadTimeout(message) from None
