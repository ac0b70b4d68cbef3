"""Secrets never reach a cassette: headers, query parameters, body fields and patterns are redacted.

Applied to every request before it is matched or written and to every response
before it is written, so a scrubbed recording and a live request compare equal.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .dialect import KEY_HEADERS

if TYPE_CHECKING:
    from vcr.request import Request as VcrRequest

REDACTED = "REDACTED"

SECRET_HEADERS = KEY_HEADERS | {"proxy-authorization", "cookie", "set-cookie"}
"""Every dialect's credential headers, and the web's."""
SECRET_QUERY = frozenset({"api-key", "api_key", "apikey", "key", "access_token", "token", "code"})
_SECRET_HEADER_WORDS = re.compile(
    r"(api[-_]?key|authorization|secret|cookie|password|session[-_]?id|access[-_]?token|auth[-_]?token)",
    re.IGNORECASE,
)
_KEY_LIKE = re.compile(r"\b(sk|sess|rk)-[A-Za-z0-9_\-]{16,}")
"""OpenAI-style keys (``sk-...``, ``sk-proj-...``) wherever they appear."""


class Scrubber:
    """Redacts what identifies an account; configured with extra headers, body fields and regexes."""

    def __init__(
        self,
        *,
        headers: Iterable[str] = (),
        body_fields: Iterable[str] = (),
        patterns: Iterable[str] = (),
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self.headers = SECRET_HEADERS | {h.lower() for h in headers}
        self.body_fields = frozenset(body_fields)
        known_keys = [re.escape(v) for k, v in environ.items() if k.endswith("API_KEY") and len(v) >= 8]
        self.patterns = [re.compile(p) for p in (*patterns, *known_keys)] + [_KEY_LIKE]

    def is_secret_header(self, name: str) -> bool:
        lower = name.lower()
        return lower in self.headers or bool(_SECRET_HEADER_WORDS.search(lower))

    def text(self, value: str) -> str:
        for pattern in self.patterns:
            value = pattern.sub(REDACTED, value)
        return value

    def body(self, body: Any) -> Any:
        """Redact configured JSON fields and patterns in a body (bytes or str); binary passes through."""
        if body is None:
            return None
        raw = body if isinstance(body, str) else body.decode("utf-8") if _is_utf8(body) else None
        if raw is None:
            return body
        if self.body_fields:
            try:
                raw = json.dumps(_redact_fields(json.loads(raw), self.body_fields))
            except ValueError:
                pass
        scrubbed = self.text(raw)
        return scrubbed if isinstance(body, str) else scrubbed.encode("utf-8")

    def uri(self, uri: str) -> str:
        parts = urlsplit(uri)
        if not parts.query:
            return self.text(uri)
        query = [(k, REDACTED if k.lower() in SECRET_QUERY else v) for k, v in parse_qsl(parts.query, True)]
        return self.text(urlunsplit(parts._replace(query=urlencode(query))))

    def request(self, request: VcrRequest) -> VcrRequest:
        """A scrubbed copy, for ``before_record_request`` (also used before matching)."""
        request = copy.deepcopy(request)
        for name in list(request.headers):
            if self.is_secret_header(name):
                del request.headers[name]
            else:
                request.headers[name] = self.text(request.headers[name])
        request.uri = self.uri(request.uri)
        request.body = self.body(request.body)
        return request

    def response(self, response: dict[str, Any]) -> dict[str, Any]:
        """Scrub a vcrpy response dict in place (vcrpy hands us a copy)."""
        response["headers"] = {
            name: [self.text(v) for v in values]
            for name, values in response["headers"].items()
            if not self.is_secret_header(name)
        }
        response["body"]["string"] = self.body(response["body"]["string"])
        return response


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _redact_fields(obj: Any, fields: frozenset[str]) -> Any:
    if isinstance(obj, dict):
        return {k: REDACTED if k in fields else _redact_fields(v, fields) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_fields(v, fields) for v in obj]
    return obj
