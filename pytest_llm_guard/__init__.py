"""pytest-llm-guard: LLM calls in tests finish in bounded, explained time."""

from .config import Settings
from .errors import LLMBudgetExceeded, LLMGuardConfigError, LLMGuardInterrupt
from .events import AttemptEvent, Stats
from .guard import Guard

__all__ = [
    "AttemptEvent",
    "Guard",
    "LLMBudgetExceeded",
    "LLMGuardConfigError",
    "LLMGuardInterrupt",
    "Settings",
    "Stats",
]
