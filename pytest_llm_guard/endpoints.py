"""The endpoints a session may call: ``[[tool.pytest_llm_guard.endpoints]]``, else one from the SDK's variables.

Like a LiteLLM Router's model list: each endpoint has a name, a base URL, the models
it serves, a priority (lower first) and a weight (share among equal priorities), its
own call timeout and API key variable, and a kind (``openai``, ``azure``, ``anthropic``:
the dialect that addresses its requests, ``dialects/``).

Without a list there is one endpoint, ``default``: ``--llm-base-url`` or the default
dialect's base URL variable (else its public API), keyed as its SDK is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .config import PYPROJECT_TABLE, Settings
from .dialects import DEFAULT_KIND, ENDPOINT_KINDS, for_kind, origin_of
from .errors import LLMGuardConfigError

if TYPE_CHECKING:
    import httpx2

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_ENV_VAR = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(scheme: str, host: str, port: int | None) -> tuple[str, str, int | None]:
    return scheme, host.lower(), port if port is not None else _DEFAULT_PORTS.get(scheme)


@dataclass(frozen=True)
class Endpoint:
    name: str
    base_url: str
    models: tuple[str, ...] = ()
    """Models served; empty: any."""
    api_key_env: str | None = None
    """Variable holding the key; None: keep the key the client was built with."""
    call_timeout: float | None = None
    first_token_timeout: float | None = None
    idle_timeout: float | None = None
    priority: int = 0
    weight: float = 1.0
    kind: str = DEFAULT_KIND
    api_version: str | None = None
    rpm: float | None = None
    """Requests per minute it takes per model from the whole session (``ratelimit.py``); None: the ``rpm`` option."""
    tpm: float | None = None
    """Tokens per minute it takes per model; None: the ``tpm`` option."""
    rpm_burst: float | None = None
    """Requests that may go at once under ``rpm``; None: the ``rpm_burst`` option."""
    _origin: tuple[str, str, int | None] = field(init=False, repr=False, compare=False)
    _prefix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        object.__setattr__(self, "_origin", _origin(parts.scheme, parts.hostname or "", parts.port))
        object.__setattr__(self, "_prefix", parts.path.rstrip("/"))

    def rate_limited(self, settings: Settings) -> bool:
        """Whether a shared rate limit applies here: this endpoint's own ``rpm``/``tpm``, else the settings'
        (``ratelimit.limits`` finds which; without one, none is looked up, nor its module loaded)."""
        return not (self.rpm is None and self.tpm is None and settings.rpm is None and settings.tpm is None)

    def serves(self, model: str | None) -> bool:
        return not self.models or model is None or model in self.models

    def owns(self, url: httpx2.URL) -> bool:
        """Does a request to ``url`` go to this endpoint? (same origin, path under the base path)"""
        if _origin(url.scheme, url.host, url.port) != self._origin:
            return False
        path = url.path
        return path == self._prefix or path.startswith(self._prefix + "/")

    @property
    def base_path_length(self) -> int:
        return len(self._prefix)

    def api_key(self, environ: Mapping[str, str]) -> str | None:
        return environ.get(self.api_key_env) if self.api_key_env else None

    def address(self, request: httpx2.Request, model: str | None, environ: Mapping[str, str]) -> httpx2.Request:
        """``request`` (from a fixture client) as this endpoint must receive it: URL, auth, Host."""
        import httpx2

        url, headers = for_kind(self.kind).address(
            self.kind, self.base_url, self.api_version, request, model, self.api_key(environ)
        )
        headers["host"] = url.netloc.decode("ascii")
        return httpx2.Request(
            request.method, url, headers=headers, stream=request.stream, extensions=dict(request.extensions)
        )


@dataclass(frozen=True)
class EndpointSet:
    """The session's endpoints; ``configured`` is False for the implicit ``default`` one."""

    endpoints: tuple[Endpoint, ...]
    configured: bool
    source: str
    _places: dict[Any, tuple[str, str, Endpoint | None]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """Where the URLs asked about go, by their parts: a client sends to the same few URLs on every call,
    and the seam and the routing layer ask of each request."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.endpoints)

    def owner(self, url: httpx2.URL) -> Endpoint | None:
        """The endpoint a request URL goes to (the longest base path wins), or None: not ours to manage."""
        return self.place(url)[2]

    def place(self, url: httpx2.URL) -> tuple[str, str, Endpoint | None]:
        """Where a request goes: its origin, its path and its :meth:`owner`, worked out once per URL."""
        key = getattr(url, "_uri_reference", url)  # httpx2's parsed parts (a named tuple), else the URL
        found = self._places.get(key)
        if found is not None:
            return found
        if len(self.endpoints) == 1:  # the common case: nothing to compare
            owner = self.endpoints[0] if self.endpoints[0].owns(url) else None
        else:
            owners = [e for e in self.endpoints if e.owns(url)]
            owner = max(owners, key=lambda e: e.base_path_length, default=None)
        found = (origin_of(url), url.path, owner)
        if len(self._places) < _KEPT:
            self._places[key] = found
        return found


_KEPT = 256
"""URLs whose owner is kept, at most (a test asking with ever new query strings stops adding)."""


def default_endpoints(base_url: str | None, environ: Mapping[str, str]) -> EndpointSet:
    dialect = for_kind(DEFAULT_KIND)
    url = base_url or environ.get(dialect.base_url_variable) or dialect.default_base_url
    return EndpointSet(
        (Endpoint("default", url.rstrip("/")),),
        configured=False,
        source=f"--llm-base-url / {dialect.base_url_variable} (no endpoints configured)",
    )


def load_endpoints(raw: Any, pyproject: str, *, base_url: str | None, environ: Mapping[str, str]) -> EndpointSet:
    """Validate ``[[tool.pytest_llm_guard.endpoints]]`` (``raw`` is None when absent)."""
    if raw is None:
        return default_endpoints(base_url, environ)
    source = f"[[{PYPROJECT_TABLE}.endpoints]] in {pyproject}"
    if not isinstance(raw, list) or not raw or not all(isinstance(t, dict) for t in raw):
        raise LLMGuardConfigError(
            f"pytest-llm-guard: endpoints in {source} must be a non-empty array of tables "
            f"([[{PYPROJECT_TABLE}.endpoints]] blocks with name = ..., base_url = ...)"
        )
    endpoints = tuple(_endpoint(table, i, source, environ) for i, table in enumerate(raw, 1))
    seen: set[str] = set()
    for endpoint in endpoints:
        if endpoint.name in seen:
            raise LLMGuardConfigError(f"pytest-llm-guard: endpoint name {endpoint.name!r} appears twice in {source}")
        seen.add(endpoint.name)
    return EndpointSet(endpoints, configured=True, source=source)


_FIELDS = {
    "name": "a name of letters, digits, '_', '.' or '-'",
    "base_url": "an http(s) URL (the API's root, as its SDK's base_url)",
    "models": "a list of model (or deployment) names",
    "api_key_env": "the name of an environment variable",
    "call_timeout": "a positive number of seconds",
    "first_token_timeout": "a positive number of seconds",
    "idle_timeout": "a positive number of seconds",
    "priority": "a whole number (lower is tried first)",
    "weight": "a positive number",
    "kind": f"one of {', '.join(ENDPOINT_KINDS)}",
    "api_version": "the API version its kind requires, such as 2024-10-21",
    "rpm": "a positive number of requests per minute (per model)",
    "tpm": "a positive number of tokens per minute (per model)",
    "rpm_burst": "a number of requests, at least 1",
}


def _endpoint(table: dict[str, Any], index: int, source: str, environ: Mapping[str, str]) -> Endpoint:
    label = f"endpoint {index}" + (f" ({table['name']!r})" if isinstance(table.get("name"), str) else "")

    def invalid(key: str) -> LLMGuardConfigError:
        value = f" = {table[key]!r}" if key in table else " is missing"
        return LLMGuardConfigError(
            f"pytest-llm-guard: {label}: {key}{value} in {source} is not valid; {key} must be {_FIELDS[key]}"
        )

    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise LLMGuardConfigError(
            f"pytest-llm-guard: {label}: unknown key {unknown[0]!r} in {source}; allowed keys: {', '.join(_FIELDS)}"
        )
    name, base_url = table.get("name"), table.get("base_url")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid("name")
    if not isinstance(base_url, str) or not re.match(r"^https?://[^/\s]+", base_url):
        raise invalid("base_url")
    models = table.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise invalid("models")
    key_env = table.get("api_key_env")
    if key_env is not None and not (isinstance(key_env, str) and _ENV_VAR.match(key_env)):
        raise invalid("api_key_env")
    for key in ("call_timeout", "first_token_timeout", "idle_timeout"):
        if table.get(key) is not None and not _positive(table[key]):
            raise invalid(key)
    priority = table.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise invalid("priority")
    weight = table.get("weight", 1)
    if not _positive(weight):
        raise invalid("weight")
    for key in ("rpm", "tpm"):
        if table.get(key) is not None and not _positive(table[key]):
            raise invalid(key)
    if table.get("rpm_burst") is not None and not (_positive(table["rpm_burst"]) and table["rpm_burst"] >= 1):
        raise invalid("rpm_burst")
    kind = table.get("kind", DEFAULT_KIND)
    if kind not in ENDPOINT_KINDS:
        raise invalid("kind")
    try:
        version = for_kind(kind).api_version(kind, table.get("api_version"), environ)
    except ValueError as exc:
        raise LLMGuardConfigError(f"pytest-llm-guard: {label}: {exc} ({source})") from None
    return Endpoint(
        name=name,
        base_url=base_url.rstrip("/"),
        models=tuple(models),
        api_key_env=key_env,
        call_timeout=_float(table.get("call_timeout")),
        first_token_timeout=_float(table.get("first_token_timeout")),
        idle_timeout=_float(table.get("idle_timeout")),
        priority=priority,
        weight=float(weight),
        kind=kind,
        api_version=version,
        rpm=_float(table.get("rpm")),
        tpm=_float(table.get("tpm")),
        rpm_burst=_float(table.get("rpm_burst")),
    )


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _float(value: Any) -> float | None:
    return float(value) if value is not None else None
