"""The fault server speaks the Anthropic Messages API, as the real ``anthropic`` SDK reads it.

End to end: every test drives the server with ``anthropic.Anthropic`` /
``AsyncAnthropic`` (``max_retries=0`` unless a test is about the SDK's retries) or raw
httpx2, so each fault is exactly what a user's suite meets. Times are scaled down to
tens of milliseconds; the few tests about time assert lower bounds only (a slow
machine makes them longer, never shorter). Part of the end-to-end set that measures
wall-clock time (see ``test_end_to_end.py``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from pytest_llm_guard.fault import DEFAULT_MODEL, Fault, FaultServer, StreamError

USER = [{"role": "user", "content": "hello big world"}]
ECHO = "echo: hello big world"
VERSION = {"anthropic-version": "2023-06-01"}
EVENTS = ["message_start", "content_block_start", *["content_block_delta"] * 4, "content_block_stop"]
EVENTS += ["message_delta", "message_stop"]  # the SDK skips the ping


def claude(base_url: str, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base_url, api_key="sk-ant-test", **{"max_retries": 0, "timeout": 5, **options})


@pytest.fixture
def client(server: FaultServer) -> Iterator[anthropic.Anthropic]:
    with claude(server.url) as c:
        yield c


def create(client: anthropic.Anthropic, **kwargs: Any) -> Any:
    return client.messages.create(**{"model": "claude-test", "max_tokens": 100, "messages": USER, **kwargs})


def raw(server: FaultServer, path: str = "/v1/messages", **body: Any) -> httpx2.Response:
    payload = {"model": "claude-test", "max_tokens": 100, "messages": USER, **body}
    return httpx2.post(server.url + path, json=payload, headers=VERSION)


# ----------------------------------------------------------------------------- answers


def test_a_message_echoes_the_last_user_message_with_word_count_usage(client: anthropic.Anthropic) -> None:
    message = create(client, system="be brief")
    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert [(b.type, b.text) for b in message.content] == [("text", ECHO)]
    assert (message.model, message.stop_reason) == ("claude-test", "end_turn")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)  # system + user words; echo words
    assert message._request_id is not None and message._request_id.startswith("req_")


def test_content_blocks_and_a_missing_model_are_answered(server: FaultServer) -> None:
    answer = raw(server, messages=[{"role": "user", "content": [{"type": "text", "text": "in parts"}]}], model=None)
    assert answer.status_code == 200
    assert answer.json()["content"] == [{"type": "text", "text": "echo: in parts"}]
    assert answer.json()["model"] == DEFAULT_MODEL


def test_a_stream_sends_named_events_in_the_apis_order(client: anthropic.Anthropic) -> None:
    events = list(create(client, stream=True))
    assert [e.type for e in events] == EVENTS
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == ECHO
    assert events[0].message.usage.input_tokens == 3 and events[0].message.stop_reason is None
    assert events[-2].delta.stop_reason == "end_turn"


def test_the_raw_stream_is_event_and_data_lines_with_a_ping(server: FaultServer) -> None:
    answer = raw(server, stream=True)
    assert answer.headers["content-type"].startswith("text/event-stream")
    blocks = answer.text.strip().split("\n\n")
    names = [block.split("\n")[0].removeprefix("event: ") for block in blocks]
    assert names[:3] == ["message_start", "content_block_start", "ping"] and names[-1] == "message_stop"
    for block in blocks:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")


def test_messages_stream_gives_the_text_and_the_usage_merged_across_events(client: anthropic.Anthropic) -> None:
    with client.messages.stream(model="claude-test", max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ECHO
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)
    assert final.stop_reason == "end_turn"


def test_message_start_counts_one_output_token_and_message_delta_the_total(client: anthropic.Anthropic) -> None:
    """As the API does, so a reader that replaces usage instead of merging it gets it wrong."""
    events = list(create(client, stream=True))
    assert events[0].message.usage.output_tokens == 1
    assert events[-2].usage.output_tokens == 4 and events[-2].usage.input_tokens is None


def test_the_async_client_creates_streams_and_meets_a_mid_stream_error(server: FaultServer) -> None:
    server.plan(Fault.ok(), Fault.ok(), Fault.stream_error(5), route="messages")

    async def main() -> tuple[Any, str, Any, list[str]]:
        async with anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-ant-test", max_retries=0) as c:
            message = await c.messages.create(model="claude-test", max_tokens=100, messages=USER)
            async with c.messages.stream(model="claude-test", max_tokens=100, messages=USER) as stream:
                text = "".join([piece async for piece in stream.text_stream])
                final = await stream.get_final_message()
            received: list[str] = []
            with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
                async for event in await c.messages.create(
                    model="claude-test", max_tokens=100, messages=USER, stream=True
                ):
                    received.append(event.type)
            return message, text, final, received

    message, text, final, received = asyncio.run(main())
    assert message.content[0].text == ECHO and text == ECHO
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)
    assert received == EVENTS[:4]


def test_scripted_replies_tool_calls_and_usage(server: FaultServer, client: anthropic.Anthropic) -> None:
    server.reply("the weather is fine", when="weather", model="claude-scripted", usage={"prompt_tokens": 40})
    server.reply(tool_calls=[{"name": "lookup", "arguments": {"city": "Paris"}}], when="tool")
    weather = create(client, messages=[{"role": "user", "content": "weather?"}])
    assert (weather.content[0].text, weather.model) == ("the weather is fine", "claude-scripted")
    assert (weather.usage.input_tokens, weather.usage.output_tokens) == (40, 4)
    tool = create(client, messages=[{"role": "user", "content": "use a tool"}])
    assert tool.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in tool.content] == [("tool_use", "lookup", {"city": "Paris"})]
    with client.messages.stream(model="m", max_tokens=9, messages=[{"role": "user", "content": "tool"}]) as stream:
        streamed = stream.get_final_message()
    assert [(b.type, b.name, b.input) for b in streamed.content] == [("tool_use", "lookup", {"city": "Paris"})]
    assert streamed.stop_reason == "tool_use"


def test_count_tokens_counts_the_words_of_system_and_messages(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model="claude-test", messages=USER, system="be brief")
    assert counted.input_tokens == 5


def test_a_request_without_anthropic_version_is_the_apis_400(server: FaultServer) -> None:
    answer = httpx2.post(server.url + "/v1/messages", json={"model": "m", "max_tokens": 5, "messages": USER})
    assert answer.status_code == 400
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in answer.json()["error"]["message"]
    not_json = httpx2.post(server.url + "/v1/messages", content=b"[]", headers=VERSION)
    assert not_json.status_code == 400 and not_json.json()["error"]["type"] == "invalid_request_error"
    assert server.requests_to("messages")[0].fault is None  # turned down before the plan


# ----------------------------------------------------------------------------- error statuses


@pytest.mark.parametrize(
    ("code", "error", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.APIStatusError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (503, anthropic.ServiceUnavailableError, "api_error"),
        (504, anthropic.InternalServerError, "timeout_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),  # an InternalServerError, retried by the SDK
    ],
)
def test_each_status_is_the_sdks_exception_with_anthropics_error_type(
    server: FaultServer, client: anthropic.Anthropic, code: int, error: type[Exception], kind: str
) -> None:
    server.plan(Fault.status(code, message=f"injected {code}"), route="messages")
    with pytest.raises(error) as raised:
        create(client)
    assert raised.value.status_code == code
    assert raised.value.type == kind and raised.value.api_message == f"injected {code}"
    assert raised.value.body == {"type": "error", "error": {"type": kind, "message": f"injected {code}"}}


def test_429_carries_retry_after_and_the_sdk_honours_it(server: FaultServer, client: anthropic.Anthropic) -> None:
    server.plan(Fault.status(429, retry_after=0), route="messages")
    with pytest.raises(anthropic.RateLimitError) as raised:
        create(client)
    assert raised.value.response.headers["retry-after"] == "0"
    server.plan(Fault.status(429, retry_after=0), Fault.status(529, retry_after=0), route="messages")
    with claude(server.url, max_retries=2) as retrying:
        assert create(retrying).content[0].text == ECHO
    tries = [r.headers["x-stainless-retry-count"] for r in server.requests_to("messages")[1:]]
    assert tries == ["0", "1", "2"]


# ----------------------------------------------------------------------------- broken answers


def test_a_mid_stream_error_event_raises_api_status_error_after_the_200(
    server: FaultServer, client: anthropic.Anthropic
) -> None:
    server.plan(Fault.stream_error(5), route="messages")  # message_start, content_block_start, ping, two deltas
    received = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        for event in create(client, stream=True):
            received.append(event)
    assert [e.type for e in received] == EVENTS[:4]
    assert raised.value.status_code == 200 and raised.value.type == "overloaded_error"
    assert "in the middle of the stream" in str(raised.value.api_message)


def test_a_mid_stream_error_reaches_messages_stream_after_the_text_so_far(
    server: FaultServer, client: anthropic.Anthropic
) -> None:
    server.plan(Fault.stream_error(5, 500, message="boom"), route="messages")
    pieces = []
    with pytest.raises(anthropic.APIStatusError) as raised:
        with client.messages.stream(model="claude-test", max_tokens=100, messages=USER) as stream:
            pieces.extend(stream.text_stream)
    assert pieces == ["echo:", " hello"]
    assert (raised.value.type, raised.value.api_message) == ("api_error", "boom")


def test_the_stream_error_event_is_anthropics_error_event(server: FaultServer) -> None:
    server.plan(Fault.stream_error(2), route="messages")
    blocks = raw(server, stream=True).text.strip().split("\n\n")
    assert len(blocks) == 3 and "message_stop" not in blocks[-1]
    event, data = blocks[-1].split("\n")
    assert event == "event: error"
    assert json.loads(data.removeprefix("data: "))["error"]["type"] == "overloaded_error"


def test_a_stream_error_on_a_request_that_does_not_stream_is_the_http_error(
    server: FaultServer, client: anthropic.Anthropic
) -> None:
    server.plan(Fault.stream_error(), route="messages")
    with pytest.raises(anthropic.OverloadedError):
        create(client)


def test_the_stream_error_fault_speaks_openai_too(server: FaultServer) -> None:
    server.plan(Fault.stream_error(2, 500, message="gone"))  # on "chat"
    with openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as gpt:
        received = []
        with pytest.raises(openai.APIError, match="gone"):
            for chunk in gpt.chat.completions.create(model="m", messages=USER, stream=True):
                received.append(chunk)
    assert len(received) == 2


def test_stream_error_values_are_checked() -> None:
    assert Fault.stream_error() == StreamError(1, 529)
    with pytest.raises(ValueError, match=r"Fault.stream_error\(code=...\) needs an HTTP error code"):
        Fault.stream_error(1, 200)
    with pytest.raises(ValueError, match=r"after_chunks\) must be an int >= 0"):
        Fault.stream_error(-1)


def test_a_cut_stream_ends_before_message_stop(server: FaultServer, client: anthropic.Anthropic) -> None:
    """The SDK does not wrap the broken body: httpx2's RemoteProtocolError reaches the caller."""
    server.plan(Fault.cut_stream(4), Fault.cut_stream(1000), route="messages")
    received = []
    with pytest.raises(httpx2.RemoteProtocolError):
        for event in create(client, stream=True):
            received.append(event.type)
    assert received == EVENTS[:3]
    received.clear()
    with pytest.raises(httpx2.RemoteProtocolError):  # however large: never message_stop
        for event in create(client, stream=True):
            received.append(event.type)
    assert received == EVENTS[:-1]


def test_a_cut_answer_that_does_not_stream_is_a_connection_error(
    server: FaultServer, client: anthropic.Anthropic
) -> None:
    server.plan(Fault.cut_stream(1), route="messages")
    with pytest.raises(anthropic.APIConnectionError):
        create(client)


def test_malformed_is_a_200_that_does_not_parse(server: FaultServer, client: anthropic.Anthropic) -> None:
    server.plan(Fault.malformed(), Fault.malformed(), Fault.malformed(), route="messages")
    answer = raw(server)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.text.startswith('{"id": "msg_')
    with pytest.raises(ValueError):
        create(client)
    stream = create(client, stream=True)  # the head is fine; the first event is not
    with pytest.raises(ValueError):
        next(iter(stream))


def test_a_reset_is_a_connection_error(server: FaultServer, client: anthropic.Anthropic) -> None:
    server.plan(Fault.reset(), Fault.reset(30), route="messages")
    for _ in range(2):
        with pytest.raises(anthropic.APIConnectionError):
            create(client)
    assert create(client).content[0].text == ECHO


def test_a_hang_meets_the_clients_timeout(server: FaultServer) -> None:
    server.plan(Fault.hang(), route="messages")
    with claude(server.url, timeout=0.2) as impatient, pytest.raises(anthropic.APITimeoutError):
        create(impatient)


def test_a_trickle_defeats_a_per_read_timeout(server: FaultServer) -> None:
    server.plan(Fault.trickle(0.02, chunk_size=40, headers=True), Fault.trickle(0.02, chunk_size=40), route="messages")
    with claude(server.url, timeout=0.15) as impatient:
        start = time.monotonic()
        assert create(impatient).content[0].text == ECHO
        with impatient.messages.stream(model="claude-test", max_tokens=100, messages=USER) as stream:
            assert "".join(stream.text_stream) == ECHO
    assert time.monotonic() - start > 0.3  # longer than two read timeouts: only the total is long


def test_a_delay_answers_after_it(server: FaultServer, client: anthropic.Anthropic) -> None:
    server.plan(Fault.ok(0.1), route="messages")
    start = time.monotonic()
    assert create(client).content[0].text == ECHO
    assert time.monotonic() - start >= 0.1


# ----------------------------------------------------------------------------- path prefixes


def test_a_529_prefix_fails_the_first_request_then_answers(server: FaultServer) -> None:
    server.plan(Fault.status(500), route="messages")  # left for paths without a prefix
    with claude(server.url + "/s529-1") as prefixed:
        with pytest.raises(anthropic.OverloadedError):
            create(prefixed)
        assert create(prefixed).content[0].text == ECHO
    assert [r.path for r in server.requests] == ["/s529-1/v1/messages"] * 2
    assert [r.route for r in server.requests] == ["messages"] * 2


@pytest.mark.parametrize(
    ("prefix", "outcomes"),
    [
        ("s429-2", [anthropic.RateLimitError, anthropic.RateLimitError, None]),
        ("s529", [anthropic.OverloadedError, anthropic.OverloadedError]),
        ("flaky-2", [anthropic.ServiceUnavailableError, None, anthropic.ServiceUnavailableError]),
        ("delay-0.05", [None]),
        ("reset", [anthropic.APIConnectionError]),
        ("malformed", [ValueError]),
    ],
)
def test_status_and_body_prefixes(server: FaultServer, prefix: str, outcomes: list[type[Exception] | None]) -> None:
    with claude(f"{server.url}/{prefix}") as prefixed:
        for outcome in outcomes:
            if outcome is None:
                assert create(prefixed).content[0].text == ECHO
            else:
                with pytest.raises(outcome):
                    create(prefixed)


@pytest.mark.parametrize(
    ("prefix", "error", "events"),
    [("cut-3", httpx2.RemoteProtocolError, EVENTS[:2]), ("stream-error-5", anthropic.APIStatusError, EVENTS[:4])],
)
def test_stream_prefixes(server: FaultServer, prefix: str, error: type[Exception], events: list[str]) -> None:
    received = []
    with claude(f"{server.url}/{prefix}") as prefixed, pytest.raises(error):
        for event in create(prefixed, stream=True):
            received.append(event.type)
    assert received == events


def test_a_hang_prefix_meets_the_clients_timeout(server: FaultServer) -> None:
    with claude(server.url + "/hang", timeout=0.2) as hanging, pytest.raises(anthropic.APITimeoutError):
        create(hanging)


@pytest.mark.parametrize("prefix", ["trickle-0.002", "trickle-body-0.01"])
def test_trickle_prefixes_still_answer_whole(server: FaultServer, prefix: str) -> None:
    """On count_tokens, whose answer is a few bytes, so a byte at a time stays quick."""
    with claude(f"{server.url}/{prefix}") as trickled:
        assert trickled.messages.count_tokens(model="claude-test", messages=USER).input_tokens == 3


# ----------------------------------------------------------------------------- where it is served


def test_the_fixture_server_speaks_anthropic(llm_fault_server: FaultServer) -> None:
    llm_fault_server.plan(Fault.status(529), route="messages")
    with claude(llm_fault_server.url) as c:
        with pytest.raises(anthropic.OverloadedError):
            create(c)
        assert create(c).content[0].text == ECHO
    assert len(llm_fault_server.requests_to("/v1/messages")) == 2


def test_the_commands_help_lists_the_anthropic_routes_and_the_stream_error_prefix() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_llm_guard.fault", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for line in ("POST /v1/messages\n", "POST /v1/messages/count_tokens\n", "/stream-error[-N]", "anthropic.Anthropic"):
        assert line in done.stdout


def test_a_plan_without_a_route_is_for_whichever_api_asks_for_an_answer(
    server: FaultServer, client: anthropic.Anthropic
) -> None:
    server.plan(Fault.status(529), Fault.status(503), then=Fault.status(500))
    with pytest.raises(anthropic.APIStatusError) as first:
        client.messages.create(model="m", max_tokens=10, messages=USER)
    assert first.value.status_code == 529
    openai_chat = httpx2.post(f"{server.base_url}/chat/completions", json={"model": "m", "messages": USER})
    assert openai_chat.status_code == 503
    count = client.messages.count_tokens(model="m", messages=USER)  # not a generation: no plan of its own
    assert count.input_tokens > 0
    with pytest.raises(anthropic.InternalServerError) as then:
        client.messages.create(model="m", max_tokens=10, messages=USER)
    assert then.value.status_code == 500
    server.plan(route="messages", then=Fault.ok())  # a route's own plan goes first
    assert client.messages.create(model="m", max_tokens=10, messages=USER).content[0].text == ECHO
