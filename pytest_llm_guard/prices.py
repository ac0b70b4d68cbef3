"""What tokens cost: ``[tool.pytest_llm_guard.prices]``, per model, per million tokens.

::

    [tool.pytest_llm_guard.prices]
    "gpt-4o-mini" = { input = 0.15, output = 0.60 }
    "gpt-4o" = { input = 2.50, output = 10.00 }
    "claude-haiku-4-5" = { input = 1.00, output = 5.00 }
    "claude-sonnet-4-5" = { input = 3.00, output = 15.00 }

A model is priced by its exact name, else by the longest configured name it starts with
(``gpt-4o-mini`` prices ``gpt-4o-mini-2024-07-18``). A response that reports only a total
is priced at the higher of the two prices, so a budget never under-counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import LLMGuardConfigError


@dataclass(frozen=True)
class Price:
    input: float
    output: float


@dataclass(frozen=True)
class Prices:
    by_model: dict[str, Price] = field(default_factory=dict)
    source: str = ""

    def __bool__(self) -> bool:
        return bool(self.by_model)

    def of(self, model: str | None) -> Price | None:
        if not model or not self.by_model:
            return None
        if model in self.by_model:
            return self.by_model[model]
        prefixes = [name for name in self.by_model if model.startswith(name)]
        return self.by_model[max(prefixes, key=len)] if prefixes else None

    def cost(self, model: str | None, total: int, input: int | None, output: int | None) -> float | None:
        price = self.of(model)
        if price is None:
            return None
        if input is None and output is None:
            return total * max(price.input, price.output) / 1e6
        return ((input or 0) * price.input + (output or 0) * price.output) / 1e6


def load_prices(raw: Any, where: str) -> Prices:
    """Validate the prices table (``raw`` is None when absent)."""
    if raw is None:
        return Prices()
    source = f"[tool.pytest_llm_guard.prices] in {where}"
    if not isinstance(raw, dict):
        raise LLMGuardConfigError(
            f"pytest-llm-guard: {source} must be a table of models, "
            'e.g. "gpt-4o-mini" = { input = 0.15, output = 0.60 }'
        )
    prices = {}
    for model, entry in raw.items():
        fields = entry if isinstance(entry, dict) else {}
        values = [fields.get("input"), fields.get("output")]
        valid = all(
            not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in values
        )
        if not isinstance(entry, dict) or set(entry) != {"input", "output"} or not valid:
            raise LLMGuardConfigError(
                f"pytest-llm-guard: price of {model!r} = {entry!r} in {source} is not valid; it must be "
                "{ input = <price>, output = <price> }, prices per million tokens, >= 0"
            )
        prices[model] = Price(float(values[0]), float(values[1]))
    return Prices(prices, source)
