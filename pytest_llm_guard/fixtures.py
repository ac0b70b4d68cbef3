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

import functools
import importlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .keys import SESSION

if TYPE_CHECKING:
    import ssl

    import anthropic
    import openai

    from .dialects import Dialect
    from .guard import Guard


def _dialect(kind: str) -> Dialect:
    """The dialect of ``kind``, imported when a client fixture is first used (not at the plugin's start)."""
    from .dialects import for_kind

    return for_kind(kind)


FIXTURE_KINDS = {
    "llm_client": "openai",
    "async_llm_client": "openai",
    "anthropic_client": "anthropic",
    "async_anthropic_client": "anthropic",
}
"""The client fixtures, each with the endpoint kind whose SDK builds it."""
FIXTURES = frozenset(FIXTURE_KINDS)
"""The client fixtures: a test that uses one is guarded."""


def _options(dialect: Dialect, pytestconfig: pytest.Config, base_url: str | None) -> dict[str, Any]:
    session = pytestconfig.stash.get(SESSION, None)  # none opened yet: no endpoints are configured either
    if session is not None and session.endpoints.configured:
        endpoints = [e for e in session.endpoints.endpoints if e.kind in dialect.kinds]
        if endpoints:
            key = next((os.environ[v] for v in dialect.key_variables if os.environ.get(v)), "routed")
            return {"base_url": endpoints[0].base_url, "api_key": key}
    return {"base_url": base_url} if base_url else {}


def _sdk(dialect: Dialect) -> Any:
    try:
        return importlib.import_module(dialect.sdk)
    except ImportError:
        pytest.skip(
            f"pytest-llm-guard: the {dialect.sdk} package is not installed; "
            f"pip install 'pytest-llm-guard[{dialect.sdk}]' to use its client fixtures"
        )


@functools.cache
def _tls(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """httpx2's default TLS context for these SSL_CERT_FILE / SSL_CERT_DIR values, built once.

    Building one loads the CA bundle (about 30 ms); an SDK client left to itself builds one
    per client, so a suite paid that on every test's fixture client.
    """
    import httpx2

    return httpx2.create_ssl_context()


def _http_client(sdk: Any, dialect: Dialect, asynchronous: bool) -> Any:
    """The SDK's own default HTTP client (its timeouts, limits, redirects), on the shared TLS context."""
    tls = _tls(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    suffix = "Httpx2Client" if dialect.sdk == "openai" else "HttpxClient"
    if not asynchronous:
        return getattr(sdk, "Default" + suffix)(verify=tls)
    import httpx2

    no_idle = httpx2.Limits(max_connections=1000, max_keepalive_connections=0)
    return getattr(sdk, "DefaultAsync" + suffix)(verify=tls, limits=no_idle)


def _build(dialect: Dialect, asynchronous: bool, options: dict[str, Any], variable: str) -> Any:
    sdk = _sdk(dialect)
    cls = dialect.client_classes()[asynchronous]
    if "http_client" not in options:
        options = {"http_client": _http_client(sdk, dialect, asynchronous), **options}
    try:
        client = cls(**options)
    except sdk_error(dialect) as exc:
        problem = str(exc)
    else:
        # The anthropic SDK builds a client without credentials and fails at its first request.
        if getattr(client, "api_key", "") is not None or getattr(client, "auth_token", None) is not None:
            return client
        problem = "it has no API key."
    pytest.fail(
        f"pytest-llm-guard: cannot build the {cls.__name__} fixture client: {problem} "
        f"Set {dialect.key_variables[0]}, or override the {variable} fixture.",
        pytrace=False,
    )


def sdk_error(dialect: Dialect) -> type[BaseException]:
    return dialect.sdk_error() or Exception


# -- openai -----------------------------------------------------------------------------


@pytest.fixture
def llm_client_options(llm_guard: Guard, pytestconfig: pytest.Config) -> dict[str, Any]:
    """Keyword arguments for ``llm_client`` / ``async_llm_client``; override it to point them elsewhere.

    Unset values fall back to the SDK's own environment variables (base URL, API key). With
    endpoints configured, every request is addressed to the endpoint the router picks (URL, and
    key from its api_key_env).
    """
    return _options(_dialect("openai"), pytestconfig, llm_guard.settings.base_url)


@pytest.fixture
def llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> Iterator[openai.OpenAI]:
    """A real ``openai.OpenAI`` with the guard's deadline, budgets and retries applied."""
    client = llm_guard.fixture_client(_build(_dialect("openai"), False, llm_client_options, "llm_client_options"))
    yield client
    client.close()


@pytest.fixture
def async_llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> openai.AsyncOpenAI:
    """A real ``openai.AsyncOpenAI`` with the guard applied."""
    return llm_guard.fixture_client(_build(_dialect("openai"), True, llm_client_options, "llm_client_options"))


# -- anthropic --------------------------------------------------------------------------


@pytest.fixture
def anthropic_client_options(pytestconfig: pytest.Config) -> dict[str, Any]:
    """Keyword arguments for ``anthropic_client`` / ``async_anthropic_client``; override it to point them
    elsewhere. Unset values fall back to the SDK's own environment variables (base URL, API key)."""
    return _options(_dialect("anthropic"), pytestconfig, None)


@pytest.fixture
def anthropic_client(llm_guard: Guard, anthropic_client_options: dict[str, Any]) -> Iterator[anthropic.Anthropic]:
    """A real ``anthropic.Anthropic`` with the guard's deadline, budgets and retries applied."""
    built = _build(_dialect("anthropic"), False, anthropic_client_options, "anthropic_client_options")
    client = llm_guard.fixture_client(built)
    yield client
    client.close()


@pytest.fixture
def async_anthropic_client(llm_guard: Guard, anthropic_client_options: dict[str, Any]) -> anthropic.AsyncAnthropic:
    """A real ``anthropic.AsyncAnthropic`` with the guard applied."""
    built = _build(_dialect("anthropic"), True, anthropic_client_options, "anthropic_client_options")
    return llm_guard.fixture_client(built)
