"""The errors pytest-llm-guard raises.

Budget and cassette errors derive from ``BaseException`` on purpose, as pytest's
own outcome exceptions do: application code under test often wraps LLM calls in
``except Exception: sleep(); retry`` loops, and such a loop must not be able to
swallow the signal that the test is out of budget.
"""

from __future__ import annotations

import pytest


class LLMGuardInterrupt(BaseException):
    """Ends the current test at once; no ``except Exception`` can catch it."""


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
