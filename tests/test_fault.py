"""Tests for pytest_llm_guard.fault: the fault-injecting OpenAI-compatible server.

They drive the server with the real openai SDK (and httpx2 where raw HTTP matters),
so a fault here is exactly what a user's suite will see. Part of the end-to-end set that
measures wall-clock time (see ``test_end_to_end.py``): the server's hangs, trickles and
delays are real time, so the tests about them assert real durations (lower bounds where
a slow machine could only make them longer).
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai
import pytest

from pytest_llm_guard.fault import DEFAULT_MODEL, Fault, FaultServer, fake_embedding
from pytest_llm_guard.fault import server as server_module

USER = [{"role": "user", "content": "hello big world"}]


@pytest.fixture
def client(server: FaultServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0, timeout=5) as c:
        yield c


def chat(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="gpt-test", messages=kwargs.pop("messages", USER), **kwargs)


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll a condition with a hard deadline (for effects on server threads)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- answers


def test_chat_echo_is_typed_and_usage_counts_words(client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, *USER]
    result = chat(client, messages=messages)
    assert result.object == "chat.completion"
    assert result.model == "gpt-test"
    assert result.created == 1_700_000_000
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == "echo: hello big world"
    assert result.choices[0].finish_reason == "stop"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (5, 4, 9)


def test_chat_accepts_content_parts_and_missing_model(server: FaultServer) -> None:
    parts = [{"type": "text", "text": "part one"}, {"type": "image_url"}]
    body = {"messages": [{"role": "user", "content": parts}]}
    response = httpx2.post(server.url + "/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: part one"
    assert response.json()["model"] == DEFAULT_MODEL


def test_stream_chunks_in_order_with_usage(client: openai.OpenAI) -> None:
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 4
    assert "".join(pieces) == "echo: hello big world"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 3 + 4


def test_stream_is_chunked_sse(server: FaultServer) -> None:
    body = {"model": "m", "messages": USER, "stream": True}
    with httpx2.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_keep_alive_reuses_the_connection(server: FaultServer) -> None:
    with httpx2.Client() as http:
        addresses = []
        for _ in range(3):
            response = http.post(server.url + "/v1/chat/completions", json={"messages": USER})
            assert response.status_code == 200
            addresses.append(response.extensions["network_stream"].get_extra_info("client_addr"))
    assert len(set(addresses)) == 1


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="emb", input=["a b", "c"], encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1]
    assert floats.data[0].embedding == fake_embedding("a b")
    assert floats.model == "emb" and floats.usage.prompt_tokens == 3
    decoded = client.embeddings.create(model="emb", input="a b")  # SDK default: base64, decoded
    assert decoded.data[0].embedding == fake_embedding("a b")
    assert len(decoded.data[0].embedding) == 8


def test_models_list_includes_scripted_models(server: FaultServer, client: openai.OpenAI) -> None:
    server.reply("hi", model="gpt-scripted")
    assert [m.id for m in client.models.list()] == [DEFAULT_MODEL, "gpt-scripted"]


def test_unknown_route_is_openai_style_404(server: FaultServer, client: openai.OpenAI) -> None:
    response = httpx2.get(server.url + "/v1/nope")
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "code"} and "/v1/chat/completions" in error["message"]
    assert httpx2.get(server.url + "/v1/chat/completions").status_code == 404  # wrong method
    assert [(r.method, r.fault) for r in server.requests_to("chat")] == [("GET", None)]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="m", prompt="x")


def test_garbage_input_never_kills_the_server(server: FaultServer, client: openai.OpenAI) -> None:
    bad = httpx2.post(server.url + "/v1/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert httpx2.post(server.url + "/v1/embeddings", content=b"[1, 2]").status_code == 400
    with socket.create_connection((server.host, int(server.url.rsplit(":", 1)[1])), timeout=2) as raw:
        raw.sendall(b"\x00\x01garbage\r\n\r\n")
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
    chunked = httpx2.post(server.url + "/v1/chat/completions", content=iter([b"{}"]))  # no Content-Length
    assert chunked.status_code == 400 and "Content-Length" in chunked.json()["error"]["message"]
    logged = server.requests_to("chat")[0]
    assert logged.json is None and logged.body == b"{not json" and logged.fault is None
    assert chat(client).choices[0].message.content == "echo: hello big world"


def test_handler_exception_answers_500_and_logs(
    server: FaultServer, client: openai.OpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    def explode(body: dict) -> bool:
        raise RuntimeError("boom in when")

    server.reply("never", when=explode)
    with pytest.raises(openai.InternalServerError):
        chat(client)
    assert "boom in when" in capsys.readouterr().err
    server.reset()
    assert chat(client).choices[0].message.content.startswith("echo:")


def raw_exchange(server: FaultServer, data: bytes) -> bytes:
    """Send bytes on a fresh connection; everything the server sends until it closes the connection."""
    with socket.create_connection((server.host, int(server.url.rsplit(":", 1)[1])), timeout=2) as raw:
        raw.sendall(data)
        received = b""
        while chunk := raw.recv(65536):  # a kept-alive connection would time out here
            received += chunk
    return received


def chat_request(*headers: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    body = json.dumps({"messages": USER}).encode()
    head = [b"POST /v1/chat/completions " + version, *headers, b"Content-Length: %d" % len(body)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    "request_bytes",
    [chat_request(b"Connection: close"), chat_request(version=b"HTTP/1.0")],
    ids=["connection-close", "http-1.0"],
)
def test_connection_ends_after_the_answer_when_the_client_asks(server: FaultServer, request_bytes: bytes) -> None:
    received = raw_exchange(server, request_bytes)
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close\r\n" in received
    assert received.endswith(b"}")


def test_expect_100_continue_is_answered_before_the_body(server: FaultServer) -> None:
    received = raw_exchange(server, chat_request(b"Expect: 100-continue", b"Connection: close"))
    assert received.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /v1/models HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"OPTIONS /v1/models HTTP/1.1\r\n\r\n", 501),
        (b"GET /v1/models HTTP/2.0\r\n\r\n", 505),
        (b"GET /v1/models HTTP/1.1\r\n" + b"x-many: 1\r\n" * 101 + b"\r\n", 431),
    ],
    ids=["header-without-colon", "unsupported-method", "http-2", "too-many-headers"],
)
def test_unreadable_requests_get_a_json_error_and_a_closed_connection(
    server: FaultServer, request_bytes: bytes, status: int
) -> None:
    head, _, body = raw_exchange(server, request_bytes).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"\r\nConnection: close" in head
    assert "could not parse the request" in json.loads(body)["error"]["message"]
    assert server.requests == []


def test_a_healthy_answer_is_one_write_a_stream_one_per_event(
    server: FaultServer, client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[Any, bytes]] = []
    send = server_module._Handler._send

    def counting_send(handler: Any, data: bytes) -> None:
        writes.append((handler, data))
        send(handler, data)

    def by_the_handler_that_answered(head: bytes) -> list[bytes]:
        """Only the writes of the connection that answered (a handler of an earlier test may still write)."""
        answering = next(h for h, data in writes if data.startswith(head))
        return [data for h, data in writes if h is answering]

    monkeypatch.setattr(server_module._Handler, "_send", counting_send)
    chat(client)
    answer = by_the_handler_that_answered(b"HTTP/1.1 200 OK\r\nContent-Type: application/json")
    assert len(answer) == 1 and answer[0].endswith(b"}")
    writes.clear()
    events = list(chat(client, stream=True))
    streamed = by_the_handler_that_answered(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream")
    assert len(streamed) == 1 + len(events) + 2  # head, each event, "[DONE]", the terminating chunk


# ----------------------------------------------------------------------------- scripted replies


def test_reply_text_json_and_latest_match_wins(server: FaultServer, client: openai.OpenAI) -> None:
    server.reply("general")
    server.reply(json={"city": "Paris"}, when="weather")
    server.reply("callable", when=lambda body: body.get("temperature") == 0.5)
    assert chat(client).choices[0].message.content == "general"
    weather = chat(client, messages=[{"role": "user", "content": "the weather?"}])
    assert json.loads(weather.choices[0].message.content) == {"city": "Paris"}
    assert chat(client, temperature=0.5).choices[0].message.content == "callable"


def test_reply_model_and_usage_override(server: FaultServer, client: openai.OpenAI) -> None:
    server.reply("one two three", model="other-model", usage={"prompt_tokens": 100})
    result = chat(client)
    assert result.model == "other-model"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (100, 3, 103)


def test_reply_tool_calls(server: FaultServer, client: openai.OpenAI) -> None:
    server.reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}, {"name": "noop"}])
    choice = chat(client).choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "noop"]
    assert calls[0].type == "function" and calls[0].id != calls[1].id
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}


def test_reply_tool_calls_streamed(server: FaultServer, client: openai.OpenAI) -> None:
    server.reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}])
    with client.chat.completions.stream(model="m", messages=USER) as stream:
        deltas = [e for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 1
    call = final.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "C"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_reply_validation() -> None:
    server = FaultServer()
    with pytest.raises(ValueError, match="needs text="):
        server.reply()
    with pytest.raises(ValueError, match="not both"):
        server.reply("a", json={})
    with pytest.raises(ValueError, match="usage"):
        server.reply("a", usage={"tokens": 1})
    with pytest.raises(ValueError, match="name"):
        server.reply(tool_calls=[{"arguments": {}}])


# ----------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (400, openai.BadRequestError),
        (401, openai.AuthenticationError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_status_maps_to_sdk_exceptions(server: FaultServer, client: openai.OpenAI, code: int, error: type) -> None:
    server.plan(Fault.status(code))
    with pytest.raises(error) as info:
        chat(client)
    assert info.value.status_code == code
    assert info.value.body["type"] and info.value.body["code"]


def test_status_headers_and_message(server: FaultServer, client: openai.OpenAI) -> None:
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    server.plan(
        Fault.status(429, retry_after=7, retry_after_ms=1500, headers={"x-custom": "1"}, message="slow down"),
        Fault.status(503, retry_after=date, should_retry=False),
    )
    with pytest.raises(openai.RateLimitError) as info:
        chat(client)
    headers = info.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"], headers["x-custom"]) == ("7", "1500", "1")
    assert "slow down" in info.value.message
    with pytest.raises(openai.InternalServerError) as info:
        chat(client)
    assert info.value.response.headers["retry-after"] == date
    assert info.value.response.headers["x-should-retry"] == "false"


def test_should_retry_header_drives_sdk_retries(server: FaultServer) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=1, timeout=5) as retrying:
        server.plan(Fault.status(400, should_retry=True, retry_after_ms=1))
        assert chat(retrying).choices[0].message.content.startswith("echo:")
        assert len(server.requests) == 2
        server.reset()
        server.plan(Fault.status(503, should_retry=False))
        with pytest.raises(openai.InternalServerError):
            chat(retrying)
        assert len(server.requests) == 1


@pytest.mark.parametrize("after_bytes", [0, 20, 200])
def test_reset_is_a_connection_error(server: FaultServer, client: openai.OpenAI, after_bytes: int) -> None:
    server.plan(Fault.reset(after_bytes))
    with pytest.raises(openai.APIConnectionError):
        chat(client)
    assert chat(client).choices[0].message.content.startswith("echo:")


def test_reset_sends_the_requested_prefix(server: FaultServer) -> None:
    server.plan(Fault.reset(after_bytes=12))
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection((server.host, port), timeout=2) as raw:
        body = json.dumps({"messages": USER}).encode()
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        raw.sendall(head + body)
        received = b""
        with pytest.raises(ConnectionResetError):
            while chunk := raw.recv(100):
                received += chunk
    assert received in (b"", b"HTTP/1.1 200")  # a RST may discard what was not read yet


def test_malformed_body_and_stream(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.malformed(), Fault.malformed())
    with pytest.raises(ValueError):
        chat(client)
    with pytest.raises(ValueError):
        list(chat(client, stream=True))
    response = httpx2.post(server.url + "/v1/chat/completions", json={"messages": USER})
    assert response.status_code == 200  # plan used up


def test_malformed_is_200_json(server: FaultServer) -> None:
    server.plan(Fault.malformed())
    response = httpx2.post(server.url + "/v1/chat/completions", json={"messages": USER})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    with pytest.raises(ValueError):
        response.json()


def test_cut_stream_errors_mid_iteration(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.cut_stream(2), Fault.cut_stream(1000))
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in chat(client, stream=True):
            received.append(chunk)
    assert len(received) == 2
    with pytest.raises(openai.APIConnectionError):  # never reaches [DONE], however large
        list(chat(client, stream=True))


def test_cut_stream_on_plain_request_drops_the_body(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.cut_stream(1))
    with pytest.raises(openai.APIConnectionError):
        chat(client)


def test_ok_delay(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.ok(delay=0.15))
    start = time.monotonic()
    chat(client)
    assert time.monotonic() - start >= 0.15


def test_trickle_sends_headers_then_body_slowly(server: FaultServer) -> None:
    interval, chunk_size = 0.05, 100
    server.plan(Fault.trickle(interval=interval, chunk_size=chunk_size))
    start = time.monotonic()
    with httpx2.stream("POST", server.url + "/v1/chat/completions", json={"messages": USER}) as response:
        headers_at = time.monotonic()
        arrivals = [(time.monotonic(), len(piece)) for piece in response.iter_raw()]
        length = int(response.headers["content-length"])
    end = time.monotonic()
    chunks = -(-length // chunk_size)
    assert chunks >= 3 and sum(n for _, n in arrivals) == length
    assert len(arrivals) >= 2
    assert end - start >= chunks * interval
    assert end - headers_at >= (chunks - 1) * interval


def test_trickle_defeats_a_per_read_timeout(server: FaultServer) -> None:
    server.plan(Fault.trickle(interval=0.05, chunk_size=50))
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=0.25) as impatient:
        start = time.monotonic()
        assert chat(impatient).choices[0].message.content == "echo: hello big world"
    assert time.monotonic() - start > 0.25


def test_trickle_stops_when_the_client_leaves(server: FaultServer) -> None:
    server.plan(Fault.trickle(interval=0.05, chunk_size=1))  # would take many seconds
    with httpx2.stream("POST", server.url + "/v1/chat/completions", json={"messages": USER}) as response:
        assert response.status_code == 200
    wait_until(lambda: not server._conns)


def test_hang_times_out_client(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(then=Fault.hang())
    start = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        chat(client, timeout=0.2)
    assert time.monotonic() - start >= 0.2
    assert server.requests[0].fault == Fault.hang()
    wait_until(lambda: not server._conns)  # the handler noticed the client gave up


def test_hang_blocks_nobody_and_reset_releases_it(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.hang())
    outcome: list[BaseException] = []

    def hung_call() -> None:
        try:
            chat(client)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=hung_call, daemon=True)
    thread.start()
    wait_until(lambda: len(server.requests) == 1)
    assert chat(client).choices[0].message.content.startswith("echo:")  # served meanwhile
    server.reset()
    thread.join(2)
    assert not thread.is_alive()
    assert isinstance(outcome[0], openai.APIConnectionError)


def test_stop_is_prompt_with_hung_requests_and_idempotent() -> None:
    server = FaultServer().start()
    server.plan(then=Fault.hang())
    errors: list[BaseException] = []

    def call() -> None:
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=10) as c:
            try:
                chat(c)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=call, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: len(server.requests) == 3)
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 1.0
    for t in threads:
        t.join(2)
    assert len(errors) == 3 and all(isinstance(e, openai.APIConnectionError) for e in errors)
    server.stop()
    with pytest.raises(RuntimeError, match="not running"):
        server.base_url  # noqa: B018


def test_stop_closes_idle_keep_alive_connections() -> None:
    with FaultServer() as server, httpx2.Client() as http:
        assert http.post(server.url + "/v1/chat/completions", json={"messages": USER}).status_code == 200
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 1.0


# ----------------------------------------------------------------------------- plan


def test_plan_order_then_fallback(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.status(503), Fault.status(429))
    with pytest.raises(openai.InternalServerError):
        chat(client)
    with pytest.raises(openai.RateLimitError):
        chat(client)
    assert chat(client).choices[0].message.content.startswith("echo:")
    assert [r.fault for r in server.requests] == [Fault.status(503), Fault.status(429), Fault.ok()]


def test_plan_then_replaces_fallback_and_routes_are_separate(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.ok(), then=Fault.status(500))
    server.plan(Fault.status(401), route="/v1/embeddings")
    chat(client)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            chat(client)
    with pytest.raises(openai.AuthenticationError):
        client.embeddings.create(model="e", input="x")
    client.embeddings.create(model="e", input="x")
    server.plan(Fault.status(404), route="models")
    with pytest.raises(openai.NotFoundError):
        client.models.list()
    assert len(server.requests_to("embeddings")) == 2 and len(server.requests_to("/v1/models")) == 1


def test_plan_validates_route_and_faults(server: FaultServer) -> None:
    with pytest.raises(ValueError, match="'chat'.*'embeddings'.*'models'"):
        server.plan(Fault.ok(), route="completions")
    with pytest.raises(ValueError, match="unknown route"):
        server.requests_to("/v1/nope")
    with pytest.raises(TypeError, match="Fault"):
        server.plan(503)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Fault"):
        server.plan(then="hang")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Fault.ok(-1),
        lambda: Fault.ok(float("nan")),
        lambda: Fault.status(200),
        lambda: Fault.status(600),
        lambda: Fault.status(True),  # type: ignore[arg-type]
        lambda: Fault.status(429, retry_after=-1),
        lambda: Fault.status(429, retry_after_ms=float("inf")),
        lambda: Fault.status(429, should_retry="yes"),  # type: ignore[arg-type]
        lambda: Fault.status(500, headers={"x-a": "1\r\nx-b: 2"}),
        lambda: Fault.reset(-1),
        lambda: Fault.trickle(interval=-0.1),
        lambda: Fault.trickle(chunk_size=0),
        lambda: Fault.cut_stream(-1),
    ],
)
def test_fault_constructors_validate(make: Callable[[], Fault]) -> None:
    with pytest.raises(ValueError):
        make()


def test_fault_base_is_not_a_fault_itself() -> None:
    with pytest.raises(TypeError, match="Fault.ok"):
        Fault()


def test_faults_are_immutable_values() -> None:
    fault = Fault.status(429, retry_after=1, headers={"a": "b"})
    assert fault == Fault.status(429, retry_after=1, headers={"a": "b"}) and hash(fault)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fault.code = 500  # type: ignore[misc]


# ----------------------------------------------------------------------------- Azure OpenAI paths


@pytest.fixture
def azure(server: FaultServer) -> Iterator[openai.AzureOpenAI]:
    with openai.AzureOpenAI(
        azure_endpoint=server.url, api_version="2024-10-21", api_key="azure-key", max_retries=0, timeout=5
    ) as c:
        yield c


def test_azure_client_gets_the_same_answers(server: FaultServer, azure: openai.AzureOpenAI) -> None:
    result = azure.chat.completions.create(model="my-deployment", messages=USER)
    assert result.choices[0].message.content == "echo: hello big world" and result.model == "my-deployment"
    streamed = azure.chat.completions.create(model="my-deployment", messages=USER, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "echo: hello big world"
    embedded = azure.embeddings.create(model="my-embedder", input="a b")
    assert embedded.data[0].embedding == fake_embedding("a b") and embedded.model == "my-embedder"
    server.reply("scripted", model="gpt-scripted")
    assert [m.id for m in azure.models.list()] == [DEFAULT_MODEL, "gpt-scripted"]


def test_azure_requests_are_logged_with_key_query_and_route(server: FaultServer, azure: openai.AzureOpenAI) -> None:
    azure.chat.completions.create(model="my-deployment", messages=USER)
    azure.embeddings.create(model="my-embedder", input="x")
    chat_call, embedding_call = server.requests
    assert chat_call.path == "/openai/deployments/my-deployment/chat/completions"
    assert (chat_call.route, chat_call.method, chat_call.fault) == ("chat", "POST", Fault.ok())
    assert chat_call.headers["api-key"] == "azure-key" and "authorization" not in chat_call.headers
    assert chat_call.query == {"api-version": "2024-10-21"}
    assert (embedding_call.path, embedding_call.route) == ("/openai/deployments/my-embedder/embeddings", "embeddings")
    assert server.requests_to("chat") == [chat_call]
    assert server.requests_to("/openai/deployments/any-deployment/embeddings") == [embedding_call]


def test_the_deployment_is_the_model_when_the_body_names_none(server: FaultServer) -> None:
    url = server.url + "/openai/deployments/team%20gpt/chat/completions?api-version=2024-10-21"
    response = httpx2.post(url, json={"messages": USER})
    assert response.status_code == 200 and response.json()["model"] == "team gpt"


def test_a_chat_plan_applies_to_openai_and_azure_paths_in_arrival_order(
    server: FaultServer, client: openai.OpenAI, azure: openai.AzureOpenAI
) -> None:
    server.plan(Fault.status(429), Fault.status(503), then=Fault.status(500, message="fallback"))
    with pytest.raises(openai.RateLimitError):
        azure.chat.completions.create(model="d", messages=USER)
    with pytest.raises(openai.InternalServerError):
        chat(client)
    with pytest.raises(openai.InternalServerError, match="fallback"):
        azure.chat.completions.create(model="d", messages=USER)
    server.plan(Fault.cut_stream(1), route="/openai/deployments/d/chat/completions")  # a path names its route
    with pytest.raises(openai.APIConnectionError):
        list(chat(client, stream=True))
    assert azure.embeddings.create(model="e", input="x").data  # other routes keep their own plans
    assert [r.route for r in server.requests] == ["chat"] * 4 + ["embeddings"]


def test_azure_path_without_api_version_is_a_404_before_the_plan(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.status(503))
    response = httpx2.post(server.url + "/openai/deployments/d/chat/completions", json={"messages": USER})
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "404" and "api-version" in error["message"] and "AzureOpenAI" in error["message"]
    assert server.requests[0].fault is None and server.requests[0].route == "chat"
    with pytest.raises(openai.InternalServerError):  # the 503 is still planned
        chat(client)


def test_azure_faults_use_the_same_error_bodies(server: FaultServer, azure: openai.AzureOpenAI) -> None:
    server.plan(Fault.status(401), Fault.malformed(), route="embeddings")
    with pytest.raises(openai.AuthenticationError) as info:
        azure.embeddings.create(model="e", input="x")
    assert info.value.body["code"] == "invalid_api_key"
    with pytest.raises(ValueError):
        azure.embeddings.create(model="e", input="x")


# ----------------------------------------------------------------------------- log and reset


def test_request_log_records_what_the_client_sent(server: FaultServer, client: openai.OpenAI) -> None:
    before = time.monotonic()
    chat(client, temperature=0)
    after = time.monotonic()
    (record,) = server.requests
    assert (record.method, record.path) == ("POST", "/v1/chat/completions")
    assert record.headers["authorization"] == "Bearer test-key"
    assert record.headers["content-type"] == "application/json"
    assert record.json["model"] == "gpt-test" and record.json["temperature"] == 0
    assert json.loads(record.body) == record.json
    assert before <= record.time <= after
    assert record.fault == Fault.ok()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.path = "/x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        record.headers["x"] = "y"  # type: ignore[index]
    client.models.list()
    assert [r.method for r in server.requests_to("models")] == ["GET"]


def test_reset_clears_plan_replies_and_log(server: FaultServer, client: openai.OpenAI) -> None:
    server.plan(Fault.status(500), then=Fault.status(500))
    server.reply("scripted")
    httpx2.get(server.url + "/v1/models")
    server.reset()
    assert server.requests == []
    assert chat(client).choices[0].message.content == "echo: hello big world"
    assert chat(client).id == "chatcmpl-fault-2"


# ----------------------------------------------------------------------------- async


async def test_async_client_streaming(server: FaultServer) -> None:
    server.plan(Fault.ok(), Fault.cut_stream(1))
    async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=5) as aclient:
        stream = await aclient.chat.completions.create(
            model="m", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "echo: hello big world"
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
        broken = await aclient.chat.completions.create(model="m", messages=USER, stream=True)
        with pytest.raises(openai.APIConnectionError):
            async for _ in broken:
                pass
