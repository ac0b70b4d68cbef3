"""Everything API-specific, one object per dialect: the rest of the package asks, never knows.

A dialect answers the questions the guard, the cassettes, the breakers and the reports
have about a request or a response: is it LLM traffic, which route and model is it,
is it an SDK retry, how many tokens did it use, has a stream reached its end, which
headers carry keys, and how a configured endpoint of one of its kinds is addressed.

Only the OpenAI API (``kind = "openai"`` and ``kind = "azure"`` endpoints) ships today.
Adding another API — the Anthropic Messages API, whose SDK also runs on httpx2 — means
one new :class:`Dialect` subclass appended to :data:`DIALECTS` (plus its routes in the
fault server, ``fault/``); nothing else in the package changes.

Light to import (httpx2 is imported where a request is built), so configuration can
validate endpoint kinds before any guarded test runs.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx2


class Dialect:
    """The questions every dialect answers; subclasses fill them in."""

    name: str = ""
    kinds: tuple[str, ...] = ()
    """The endpoint ``kind`` values (``[[tool.pytest_llm_guard.endpoints]]``) this dialect addresses."""
    key_headers: frozenset[str] = frozenset()
    """Request headers that carry credentials: never written, never shown."""

    def claims(self, request: httpx2.Request) -> bool:
        """Is this request LLM traffic of this dialect?"""
        raise NotImplementedError

    def route_of(self, path: str) -> str:
        """The API route without the base URL's prefix, the same for every endpoint serving it."""
        raise NotImplementedError

    def model_of(self, request: httpx2.Request, body: Any) -> str | None:
        """The model a request asks for (``body`` is its parsed JSON, or None)."""
        raise NotImplementedError

    def retry_number(self, request: httpx2.Request) -> int:
        """How many times the SDK that sent ``request`` has retried it already (0: a new call)."""
        return 0

    def mark_retry(self, request: httpx2.Request, retries_taken: int) -> None:
        """Tag a retried request as its SDK's own retry loop would, so a server sees which attempt it is."""

    def tokens_of(self, content_type: str, body: bytes) -> int | None:
        """Total tokens a response reports, or None when it reports none."""
        raise NotImplementedError

    def stream_finished(self, content_type: str, body: bytes) -> bool:
        """Has a streamed body reached the event that ends it?"""
        raise NotImplementedError

    def address(
        self,
        kind: str,
        base_url: str,
        api_version: str | None,
        request: httpx2.Request,
        model: str | None,
        key: str | None,
    ) -> tuple[httpx2.URL, httpx2.Headers]:
        """URL and headers with which an endpoint of ``kind`` must receive ``request``."""
        raise NotImplementedError


# -- OpenAI (and Azure OpenAI) ---------------------------------------------------------

_OPENAI_ROUTE = re.compile(
    r"/(chat/completions|completions|embeddings|responses|moderations|models|audio|images|batches)(/|$)"
)
_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")
# The routes AzureOpenAI sends to /openai/deployments/{model}/... (openai/lib/azure.py).
_AZURE_DEPLOYMENT_ROUTES = frozenset(
    {
        "/completions",
        "/chat/completions",
        "/embeddings",
        "/audio/transcriptions",
        "/audio/translations",
        "/audio/speech",
        "/images/generations",
        "/images/edits",
    }
)


def _usage_tokens(obj: Any) -> int | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict) and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")  # Responses API stream: response.completed
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    counted = [p for p in parts if isinstance(p, int)]
    return sum(counted) if counted else None


class OpenAIDialect(Dialect):
    """The OpenAI HTTP API as the ``openai`` SDK speaks it, including ``AzureOpenAI``'s addressing."""

    name = "openai"
    kinds = ("openai", "azure")
    key_headers = frozenset({"authorization", "api-key", "openai-organization", "openai-project"})

    def claims(self, request: httpx2.Request) -> bool:
        # The SDK tags its requests x-stainless-*; other clients are known by an OpenAI-style route.
        return "x-stainless-lang" in request.headers or bool(_OPENAI_ROUTE.search(request.url.path))

    def route_of(self, path: str) -> str:
        match = _OPENAI_ROUTE.search(path)
        return path[match.start() :] if match else path

    def model_of(self, request: httpx2.Request, body: Any) -> str | None:
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            return body["model"]
        match = _AZURE_DEPLOYMENT.search(request.url.path)
        return match.group(1) if match else None

    def retry_number(self, request: httpx2.Request) -> int:
        count = request.headers.get("x-stainless-retry-count", "0")
        return int(count) if count.isdigit() else 0

    def mark_retry(self, request: httpx2.Request, retries_taken: int) -> None:
        request.headers["x-stainless-retry-count"] = str(retries_taken)

    def tokens_of(self, content_type: str, body: bytes) -> int | None:
        if "text/event-stream" in content_type:
            tokens = None
            for line in body.splitlines():
                if line.startswith(b"data:") and b"usage" in line:
                    try:
                        found = _usage_tokens(json.loads(line[5:]))
                    except ValueError:
                        continue
                    tokens = found if found is not None else tokens
            return tokens
        try:
            return _usage_tokens(json.loads(body))
        except (ValueError, UnicodeDecodeError):
            return None

    def stream_finished(self, content_type: str, body: bytes) -> bool:
        # The SDK stops reading and closes the response at [DONE], before the transport
        # stream reports its end, so "closed at [DONE]" must count as complete.
        return "text/event-stream" in content_type and body.rstrip().endswith(b"data: [DONE]")

    def address(
        self,
        kind: str,
        base_url: str,
        api_version: str | None,
        request: httpx2.Request,
        model: str | None,
        key: str | None,
    ) -> tuple[httpx2.URL, httpx2.Headers]:
        import httpx2

        route = self.route_of(request.url.path)
        headers = httpx2.Headers(request.headers)
        params = request.url.params
        if kind == "azure":
            deployment = f"/deployments/{model}" if model and route in _AZURE_DEPLOYMENT_ROUTES else ""
            url = httpx2.URL(base_url.rstrip("/") + "/openai" + deployment + route)
            params = params.set("api-version", api_version or "")
            bearer = headers.pop("authorization", "").removeprefix("Bearer ")
            headers["api-key"] = key if key is not None else bearer
        else:
            url = httpx2.URL(base_url.rstrip("/") + route)
            if key is not None:
                headers["authorization"] = f"Bearer {key}"
        return url.copy_with(params=params), headers


DIALECTS: tuple[Dialect, ...] = (OpenAIDialect(),)


def dialect_for(request: httpx2.Request) -> Dialect | None:
    """The dialect that claims ``request``, or None: not LLM traffic, the guard lets it pass."""
    for dialect in DIALECTS:
        if dialect.claims(request):
            return dialect
    return None


def for_kind(kind: str) -> Dialect:
    """The dialect that addresses endpoints of ``kind``."""
    return next(d for d in DIALECTS if kind in d.kinds)


ENDPOINT_KINDS: tuple[str, ...] = tuple(kind for d in DIALECTS for kind in d.kinds)
KEY_HEADERS: frozenset[str] = frozenset().union(*(d.key_headers for d in DIALECTS)) | {"x-api-key"}


def request_json(request: httpx2.Request) -> Any:
    """The JSON body of a request, or None when it has none (or it is a stream not read yet)."""
    if not hasattr(request, "_content"):  # a streamed body not read yet (httpx2 raises RequestNotRead)
        return None
    content = request.content
    if not content:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


def origin_of(url: httpx2.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode('ascii', 'replace')}"
