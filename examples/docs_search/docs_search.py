"""Answers from a product handbook: embeddings find the passages, the model answers in JSON and cites them.

The usual small retrieval setup: embed the handbook once, embed each question, rank
passages by cosine similarity, then ask the model for a JSON answer built only from the
best passages, with the ids of those it used. It builds its own client and retries any
error a few times.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import openai

CHAT_MODEL = "gpt-4o-mini"
EMBEDDING_MODEL = "text-embedding-3-small"

HANDBOOK = {
    "refunds": "Refunds: annual plans are refunded in full within 30 days of purchase; after that, "
    "unused whole months are refunded pro rata. Monthly plans are not refunded.",
    "password-reset": "Password reset: choose Settings > Security > Reset password. The emailed link "
    "is valid for 1 hour; ask for a new one if it has expired.",
    "data-export": "Data export: Settings > Data > Export builds a ZIP of CSV files. Exports larger "
    "than 1 GB are emailed to you within 24 hours.",
    "single-sign-on": "Single sign-on: SAML SSO comes with the Business plan. An admin adds the "
    "identity provider under Settings > Security > SSO.",
    "invoices": "Invoices: each invoice is emailed to the billing contact and can be downloaded as a "
    "PDF from Billing > History.",
}

SYSTEM = (
    "Answer the question using only the handbook passages given, each introduced by its [id]. "
    'Reply with JSON: {"answer": "...", "sources": ["<id of each passage you used>"]}. '
    'If the passages do not answer the question, reply {"answer": "I don\'t know.", "sources": []}.'
)


@dataclass(frozen=True)
class Hit:
    id: str
    score: float


@dataclass(frozen=True)
class Answer:
    text: str
    sources: list[str]


class DocsSearch:
    def __init__(self, passages: dict[str, str] = HANDBOOK, client: openai.OpenAI | None = None) -> None:
        self.client = client or openai.OpenAI()
        self.passages = passages
        self.ids = list(passages)
        self.vectors = self._embed([passages[i] for i in self.ids])

    def search(self, question: str, k: int = 2) -> list[Hit]:
        """The ``k`` passages closest to the question, best first."""
        query = self._embed([question])[0]
        hits = [Hit(i, _cosine(query, v)) for i, v in zip(self.ids, self.vectors, strict=True)]
        return sorted(hits, key=lambda hit: hit.score, reverse=True)[:k]

    def answer(self, question: str) -> Answer:
        context = "\n".join(f"[{hit.id}] {self.passages[hit.id]}" for hit in self.search(question))
        reply = _retry(
            lambda: self.client.chat.completions.create(
                model=CHAT_MODEL,
                response_format={"type": "json_object"},
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Passages:\n{context}\n\nQuestion: {question}"},
                ],
            )
        )
        data = json.loads(reply.choices[0].message.content or "{}")
        sources = [s for s in data.get("sources", []) if s in self.passages]  # never cite what was not given
        return Answer(text=data.get("answer", ""), sources=sources)

    def _embed(self, texts: list[str]) -> list[list[float]]:
        reply = _retry(lambda: self.client.embeddings.create(model=EMBEDDING_MODEL, input=texts))
        return [item.embedding for item in sorted(reply.data, key=lambda item: item.index)]


def _cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


def _retry(call: Any) -> Any:
    for attempt in range(4):
        try:
            return call()
        except Exception:
            time.sleep(2**attempt)
    raise RuntimeError("the API did not answer after 4 attempts")
