"""The Anthropic Messages API as the ``anthropic`` SDK speaks it (``kind = "anthropic"`` endpoints).

A request is Anthropic's when it carries ``anthropic-version`` (the SDK always sends
it), or when another client POSTs a model and messages to ``/v1/messages``. A streamed
answer is named events from ``message_start`` to ``message_stop``; one cut before
``message_stop`` is partial, and an ``event: error`` (``overloaded_error``...) after the
200 fails the attempt. The answer's content begins with its first ``content_block_start``
(an error before it is retried while nothing reached the caller). Usage is ``input_tokens +
output_tokens``: the input in ``message_start``, the output counted cumulatively by each
``message_delta`` (the latest count is the total, never a sum); cache reads and writes are
kept apart.
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from .base import EventStreamReader, Usage, Wrap, has_header, payloads, request_json
from .stainless import StainlessDialect

if TYPE_CHECKING:
    import httpx2

_ROUTE = re.compile(r"/v1/(messages|complete)(/|$)")
"""Anthropic's own routes (``/v1/models`` and ``/v1/files`` are OpenAI's too: that dialect names them)."""
_GENERATION_ROUTE = re.compile(r"/v1/(messages|messages/count_tokens|complete)/?$")
_CACHE_KEYS = ("cache_creation_input_tokens", "cache_read_input_tokens")


def _counts(usage: Any) -> dict[str, int]:
    return {k: v for k, v in usage.items() if isinstance(v, int)} if isinstance(usage, dict) else {}


def _usage(counts: dict[str, int]) -> Usage | None:
    if "input_tokens" not in counts and "output_tokens" not in counts:
        return None
    prompt, answer = counts.get("input_tokens"), counts.get("output_tokens")
    cache = sum(counts[k] for k in _CACHE_KEYS if k in counts) if any(k in counts for k in _CACHE_KEYS) else None
    return Usage((prompt or 0) + (answer or 0), prompt, answer, cache)


def _message_usage(body: Any) -> Usage | None:
    if not isinstance(body, dict):
        return None
    if "usage" not in body:
        return None  # count_tokens answers {"input_tokens": N}: a count, not a use
    return _usage(_counts(body.get("usage")))


class _EventStreamReader(EventStreamReader):
    """``message_start`` … ``message_stop``: usage merged across events, ``error`` a failed answer."""

    def __init__(self) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}

    def on_payload(self, name: str, payload: dict[str, Any]) -> str | None:
        kind = payload.get("type") or name
        if kind == "error":
            error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
            self.ended = self.error_event = True
            return (
                f"an error event after {self.events - 1} events of a stream "
                f"({error.get('type', 'error')}: {error.get('message', '')})"
            )
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            self._counts.update(_counts(payload["message"].get("usage")))
        elif kind == "message_delta":
            self._counts.update(_counts(payload.get("usage")))  # cumulative: the latest count replaces
        elif kind == "message_stop":
            self.ended = True
        self.content = self.content or kind in ("content_block_start", "content_block_delta")
        self.usage = _usage(self._counts) or self.usage
        return None


class AnthropicDialect(StainlessDialect):
    """The Anthropic Messages API as the ``anthropic`` SDK speaks it."""

    name = "anthropic"
    kinds = ("anthropic",)
    key_headers = frozenset({"x-api-key", "authorization"})
    stream_reader = _EventStreamReader
    json_usage = staticmethod(_message_usage)
    key_variables = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")
    base_url_variable = "ANTHROPIC_BASE_URL"
    default_base_url = "https://api.anthropic.com"
    default_model = "claude-haiku-4-5"
    sdk = "anthropic"
    sdk_error_name = "AnthropicError"
    client_names = ("Anthropic", "AsyncAnthropic")

    def claims(self, request: httpx2.Request) -> bool:
        if has_header(request.headers, b"anthropic-version"):
            return True
        if request.method != "POST" or not _GENERATION_ROUTE.search(request.url.path):
            return False
        body = request_json(request)
        return isinstance(body, dict) and isinstance(body.get("model"), str) and "messages" in body

    prompt_fields = ("system", "messages", "tools")
    answer_limit_fields = ("max_tokens",)
    volatile_fields = frozenset({"id"})

    def answer_text(self, body: str) -> str:
        texts = []
        for payload in payloads(body):
            if not isinstance(payload, dict):
                continue
            delta = payload.get("delta")
            if payload.get("type") == "content_block_delta" and isinstance(delta, dict):
                texts.append(delta.get("text") or "")
            elif payload.get("type") == "message":
                texts += [b.get("text") or "" for b in payload.get("content") or () if isinstance(b, dict)]
        return "".join(t for t in texts if isinstance(t, str))

    def serves(self, path: str) -> bool:
        return bool(_ROUTE.search(path))

    def route_of(self, path: str) -> str:
        match = _ROUTE.search(path)
        return path[match.start() :] if match else path

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

        url = httpx2.URL(base_url.rstrip("/") + self.route_of(request.url.path))
        headers = httpx2.Headers(request.headers)
        if key is not None:
            if "x-api-key" in headers or "authorization" not in headers:
                headers["x-api-key"] = key
            else:
                headers["authorization"] = f"Bearer {key}"
        return url.copy_with(params=request.url.params), headers

    def wrap_client(self, client: Any, wrap_sync: Wrap, wrap_async: Wrap, *, in_place: bool = False) -> Any:
        # The SDK sends each attempt with its httpx2 client's ``send`` (anthropic/_base_client.py,
        # ``_attempt_request``); the guarded client gets a view of that client whose ``send`` is the guard's
        # loop (the httpx2 client itself is left as it was).
        guarded = self.without_retries(client, in_place)
        wrap = wrap_async if self.is_async(client) else wrap_sync
        view = copy.copy(guarded._client)  # still an httpx2 client, so the SDK's own copies accept it
        view.send = wrap(guarded._client.send)
        guarded._client = view
        return guarded
