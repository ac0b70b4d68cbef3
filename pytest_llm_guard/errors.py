"""The errors pytest-llm-guard raises.

Budget and cassette errors derive from ``BaseException`` on purpose, as pytest's
own outcome exceptions do: application code under test often wraps LLM calls in
``except Exception: sleep(); retry`` loops, and such a loop must not be able to
swallow the signal that the test is out of budget.

The tree::

    BaseException
      LLMGuardInterrupt           ends the test at once; no ``except Exception`` catches it
        LLMBudgetExceeded         a deadline, retry, call_timeout, call or token budget is spent
        LLMCassetteMiss           replay only, and no recording answers the request
        LLMNoEndpoint             no endpoint can take a call, on_open fail/skip (also a pytest failure)
        LLMUnguardedRequest       a test that is not guarded sent an LLM request (unguarded = "fail")
    Exception
      LLMCassetteError            a cassette file cannot be read
      pytest.UsageError
        LLMGuardConfigError       bad configuration or marker arguments
      httpx2.ConnectError (and the calling SDK's APIConnectionError)
        LLMEndpointUnavailable    (routing.py) no endpoint can take a call, on_open fallback: the code's fallback runs
    Warning
      pytest.PytestWarning
        LLMUnguardedWarning       a test that is not guarded sent an LLM request (unguarded = "warn")

Nothing here imports httpx2: the plugin registers with pytest without loading it.
"""

from __future__ import annotations

import pytest


class LLMGuardInterrupt(BaseException):
    """Ends the current test at once; no ``except Exception`` can catch it."""


class LLMBudgetExceeded(LLMGuardInterrupt):
    """A test spent its deadline, retry, call_timeout, call or token budget.

    ``budget`` names which one ("deadline", "retries", "call_timeout", "calls",
    "tokens"); the message lists what was spent and every attempt with its outcome.
    """

    def __init__(self, budget: str, message: str, *, in_call: bool = True) -> None:
        super().__init__(message)
        self.budget = budget
        self.in_call = in_call
        """False when the deadline passed while the test ran its own code, outside any LLM call."""
        self.awaiting: tuple[tuple[str, int, str], ...] = ()
        """(file, line, function) of the coroutines the event loop was waiting on when the deadline
        passed there: an async test's own line, which its traceback (the loop's) does not show."""


class LLMGuardConfigError(pytest.UsageError):
    """Bad configuration: says which key, where it was set and what is allowed."""


class LLMCassetteMiss(LLMGuardInterrupt):
    """A request has no recording and the record mode forbids reaching the network.

    The message names the cassette, the request, the closest recorded request with
    what differs, and the command that records only this test.
    """


class LLMCassetteError(Exception):
    """A cassette file cannot be read: its path and the parser's line and column."""


class LLMNoEndpoint(LLMGuardInterrupt, pytest.fail.Exception):
    """No endpoint can take a call now and ``on_open`` is ``fail`` or ``skip``; the message says why,
    endpoint by endpoint.

    The test fails with that message alone (no traceback through the SDK), or is
    reported as skipped with it when ``skip`` is set (``on_open="skip"``).
    """

    def __init__(self, message: str, *, skip: bool = False, endpoints: tuple[str, ...] = ()) -> None:
        super().__init__(message, pytrace=False)
        self.skip = skip
        self.endpoints = endpoints
        """The endpoints that refused the call, first the one it was meant for (empty: none serves it)."""


class LLMUnguardedRequest(LLMGuardInterrupt):
    """A test that is not guarded sent an LLM request and ``unguarded = "fail"``: refused, nothing sent.

    The message names the test, the request and the two ways to guard it.
    """


class LLMUnguardedWarning(pytest.PytestWarning):
    """A test that is not guarded sent an LLM request to the network (``unguarded = "warn"``).

    Its own class, so a suite can filter it like any warning
    (``filterwarnings = ignore::pytest_llm_guard.LLMUnguardedWarning``).
    """
