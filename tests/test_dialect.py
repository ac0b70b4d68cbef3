"""Which requests are LLM traffic: the SDK's, and another client's asking a model for an answer; not near misses."""

from __future__ import annotations

import httpx2
import pytest

from pytest_llm_guard.dialects import dialect_for

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
SDK = {"x-stainless-lang": "python"}


@pytest.mark.parametrize(
    ("method", "url", "body", "headers"),
    [
        ("POST", "https://api.openai.com/v1/chat/completions", CHAT, {}),
        ("POST", "http://127.0.0.1:8080/v1/responses", {"model": "o4", "input": "hi"}, {}),
        ("POST", "https://api.openai.com/v1/completions", {"model": "babbage", "prompt": "hi"}, {}),
        ("POST", "https://api.openai.com/v1/embeddings/", {"model": "e3", "input": ["a", "b"]}, {}),
        ("POST", "https://api.openai.com/v1/images/generations", {"model": "dall-e-3", "prompt": "a cat"}, {}),
        ("POST", "https://x.openai.azure.com/openai/deployments/gpt4/chat/completions", {"messages": []}, {}),
        ("GET", "https://api.openai.com/v1/models", None, SDK),  # the SDK's own requests, whatever the route
    ],
)
def test_llm_requests_are_claimed(method: str, url: str, body: object, headers: dict[str, str]) -> None:
    assert dialect_for(httpx2.Request(method, url, json=body, headers=headers)) is not None


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "https://shop.example/api/images/42", None),  # a path containing /images/
        ("GET", "https://api.openai.com/v1/models", None),  # a listing costs nothing
        ("GET", "https://api.example/v1/models/gpt-4o-mini", None),
        ("GET", "https://api.openai.com/v1/responses/resp_123", None),  # fetching a stored answer
        ("POST", "https://shop.example/api/images/upload", {"model": "x", "prompt": "y"}),  # not a generation route
        ("POST", "https://cms.example/api/completions", {"title": "done"}),  # no model, no prompt
        ("POST", "https://api.example/v1/chat/completions", {"messages": []}),  # no model, not Azure
        ("POST", "https://api.example/v1/chat/completions", {"model": "m"}),  # nothing asked
        ("POST", "https://api.example/v1/chat/completions", None),
        ("POST", "https://api.example/v1/moderations/log", {"model": "m", "input": "x"}),
        ("DELETE", "https://api.openai.com/v1/responses", {"model": "m", "input": "x"}),
    ],
)
def test_near_misses_are_not_llm_requests(method: str, url: str, body: object) -> None:
    request = httpx2.Request(method, url, json=body) if body is not None else httpx2.Request(method, url)
    assert dialect_for(request) is None


def test_a_body_that_is_not_json_is_not_claimed() -> None:
    request = httpx2.Request("POST", "https://api.example/v1/chat/completions", content=b"model=m&messages=x")
    assert dialect_for(request) is None
