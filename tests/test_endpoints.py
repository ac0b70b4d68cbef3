"""Endpoint configuration and addressing; the SDK's own clients are the reference for what goes on the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from pytest_llm_guard.config import LLMGuardConfigError, load_settings
from pytest_llm_guard.endpoints import Endpoint, load_endpoints

HELLO = [{"role": "user", "content": "hi"}]


def load(raw: Any, environ: dict[str, str] | None = None, base_url: str | None = None):
    return load_endpoints(raw, "pyproject.toml", base_url=base_url, environ=environ or {})


def test_without_a_list_one_endpoint_from_the_sdk_variables() -> None:
    assert load(None).endpoints == (Endpoint("default", "https://api.openai.com/v1"),)
    assert load(None, {"OPENAI_BASE_URL": "http://proxy:8080/v1/"}).endpoints[0].base_url == "http://proxy:8080/v1"
    assert load(None, {"OPENAI_BASE_URL": "http://a/v1"}, base_url="http://b/v1").endpoints[0].base_url == "http://b/v1"
    assert not load(None).configured


def test_a_full_list() -> None:
    endpoints = load(
        [
            {"name": "main", "base_url": "https://api.openai.com/v1", "models": ["gpt-4o"], "api_key_env": "KEY"},
            {
                "name": "azure-eu",
                "base_url": "https://eu.openai.azure.com/",
                "kind": "azure",
                "api_version": "2024-10-21",
                "call_timeout": 20,
                "priority": 1,
                "weight": 3,
            },
        ]
    )
    assert endpoints.configured and endpoints.names == ("main", "azure-eu")
    azure = endpoints.endpoints[1]
    assert (azure.base_url, azure.call_timeout, azure.priority, azure.weight) == (
        "https://eu.openai.azure.com",
        20.0,
        1,
        3.0,
    )
    assert endpoints.endpoints[0].serves("gpt-4o") and not endpoints.endpoints[0].serves("gpt-4o-mini")
    assert azure.serves("anything")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ({"name": "a"}, ["must be a non-empty array of tables"]),
        ([{"name": "a"}], ["endpoint 1 ('a'): base_url is missing", "must be an http(s) URL"]),
        ([{"name": "a b", "base_url": "http://x"}], ["name = 'a b'", "letters, digits"]),
        ([{"name": "a", "base_url": "ftp://x"}], ["base_url = 'ftp://x'"]),
        (
            [{"name": "a", "base_url": "http://x", "modles": []}],
            ["unknown key 'modles'", "allowed keys: name, base_url"],
        ),
        ([{"name": "a", "base_url": "http://x", "models": "gpt-4o"}], ["models = 'gpt-4o'", "a list of model"]),
        ([{"name": "a", "base_url": "http://x", "call_timeout": 0}], ["call_timeout = 0", "positive number"]),
        ([{"name": "a", "base_url": "http://x", "priority": 1.5}], ["priority = 1.5", "whole number"]),
        ([{"name": "a", "base_url": "http://x", "weight": -1}], ["weight = -1"]),
        ([{"name": "a", "base_url": "http://x", "kind": "gemini"}], ["kind = 'gemini'", "anthropic, openai, azure"]),
        ([{"name": "a", "base_url": "http://x", "api_key_env": "MY-KEY"}], ["api_key_env = 'MY-KEY'"]),
        ([{"name": "a", "base_url": "http://x", "kind": "azure"}], ["needs api_version", "OPENAI_API_VERSION"]),
        ([{"name": "a", "base_url": "http://x", "api_version": "1"}], ["api_version is not used by kind = 'openai'"]),
        ([{"name": "a", "base_url": "http://x"}, {"name": "a", "base_url": "http://y"}], ["'a' appears twice"]),
    ],
)
def test_bad_endpoint_says_what_and_where(raw: Any, words: list[str]) -> None:
    with pytest.raises(LLMGuardConfigError) as info:
        load(raw)
    assert "[[tool.pytest_llm_guard.endpoints]] in pyproject.toml" in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_azure_api_version_from_the_sdk_variable() -> None:
    raw = [{"name": "a", "base_url": "https://r.openai.azure.com", "kind": "azure"}]
    assert load(raw, {"OPENAI_API_VERSION": "2024-10-21"}).endpoints[0].api_version == "2024-10-21"


def test_the_endpoints_table_is_not_an_unknown_option(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[tool.pytest_llm_guard]\nbreaker_cooldown = 5\n[[tool.pytest_llm_guard.endpoints]]\nname = "a"\nbase_url = "http://x"\n'
    )
    settings, _ = load_settings(pyproject=pyproject, ini={}, ini_source="ini", cli={}, environ={})
    assert settings.breaker_cooldown == 5.0


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("on_open", "maybe", "one of fail, skip"),
        ("breaker_failure_rate", "1.5", "above 0 and at most 1"),
        ("on_session_spent", "explode", "one of skip, fail"),
    ],
)
def test_bad_breaker_options(tmp_path: Path, key: str, value: str, words: str) -> None:
    with pytest.raises(LLMGuardConfigError, match=words):
        load_settings(pyproject=None, ini={}, ini_source="ini", cli={key: value}, environ={})


def test_owner_is_the_longest_matching_base() -> None:
    endpoints = load([{"name": "root", "base_url": "http://h:8000"}, {"name": "v2", "base_url": "http://h:8000/v2"}])
    assert endpoints.owner(httpx2.URL("http://h:8000/v2/chat/completions")).name == "v2"
    assert endpoints.owner(httpx2.URL("http://h:8000/v1/chat/completions")).name == "root"
    assert endpoints.owner(httpx2.URL("http://h:8000/v20/chat/completions")).name == "root"
    assert endpoints.owner(httpx2.URL("http://h:8001/v2/chat/completions")) is None


def sent_by(client: Any, call: str = "chat") -> httpx2.Request:
    """The request an SDK client sends (answered 400 by a mock transport)."""
    seen: list[httpx2.Request] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(400, json={"error": {"message": "mock"}})

    client = client.with_options(http_client=openai.DefaultHttpx2Client(transport=httpx2.MockTransport(answer)))
    with pytest.raises(openai.BadRequestError):
        if call == "chat":
            client.chat.completions.create(model="my-deployment", messages=HELLO)
        elif call == "embeddings":
            client.embeddings.create(model="my-deployment", input="hi")
        else:
            client.models.list()
    return seen[0]


def fixture_request(call: str) -> httpx2.Request:
    routed = openai.OpenAI(base_url="http://localhost/v1", api_key="fixture-key", max_retries=0)
    return sent_by(routed, call)


@pytest.mark.parametrize("call", ["chat", "embeddings", "models"])
def test_azure_endpoint_is_addressed_as_azure_openai_does(call: str) -> None:
    reference = sent_by(
        openai.AzureOpenAI(
            azure_endpoint="https://res.openai.azure.com",
            api_key="azure-key",
            api_version="2024-10-21",
            max_retries=0,
        ),
        call,
    )
    azure = Endpoint("az", "https://res.openai.azure.com", kind="azure", api_version="2024-10-21", api_key_env="AZ")
    request = fixture_request(call)
    addressed = azure.address(request, "my-deployment" if call != "models" else None, {"AZ": "azure-key"})
    assert addressed.url == reference.url
    assert addressed.headers["api-key"] == reference.headers["api-key"] == "azure-key"
    assert "authorization" not in addressed.headers
    assert addressed.headers["host"] == "res.openai.azure.com"
    assert addressed.read() == request.read()


def test_openai_endpoint_gets_its_url_and_key() -> None:
    endpoint = Endpoint("b", "http://backup:9000/v1", api_key_env="BACKUP_KEY")
    addressed = endpoint.address(fixture_request("chat"), "gpt-test", {"BACKUP_KEY": "sk-backup"})
    assert str(addressed.url) == "http://backup:9000/v1/chat/completions"
    assert addressed.headers["authorization"] == "Bearer sk-backup"
    assert addressed.headers["host"] == "backup:9000"


def test_without_api_key_env_the_clients_own_key_is_kept() -> None:
    addressed = Endpoint("b", "http://backup/v1").address(fixture_request("chat"), "gpt-test", {})
    assert addressed.headers["authorization"] == "Bearer fixture-key"
