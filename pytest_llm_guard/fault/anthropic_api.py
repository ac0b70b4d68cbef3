"""The Anthropic Messages API as the fault server answers it: ``POST /v1/messages``.

A message as JSON, or (``"stream": true``) as the named server-sent events the
``anthropic`` SDK reads: ``message_start``, ``content_block_start``, ``ping``,
``content_block_delta`` (``text_delta``, ``input_json_delta``), ``content_block_stop``,
``message_delta`` (the stop reason and the cumulative ``output_tokens``), and last
``message_stop``, which is the event ``Fault.cut_stream`` never sends. Errors are
``{"type": "error", "error": {"type": ..., "message": ...}}`` with Anthropic's error
type for the status (529: ``overloaded_error``); ``Fault.stream_error`` sends that body
as an ``event: error`` after a 200, as the API does when it is overloaded mid-answer.

Answers are those of the OpenAI dialect in Anthropic's shape: an echo of the last user
message unless a scripted reply matches (its tool calls become ``tool_use`` blocks),
token counts are whitespace-separated words. ``POST /v1/messages/count_tokens`` counts
the same way. As on the real API, a request without an ``anthropic-version`` header is
a 400 (the SDK always sends one).
"""

from __future__ import annotations

import json as _json
from collections.abc import Sequence
from typing import Any

from .dialect import (
    DEFAULT_MODEL,
    Call,
    Dialect,
    Reply,
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

__all__ = ["DIALECT", "ROUTES"]

ROUTES = {"messages": "/v1/messages", "count_tokens": "/v1/messages/count_tokens"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_BROKEN = b'{"id": "msg_fault", "type": "message", "role": "assistant", "content": [{"type": "text", "text": '


def _error_body(status: int, message: str) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """An Anthropic error body: ``{"type": "error", "error": {"type", "message"}}``."""
    return json_response(status, _error_body(status, message), headers)


def _event(name: str, **fields: Any) -> bytes:
    """One named event whose data's ``type`` is its name, as every event of the API."""
    return b"event: %s\ndata: %s\n\n" % (name.encode(), _json.dumps({"type": name, **fields}).encode())


def stream_error(status: int, message: str) -> bytes:
    """The error body as ``event: error``, which the SDK raises as ``APIStatusError`` (status 200)."""
    return _event("error", error=_error_body(status, message)["error"])


def malformed(call: Call) -> Response:
    """A 200 whose JSON is cut short; a stream whose ``message_start`` is."""
    if call.body.get("stream") is True:
        return event_stream([b"event: message_start\ndata: " + _BROKEN + b"\n\n", _event("message_stop")])
    return Response(200, [("Content-Type", "application/json"), ("Content-Length", str(len(_BROKEN)))], [_BROKEN])


def _needs_version(call: Call) -> Response | None:
    """The API's 400 for a request without ``anthropic-version``; None when it has one."""
    if call.headers.get("anthropic-version"):
        return None
    return error(400, "anthropic-version: header is required; the anthropic SDK sends it, add it to raw requests")


def _messages(body: dict) -> list[dict]:
    raw = body.get("messages")
    return [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []


def _input_tokens(body: dict) -> int:
    system = words(message_text(body.get("system")))  # a string, or a list of text blocks
    return system + sum(words(message_text(m.get("content"))) for m in _messages(body))


def _blocks(reply: Reply | None, last_user: str, seq: int) -> list[dict[str, Any]]:
    """The answer's content blocks: its text (the echo by default), then one ``tool_use`` per tool call."""
    content = reply.content if reply else f"echo: {last_user}"
    blocks: list[dict[str, Any]] = [] if content is None else [{"type": "text", "text": content}]
    for i, (name, arguments) in enumerate(reply.tool_calls if reply else ()):
        tool_id = f"toolu_fault_{seq}_{i}"
        blocks.append({"type": "tool_use", "id": tool_id, "name": name, "input": _json.loads(arguments)})
    return blocks


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    """``content_block_start``, a delta per word, ``content_block_stop``."""
    if block["type"] == "text":
        opening, kind, field, text = {**block, "text": ""}, "text_delta", "text", block["text"]
    else:
        opening, kind, field = {**block, "input": {}}, "input_json_delta", "partial_json"
        text = _json.dumps(block["input"])
    events = [_event("content_block_start", index=index, content_block=opening)]
    events += [_event("content_block_delta", index=index, delta={"type": kind, field: p}) for p in split_words(text)]
    return events + [_event("content_block_stop", index=index)]


def messages(call: Call, seq: int) -> Response:
    """A message: JSON, or server-sent events when the body says ``"stream": true``."""
    body = call.body
    last_user = last_user_text(_messages(body))
    reply = choose_reply(call.replies, body, last_user)
    blocks = _blocks(reply, last_user, seq)
    overrides = reply.usage if reply else {}
    input_tokens = overrides.get("prompt_tokens", _input_tokens(body))
    output = sum(words(b["text"]) if b["type"] == "text" else words(_json.dumps(b["input"])) for b in blocks)
    output_tokens = overrides.get("completion_tokens", output)
    stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    message = {
        "id": f"msg_fault_{seq}",
        "type": "message",
        "role": "assistant",
        "model": (reply and reply.model) or str(body.get("model") or DEFAULT_MODEL),
        "content": blocks,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    request_id = [("request-id", f"req_fault_{seq}")]
    if body.get("stream") is not True:
        return json_response(200, message, request_id)
    # As the API streams: output_tokens starts at 1 in message_start; message_delta carries the total.
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    events = [_event("message_start", message=start)]
    for index, block in enumerate(blocks):
        events += _block_events(index, block)
    events.insert(min(2, len(events)), _event("ping"))  # after the first block opens, as the API
    delta = {"stop_reason": stop_reason, "stop_sequence": None}
    events.append(_event("message_delta", delta=delta, usage={"output_tokens": output_tokens}))
    response = event_stream([*events, _event("message_stop")])
    response.headers += request_id
    return response


def count_tokens(call: Call, seq: int) -> Response:
    """``{"input_tokens": N}``: the words of the system prompt and every message."""
    return json_response(200, {"input_tokens": _input_tokens(call.body)})


DIALECT = Dialect(
    name="anthropic",
    routes=(
        Route("messages", "POST", ROUTES["messages"], messages, _needs_version, generates=True),
        Route("count_tokens", "POST", ROUTES["count_tokens"], count_tokens, _needs_version),
    ),
    error=error,
    malformed=malformed,
    stream_error=stream_error,
)
