"""pytest-llm-guard: LLM calls in tests finish in bounded, explained time.

Names that need httpx2 or the openai SDK, and the clock, load on first use, so a suite
that never uses the plugin does not pay for importing them.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .config import Settings
from .errors import (
    LLMBudgetExceeded,
    LLMCassetteError,
    LLMCassetteMiss,
    LLMGuardConfigError,
    LLMGuardInterrupt,
    LLMNoEndpoint,
    LLMUnguardedRequest,
    LLMUnguardedWarning,
)

if TYPE_CHECKING:
    from .clock import Clock, FakeClock
    from .guard import Guard
    from .ledger import Attempt, Stats
    from .routing import LLMEndpointUnavailable

_LAZY = {
    "Clock": ".clock",
    "FakeClock": ".clock",
    "Attempt": ".ledger",
    "Stats": ".ledger",
    "Guard": ".guard",
    "LLMEndpointUnavailable": ".routing",
}

__all__ = [
    "Attempt",
    "Clock",
    "FakeClock",
    "Guard",
    "LLMBudgetExceeded",
    "LLMCassetteError",
    "LLMCassetteMiss",
    "LLMEndpointUnavailable",
    "LLMGuardConfigError",
    "LLMGuardInterrupt",
    "LLMNoEndpoint",
    "LLMUnguardedRequest",
    "LLMUnguardedWarning",
    "Settings",
    "Stats",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
