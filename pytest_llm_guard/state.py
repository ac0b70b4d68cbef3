"""The shared state store: small JSON records by key, changed atomically by whoever holds them.

Why one small interface: breakers, rate-limit cooldowns, retry tokens and session
budgets must be the same for every process of a session, or each pytest-xdist
worker rediscovers a dead endpoint at full price. All of them need only two
operations on a small record:

- ``get(key)``: a copy of the record (``{}`` when there is none);
- ``update(key, change)``: read the record, let ``change`` edit it in place and
  return a value, write it back, all atomically against every other process;
  ``update`` returns what ``change`` returned.

Two local implementations are here: :class:`MemoryStore` (one process) and
:class:`SqliteStore` (every process on one machine: stdlib ``sqlite3`` in WAL mode,
one row per key, ``BEGIN IMMEDIATE`` as the cross-process lock). Under ``pytest -n``
the controller creates the database in a temporary folder and hands its path to the
workers (``pytest_configure_node`` / ``workerinput``).

Across machines (CI shards, xdist over several hosts), ``state_url`` puts the records
in Redis: ``state_redis.py``, with why its updates are optimistic and how it falls back
to these stores. Any other store plugs in through the ``pytest_llm_guard_state_store(config)``
hook: return an object with the three methods below. ``change`` is a pure function of the
record, so a store may run it again (an optimistic store does when another process wrote first).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Record = dict[str, Any]


class StateStore(Protocol):
    """Where shared records live. ``change`` may run more than once; it must not have side effects."""

    def get(self, key: str) -> Record: ...

    def update(self, key: str, change: Callable[[Record], T]) -> T: ...

    def close(self) -> None: ...


class MemoryStore:
    """One process (no xdist): a dict under a lock, records kept as JSON so nothing is shared by reference."""

    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> Record:
        with self._lock:
            return json.loads(self._records.get(key, "{}"))

    def update(self, key: str, change: Callable[[Record], T]) -> T:
        with self._lock:
            record = json.loads(self._records.get(key, "{}"))
            result = change(record)
            self._records[key] = json.dumps(record)
            return result

    def close(self) -> None:
        """Nothing to release."""


class SqliteStore:
    """Every process on this machine: one SQLite file in WAL mode; ``BEGIN IMMEDIATE`` serialises updates."""

    FILENAME = "llm-guard-state.sqlite3"

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        import sqlite3  # only under xdist: a lone process never pays for it

        self.path = path
        self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()  # one connection per process, shared by its threads
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS records (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    @classmethod
    def in_folder(cls, folder: Path) -> SqliteStore:
        return cls(folder / cls.FILENAME)

    def get(self, key: str) -> Record:
        with self._lock:
            row = self._db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else {}

    def update(self, key: str, change: Callable[[Record], T]) -> T:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM records WHERE key = ?", (key,)).fetchone()
                record = json.loads(row[0]) if row else {}
                result = change(record)
                self._db.execute(
                    "INSERT INTO records (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (key, json.dumps(record)),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def close(self) -> None:
        with self._lock:
            self._db.close()
