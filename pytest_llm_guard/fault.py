"""A fault-injecting, OpenAI-compatible HTTP server for tests.

Why: retry, timeout and breaker logic around LLM calls is only trustworthy once it
has met real failures (rate limits, hangs, resets, cut streams). ``FaultServer``
speaks enough of the OpenAI HTTP API for the ``openai`` SDK, answers
deterministically, and lets a test script which failure each request meets::

    with FaultServer() as server:
        server.plan(Fault.status(429, retry_after=0), Fault.status(503))
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        client.chat.completions.create(model="m", messages=[...])  # 2 failures, then OK

Stdlib only, so it can run anywhere the tests run.
"""

from __future__ import annotations

import base64
import hashlib
import json as _json
import math
import re
import select
import socket
import socketserver
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any

__all__ = [
    "CutStream",
    "DEFAULT_MODEL",
    "Fault",
    "FaultServer",
    "Hang",
    "Malformed",
    "Ok",
    "ROUTES",
    "RecordedRequest",
    "Reset",
    "Status",
    "Trickle",
    "fake_embedding",
]

DEFAULT_MODEL = "fault-model"
CREATED = 1_700_000_000  # fixed "created" timestamp so answers are deterministic
EMBEDDING_DIM = 8
ROUTES = {"chat": "/v1/chat/completions", "embeddings": "/v1/embeddings", "models": "/v1/models"}
_METHODS = {ROUTES["chat"]: "POST", ROUTES["embeddings"]: "POST", ROUTES["models"]: "GET"}
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_POLL = 0.05  # how often waiting handlers look for reset()/stop() or a departed client
_ERROR_KINDS = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


def _seconds(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _count(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
    return value


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """What the server does with one request. Build values with the constructors below."""

    def __post_init__(self) -> None:
        if type(self) is Fault:
            raise TypeError("Fault() is abstract; build faults with Fault.ok(), Fault.status(503), ...")

    @staticmethod
    def ok(delay: float = 0.0) -> Ok:
        """Answer normally after ``delay`` seconds: a slow but healthy upstream."""
        return Ok(delay)

    @staticmethod
    def hang() -> Hang:
        """Read the request, never answer, until the client gives up, ``reset()`` or ``stop()``."""
        return Hang()

    @staticmethod
    def status(
        code: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        should_retry: bool | None = None,
        headers: Mapping[str, str] | None = None,
        message: str | None = None,
    ) -> Status:
        """Answer with an HTTP error and an OpenAI-style error body (rate limits, outages, auth)."""
        return Status(code, retry_after, retry_after_ms, should_retry, headers or (), message)

    @staticmethod
    def reset(after_bytes: int = 0) -> Reset:
        """Abort the connection with a TCP RST after ``after_bytes`` bytes of the real response."""
        return Reset(after_bytes)

    @staticmethod
    def trickle(interval: float = 0.05, chunk_size: int = 1) -> Trickle:
        """Send headers, then the body ``chunk_size`` bytes every ``interval`` s: a stalling upstream."""
        return Trickle(interval, chunk_size)

    @staticmethod
    def malformed() -> Malformed:
        """Answer 200 with a body that is not valid JSON (or an SSE event that is not)."""
        return Malformed()

    @staticmethod
    def cut_stream(after_chunks: int) -> CutStream:
        """Send ``after_chunks`` SSE events, then drop the connection before ``[DONE]``."""
        return CutStream(after_chunks)


@dataclass(frozen=True)
class Ok(Fault):
    """See Fault.ok()."""

    delay: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "delay", _seconds("Fault.ok(delay=...)", self.delay))


@dataclass(frozen=True)
class Hang(Fault):
    """See Fault.hang()."""


@dataclass(frozen=True)
class Status(Fault):
    """See Fault.status()."""

    code: int
    retry_after: float | str | None = None
    retry_after_ms: float | None = None
    should_retry: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()
    message: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int) or not 400 <= self.code <= 599:
            raise ValueError(
                f"Fault.status(code) needs an HTTP error code from 400 to 599, got {self.code!r}; "
                "use Fault.ok() for a normal answer"
            )
        if self.retry_after is not None and not isinstance(self.retry_after, str):
            _seconds("Fault.status(retry_after=...)", self.retry_after)
        if self.retry_after_ms is not None:
            _seconds("Fault.status(retry_after_ms=...)", self.retry_after_ms)
        if self.should_retry is not None and not isinstance(self.should_retry, bool):
            raise ValueError(f"Fault.status(should_retry=...) must be True, False or None, not {self.should_retry!r}")
        if isinstance(self.headers, Mapping):
            object.__setattr__(self, "headers", tuple(self.headers.items()))
        verbatim = [("retry-after", self.retry_after)] if isinstance(self.retry_after, str) else []
        for name, value in [*self.headers, *verbatim]:
            if not isinstance(name, str) or not isinstance(value, str) or re.search(r"[\r\n]", name + value):
                raise ValueError(f"Fault.status header {name!r}: {value!r} must be str without CR/LF")

    def response(self) -> _Response:
        """The error answer this fault sends."""
        headers = []
        if self.retry_after is not None:
            headers.append(("retry-after", str(self.retry_after)))
        if self.retry_after_ms is not None:
            headers.append(("retry-after-ms", str(self.retry_after_ms)))
        if self.should_retry is not None:
            headers.append(("x-should-retry", "true" if self.should_retry else "false"))
        message = self.message or f"Injected fault: HTTP {self.code}"
        return _error(self.code, message, headers + list(self.headers))


@dataclass(frozen=True)
class Reset(Fault):
    """See Fault.reset()."""

    after_bytes: int = 0

    def __post_init__(self) -> None:
        _count("Fault.reset(after_bytes=...)", self.after_bytes, 0)


@dataclass(frozen=True)
class Trickle(Fault):
    """See Fault.trickle()."""

    interval: float = 0.05
    chunk_size: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "interval", _seconds("Fault.trickle(interval=...)", self.interval))
        _count("Fault.trickle(chunk_size=...)", self.chunk_size, 1)


@dataclass(frozen=True)
class Malformed(Fault):
    """See Fault.malformed()."""


@dataclass(frozen=True)
class CutStream(Fault):
    """See Fault.cut_stream()."""

    after_chunks: int

    def __post_init__(self) -> None:
        _count("Fault.cut_stream(after_chunks)", self.after_chunks, 0)


# --------------------------------------------------------------------------- answers


@dataclass
class _Response:
    status: int
    headers: list[tuple[str, str]]
    pieces: list[bytes]  # body as written to the wire, one write (and flush) each
    streamed: bool = False


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, so tests can assert on what the client sent."""

    method: str
    path: str
    headers: Mapping[str, str]  # lower-case keys, read-only
    json: Any  # parsed body, or None when absent or not JSON
    body: bytes
    time: float  # time.monotonic() at arrival
    fault: Fault | None  # None for requests rejected before the plan (404, bad JSON)


@dataclass(frozen=True)
class _Reply:
    content: str | None
    tool_calls: tuple[tuple[str, str], ...]  # (name, arguments as JSON text)
    when: str | Callable[[dict], bool] | None
    model: str | None
    usage: Mapping[str, int]

    def matches(self, body: dict, last_user: str) -> bool:
        if self.when is None:
            return True
        if isinstance(self.when, str):
            return self.when in last_user
        return bool(self.when(body))


def _json_response(status: int, obj: Any, headers: Sequence[tuple[str, str]] = ()) -> _Response:
    body = _json.dumps(obj).encode()
    return _Response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers], [body]
    )


def _error(status: int, message: str, headers: Sequence[tuple[str, str]] = ()) -> _Response:
    kind, code = _ERROR_KINDS.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    error = {"message": message, "type": kind, "param": None, "code": code or f"http_{status}"}
    return _json_response(status, {"error": error}, headers)


def _chunked(frames: Sequence[bytes]) -> _Response:
    pieces = [b"%x\r\n%s\r\n" % (len(frame), frame) for frame in frames] + [b"0\r\n\r\n"]
    headers = [
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("Cache-Control", "no-cache"),
        ("Transfer-Encoding", "chunked"),
    ]
    return _Response(200, headers, pieces, streamed=True)


def _malformed(streamed: bool) -> _Response:
    broken = b'{"id": "chatcmpl-fault", "choices": [{"index": 0, "message": '
    if streamed:
        return _chunked([b"data: " + broken + b"\n\n", b"data: [DONE]\n\n"])
    return _Response(200, [("Content-Type", "application/json"), ("Content-Length", str(len(broken)))], [broken])


def _text(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _words(text: str) -> int:
    """Token count used everywhere: whitespace-separated words, so tests can predict it."""
    return len(text.split())


def _split(text: str) -> list[str]:
    """Split into word-sized stream pieces whose concatenation is exactly ``text``."""
    return re.findall(r"\s*\S+|\s+$", text)


def fake_embedding(text: str) -> list[float]:
    """The deterministic vector the server returns for ``text`` (exact in float32)."""
    return [(b - 128) / 128 for b in hashlib.sha256(text.encode()).digest()[:EMBEDDING_DIM]]


# --------------------------------------------------------------------------- server


class FaultServer:
    """OpenAI-compatible HTTP server on a background thread whose failures a test scripts."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()  # set to free every waiting handler of this generation
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._queues: dict[str, deque[Fault]] = {}
        self._then: dict[str, Fault] = {}
        self._replies: list[_Reply] = []
        self._log: list[RecordedRequest] = []

    # lifecycle ---------------------------------------------------------------

    def start(self) -> FaultServer:
        """Listen (port 0 = any free port) and serve on a daemon thread; no-op if running."""
        with self._lock:
            if self._httpd is not None:
                return self
            try:
                httpd = _HTTPServer((self.host, self._port), _Handler)
            except OSError as exc:
                raise RuntimeError(
                    f"FaultServer could not listen on {self.host}:{self._port} ({exc}); "
                    "use port=0 to let the OS pick a free port"
                ) from exc
            httpd.fault_server = self
            self._release = threading.Event()
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": _POLL}, name="FaultServer", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Free hung handlers, close every connection and the socket, join threads; idempotent."""
        with self._lock:
            httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
            self._release.set()
        if httpd is None or thread is None:
            return
        httpd.shutdown()  # no more accepts once this returns
        with self._lock:
            conns = list(self._conns.items())
        for conn, _ in conns:  # wakes idle keep-alive handlers blocked reading the next request
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        for worker in [thread] + [worker for _, worker in conns]:
            worker.join(max(0.0, deadline - time.monotonic()))
        httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        httpd = self._httpd
        if httpd is None:
            raise RuntimeError("FaultServer is not running; call start() or use it as a context manager")
        return f"http://{self.host}:{httpd.server_address[1]}"

    @property
    def base_url(self) -> str:
        """What to pass as ``openai.OpenAI(base_url=...)``."""
        return self.url + "/v1"

    def reset(self) -> None:
        """Forget plan, replies and request log and free hung handlers, to reuse one server per test."""
        with self._lock:
            self._queues.clear()
            self._then.clear()
            self._replies.clear()
            self._log.clear()
            released, self._release = self._release, threading.Event()
        released.set()

    # scripting ---------------------------------------------------------------

    def plan(self, *faults: Fault, route: str = "chat", then: Fault | None = None) -> None:
        """Queue ``faults`` for the next requests on ``route``, one each, in order.

        Once the queue is used up the route answers with ``then``; ``then=None`` keeps the
        current fallback (``Fault.ok()`` after construction or ``reset()``). Calling
        ``plan`` again appends to the queue.
        """
        path = _route(route)
        for fault in faults + ((then,) if then is not None else ()):
            if not isinstance(fault, Fault):
                raise TypeError(f"plan() takes Fault values such as Fault.status(503), got {fault!r}")
        with self._lock:
            self._queues.setdefault(path, deque()).extend(faults)
            if then is not None:
                self._then[path] = then

    def reply(
        self,
        text: str | None = None,
        *,
        json: Any = None,
        tool_calls: Sequence[Mapping[str, Any]] | None = None,
        when: str | Callable[[dict], bool] | None = None,
        model: str | None = None,
        usage: Mapping[str, int] | None = None,
    ) -> None:
        """Script the chat answer instead of the echo; the most recently added matching reply wins.

        ``when``: None (every request), a substring of the last user message, or a
        callable taking the parsed request body. ``json`` answers ``json.dumps(json)``;
        ``tool_calls=[{"name": ..., "arguments": {...}}]`` answers with tool calls.
        ``usage`` overrides the word-count token numbers.
        """
        if text is not None and json is not None:
            raise ValueError("reply() takes text= or json=, not both")
        if text is None and json is None and not tool_calls:
            raise ValueError("reply() needs text=, json= or tool_calls=")
        if text is not None and not isinstance(text, str):
            raise ValueError(f"reply(text=...) must be a str, got {text!r}; use json= for objects")
        if when is not None and not isinstance(when, str) and not callable(when):
            raise ValueError(f"reply(when=...) must be None, a substring or a callable, got {when!r}")
        calls = []
        for call in tool_calls or ():
            if not isinstance(call, Mapping) or not isinstance(call.get("name"), str):
                raise ValueError(f"each tool call needs a str 'name', got {call!r}")
            arguments = call.get("arguments", {})
            calls.append((call["name"], arguments if isinstance(arguments, str) else _json.dumps(arguments)))
        usage = dict(usage or {})
        for key, value in usage.items():
            if key not in ("prompt_tokens", "completion_tokens", "total_tokens"):
                allowed = "prompt_tokens, completion_tokens, total_tokens"
                raise ValueError(f"reply(usage=...) keys are {allowed}; got {key!r}")
            _count(f"reply(usage={{{key!r}: ...}})", value, 0)
        content = _json.dumps(json) if json is not None else text
        with self._lock:
            self._replies.append(_Reply(content, tuple(calls), when, model, MappingProxyType(usage)))

    # request log -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since start or the last ``reset()``, in arrival order."""
        with self._lock:
            return list(self._log)

    def requests_to(self, route: str) -> list[RecordedRequest]:
        """The logged requests for one route (path or short name)."""
        path = _route(route)
        return [r for r in self.requests if r.path == path]

    # internals used by the handler -------------------------------------------

    def _record(self, request: RecordedRequest) -> int:
        with self._lock:
            self._log.append(request)
            return len(self._log)

    def _next_fault(self, path: str) -> Fault:
        with self._lock:
            queue = self._queues.get(path)
            return queue.popleft() if queue else self._then.get(path, Ok())

    def _answer(self, path: str, body: dict, seq: int) -> _Response:
        if path == ROUTES["chat"]:
            return self._chat(body, seq)
        if path == ROUTES["embeddings"]:
            return _embeddings(body)
        with self._lock:
            models = dict.fromkeys([DEFAULT_MODEL] + [r.model for r in self._replies if r.model])
        data = [{"id": m, "object": "model", "created": CREATED, "owned_by": "fault-server"} for m in models]
        return _json_response(200, {"object": "list", "data": data})

    def _chat(self, body: dict, seq: int) -> _Response:
        raw = body.get("messages")
        messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        last_user = next((_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        with self._lock:
            replies = list(self._replies)
        reply = next((r for r in reversed(replies) if r.matches(body, last_user)), None)
        content = reply.content if reply else f"echo: {last_user}"
        calls = [
            {"id": f"call_{seq}_{i}", "type": "function", "function": {"name": name, "arguments": args}}
            for i, (name, args) in enumerate(reply.tool_calls if reply else ())
        ]
        model = (reply and reply.model) or str(body.get("model") or DEFAULT_MODEL)
        prompt = sum(_words(_text(m.get("content"))) for m in messages)
        completion = _words(content or "") + sum(_words(c["function"]["arguments"]) for c in calls)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, **(reply.usage if reply else {})}
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        finish = "tool_calls" if calls else "stop"
        head = {"id": f"chatcmpl-fault-{seq}", "created": CREATED, "model": model}
        if body.get("stream") is not True:
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            return _json_response(200, {**head, "object": "chat.completion", "choices": [choice], "usage": usage})

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        events = [chunk({"role": "assistant", "content": "" if content is not None else None})]
        events += [chunk({"content": piece}) for piece in _split(content or "")]
        for i, call in enumerate(calls):
            opening = {"index": i, **call, "function": {**call["function"], "arguments": ""}}
            events.append(chunk({"tool_calls": [opening]}))
            args = _split(call["function"]["arguments"])
            events += [chunk({"tool_calls": [{"index": i, "function": {"arguments": a}}]}) for a in args]
        events.append(chunk({}, finish))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            events.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        return _chunked([b"data: %s\n\n" % _json.dumps(e).encode() for e in events] + [b"data: [DONE]\n\n"])


def _embeddings(body: dict) -> _Response:
    raw = body.get("input")
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    texts = [item if isinstance(item, str) else _json.dumps(item) for item in items]
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for i, text in enumerate(texts):
        vector: Any = fake_embedding(text)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{EMBEDDING_DIM}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(_words(t) for t in texts)
    model = str(body.get("model") or DEFAULT_MODEL)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json_response(200, {"object": "list", "data": data, "model": model, "usage": usage})


def _route(route: str) -> str:
    if route in ROUTES.values():
        return route
    if route in ROUTES:
        return ROUTES[route]
    allowed = ", ".join(f"{name!r} ({path})" for name, path in ROUTES.items())
    raise ValueError(f"unknown route {route!r}; use one of {allowed}")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() joins handlers itself, with a deadline
    request_queue_size = 64
    fault_server: FaultServer

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup that can stall without a network.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], _DISCONNECTS):
            return  # the client went away: expected in fault tests
        print(f"FaultServer: error while serving {client_address}:", file=sys.stderr)
        traceback.print_exc()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the openai SDK reuses connections
    disable_nagle_algorithm = True  # answers go out in several writes: Nagle + delayed ACK cost 40 ms each
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.fault_server._lock:
            self.server.fault_server._conns[self.connection] = threading.current_thread()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.fault_server._lock:
                self.server.fault_server._conns.pop(self.connection, None)

    def log_message(self, format: str, *args: Any) -> None:
        """No access log: tests read ``server.requests`` instead; failures go to stderr."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Unparseable requests get an OpenAI-style JSON error, like every other answer."""
        self.close_connection = True
        self._send_all(_error(code, f"{message or 'Bad request'}; FaultServer could not parse the request"))

    def _serve(self) -> None:
        self._head_sent = False
        try:
            self._dispatch()
        except _DISCONNECTS:
            self.close_connection = True
        except Exception:
            print(f"FaultServer: error answering {self.command} {self.path}:", file=sys.stderr)
            traceback.print_exc()
            self.close_connection = True
            if not self._head_sent:
                try:
                    self._send_all(_error(500, "FaultServer internal error; see the test's stderr"))
                except OSError:
                    pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def _dispatch(self) -> None:
        fs = self.server.fault_server
        release = fs._release
        arrived = time.monotonic()
        path = self.path.split("?", 1)[0]
        length = self.headers.get("Content-Length", "0")
        if not (length.isascii() and length.isdigit()) or "Transfer-Encoding" in self.headers:
            self.close_connection = True
            self._send_all(_error(400, "FaultServer needs a request body framed by a valid Content-Length"))
            return
        raw = self.rfile.read(int(length))
        if len(raw) < int(length):  # the client went away mid-body
            self.close_connection = True
            return
        try:
            body = _json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = MappingProxyType({k.lower(): v for k, v in self.headers.items()})

        def record(fault: Fault | None) -> int:
            return fs._record(RecordedRequest(self.command, path, headers, body, raw, arrived, fault))

        if _METHODS.get(path) != self.command:
            record(None)
            known = ", ".join(f"{method} {p}" for p, method in _METHODS.items())
            self._send_all(_error(404, f"Unknown route {self.command} {path}; FaultServer answers {known}"))
            return
        if self.command == "POST" and not isinstance(body, dict):
            record(None)
            self._send_all(_error(400, "Request body must be a JSON object"))
            return
        fault = fs._next_fault(path)
        seq = record(fault)
        data = body if isinstance(body, dict) else {}
        streamed = path == ROUTES["chat"] and data.get("stream") is True
        self._apply(fault, release, lambda: fs._answer(path, data, seq), streamed)

    def _apply(self, fault: Fault, release: threading.Event, build: Callable[[], _Response], streamed: bool) -> None:
        if isinstance(fault, Hang):
            self._wait(release, None)
            self._abort()
            return
        if isinstance(fault, Ok) and fault.delay and self._wait(release, fault.delay):
            self._abort()
            return
        if isinstance(fault, Status):
            response = fault.response()
        elif isinstance(fault, Malformed):
            response = _malformed(streamed)
        else:
            response = build()
        head = self._head(response)
        if isinstance(fault, Reset):
            self._send((head + b"".join(response.pieces))[: fault.after_bytes])
            self._abort(rst=True)
        elif isinstance(fault, Trickle):
            self._send(head)
            body = b"".join(response.pieces)
            for start in range(0, len(body), fault.chunk_size):
                if self._wait(release, fault.interval):
                    self._abort()
                    return
                self._send(body[start : start + fault.chunk_size])
        elif isinstance(fault, CutStream):
            # Never the "[DONE]" event nor the terminating zero chunk: the stream must end broken.
            kept = min(fault.after_chunks, len(response.pieces) - 2) if response.streamed else 0
            self._send(head + b"".join(response.pieces[:kept]))
            self._abort()
        else:
            self._send(head)
            for piece in response.pieces:
                self._send(piece)

    def _head(self, response: _Response) -> bytes:
        reason = self.responses.get(response.status, ("Error",))[0]
        lines = [f"HTTP/1.1 {response.status} {reason}"] + [f"{k}: {v}" for k, v in response.headers]
        if self.close_connection:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(self, data: bytes) -> None:
        self._head_sent = True
        self.wfile.write(data)  # unbuffered: each call reaches the socket at once

    def _send_all(self, response: _Response) -> None:
        self._send(self._head(response) + b"".join(response.pieces))

    def _wait(self, release: threading.Event, timeout: float | None) -> bool:
        """Wait ``timeout`` s (None: forever); True if reset()/stop() or the client's leaving cut it short."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _POLL if end is None else min(_POLL, end - time.monotonic())
            if step <= 0:
                return False
            if release.wait(step) or self._client_gone():
                return True

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True

    def _abort(self, rst: bool = False) -> None:
        """Close the connection now: FIN, or RST when ``rst`` (SO_LINGER 0)."""
        self.close_connection = True
        try:
            if rst:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drops the makefile reference so close() really closes the socket
            self.connection.close()
        except OSError:
            pass
