"""Reads that end at a time: an attempt is cut where it reads, in its own thread or task.

SIGALRM interrupts only the main thread (``alarm.py``), and each byte restarts httpx2's
read timeout, so a stalling or trickling server is bounded where it is read: while a limit
is set (:func:`due`), each read of a connection in that thread (or asyncio task) waits at
most until then, and a read after it raises ``httpcore2.ReadTimeout`` with the limit's
message, which httpx2 turns into ``httpx2.ReadTimeout`` where the caller's own ``except``
sees it. Set for another thread's wait for headers (``guard.py``) and for each read of a
body (``transport.py``: the attempt's cap, first token, idle gap; ``streams.py``).
Installed with the seam, so unguarded tests read through untouched httpcore2 code; and only once
httpcore2 is loaded (:data:`pending` until then): a session that replays every answer, whose clients
build their network transport at its first use (``deferred.py``), never imports it.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from httpcore2._backends.anyio import AnyIOStream
    from httpcore2._backends.sync import SyncStream

_limit: ContextVar[tuple[Callable[[], float], float, object] | None] = ContextVar(
    "pytest_llm_guard_reads", default=None
)
"""Per thread and per task: (clock, clock time reads end, the timeout's message as its ``str()``), while set."""
_saved: Any = None
_ReadTimeout: Any = None
"""``httpcore2.ReadTimeout``, once installed."""
_installing = threading.Lock()
pending = False
"""Installed while httpcore2 was not loaded: :func:`catch_up` wraps its reads once it is (the seam asks
at each guarded attempt, before anything is read)."""


def install() -> None:
    global pending
    with _installing:
        pending = _saved is None
    catch_up()


def catch_up() -> None:
    """Wrap httpcore2's reads, if it is loaded now (a client built since :func:`install` loaded it)."""
    global _saved, _ReadTimeout, pending
    if not pending or "httpcore2" not in sys.modules:
        return
    from httpcore2 import ReadTimeout
    from httpcore2._backends.anyio import AnyIOStream
    from httpcore2._backends.sync import SyncStream

    with _installing:  # a probe's thread may catch up at the same time: the reads are wrapped once
        if pending:
            _ReadTimeout = ReadTimeout
            _saved = SyncStream.read, AnyIOStream.read
            SyncStream.read = _read  # type: ignore[method-assign]
            AnyIOStream.read = _read_async  # type: ignore[method-assign]
            pending = False


def uninstall() -> None:
    global _saved, pending
    with _installing:
        pending = False
        if _saved is not None:
            from httpcore2._backends.anyio import AnyIOStream
            from httpcore2._backends.sync import SyncStream

            (SyncStream.read, AnyIOStream.read), _saved = _saved, None  # type: ignore[method-assign]


def due(clock: Callable[[], float], when: float, message: object) -> None:
    """This thread's (or task's) reads end at ``when`` (by ``clock``) with ``str(message)``, until :func:`clear`.

    ``message`` is formatted only if a read times out (a ``streams.Due`` is passed as it is)."""
    _limit.set((clock, when, message))


clear = functools.partial(_limit.set, None)
"""This thread's (or task's) reads end when they end again (after every read of a body: a call of the
context variable's own ``set``, no Python frame)."""


def _left(limit: tuple[Callable[[], float], float, object], timeout: float | None) -> float:
    clock, when, message = limit
    left = when - clock()
    if left <= 0:
        raise _ReadTimeout(str(message))
    return left if timeout is None else min(timeout, left)


def _read(stream: SyncStream, max_bytes: int, timeout: float | None = None) -> bytes:
    limit = _limit.get()
    if limit is None:
        return _saved[0](stream, max_bytes, timeout)
    try:
        return _saved[0](stream, max_bytes, _left(limit, timeout))
    except _ReadTimeout:
        if limit[1] - limit[0]() > 0:
            raise
        raise _ReadTimeout(str(limit[2])) from None


async def _read_async(stream: AnyIOStream, max_bytes: int, timeout: float | None = None) -> bytes:
    limit = _limit.get()
    if limit is None:
        return await _saved[1](stream, max_bytes, timeout)
    try:
        return await _saved[1](stream, max_bytes, _left(limit, timeout))
    except _ReadTimeout:
        if limit[1] - limit[0]() > 0:
            raise
        raise _ReadTimeout(str(limit[2])) from None
