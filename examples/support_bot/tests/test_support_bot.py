"""The example's suite: replays committed cassettes, so it runs offline with no API key."""

from __future__ import annotations

import openai
import pytest
from support_bot import classify, draft_reply


@pytest.mark.llm_budget(calls=1)
@pytest.mark.parametrize(
    ("ticket", "team"),
    [
        ("I was charged twice this month", "billing"),
        ("The app crashes when I upload a photo", "bug"),
        ("Can I change the colour of my dashboard?", "other"),
    ],
)
def test_tickets_go_to_the_right_team(ticket: str, team: str) -> None:
    assert classify(ticket) == team  # the application's own client, guarded and replayed


def test_reply_offers_a_refund(llm_client: openai.OpenAI, llm_guard) -> None:
    reply = draft_reply("I was charged twice this month", client=llm_client)
    assert "refund" in reply.lower()
    assert llm_guard.stats.calls == 1
    assert llm_guard.stats.tokens > 0  # counted from the answer's usage, replayed or live
