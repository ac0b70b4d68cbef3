"""A small travel agent: the model calls tools, the answer streams back as it is written.

Written the way such agents usually are: its own ``AsyncOpenAI`` client, every model
turn streamed, tool calls assembled from the stream's pieces, a step limit as the only
brake on a looping model, and a retry loop that retries anything after a sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import openai

MODEL = "gpt-4o-mini"
MAX_STEPS = 4
SYSTEM = (
    "You are a travel assistant. Use the tools for weather forecasts and currency conversion, "
    "then answer in two or three friendly sentences with the numbers you found."
)

# The tools' data: a real agent would call a weather service and an exchange-rate API.
FORECASTS = {
    ("lisbon", "2026-12-05"): {"summary": "sunny", "high_c": 17, "low_c": 10, "rain_mm": 0},
    ("tokyo", "2026-12-06"): {"summary": "light rain", "high_c": 12, "low_c": 6, "rain_mm": 4},
}
RATES_FROM_EUR = {"EUR": 1.0, "USD": 1.08, "JPY": 162.0, "GBP": 0.85}


def get_weather(city: str, date: str) -> dict[str, Any]:
    forecast = FORECASTS.get((city.strip().lower(), date))
    return {"city": city, "date": date, **forecast} if forecast else {"error": f"no forecast for {city} on {date}"}


def convert_currency(amount: float, from_currency: str, to_currency: str) -> dict[str, Any]:
    rate = RATES_FROM_EUR[to_currency.upper()] / RATES_FROM_EUR[from_currency.upper()]
    return {"amount": amount, "from": from_currency, "to": to_currency, "result": round(amount * rate, 2)}


TOOLS: dict[str, Callable[..., dict[str, Any]]] = {"get_weather": get_weather, "convert_currency": convert_currency}
TOOL_SPECS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather forecast for a city on a date (YYYY-MM-DD).",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "date": {"type": "string"}},
                "required": ["city", "date"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money between currencies (ISO codes such as EUR, USD, JPY).",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from_currency": {"type": "string"},
                    "to_currency": {"type": "string"},
                },
                "required": ["amount", "from_currency", "to_currency"],
            },
        },
    },
]


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    result: dict[str, Any]


@dataclass
class TripAgent:
    client: openai.AsyncOpenAI = field(default_factory=openai.AsyncOpenAI)
    tool_calls: list[ToolCall] = field(default_factory=list)
    """Every tool the model called, with its arguments and what it returned."""

    async def ask(self, question: str) -> str:
        """The whole answer, once it has streamed in."""
        return "".join([piece async for piece in self.stream(question)])

    async def stream(self, question: str) -> AsyncIterator[str]:
        """The answer's text, piece by piece as the model writes it; tools run in between."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        for _ in range(MAX_STEPS):
            calls: dict[int, dict[str, str]] = {}
            async for chunk in await self._create(messages):
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                if delta.content:
                    yield delta.content
                for piece in delta.tool_calls or ():
                    call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] = piece.id or call["id"]
                    if piece.function is not None:
                        call["name"] += piece.function.name or ""
                        call["arguments"] += piece.function.arguments or ""
            if not calls:
                return
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": c["id"],
                            "type": "function",
                            "function": {"name": c["name"], "arguments": c["arguments"]},
                        }
                        for c in calls.values()
                    ],
                }
            )
            for call in calls.values():
                arguments = json.loads(call["arguments"])
                result = TOOLS[call["name"]](**arguments)
                self.tool_calls.append(ToolCall(call["name"], arguments, result))
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
        raise RuntimeError(f"no answer after {MAX_STEPS} steps")

    async def _create(self, messages: list[dict[str, Any]]) -> Any:
        for attempt in range(3):
            try:
                return await self.client.chat.completions.create(
                    model=MODEL,
                    messages=messages,
                    tools=TOOL_SPECS,
                    stream=True,
                    stream_options={"include_usage": True},
                    timeout=60,
                )
            except Exception:
                await asyncio.sleep(2**attempt)
        raise RuntimeError("the model did not answer after 3 attempts")
