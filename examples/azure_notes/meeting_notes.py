"""Meeting notes on Azure OpenAI: a transcript in, a summary, decisions and action items out as JSON.

As an Azure deployment is used in production: ``openai.AzureOpenAI`` built from the
resource endpoint and key in the environment (``AZURE_OPENAI_ENDPOINT``,
``AZURE_OPENAI_API_KEY``), a pinned ``api_version``, and the deployment's name where
the model name would go. Any error is retried after a pause.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import openai

DEPLOYMENT = "notes-gpt-4o-mini"
API_VERSION = "2024-10-21"

SUMMARY_PROMPT = (
    "Summarise the meeting transcript. Reply with JSON: "
    '{"summary": "<one sentence>", "decisions": ["..."], '
    '"action_items": [{"owner": "<first name>", "task": "...", "due": "<YYYY-MM-DD or null>"}]}'
)
EMAIL_PROMPT = (
    "Write a short follow-up email to the attendees from these meeting notes: "
    "one line of summary, then one line per action item naming its owner and due date."
)


@dataclass(frozen=True)
class ActionItem:
    owner: str
    task: str
    due: str | None


@dataclass(frozen=True)
class Notes:
    summary: str
    decisions: list[str]
    action_items: list[ActionItem]


def azure_client() -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=os.environ["AZURE_OPENAI_ENDPOINT"], api_version=API_VERSION)


def summarize(transcript: str, client: openai.OpenAI | None = None) -> Notes:
    answer = _complete(
        client or azure_client(),
        [{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": transcript}],
        response_format={"type": "json_object"},
    )
    data = json.loads(answer)
    return Notes(
        summary=data["summary"],
        decisions=list(data.get("decisions", [])),
        action_items=[ActionItem(i["owner"], i["task"], i.get("due")) for i in data.get("action_items", [])],
    )


def follow_up_email(notes: Notes, client: openai.OpenAI | None = None) -> str:
    items = "\n".join(f"- {i.owner}: {i.task} (due {i.due or 'no date'})" for i in notes.action_items)
    return _complete(
        client or azure_client(),
        [
            {"role": "system", "content": EMAIL_PROMPT},
            {"role": "user", "content": f"Summary: {notes.summary}\nAction items:\n{items}"},
        ],
    )


def _complete(client: openai.OpenAI, messages: list[dict[str, str]], **options: Any) -> str:
    for attempt in range(4):
        try:
            reply = client.chat.completions.create(model=DEPLOYMENT, messages=messages, timeout=60, **options)
            return reply.choices[0].message.content or ""
        except Exception:
            time.sleep(2**attempt)
    raise RuntimeError("Azure OpenAI did not answer after 4 attempts")
