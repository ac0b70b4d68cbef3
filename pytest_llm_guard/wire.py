"""What LLM traffic looks like on the wire: which requests are LLM calls, their model, their token usage."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2

_LLM_PATH = re.compile(
    r"/(chat/completions|completions|embeddings|responses|moderations|models|audio|images|batches)(/|$)"
)
_AZURE_DEPLOYMENT = re.compile(r"/openai/deployments/([^/]+)/")


def is_llm_request(request: httpx2.Request) -> bool:
    """Requests the openai SDK sends (it tags them ``x-stainless-*``) or that hit an OpenAI-style route."""
    return "x-stainless-lang" in request.headers or bool(_LLM_PATH.search(request.url.path))


def route_of(path: str) -> str:
    """The API route without the base URL's prefix: ``/openai/v1/chat/completions`` -> ``/chat/completions``."""
    match = _LLM_PATH.search(path)
    return path[match.start() :] if match else path


def endpoint_of(request: httpx2.Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc.decode('ascii', 'replace')}"


def request_json(request: httpx2.Request) -> Any:
    """The JSON body of a request, or None when it has none (or it is a stream not read yet)."""
    try:
        content = request.content
    except httpx2.RequestNotRead:
        return None
    if not content:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


def model_of(request: httpx2.Request) -> str | None:
    body = request_json(request)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        return body["model"]
    match = _AZURE_DEPLOYMENT.search(request.url.path)
    return match.group(1) if match else None


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


def tokens_of(content_type: str, body: bytes) -> int | None:
    """Total tokens reported by a JSON body or by the last SSE event carrying ``usage``."""
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


def stream_finished(content_type: str, body: bytes) -> bool:
    """Has an SSE body reached its ``data: [DONE]`` event?

    The openai SDK stops reading and closes the response at ``[DONE]``, before the
    transport stream reports its end, so "closed at [DONE]" must count as complete.
    """
    return "text/event-stream" in content_type and body.rstrip().endswith(b"data: [DONE]")
