"""The OpenAI HTTP API as the fault server answers it, on OpenAI's paths and Azure OpenAI's.

Routes, answers (chat completions as JSON or as a stream of server-sent events,
embeddings, models), error bodies and the broken answer of ``Fault.malformed()``.
Answers are deterministic: a chat echoes the last user message unless a scripted
reply matches, token counts are whitespace-separated words, embeddings are derived
from a hash of the text.

``openai.AzureOpenAI(azure_endpoint=server.url, api_version=..., api_key=...)`` sends
``/openai/deployments/<deployment>/chat/completions`` (and ``/embeddings``) and lists
models at ``/openai/models``, each with ``?api-version=`` and the key in ``api-key``.
Those paths get the same answers (the deployment is the model when the body names
none) and share the route names, so a plan for ``"chat"`` applies to OpenAI's and
Azure's chat paths alike, in arrival order. Without ``api-version`` Azure answers 404,
and so does the server, before the plan is consulted.
"""

from __future__ import annotations

import base64
import hashlib
import json as _json
import struct
from collections.abc import Sequence
from typing import Any

from .dialect import (
    DEFAULT_MODEL,
    Call,
    Dialect,
    Response,
    Route,
    choose_reply,
    event_stream,
    json_response,
    last_user_text,
    message_text,
    split_words,
    words,
)

__all__ = ["CREATED", "DEFAULT_MODEL", "DIALECT", "EMBEDDING_DIM", "ROUTES", "fake_embedding"]

CREATED = 1_700_000_000  # fixed "created" timestamp so answers are deterministic
EMBEDDING_DIM = 8
ROUTES = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings", "models": "/v1/models"}
_ERROR_KINDS = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}
_BROKEN = b'{"id": "chatcmpl-fault", "choices": [{"index": 0, "message": '


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code or f"http_{status}"}}


def error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return json_response(status, _error_body(status, message), headers)


def stream_error(status: int, message: str) -> bytes:
    """The error body as a ``data:`` event, which the ``openai`` SDK raises as ``openai.APIError``."""
    return b"data: %s\n\n" % _json.dumps(_error_body(status, message)).encode()


def malformed(call: Call) -> Response:
    """A 200 whose JSON is cut short; a stream whose first event is."""
    if call.body.get("stream") is True:
        return event_stream([b"data: " + _BROKEN + b"\n\n", b"data: [DONE]\n\n"])
    return Response(200, [("Content-Type", "application/json"), ("Content-Length", str(len(_BROKEN)))], [_BROKEN])


def fake_embedding(text: str) -> list[float]:
    """The deterministic vector the server returns for ``text`` (exact in float32)."""
    return [(b - 128) / 128 for b in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIM]]


def _needs_api_version(call: Call) -> Response | None:
    """Azure's 404 for a request without ``?api-version=``; None when it has one."""
    if call.query.get("api-version"):
        return None
    message = (
        f"Resource not found: {call.method} {call.path} has no api-version query parameter. Azure OpenAI "
        "answers 404 without one; build the client with openai.AzureOpenAI(api_version=...)."
    )
    return json_response(404, {"error": {"code": "404", "message": message}})


def _model(call: Call) -> str:
    return str(call.body.get("model") or call.params.get("deployment") or DEFAULT_MODEL)


def chat(call: Call, seq: int) -> Response:
    """A chat completion: JSON, or server-sent events when the body says ``"stream": true``."""
    body = call.body
    raw = body.get("messages")
    messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
    last_user = last_user_text(messages)
    reply = choose_reply(call.replies, body, last_user)
    content = reply.content if reply else f"echo: {last_user}"
    calls = [
        {"id": f"call_{seq}_{i}", "type": "function", "function": {"name": name, "arguments": args}}
        for i, (name, args) in enumerate(reply.tool_calls if reply else ())
    ]
    model = (reply and reply.model) or _model(call)
    prompt = sum(words(message_text(m.get("content"))) for m in messages)
    completion = words(content or "") + sum(words(c["function"]["arguments"]) for c in calls)
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, **(reply.usage if reply else {})}
    usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
    finish = "tool_calls" if calls else "stop"
    head = {"id": f"chatcmpl-fault-{seq}", "created": CREATED, "model": model}
    if body.get("stream") is not True:
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return json_response(200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage})

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}

    events = [chunk({"role": "assistant", "content": "" if content is not None else None})]
    events += [chunk({"content": piece}) for piece in split_words(content or "")]
    for i, tool_call in enumerate(calls):
        opening = {"index": i, **tool_call, "function": {**tool_call["function"], "arguments": ""}}
        events.append(chunk({"tool_calls": [opening]}))
        args = split_words(tool_call["function"]["arguments"])
        events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": a}}]}) for a in args]
    events.append(chunk({}, finish))
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    return event_stream([b"data: %s\n\n" % _json.dumps(e).encode() for e in events] + [b"data: [DONE]\n\n"])


def embeddings(call: Call, seq: int) -> Response:
    """One deterministic vector per input, as floats or (``encoding_format="base64"``) packed float32."""
    raw = call.body.get("input")
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    texts = [item if isinstance(item, str) else _json.dumps(item) for item in items]
    as_base64 = call.body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vector: Any = fake_embedding(text)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(words(t) for t in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_response(200, {"object": "list", "data": data, "model": _model(call), "usage": usage})


def models(call: Call, seq: int) -> Response:
    """The default model, then every model a scripted reply names."""
    names = dict.fromkeys([DEFAULT_MODEL] + [r.model for r in call.replies if r.model])
    data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fault-server"} for m in names]
    return json_response(200, {"object": "list", "data": data})


DIALECT = Dialect(
    name="openai",
    routes=(
        Route("chat", "POST", ROUTES["chat"], chat, generates=True),
        Route("embeddings", "POST", ROUTES["embeddings"], embeddings),
        Route("models", "GET", ROUTES["models"], models),
        Route(
            "chat",
            "POST",
            "/openai/deployments/{deployment}/chat/completions",
            chat,
            _needs_api_version,
            generates=True,
        ),
        Route("embeddings", "POST", "/openai/deployments/{deployment}/embeddings", embeddings, _needs_api_version),
        Route("models", "GET", "/openai/models", models, _needs_api_version),
    ),
    error=error,
    malformed=malformed,
    stream_error=stream_error,
)
