"""How the client fixtures build their SDK clients: options, the shared TLS context, the SDK's own HTTP client.

Imported when a client fixture is first set up (``fixtures.py`` holds only the fixtures' definitions,
which pytest reads at start-up): a suite that never uses one never compiles this.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

import pytest

from .deferred import deferring
from .dialects import for_kind
from .keys import SESSION

if TYPE_CHECKING:
    import ssl

    from .dialects import Dialect


def options(kind: str, pytestconfig: pytest.Config, base_url: str | None) -> dict[str, Any]:
    """Keyword arguments of a client of ``kind``: the first configured endpoint of its kinds (and its key),
    else ``base_url`` if given, else nothing (the SDK reads its own environment variables)."""
    dialect = for_kind(kind)
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
def tls(cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
    """httpx2's default TLS context for these SSL_CERT_FILE / SSL_CERT_DIR values, built once.

    Building one loads the CA bundle (about 20 ms); an SDK client left to itself builds one
    per client, so a suite paid that on every test's fixture client. The bundle is read at the
    first handshake (``tls.py``): a session that makes none, replaying, never reads it.
    """
    from .tls import default_context

    return default_context()


def _http_client(sdk: Any, dialect: Dialect, asynchronous: bool) -> Any:
    """The SDK's own default HTTP client (its timeouts, limits, redirects), on the shared TLS context,
    its network transport built at its first request that reaches the network (``deferred.py``)."""
    import httpx2

    context = tls(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    kwargs: dict[str, Any] = {"verify": context}
    if asynchronous:
        kwargs["limits"] = httpx2.Limits(max_connections=1000, max_keepalive_connections=0)
    # openai's default client is httpx2's own, given the SDK's defaults by this helper: the same defaults,
    # given to a client whose transport waits. Without it (anthropic's client class builds its transport
    # itself), the SDK's own default client, built at once.
    defaults = getattr(sys.modules.get(sdk.__name__ + "._httpx2"), "_set_httpx2_defaults", None)
    if defaults is None:
        suffix = "Httpx2Client" if dialect.sdk == "openai" else "HttpxClient"
        return getattr(sdk, ("DefaultAsync" if asynchronous else "Default") + suffix)(**kwargs)
    defaults(kwargs)
    return deferring(httpx2.AsyncClient if asynchronous else httpx2.Client)(**kwargs)


def build(kind: str, asynchronous: bool, options: dict[str, Any], variable: str) -> Any:
    """A client of ``kind``'s SDK from ``options`` (the ``variable`` fixture's); a client that cannot be built,
    or has no key, fails the test with what to set."""
    dialect = for_kind(kind)
    sdk = _sdk(dialect)
    cls = dialect.client_classes()[asynchronous]
    if "http_client" not in options:
        options = {"http_client": _http_client(sdk, dialect, asynchronous), **options}
    refused = dialect.sdk_error() or Exception
    try:
        client = cls(**options)
    except refused as exc:
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
