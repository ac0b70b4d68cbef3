"""The errors pytest-llm-guard raises.

Budget and cassette errors derive from ``BaseException`` on purpose, as pytest's
own outcome exceptions do: application code under test often wraps LLM calls in
``except Exception: sleep(); retry`` loops, and such a loop must not be able to
swallow the signal that the test is out of budget.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import httpx2
import pytest


class LLMGuardInterrupt(BaseException):
    """Ends the current test at once; no ``except Exception`` can catch it."""


_LIBRARIES = ("openai", "httpx2", "httpcore2", "tenacity", "pytest_llm_guard", "_pytest", "pluggy")


def failure_text(excinfo: pytest.ExceptionInfo[BaseException], root: Path) -> str:
    """How a test the guard ended is reported: the message, then the test's and the application's frames.

    The message comes first, so pytest's one-line summary shows it. No frames of the
    SDK, httpx2 or the guard: pytest would print their arguments, and a request's URL
    may carry a key in its query string; the message already lists every attempt.
    """
    libraries = tuple(str(Path(importlib.import_module(name).__file__).parent) for name in _LIBRARIES)
    own = [e for e in excinfo.traceback if not str(e.path).startswith(libraries)] or [excinfo.traceback[-1]]
    lines = []
    for entry in own:
        path = Path(entry.path)
        shown = path.relative_to(root) if path.is_relative_to(root) else path
        lines.append(f"{shown}:{entry.lineno + 1}: in {entry.name}\n    {str(entry.statement).strip()}")
    return "\n".join([f"{excinfo.typename}: {excinfo.value}", "", "Where the LLM call was made:", *lines])


class LLMBudgetExceeded(LLMGuardInterrupt):
    """A test spent its deadline, retry, call or token budget.

    ``budget`` names which one ("deadline", "retries", "calls", "tokens"); the
    message lists what was spent and every attempt with its outcome.
    """

    def __init__(self, budget: str, message: str) -> None:
        super().__init__(message)
        self.budget = budget


class LLMGuardConfigError(pytest.UsageError):
    """Bad configuration: says which key, where it was set and what is allowed."""


class LLMCassetteMiss(LLMGuardInterrupt):
    """A request has no recording and the record mode forbids reaching the network.

    The message names the cassette, the request, the closest recorded request with
    what differs, and the command that records only this test.
    """


class LLMCassetteError(Exception):
    """A cassette file cannot be read: its path and the parser's line and column."""


class LLMEndpointUnavailable(httpx2.ConnectError):
    """Code under test called an endpoint whose breaker is open (or that is rate-limited): refused at once.

    The openai SDK raises it as ``APIConnectionError``, so the application's own fallback
    runs; it counts against the test's retry budget. The message names the endpoint, its
    breaker state, its last errors and when the next probe is due.
    """


class LLMNoEndpoint(LLMGuardInterrupt, pytest.fail.Exception):
    """No endpoint can take an ``llm_client`` call now; the message says why, endpoint by endpoint.

    The test fails with that message alone (no traceback through the SDK), or is
    reported as skipped with it when ``skip`` is set (``on_open="skip"``).
    """

    def __init__(self, message: str, *, skip: bool = False) -> None:
        super().__init__(message, pytrace=False)
        self.skip = skip
