"""The agent's suite: async tests (pytest-asyncio) replaying committed cassettes, offline, with no API key.

Each test checks what the agent did with the model's answers: which tools it called
with which arguments, and what text streamed back.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_asyncio", reason="the async examples need pytest-asyncio: pip install '.[examples]'")

from trip_agent import ToolCall, TripAgent  # noqa: E402

pytestmark = pytest.mark.asyncio

LISBON = "Is Saturday 2026-12-05 a good day for the beach in Lisbon?"
TOKYO = "I have 150 EUR for a day in Tokyo on 2026-12-06. How much is that in yen, and will it rain?"


async def test_a_weather_question_calls_the_weather_tool(async_llm_client) -> None:
    agent = TripAgent(client=async_llm_client)
    answer = await agent.ask(LISBON)
    assert agent.tool_calls == [
        ToolCall(
            "get_weather",
            {"city": "Lisbon", "date": "2026-12-05"},
            {"city": "Lisbon", "date": "2026-12-05", "summary": "sunny", "high_c": 17, "low_c": 10, "rain_mm": 0},
        )
    ]
    assert "17" in answer and "sunny" in answer.lower()


async def test_two_tools_in_one_turn(async_llm_client, llm_guard) -> None:
    agent = TripAgent(client=async_llm_client)
    answer = await agent.ask(TOKYO)
    calls = {call.name: call for call in agent.tool_calls}
    assert calls["convert_currency"].arguments == {"amount": 150, "from_currency": "EUR", "to_currency": "JPY"}
    assert calls["convert_currency"].result["result"] == 24300.0
    assert calls["get_weather"].arguments == {"city": "Tokyo", "date": "2026-12-06"}
    assert "24,300" in answer and "umbrella" in answer.lower()
    assert llm_guard.stats.calls == 2  # one turn asking for both tools, one answering


async def test_the_answer_streams_in_pieces(async_llm_client) -> None:
    pieces = [piece async for piece in TripAgent(client=async_llm_client).stream(LISBON)]
    assert len(pieces) > 5  # it arrives as it is written, not in one block
    assert "Lisbon" in "".join(pieces)


@pytest.mark.llm_budget(calls=2)
async def test_the_agents_own_client_is_guarded_and_replayed_too() -> None:
    # No fixture: the agent builds its own AsyncOpenAI. The guard still counts its calls
    # (calls=2 would stop a looping agent at the third) and the cassette answers them.
    agent = TripAgent()
    answer = await agent.ask(LISBON)
    assert [call.name for call in agent.tool_calls] == ["get_weather"]
    assert "sunny" in answer.lower()
