"""Hooks other plugins and conftest.py files may implement."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vcr.request import Request as VcrRequest

    from .clock import Clock
    from .ledger import Attempt
    from .state import StateStore


@pytest.hookspec(firstresult=True)
def pytest_llm_cassette_match(request: VcrRequest, recorded: VcrRequest) -> bool | None:
    """May ``recorded`` answer ``request``? Return False to refuse, True to accept, None for no opinion.

    Called only for recorded requests whose key (the ``match_on`` parts) equals the
    request's, so look-up stays indexed: a custom matcher can narrow matching; to
    loosen it, take parts out of ``match_on``. Both requests are already scrubbed.
    """


@pytest.hookspec(firstresult=True)
def pytest_llm_guard_state_store(config: pytest.Config) -> StateStore | None:
    """The store holding breakers, rate-limit cooldowns and session budgets, or None for the default.

    Called once in every process: the xdist controller and each worker. The default is
    in memory without xdist, SQLite in a folder the controller creates under xdist (one
    machine), and Redis with ``state_url`` (``state_redis.py``); a store returned here wins.
    """


@pytest.hookspec(firstresult=True)
def pytest_llm_guard_clock(item: pytest.Item) -> Clock | None:
    """The clock of a guarded test, or None for the real one.

    Return a ``pytest_llm_guard.FakeClock`` to test timing with the guard in no time: its
    deadline, backoff and Retry-After waits run on it (``llm_guard.clock``), exactly. The
    test's own code still runs in real time, and the deadline follows the fake clock.
    """


@pytest.hookspec
def pytest_llm_guard_attempt(record: Attempt) -> None:
    """Called after each attempt of a guarded test ends, with its record (``pytest_llm_guard.Attempt``).

    For shipping records elsewhere (OpenTelemetry, a dashboard) without forking: the record
    is final (outcome, times, tokens, cost, source, endpoint); do not change it. Runs on the
    process that made the attempt (an xdist worker), in the thread that made it.
    """
