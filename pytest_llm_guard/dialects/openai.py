"""The OpenAI HTTP API as the ``openai`` SDK speaks it, including ``AzureOpenAI``'s addressing.

Chat completions stream until ``data: [DONE]``; the Responses API until its
``response.completed`` (or ``incomplete``/``failed``/``error``) event. Usage is the
body's ``usage`` (``total_tokens``, else prompt + completion).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .. import default_dialect
from .base import EventStreamReader, Usage, Wrap, _last_user_text, _shorten, payloads, request_json, request_model
from .stainless import StainlessDialect

if TYPE_CHECKING:
    import httpx2

_OPENAI_ROUTE = re.compile(
    r"/(chat/completions|completions|embeddings|responses|moderations|models|audio|images|batches)(/|$)"
)
_GENERATION_ROUTE = re.compile(
    r"/(chat/completions|completions|embeddings|responses|moderations|images/(generations|edits)|audio/speech)/?$"
)
"""Routes that ask a model for an answer (what costs tokens), as a client other than the SDK sends them."""
_PROMPT_KEYS = ("messages", "input", "prompt")
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


def _usage(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict) and isinstance(obj.get("response"), dict):
        usage = obj["response"].get("usage")  # Responses API stream: response.completed
    if not isinstance(usage, dict):
        return None

    prompt = _count(usage, "prompt_tokens", "input_tokens")  # chat completions', else the Responses API's
    completion = _count(usage, "completion_tokens", "output_tokens")
    total = _count(usage, "total_tokens")
    if total is None and prompt is None and completion is None:
        return None
    return Usage(total if total is not None else (prompt or 0) + (completion or 0), prompt, completion)


def _count(usage: dict[str, Any], key: str, other: str | None = None) -> int | None:
    """The count under ``key``, else under ``other``; only whole numbers count. Only the keys asked for are
    looked at (a usage also holds nested details, never read)."""
    value = usage.get(key)
    if isinstance(value, int):
        return value
    value = usage.get(other) if other is not None else None
    return value if isinstance(value, int) else None


def _text_of(payload: Any) -> str:
    """The assistant's text in a chat completion, a chunk of one, or a Responses API answer or event."""
    if not isinstance(payload, dict):
        return ""
    if payload.get("type") == "response.output_text.delta":
        return str(payload.get("delta") or "")
    texts = []
    for choice in payload.get("choices") or ():
        part = (choice.get("message") or choice.get("delta") or {}) if isinstance(choice, dict) else {}
        texts.append(part.get("content") or "" if isinstance(part, dict) else "")
    for item in payload.get("output") or ():
        for content in (item.get("content") or ()) if isinstance(item, dict) else ():
            texts.append(content.get("text") or "" if isinstance(content, dict) else "")
    return "".join(t for t in texts if isinstance(t, str))


_END_TYPES = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
"""Responses API events that end a stream (chat completions end with ``data: [DONE]``)."""


def _carries_content(payload: dict[str, Any]) -> bool:
    """A chat completion chunk whose delta has text, tool calls or a refusal; a Responses API delta."""
    kind = payload.get("type")
    if isinstance(kind, str):
        return kind.startswith("response.") and kind.endswith(".delta")
    choices = payload.get("choices")
    deltas = [c.get("delta") for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []
    return any(isinstance(d, dict) and any(d.get(k) for k in ("content", "tool_calls", "refusal")) for d in deltas)


class _EventStreamReader(EventStreamReader):
    """Chat completions' ``data: [DONE]``, or a Responses API end event; usage from any event that has it.

    A chat completion chunk carrying ``error`` is the API failing mid-stream (the SDK raises it).
    """

    def on_data(self, name: str, data: bytes) -> str | None:
        if data.strip() == b"[DONE]":
            self.ended = True
            return None
        return super().on_data(name, data)

    def on_payload(self, name: str, payload: dict[str, Any]) -> str | None:
        error = payload.get("error")
        if isinstance(error, dict) and "type" not in payload:
            self.ended = self.error_event = True
            return (
                f"an error event after {self.events - 1} events of a stream "
                f"({error.get('type') or error.get('code') or 'error'}: {error.get('message', '')})"
            )
        self.content = self.content or _carries_content(payload)
        self.usage = _usage(payload) or self.usage
        self.ended = self.ended or payload.get("type") in _END_TYPES
        return None


class OpenAIDialect(StainlessDialect):
    """The OpenAI HTTP API as the ``openai`` SDK speaks it, including ``AzureOpenAI``'s addressing."""

    name = "openai"
    kinds = ("openai", "azure")
    key_headers = frozenset({"authorization", "api-key", "openai-organization", "openai-project"})
    stream_reader = _EventStreamReader
    json_usage = staticmethod(_usage)
    key_variables = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")
    base_url_variable = default_dialect.BASE_URL_VARIABLE
    default_base_url = "https://api.openai.com/v1"
    default_model = default_dialect.MODEL
    sdk = "openai"
    sdk_error_name = "OpenAIError"
    client_names = ("OpenAI", "AsyncOpenAI")

    def claims(self, request: httpx2.Request) -> bool:
        # The SDK tags its requests x-stainless-*. Another client's request is LLM traffic when it asks
        # a model for an answer: a POST to a generation route whose JSON names a model (or an Azure
        # deployment) and a prompt. A path that merely contains /images/ or /models is not.
        if self.sent_by_sdk(request):
            return True
        if request.method != "POST" or not _GENERATION_ROUTE.search(request.url.path):
            return False
        body = request_json(request)
        if not isinstance(body, dict) or not any(key in body for key in _PROMPT_KEYS):
            return False
        return isinstance(body.get("model"), str) or bool(_AZURE_DEPLOYMENT.search(request.url.path))

    prompt_fields = ("messages", "input", "prompt", "instructions", "tools")
    answer_limit_fields = ("max_completion_tokens", "max_tokens", "max_output_tokens")
    volatile_fields = frozenset({"id", "created", "created_at", "system_fingerprint"})

    def answer_text(self, body: str) -> str:
        return "".join(_text_of(payload) for payload in payloads(body))

    def serves(self, path: str) -> bool:
        return bool(_OPENAI_ROUTE.search(path))

    def route_of(self, path: str) -> str:
        match = _OPENAI_ROUTE.search(path)
        return path[match.start() :] if match else path

    def model_of(self, request: httpx2.Request) -> str | None:
        model = request_model(request)
        if model:
            return model
        match = _AZURE_DEPLOYMENT.search(request.url.path)  # an Azure deployment's body may name no model
        return match.group(1) if match else None

    def summary(self, body: Any, limit: int = 80) -> str:
        if not isinstance(body, dict):
            return ""
        return _shorten(_last_user_text(body.get("messages") or body.get("input")), limit)

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

    def api_version(self, kind: str, configured: Any, environ: Mapping[str, str]) -> str | None:
        if kind != "azure":
            return super().api_version(kind, configured, environ)
        version = configured or environ.get("OPENAI_API_VERSION")
        if not isinstance(version, str) or not version:
            raise ValueError(
                "kind = 'azure' needs api_version (or OPENAI_API_VERSION in the environment), as AzureOpenAI does"
            )
        return version

    def wrap_client(self, client: Any, wrap_sync: Wrap, wrap_async: Wrap, *, in_place: bool = False) -> Any:
        # The SDK sends each attempt through ``_send_request`` (openai/_base_client.py): the guard's loop
        # goes around it, and the SDK's own loop is turned off.
        guarded = self.without_retries(client, in_place)
        wrap = wrap_async if self.is_async(client) else wrap_sync
        guarded._send_request = wrap(guarded._send_request)
        return guarded
