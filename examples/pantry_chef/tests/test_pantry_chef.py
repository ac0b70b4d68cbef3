"""The assistant's suite: Claude's streamed turns and tool calls, replayed from committed cassettes.

Offline, with no API key: the ``anthropic_client`` fixture (``pip install
'pytest-llm-guard[anthropic]'``) and the assistant's own ``anthropic.Anthropic`` are
both guarded and answered by the cassettes.
"""

from __future__ import annotations

import anthropic
import pytest
from pantry_chef import PantryChef, ToolCall

CAKE = "Do I have enough flour for a cake that needs 500 g?"
BUTTER = "A recipe asks for 8 oz of butter. How much is that in grams, and do I have enough?"


def test_a_pantry_question_calls_the_pantry_tool(anthropic_client: anthropic.Anthropic) -> None:
    chef = PantryChef(client=anthropic_client)
    answer = chef.ask(CAKE)
    assert chef.tool_calls == [
        ToolCall(
            "check_pantry",
            {"ingredient": "flour"},
            {"ingredient": "flour", "amount": 1.5, "unit": "kg", "in_stock": True},
        )
    ]
    assert "1.5 kg" in answer


def test_two_tools_in_one_turn(anthropic_client: anthropic.Anthropic, llm_guard) -> None:
    chef = PantryChef(client=anthropic_client)
    answer = chef.ask(BUTTER)
    calls = {call.name: call for call in chef.tool_calls}
    assert calls["convert_units"].arguments == {"amount": 8, "from_unit": "oz", "to_unit": "g"}
    assert calls["convert_units"].result["result"] == 226.8
    assert calls["check_pantry"].arguments == {"ingredient": "butter"}
    assert "226.8 g" in answer and "250 g" in answer
    assert llm_guard.stats.calls == 2  # one turn asking for both tools, one answering
    assert {a.dialect for a in llm_guard.events} == {"anthropic"}
    assert llm_guard.stats.tokens > 0  # input and output tokens, merged across the stream's events


def test_the_answer_streams_in_pieces(anthropic_client: anthropic.Anthropic) -> None:
    pieces = list(PantryChef(client=anthropic_client).stream(CAKE))
    assert len(pieces) > 5  # it arrives as it is written, not in one block
    assert "flour" in "".join(pieces)


@pytest.mark.llm_budget(calls=2)
def test_the_assistants_own_client_is_guarded_and_replayed_too() -> None:
    # No fixture: the assistant builds its own anthropic.Anthropic. The guard still counts its
    # calls (calls=2 would stop a looping model at the third) and the cassette answers them.
    chef = PantryChef()
    answer = chef.ask(CAKE)
    assert [call.name for call in chef.tool_calls] == ["check_pantry"]
    assert "1.5 kg" in answer
