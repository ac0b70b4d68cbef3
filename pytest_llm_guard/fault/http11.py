"""Just enough HTTP/1.1 for the server: read a request's head, write an answer's head.

Not ``http.server.BaseHTTPRequestHandler``: its header parsing (the ``email``
package) cost more than everything else in an answer, and benchmarks of a guarded
client's overhead must not be measuring the test server. Limits are those of
``http.server``; a request beyond them raises :class:`BadRequest`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import BinaryIO

__all__ = ["BadRequest", "RequestHead", "read_head", "response_head"]

METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})  # others: 501, as http.server answers
MAX_LINE = 65536  # longest request or header line
MAX_HEADERS = 100
_REASONS = {status.value: status.phrase for status in HTTPStatus}


class BadRequest(Exception):
    """A request that cannot be read; to answer with ``status``, then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class RequestHead:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names; the last of repeated headers wins
    keep_alive: bool  # HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with "Connection: keep-alive"
    expects_continue: bool  # "Expect: 100-continue": the client waits for a 100 before sending the body


def read_head(rfile: BinaryIO) -> RequestHead | None:
    """Read a request line and its headers; None when the client closed the connection instead."""
    line = rfile.readline(MAX_LINE + 1)
    words = line.decode("latin-1").split()
    if not words:
        return None
    if len(line) > MAX_LINE:
        raise BadRequest(414, "Request line too long")
    if len(words) != 3:
        raise BadRequest(400, f"Bad request syntax ({line.rstrip()!r})")
    method, target, version = words
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise BadRequest(505 if version.startswith("HTTP/") else 400, f"Bad request version ({version!r})")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = rfile.readline(MAX_LINE + 1)
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            return None
        if len(line) > MAX_LINE:
            raise BadRequest(431, "Header line too long")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise BadRequest(400, f"Bad header line ({line.rstrip()!r})")
        headers[name.lower()] = value.strip()
    else:
        raise BadRequest(431, f"More than {MAX_HEADERS} header lines")
    if method not in METHODS:
        raise BadRequest(501, f"Unsupported method ({method!r})")
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return RequestHead(method, target, headers, connection == "keep-alive", False)
    keep_alive = "close" not in connection.replace(",", " ").split()
    return RequestHead(method, target, headers, keep_alive, headers.get("expect", "").lower() == "100-continue")


def response_head(status: int, headers: Sequence[tuple[str, str]], close: bool) -> bytes:
    """Status line and headers, ending with the blank line; ``Connection: close`` when ``close``."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", *(f"{k}: {v}" for k, v in headers)]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
