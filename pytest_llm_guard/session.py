"""Session budgets: a deadline from the session's start, and calls and tokens summed over every test.

Why in the state store: under ``pytest -n`` each worker runs part of the suite, and a
limit that each worker counted alone would allow N times what was asked. The check
happens when a guarded test starts; once a limit is spent the remaining guarded
tests skip (or fail, ``on_session_spent``) with the reason, and the session ends as
usual: reports are written, nothing is killed. A test already running finishes under
its own budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .config import OPTIONS, Settings
from .events import Stats
from .state import StateStore

KEY = "session"


class SessionBudget:
    def __init__(self, settings: Settings, store: StateStore, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    @property
    def limited(self) -> bool:
        s = self.settings
        return s.session_deadline is not None or s.max_calls is not None or s.max_tokens is not None

    def start(self) -> None:
        """Mark the session's start, once: by the xdist controller, or the only process."""
        now = self.clock()

        def change(record: dict[str, Any]) -> None:
            record.setdefault("started", now)

        self.store.update(KEY, change)

    def add(self, stats: Stats) -> None:
        """A guarded test ended: add what it spent."""
        if not self.limited:
            return

        def change(record: dict[str, Any]) -> None:
            record["calls"] = record.get("calls", 0) + stats.calls
            record["tokens"] = record.get("tokens", 0) + stats.tokens

        self.store.update(KEY, change)

    def spent(self) -> str | None:
        """Why no further guarded test may start, or None while every limit holds."""
        if not self.limited:
            return None
        s = self.settings
        record = self.store.get(KEY)
        elapsed = self.clock() - record.get("started", self.clock())
        for name, used, limit, unit in (
            ("session_deadline", elapsed, s.session_deadline, " s"),
            ("max_calls", record.get("calls", 0), s.max_calls, " LLM calls"),
            ("max_tokens", record.get("tokens", 0), s.max_tokens, " tokens"),
        ):
            if limit is not None and used >= limit:
                shown = f"{used:.1f}" if unit == " s" else str(used)
                option = OPTIONS[name]
                return (
                    f"pytest-llm-guard: session budget spent: {shown}{unit} of {name}={limit:g}{unit} "
                    f"(set by {s.source_of(name)}), summed over all workers; the remaining LLM tests "
                    f"{'fail' if s.on_session_spent == 'fail' else 'are skipped'} (on_session_spent="
                    f"{s.on_session_spent}). Raise {option.flag} / {option.env} to run more."
                )
        return None
