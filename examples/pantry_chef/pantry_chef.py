"""A kitchen assistant on Claude: it checks the pantry with tools and streams its answer.

Written the way such assistants usually are: its own ``anthropic.Anthropic`` client,
every model turn streamed with ``messages.stream``, tool calls answered in a loop with a
step limit as the only brake on a looping model, and a retry loop that retries anything
after a sleep.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anthropic

MODEL = "claude-haiku-4-5"
MAX_STEPS = 4
SYSTEM = (
    "You are a kitchen assistant. Use the tools to check what is in the pantry and to convert "
    "units, then answer in two or three friendly sentences with the quantities you found."
)

# The tools' data: a real assistant would read a shared shopping list.
PANTRY = {"flour": (1.5, "kg"), "eggs": (4, "pieces"), "butter": (250, "g"), "sugar": (0, "g")}
GRAMS_PER = {"g": 1.0, "kg": 1000.0, "oz": 28.35, "lb": 453.6}


def check_pantry(ingredient: str) -> dict[str, Any]:
    amount, unit = PANTRY.get(ingredient.strip().lower(), (0, "g"))
    return {"ingredient": ingredient, "amount": amount, "unit": unit, "in_stock": amount > 0}


def convert_units(amount: float, from_unit: str, to_unit: str) -> dict[str, Any]:
    result = amount * GRAMS_PER[from_unit.lower()] / GRAMS_PER[to_unit.lower()]
    return {"amount": amount, "from": from_unit, "to": to_unit, "result": round(result, 1)}


TOOLS = {"check_pantry": check_pantry, "convert_units": convert_units}
TOOL_SPECS = [
    {
        "name": "check_pantry",
        "description": "How much of an ingredient the pantry holds.",
        "input_schema": {
            "type": "object",
            "properties": {"ingredient": {"type": "string"}},
            "required": ["ingredient"],
        },
    },
    {
        "name": "convert_units",
        "description": "Convert a weight between units (g, kg, oz, lb).",
        "input_schema": {
            "type": "object",
            "properties": {
                "amount": {"type": "number"},
                "from_unit": {"type": "string"},
                "to_unit": {"type": "string"},
            },
            "required": ["amount", "from_unit", "to_unit"],
        },
    },
]


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    result: dict[str, Any]


@dataclass
class PantryChef:
    client: anthropic.Anthropic = field(default_factory=anthropic.Anthropic)
    tool_calls: list[ToolCall] = field(default_factory=list)

    def ask(self, question: str) -> str:
        """The whole answer, after every tool call the model asked for."""
        return "".join(self.stream(question))

    def stream(self, question: str) -> Iterator[str]:
        """The answer's text as it arrives, running tools between the model's turns."""
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        for _ in range(MAX_STEPS):
            pieces: list[str] = []
            message = self._turn(messages, pieces)
            yield from pieces
            if message.stop_reason != "tool_use":
                return
            messages.append({"role": "assistant", "content": [b.model_dump() for b in message.content]})
            results = [self._run(block) for block in message.content if block.type == "tool_use"]
            messages.append({"role": "user", "content": results})
        raise RuntimeError(f"no answer after {MAX_STEPS} steps")

    def _turn(self, messages: list[dict[str, Any]], pieces: list[str]) -> Any:
        for attempt in range(5):  # the usual loop: retry anything, a little later
            pieces.clear()
            try:
                with self.client.messages.stream(
                    model=MODEL, max_tokens=1024, system=SYSTEM, tools=TOOL_SPECS, messages=messages
                ) as stream:
                    pieces.extend(stream.text_stream)
                    return stream.get_final_message()
            except Exception:
                time.sleep(2**attempt)
        raise RuntimeError("the model did not answer")

    def _run(self, block: Any) -> dict[str, Any]:
        result = TOOLS[block.name](**block.input)
        self.tool_calls.append(ToolCall(block.name, dict(block.input), result))
        return {"type": "tool_result", "tool_use_id": block.id, "content": str(result)}
