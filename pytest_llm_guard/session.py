"""What a pytest session shares across its tests and xdist workers: the state store, the router, session budgets.

Why in the state store: under ``pytest -n`` each worker runs part of the suite, and a
breaker or a limit that each worker kept alone would rediscover a dead endpoint, or
allow N times what was asked. The xdist controller creates an SQLite store and hands
its folder to the workers; a lone process keeps it in memory; with ``state_url`` every
process keeps it in Redis (``state_redis.py``), and falls back to the store it would
have had otherwise; a plugin may return a store of its own (``pytest_llm_guard_state_store``).

Session budgets are checked when a guarded test starts; once a limit is spent the
remaining guarded tests skip (or fail, ``on_session_spent``) with the reason, and the
session ends as usual: reports are written, nothing is killed. A test already running
finishes under its own budget.

The router (breakers and failover) needs httpx2, so it is built when the first guarded
test asks for it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .clock import REAL, Clock
from .config import Settings
from .endpoints import EndpointSet
from .prices import Prices
from .state import MemoryStore, SqliteStore, StateStore

if TYPE_CHECKING:
    from .learned import Learned
    from .ledger import Stats
    from .routing import Router

KEY = "session"
CASSETTE_CLOCK = "cassette-clock"
"""This session's own start, by which it judges its cassette files: with ``state_url`` the sessions
of a run share ``KEY`` (its budgets, from the run's first start), never this (``state_redis.py``)."""
STATE_FOLDER_INPUT = "llm_guard_state_folder"
"""xdist ``workerinput`` key: the folder of the SQLite store the controller created."""


def _sqlite_or_memory(folder: Path) -> Callable[[], StateStore]:
    """The SQLite store in the controller's folder, opened when first needed; in memory on a host
    where that folder does not exist (an xdist worker on another machine, falling back from Redis)."""
    return lambda: SqliteStore.in_folder(folder) if folder.is_dir() else MemoryStore()


class SessionBudget:
    def __init__(self, settings: Settings, store: StateStore, *, clock: Clock = REAL) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    @property
    def limited(self) -> bool:
        s = self.settings
        return any(limit is not None for limit in (s.session_deadline, s.max_calls, s.max_tokens, s.max_cost))

    def start(self) -> float:
        """Mark the session's start (the run's, when sessions share a store), once: by the xdist
        controller, or the only process. Returns it."""
        now = self.clock.wall()

        def change(record: dict[str, Any]) -> float:
            return float(record.setdefault("started", now))

        return self.store.update(KEY, change)

    def add(self, stats: Stats) -> None:
        """A guarded test ended: add what it spent."""
        if not self.limited:
            return

        def change(record: dict[str, Any]) -> None:
            record["calls"] = record.get("calls", 0) + stats.calls
            record["tokens"] = record.get("tokens", 0) + stats.tokens
            record["cost"] = record.get("cost", 0.0) + (stats.cost or 0.0)

        self.store.update(KEY, change)

    def spent(self) -> str | None:
        """Why no further guarded test may start, or None while every limit holds."""
        if not self.limited:
            return None
        s = self.settings
        record = self.store.get(KEY)
        now = self.clock.wall()
        elapsed = now - record.get("started", now)
        for name, used, limit in (
            ("session_deadline", elapsed, s.session_deadline),
            ("max_calls", record.get("calls", 0), s.max_calls),
            ("max_tokens", record.get("tokens", 0), s.max_tokens),
            ("max_cost", record.get("cost", 0.0), s.max_cost),
        ):
            if limit is not None and used >= limit:
                from . import report

                return report.session_spent(s, name, used, limit)
        return None


class Session:
    """One per pytest process: opened at configure, closed at unconfigure."""

    def __init__(
        self,
        settings: Settings,
        endpoints: EndpointSet,
        store: StateStore,
        folder: Path | None,
        prices: Prices | None = None,
        clock: Clock = REAL,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.prices = prices or Prices()
        self.clock = clock
        """The session's clock: its budget (time of day, shared by xdist workers), its duration, its router."""
        self.started = clock.now()
        self.records: list[dict[str, Any]] = []
        """Every guarded test's record (``report_json.record``), from every worker: for the reports."""
        self.unguarded: list[dict[str, Any]] = []
        """Tests that were not guarded yet sent LLM requests (``unguarded = "warn"``)."""
        self.cassette_notes: list[dict[str, Any]] = []
        """Each guarded test's use of its cassette (``CassetteLayer.note``), from every worker."""
        self.upkeep: dict[str, Any] | None = None
        """The session's end on its cassettes (``cassettes/upkeep.py``), once judged by the controller."""
        self.store = store
        self.folder = folder
        """The SQLite folder this process created (the xdist controller) and must remove."""
        self.handoff: dict[str, str] = {}
        """What the xdist controller hands each worker (``workerinput``): the store's folder, its session id."""
        self.budget = SessionBudget(settings, store, clock=clock)
        self._started_at: float | None = None
        self._router: Router | None = None
        self.learned: Learned | None = None
        """Per-model limits from the ``learned_timeouts`` file, when one is configured."""

    @classmethod
    def open(
        cls,
        settings: Settings,
        endpoints: EndpointSet,
        *,
        plugin_store: StateStore | None,
        workerinput: Mapping[str, Any] | None,
        distributed: bool,
        prices: Prices | None = None,
        root_name: str,
        warn: Callable[[str], None],
        environ: Mapping[str, str] = os.environ,
    ) -> Session:
        """A plugin's store; else Redis with ``state_url``; else (and as Redis's fallback) an xdist
        worker opens the controller's SQLite file, the controller creates it (to hand over, and
        remove at the end), and a lone process stays in memory. ``warn``: how a warning about the
        store is shown (from the configuration step)."""
        folder = None
        handoff: dict[str, str] = {}
        local: Callable[[], StateStore]
        if workerinput is not None and STATE_FOLDER_INPUT in workerinput:
            local = _sqlite_or_memory(Path(workerinput[STATE_FOLDER_INPUT]))
        elif distributed and plugin_store is None:
            folder = Path(tempfile.mkdtemp(prefix="pytest-llm-guard-"))
            handoff[STATE_FOLDER_INPUT] = str(folder)
            local = _sqlite_or_memory(folder)
        else:
            local = MemoryStore
        if plugin_store is not None:
            store: StateStore = plugin_store
        elif settings.state_url:
            from .state_redis import open_store

            store, shared = open_store(
                settings, local, root_name=root_name, workerinput=workerinput, environ=environ, warn=warn
            )
            if distributed:  # only then is there an xdist hook to hand it over with
                handoff.update(shared)
        else:
            store = local()
        session = cls(settings, endpoints, store, folder, prices)
        session.handoff = handoff
        if workerinput is None:
            session.budget.start()
            now = session.clock.wall()
            session._started_at = store.update(CASSETTE_CLOCK, lambda record: float(record.setdefault("started", now)))
        return session

    @property
    def started_at(self) -> float:
        """When the session started (``Clock.wall``), the same for every xdist worker: what a cassette
        held "before this session" is judged by it (``once``, and ``all`` replacing the old file)."""
        if self._started_at is None:
            self._started_at = float(self.store.get(CASSETTE_CLOCK).get("started", self.clock.wall()))
        return self._started_at

    @property
    def router(self) -> Router:
        if self._router is None:
            from .routing import Router

            self._router = Router(self.endpoints, self.store, self.settings, clock=self.clock)
        return self._router

    def endpoint_status(self) -> list[str]:
        """Breakers that tripped this session (none to tell if no guarded test ran here)."""
        return self._router.status() if self._router is not None else []

    def existed_at_start(self, path: Path) -> bool:
        """Did this cassette exist when the session started? Judged when the session (any xdist
        worker of it) first opens it, by the file's time: a cassette another session wrote since
        this one started did not exist for this one.

        ``once`` means "record a cassette that did not exist when the session started":
        every test sharing a cassette created in this session may record into it.
        """
        from .cassettes.files import written_before

        exists = written_before(path, self.started_at)

        def change(record: dict[str, Any]) -> bool:
            return bool(record.setdefault("existed", exists))

        return self.store.update(f"cassette:{path.resolve()}", change)

    def keep_before(self, path: Path) -> None:
        """Keep what a cassette being recorded into held when the session started, once (its first
        opener, before any write of this session), so the session's end reviews the re-record."""
        key = f"cassette-before:{path.resolve()}"
        if self.store.get(key):
            return
        from .cassettes.files import read_text, written_before

        text = read_text(path) if written_before(path, self.started_at) else None
        self.store.update(key, lambda record: record.setdefault("text", text))

    def rerecorded(self, path: Path, *, now: bool = False) -> bool:
        """Whether a test of this session (any worker) found this cassette expired and records it
        again (``now``: this test does): every later test using it records too, rather than missing
        the answers that re-record replaced."""
        key = f"cassette-rerecord:{path.resolve()}"
        if now:
            self.store.update(key, lambda record: record.update(rerecord=True))
        return now or bool(self.store.get(key).get("rerecord"))

    def before(self, path: str) -> str | None:
        """The text a cassette held when the session started, if :meth:`keep_before` kept it."""
        return self.store.get(f"cassette-before:{Path(path).resolve()}").get("text")

    def configure_node(self, node: Any) -> None:
        """xdist: hand the controller's store (its folder, its session id) to a worker."""
        node.workerinput.update(self.handoff)

    def close(self) -> None:
        if self._router is not None:
            self._router.close()  # before the store: a probe's answer may still be recorded into it
        self.store.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class Records:
    """The plugin that collects guarded tests' records into the session, from this process or (under xdist)
    a worker's; registered only where records can come."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = getattr(report, "llm_guard", None)
        if isinstance(test, dict):
            self.session.records.append(test)
        unguarded = getattr(report, "llm_unguarded", None)
        if isinstance(unguarded, dict):
            self.session.unguarded.append(unguarded)
        cassette = getattr(report, "llm_cassette", None)
        if isinstance(cassette, dict):
            self.session.cassette_notes.append(cassette)


class XdistHandoff:
    """Registered only when xdist distributes tests (its hook does not exist otherwise)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def pytest_configure_node(self, node: Any) -> None:
        self.session.configure_node(node)
