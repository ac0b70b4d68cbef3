"""The client fixtures: each SDK's own clients, built from options a suite may override, then guarded.

``llm_client`` / ``async_llm_client`` are ``openai.OpenAI`` / ``AsyncOpenAI``;
``anthropic_client`` / ``async_anthropic_client`` are ``anthropic.Anthropic`` /
``AsyncAnthropic`` (the ``anthropic`` extra: ``pip install 'pytest-llm-guard[anthropic]'``).
Each gets the guard's deadline, budgets and retries, and its calls are routed over the
configured endpoints of its own kinds. The async ones are sync fixtures, so they work under
pytest-asyncio and anyio alike; since they cannot await a close at teardown, they keep no
idle connections (each closes after its response) and so leave none open on the test's loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import anthropic
    import openai

    from .guard import Guard


FIXTURE_KINDS = {
    "llm_client": "openai",
    "async_llm_client": "openai",
    "anthropic_client": "anthropic",
    "async_anthropic_client": "anthropic",
}
"""The client fixtures, each with the endpoint kind whose SDK builds it."""
FIXTURES = frozenset(FIXTURE_KINDS)
"""The client fixtures: a test that uses one is guarded."""


# -- openai -----------------------------------------------------------------------------


@pytest.fixture
def llm_client_options(llm_guard: Guard, pytestconfig: pytest.Config) -> dict[str, Any]:
    """Keyword arguments for ``llm_client`` / ``async_llm_client``; override it to point them elsewhere.

    Unset values fall back to the SDK's own environment variables (base URL, API key). With
    endpoints configured, every request is addressed to the endpoint the router picks (URL, and
    key from its api_key_env).
    """
    from .clients import options

    return options("openai", pytestconfig, llm_guard.settings.base_url)


@pytest.fixture
def llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> Iterator[openai.OpenAI]:
    """A real ``openai.OpenAI`` with the guard's deadline, budgets and retries applied."""
    from .clients import build

    client = llm_guard.fixture_client(build("openai", False, llm_client_options, "llm_client_options"), in_place=True)
    yield client
    client.close()


@pytest.fixture
def async_llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> openai.AsyncOpenAI:
    """A real ``openai.AsyncOpenAI`` with the guard applied."""
    from .clients import build

    return llm_guard.fixture_client(build("openai", True, llm_client_options, "llm_client_options"), in_place=True)


# -- anthropic --------------------------------------------------------------------------


@pytest.fixture
def anthropic_client_options(pytestconfig: pytest.Config) -> dict[str, Any]:
    """Keyword arguments for ``anthropic_client`` / ``async_anthropic_client``; override it to point them
    elsewhere. Unset values fall back to the SDK's own environment variables (base URL, API key)."""
    from .clients import options

    return options("anthropic", pytestconfig, None)


@pytest.fixture
def anthropic_client(llm_guard: Guard, anthropic_client_options: dict[str, Any]) -> Iterator[anthropic.Anthropic]:
    """A real ``anthropic.Anthropic`` with the guard's deadline, budgets and retries applied."""
    from .clients import build

    built = build("anthropic", False, anthropic_client_options, "anthropic_client_options")
    client = llm_guard.fixture_client(built, in_place=True)
    yield client
    client.close()


@pytest.fixture
def async_anthropic_client(llm_guard: Guard, anthropic_client_options: dict[str, Any]) -> anthropic.AsyncAnthropic:
    """A real ``anthropic.AsyncAnthropic`` with the guard applied."""
    from .clients import build

    built = build("anthropic", True, anthropic_client_options, "anthropic_client_options")
    return llm_guard.fixture_client(built, in_place=True)
