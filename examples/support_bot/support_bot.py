"""A tiny support assistant: the kind of application whose tests call an LLM.

It builds its own client and retries the way many harnesses do (five attempts, a
long timeout, backoff on any error): the loop pytest-llm-guard exists to bound.
"""

from __future__ import annotations

import json
import time

import openai

MODEL = "gpt-4o-mini"
CATEGORIES = ("billing", "bug", "other")


def classify(ticket: str, client: openai.OpenAI | None = None) -> str:
    """The team a ticket goes to."""
    answer = _ask(
        client or openai.OpenAI(),
        [
            {
                "role": "system",
                "content": f'Classify the support ticket. Answer JSON: {{"category": one of {list(CATEGORIES)}}}',
            },
            {"role": "user", "content": ticket},
        ],
    )
    category = json.loads(answer)["category"]
    return category if category in CATEGORIES else "other"


def draft_reply(ticket: str, client: openai.OpenAI | None = None) -> str:
    """A first answer for a human agent to edit."""
    return _ask(
        client or openai.OpenAI(),
        [
            {"role": "system", "content": "Write a short, friendly reply to this support ticket."},
            {"role": "user", "content": ticket},
        ],
    )


def _ask(client: openai.OpenAI, messages: list[dict[str, str]]) -> str:
    for attempt in range(5):
        try:
            reply = client.chat.completions.create(model=MODEL, messages=messages, timeout=60)
            return reply.choices[0].message.content or ""
        except Exception:
            time.sleep(2**attempt)
    raise RuntimeError("the LLM did not answer after 5 attempts")
