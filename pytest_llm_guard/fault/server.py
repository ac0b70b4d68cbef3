"""The HTTP server: lifecycle, the fault plan, scripted replies, the request log, faults applied.

It knows HTTP and faults, not any API: every answer, error body and route comes from
the dialects registered in ``dialect.py`` (see the package docstring).
"""

from __future__ import annotations

import json as _json
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
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qsl

from .dialect import Call, Dialect, Reply, Response, RouteTable, chunk, registered
from .faults import CutStream, Fault, Hang, Malformed, Ok, Paced, Reset, Stall, Status, StreamError, Trickle
from .http11 import BadRequest, read_head, response_head
from .prefixes import Prefix, split, unknown

__all__ = ["FaultServer", "RecordedRequest"]

_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_POLL = 0.05  # how often waiting handlers look for reset()/stop() or a departed client
_NO_QUERY: Mapping[str, str] = MappingProxyType({})
_OK = Ok()  # the fallback of every route until plan(then=...)
_GENERATING = "*generating*"  # the plan made without a route: every route that asks a model for an answer


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it, so tests can assert on what the client sent."""

    method: str
    path: str  # without the query
    headers: Mapping[str, str]  # lower-case keys, read-only
    json: Any  # parsed body, or None when absent or not JSON
    body: bytes
    time: float  # time.monotonic() at arrival
    fault: Fault | None  # None for requests turned down before the plan (404, bad JSON)
    route: str | None = None  # the name ("chat", ...) of the route whose path this is; None for other paths
    query: Mapping[str, str] = field(default_factory=lambda: _NO_QUERY)  # read-only


class FaultServer:
    """API-compatible HTTP server on a background thread whose failures a test scripts."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, on_request: Callable[[RecordedRequest], None] | None = None
    ) -> None:
        """``on_request`` is called with each request as it is logged (on a handler thread), before its answer."""
        self.host = host
        self.on_request = on_request
        self._port = port
        self._table = RouteTable(registered())
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()  # set to free every waiting handler of this generation
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._queues: dict[str, deque[Fault]] = {}  # by route name
        self._then: dict[str, Fault] = {}
        self._replies: tuple[Reply, ...] = ()  # replaced, never mutated: handlers read it without the lock
        self._log: list[RecordedRequest] = []
        self._prefixed: dict[str, int] = {}  # requests seen under each fault prefix (prefixes.py)
        self._seconds: dict[str, tuple[int, int]] = {}  # per fault prefix: the current second, its requests

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
            self._replies = ()
            self._log.clear()
            self._prefixed.clear()
            self._seconds.clear()
            released, self._release = self._release, threading.Event()
        released.set()

    # scripting ---------------------------------------------------------------

    def plan(self, *faults: Fault, route: str | None = None, then: Fault | None = None) -> None:
        """Queue ``faults`` for the next requests on ``route``, one each, in order.

        ``route`` is a route's short name or a path it answers; without one, the plan is for
        the next requests asking a model for an answer, whichever API they speak (OpenAI's
        chat completions, Anthropic's messages). A route's own plan goes first. Once the
        queue is used up the route answers with ``then``; ``then=None`` keeps the current
        fallback (``Fault.ok()`` after construction or ``reset()``). Calling ``plan`` again
        appends to the queue.
        """
        name = _GENERATING if route is None else self._table.name_of(route)
        for fault in faults + ((then,) if then is not None else ()):
            if not isinstance(fault, Fault):
                raise TypeError(f"plan() takes Fault values such as Fault.status(503), got {fault!r}")
        with self._lock:
            self._queues.setdefault(name, deque()).extend(faults)
            if then is not None:
                self._then[name] = then

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
        reply = Reply.scripted(text, json=json, tool_calls=tool_calls, when=when, model=model, usage=usage)
        with self._lock:
            self._replies = (*self._replies, reply)

    # request log -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since start or the last ``reset()``, in arrival order."""
        with self._lock:
            return list(self._log)

    def requests_to(self, route: str) -> list[RecordedRequest]:
        """The logged requests for one route (its short name, or a path it answers)."""
        name = self._table.name_of(route)
        return [r for r in self.requests if r.route == name]

    # internals used by the handler -------------------------------------------

    def _turn_down(self, request: RecordedRequest) -> None:
        """Log a request answered without consulting the plan."""
        with self._lock:
            self._log.append(request)
        if self.on_request is not None:
            self.on_request(request)

    def _admit(
        self, route: str, prefix: Prefix | None, record: Callable[[Fault], RecordedRequest]
    ) -> tuple[Fault, int]:
        """Take the fault (the path prefix's, else the route's next planned one) and log the request with
        it in one step, so log order is plan order."""
        with self._lock:
            if prefix is not None:
                self._prefixed[prefix.text] = seen = self._prefixed.get(prefix.text, 0) + 1
                second, in_second = self._seconds.get(prefix.text, (0, 0))
                now = int(time.time())
                in_second = in_second + 1 if second == now else 1
                self._seconds[prefix.text] = (now, in_second)
                fault = prefix.fault_for(seen, in_second)
            else:
                fault = self._planned(route)
            request = record(fault)
            self._log.append(request)
            seq = len(self._log)
        if self.on_request is not None:
            self.on_request(request)
        return fault, seq

    def _planned(self, route: str) -> Fault:
        """The route's next planned fault, else (for a route that generates) the plan made without a route."""
        names = (route, _GENERATING) if route in self._table.generating else (route,)
        for name in names:
            queue = self._queues.get(name)
            if queue:
                return queue.popleft()
        return next((self._then[name] for name in names if name in self._then), _OK)


class _HTTPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    block_on_close = False  # stop() joins handlers itself, with a deadline
    request_queue_size = 64
    fault_server: FaultServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], _DISCONNECTS):
            return  # the client went away: expected in fault tests
        print(f"FaultServer: error while serving {client_address}:", file=sys.stderr)
        traceback.print_exc()


class _Handler(socketserver.StreamRequestHandler):
    """HTTP/1.1 with keep-alive, as the SDKs reuse connections; requests are read by ``http11.py``."""

    disable_nagle_algorithm = True  # TCP_NODELAY: streams and trickles go out in pieces, each at once
    server: _HTTPServer
    command = path = ""
    headers: dict[str, str]
    close_connection = False
    _dialect: Dialect  # whose error format this request's answers use: its route's, else the default

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

    def handle(self) -> None:
        while not self.close_connection:
            self._serve()

    def _serve(self) -> None:
        self._head_sent = False
        self._dialect = self.server.fault_server._table.default
        try:
            head = read_head(self.rfile)
            if head is None:
                self.close_connection = True
                return
            self.command, self.path, self.headers = head.method, head.target, head.headers
            self.close_connection = not head.keep_alive
            if head.expects_continue:  # an interim answer: the real one is still to come
                self.connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._dispatch()
        except _DISCONNECTS:
            self.close_connection = True
        except BadRequest as exc:
            self.close_connection = True
            self._refuse(exc.status, f"{exc}; FaultServer could not parse the request")
        except Exception:
            print(f"FaultServer: error answering {self.command} {self.path}:", file=sys.stderr)
            traceback.print_exc()
            self.close_connection = True
            if not self._head_sent:
                try:
                    self._refuse(500, "FaultServer internal error; see the test's stderr")
                except OSError:
                    pass

    def _dispatch(self) -> None:
        fs = self.server.fault_server
        release = fs._release
        arrived = time.monotonic()
        path, _, query_string = self.path.partition("?")
        length = self.headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()) or "transfer-encoding" in self.headers:
            self.close_connection = True
            self._refuse(400, "FaultServer needs a request body framed by a valid Content-Length")
            return
        raw = self.rfile.read(int(length)) if length != "0" else b""
        if len(raw) < int(length):  # the client went away mid-body
            self.close_connection = True
            return
        try:
            body = _json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = MappingProxyType(self.headers)
        query = MappingProxyType(dict(parse_qsl(query_string, keep_blank_values=True))) if query_string else _NO_QUERY
        try:
            prefix, api_path = split(path)
        except ValueError as exc:
            prefix, api_path, bad_prefix = None, path, f"{path.split('/')[1]} is not a valid fault prefix: {exc}"
        else:
            bad_prefix = None
        found = None if bad_prefix else fs._table.find(self.command, api_path)
        name = found[0].name if found else fs._table.name_for_path(api_path)  # a wrong method still names it

        def record(fault: Fault | None) -> RecordedRequest:
            return RecordedRequest(self.command, path, headers, body, raw, arrived, fault, name, query)

        if found is None:
            fs._turn_down(record(None))
            self._refuse(404, bad_prefix or self._unknown_route(path))
            return
        route, self._dialect, params = found
        call = Call(self.command, api_path, params, query, headers, body if isinstance(body, dict) else {}, fs._replies)
        refusal = route.check(call) if route.check else None
        if refusal is None and self.command == "POST" and not isinstance(body, dict):
            refusal = self._dialect.error(400, "Request body must be a JSON object", ())
        if refusal is not None:
            fs._turn_down(record(None))
            self._send_all(refusal)
            return
        fault, seq = fs._admit(route.name, prefix, record)
        self._apply(fault, release, lambda: route.answer(call, seq), call)

    def _unknown_route(self, path: str) -> str:
        table = self.server.fault_server._table
        segment, _, rest = path.removeprefix("/").partition("/")
        if rest and table.find(self.command, "/" + rest) is not None:
            return f"Unknown route {self.command} {path}: {unknown(segment)}"
        return (
            f"Unknown route {self.command} {path}; FaultServer answers {table.describe()}, "
            "each also behind a fault prefix such as /hang (python -m pytest_llm_guard.fault --help lists them)"
        )

    def _apply(self, fault: Fault, release: threading.Event, build: Callable[[], Response], call: Call) -> None:
        if isinstance(fault, Hang):
            self._wait(release, None)
            self._abort()
            return
        if isinstance(fault, Ok) and fault.delay and self._wait(release, fault.delay):
            self._abort()
            return
        if isinstance(fault, Status):
            response = self._dialect.error(fault.code, fault.error_message, fault.response_headers())
        elif isinstance(fault, Malformed):
            response = self._dialect.malformed(call)
        elif isinstance(fault, StreamError):
            response = build()
            if response.streamed:  # never the stream's last event: the error event takes its place
                kept = response.pieces[: min(fault.after_chunks, len(response.pieces) - 2)]
                failure = chunk(self._dialect.stream_error(fault.code, fault.error_message))
                response.pieces = [*kept, failure, response.pieces[-1]]
            else:
                response = self._dialect.error(fault.code, fault.error_message, ())
        else:
            response = build()
            if isinstance(fault, Ok):
                response.headers.extend(fault.headers)
        head = self._head(response)
        if isinstance(fault, Reset):
            self._send((head + b"".join(response.pieces))[: fault.after_bytes])
            self._abort(rst=True)
        elif isinstance(fault, Trickle):
            body = b"".join(response.pieces)
            if fault.headers:
                body = head + body
            else:
                self._send(head)
            for start in range(0, len(body), fault.chunk_size):
                if self._wait(release, fault.interval):
                    self._abort()
                    return
                self._send(body[start : start + fault.chunk_size])
        elif isinstance(fault, Stall):
            # Never the whole answer: a stream keeps its last event and terminating chunk, a body all of it.
            kept = min(fault.after_chunks, len(response.pieces) - (2 if response.streamed else 1))
            self._send(head + b"".join(response.pieces[:kept]))
            self._wait(release, None)
            self._abort()
        elif isinstance(fault, Paced):
            self._send(head)
            for piece in response.pieces:
                if self._wait(release, fault.interval):
                    self._abort()
                    return
                self._send(piece)
        elif isinstance(fault, CutStream):
            # Never the stream's last event nor the terminating zero chunk: the stream must end broken.
            kept = min(fault.after_chunks, len(response.pieces) - 2) if response.streamed else 0
            self._send(head + b"".join(response.pieces[:kept]))
            self._abort()
        elif response.streamed:
            self._send(head)  # then each event as it would come from a model
            for piece in response.pieces:
                self._send(piece)
        else:
            self._send(head + b"".join(response.pieces))  # one write: no partial answers to wait on

    def _head(self, response: Response) -> bytes:
        return response_head(response.status, response.headers, self.close_connection)

    def _send(self, data: bytes) -> None:
        self._head_sent = True
        self.connection.sendall(data)  # each call reaches the socket at once

    def _send_all(self, response: Response) -> None:
        self._send(self._head(response) + b"".join(response.pieces))

    def _refuse(self, status: int, message: str) -> None:
        """Answer an error in the dialect's format, no fault applied."""
        self._send_all(self._dialect.error(status, message, ()))

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
