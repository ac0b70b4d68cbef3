"""The retrieval example's suite: embeddings and JSON answers replayed from committed cassettes.

The tests check the ranking the recorded embeddings give and the fields of the model's
JSON answer, as the application parses them.
"""

from __future__ import annotations

import openai
import pytest
from docs_search import DocsSearch


@pytest.mark.parametrize(
    ("question", "passage"),
    [
        ("Can I get my money back for the yearly plan I bought last week?", "refunds"),
        ("How do I download all my data as spreadsheets?", "data-export"),
        ("Where do I find a PDF of last month's bill?", "invoices"),
    ],
)
def test_search_ranks_the_right_passage_first(question: str, passage: str, llm_client: openai.OpenAI) -> None:
    hits = DocsSearch(client=llm_client).search(question)
    assert hits[0].id == passage
    assert hits[0].score > hits[1].score


def test_answer_is_built_from_the_passage_it_cites(llm_client: openai.OpenAI, llm_guard) -> None:
    answer = DocsSearch(client=llm_client).answer("How long is the password reset link valid?")
    assert answer.sources == ["password-reset"]
    assert "1 hour" in answer.text
    assert llm_guard.stats.calls == 3  # embed the handbook, embed the question, ask the model


@pytest.mark.llm_budget(calls=3)  # a marker guards a test that uses no fixture: the application's own client
def test_a_question_the_handbook_does_not_cover_gets_no_sources() -> None:
    answer = DocsSearch().answer("Can I pay with Bitcoin?")
    assert answer.sources == []
    assert "don't know" in answer.text.lower()
