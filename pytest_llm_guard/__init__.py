"""pytest-llm-guard: LLM calls in tests finish in bounded, explained time."""

from .config import Settings
from .errors import (
    LLMBudgetExceeded,
    LLMCassetteError,
    LLMCassetteMiss,
    LLMEndpointUnavailable,
    LLMGuardConfigError,
    LLMGuardInterrupt,
    LLMNoEndpoint,
)
from .events import AttemptEvent, Stats
from .guard import Guard

__all__ = [
    "AttemptEvent",
    "Guard",
    "LLMBudgetExceeded",
    "LLMCassetteError",
    "LLMCassetteMiss",
    "LLMEndpointUnavailable",
    "LLMGuardConfigError",
    "LLMGuardInterrupt",
    "LLMNoEndpoint",
    "Settings",
    "Stats",
]
