"""Cassettes keep time: what an answer took is recorded beside its body, and replayed at a chosen speed.

In-process, on one fake clock: a mock transport lets the fake clock pass as each chunk
arrives, so recorded offsets are exact, and a paced replay's waits are listed in
``clock.slept``. One pytester run checks the option and the marker reach the layer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import yaml

from pytest_llm_guard import FakeClock, LLMBudgetExceeded, cassettes, pipeline, transport
from pytest_llm_guard.cassettes.timing import pieces
from pytest_llm_guard.config import Settings
from pytest_llm_guard.errors import LLMCassetteError, LLMGuardConfigError
from pytest_llm_guard.guard import Guard
from pytest_llm_guard.markers import apply_markers

BASE_URL = "http://llm.test/v1"
HELLO = [{"role": "user", "content": "hello"}]
WORDS = ["Hel", "lo", " the", "re"]


def event(data: dict[str, Any] | str) -> bytes:
    return b"data: " + (data if isinstance(data, str) else json.dumps(data)).encode() + b"\n\n"


def delta(text: str) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


STREAM = [event(delta(word)) for word in WORDS] + [event("[DONE]")]
ANSWER = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()


class Ticking(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A body whose chunks arrive ``gap`` seconds apart on the fake clock."""

    def __init__(self, clock: FakeClock, chunks: list[bytes], gap: float) -> None:
        self._clock, self._chunks, self._gap = clock, chunks, gap

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._clock.advance(self._gap)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.__iter__():
            yield chunk


class Server:
    """A mock endpoint on the fake clock: headers after ``headers`` seconds, then chunks ``gap`` apart."""

    def __init__(self, clock: FakeClock, headers: float = 0.2, gap: float = 0.1) -> None:
        self.clock, self.headers, self.gap = clock, headers, gap
        self.requests = 0

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests += 1
        self.clock.advance(self.headers)
        if json.loads(request.content).get("stream"):
            return httpx2.Response(
                200, headers={"content-type": "text/event-stream"}, stream=Ticking(self.clock, STREAM, self.gap)
            )
        halves = [ANSWER[: len(ANSWER) // 2], ANSWER[len(ANSWER) // 2 :]]
        return httpx2.Response(
            200, headers={"content-type": "application/json"}, stream=Ticking(self.clock, halves, self.gap)
        )


@contextmanager
def guarded(path: Path, clock: FakeClock, mode: str, **values: Any) -> Iterator[Guard]:
    """A guarded 'test' whose pipeline holds the cassette at ``path``; saved when it ends."""
    settings = Settings(**{"deadline": 100.0, "backoff_initial": 0.0, "backoff_max": 0.0, **values})
    guard = Guard(settings, test_id="test_replay_timing::case", clock=clock)
    layer = cassettes.open_cassette(
        path,
        settings,
        mode=mode,
        nodeid="case",
        matcher=lambda request, recorded: None,
        scrubber=guard.scrubber,
        clock=clock,
    )
    guard.pipeline = pipeline.build(cassette=layer)
    transport.activate(guard)
    try:
        yield guard
    finally:
        transport.deactivate(guard)
        layer.finish_bodies()
        layer.save(test_failed=False)


def client(server: Server) -> openai.OpenAI:
    http = openai.DefaultHttpx2Client(transport=httpx2.MockTransport(server))
    return openai.OpenAI(base_url=BASE_URL, api_key="sk-test", max_retries=0, http_client=http)


def async_client(server: Server) -> openai.AsyncOpenAI:
    http = openai.DefaultAsyncHttpx2Client(transport=httpx2.MockTransport(server))
    return openai.AsyncOpenAI(base_url=BASE_URL, api_key="sk-test", max_retries=0, http_client=http)


def ask_stream(chat: openai.OpenAI) -> str:
    stream = chat.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)


def ask(chat: openai.OpenAI) -> str:
    return chat.chat.completions.create(model="gpt-test", messages=HELLO).choices[0].message.content


def timings(path: Path) -> list[dict[str, Any]]:
    return [i["response"].get("timing") for i in yaml.safe_load(path.read_text())["interactions"]]


def record_stream(path: Path) -> None:
    clock = FakeClock()
    server = Server(clock)
    with guarded(path, clock, "all"), client(server) as chat:
        assert ask_stream(chat) == "Hello there"


def replay(path: Path, ask_with=ask_stream, **values: Any) -> tuple[FakeClock, Guard, str]:
    clock = FakeClock()
    server = Server(clock)
    with guarded(path, clock, "none", **values) as guard, client(server) as chat:
        text = ask_with(chat)
    assert server.requests == 0, "a replay went out"
    return clock, guard, text


# -- what is recorded ------------------------------------------------------------------------------


def test_a_recorded_stream_keeps_its_time_to_headers_and_each_chunks_arrival(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    (timing,) = timings(path)
    assert timing == {
        "headers": 0.2,
        "chunks": [0.3, 0.4, 0.5, 0.6, 0.7],
        "sizes": [len(chunk) for chunk in STREAM],
    }
    text = path.read_text()
    assert "chunks: [0.3, 0.4, 0.5, 0.6, 0.7]" in text, "one line of offsets, not a YAML entry per chunk"
    body = yaml.safe_load(text)["interactions"][0]["response"]["body"]["string"]
    assert body == b"".join(STREAM).decode(), "the body is stored as vcrpy stores it"


def test_an_async_stream_is_timed_the_same(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    clock = FakeClock()
    server = Server(clock, headers=0.05, gap=0.25)

    async def main() -> str:
        async with async_client(server) as chat:
            stream = await chat.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    with guarded(path, clock, "all"):
        assert asyncio.run(main()) == "Hello there"
    (timing,) = timings(path)
    assert timing["headers"] == 0.05 and timing["chunks"] == [0.3, 0.55, 0.8, 1.05, 1.3]
    assert len(timing["sizes"]) == len(STREAM)


def test_a_whole_answer_keeps_its_time_to_headers_and_to_its_last_byte(tmp_path: Path) -> None:
    path = tmp_path / "answer.yaml"
    clock = FakeClock()
    with guarded(path, clock, "all"), client(Server(clock, headers=0.5, gap=0.25)) as chat:
        assert ask(chat) == "Hello"
    (timing,) = timings(path)
    assert timing == {
        "headers": 0.5,
        "chunks": [0.75, 1.0],
        "sizes": [len(ANSWER) // 2, len(ANSWER) - len(ANSWER) // 2],
    }
    clock, _, text = replay(path, ask, replay_speed=1)
    assert text == "Hello"
    assert sum(clock.slept) == pytest.approx(1.0), "the pretty-printed body arrives whole, when its last byte did"


# -- how it replays --------------------------------------------------------------------------------


def test_replay_speed_0_adds_no_wait_and_keeps_the_recorded_chunks(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    clock, _, text = replay(path, replay_speed=0)
    assert text == "Hello there" and clock.slept == []


def test_replay_speed_1_waits_the_recorded_gaps(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    clock, guard, text = replay(path, replay_speed=1)
    assert text == "Hello there"
    assert clock.slept == pytest.approx([0.2, 0.1, 0.1, 0.1, 0.1, 0.1])
    (attempt,) = guard.events
    assert (attempt.source, attempt.outcome) == ("replayed", "ok")
    assert attempt.end - attempt.start == pytest.approx(0.7), "the ledger sees the recorded time"


def test_replay_speed_2_waits_half(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    clock, _, _ = replay(path, replay_speed=2)
    assert clock.slept == pytest.approx([0.1, 0.05, 0.05, 0.05, 0.05, 0.05])


def test_an_async_replay_is_paced_on_the_clock_too(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    clock = FakeClock()

    async def main() -> str:
        async with async_client(Server(clock)) as chat:
            stream = await chat.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])

    with guarded(path, clock, "none", replay_speed=1):
        assert asyncio.run(main()) == "Hello there"
    assert sum(clock.slept) == pytest.approx(0.7)


def test_a_cassette_without_timing_replays_at_once_at_any_speed(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    data = yaml.safe_load(path.read_text())
    del data["interactions"][0]["response"]["timing"]
    path.write_text(yaml.safe_dump(data))
    clock, _, text = replay(path, replay_speed=1)
    assert text == "Hello there" and clock.slept == []


def test_a_body_stored_otherwise_than_it_arrived_is_split_into_events_at_their_times() -> None:
    body = b"data: a\n\ndata: bb\n\n"
    timing = {"headers": 0.1, "chunks": [0.2, 0.3, 0.4], "sizes": [4, 12, 14]}  # 30 bytes arrived, 19 stored
    assert pieces(body, timing, lambda b: [b[:9], b[9:]]) == [(0.3, b"data: a\n\n"), (0.4, b"data: bb\n\n")]
    assert pieces(body, None, lambda b: [b]) == [(0.0, body)]


# -- a paced replay meets the budgets live time meets -------------------------------------------------


def test_a_paced_replay_longer_than_call_timeout_fails_as_a_live_one_would(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)  # 0.7 s
    clock = FakeClock()
    with pytest.raises(LLMBudgetExceeded) as raised:
        with guarded(path, clock, "none", replay_speed=1, call_timeout=0.45, retries=0) as guard:
            with client(Server(clock)) as chat:
                ask_stream(chat)
    assert raised.value.budget == "call_timeout" and "the last cut at its call_timeout (0.45 s)" in str(raised.value)
    (attempt,) = guard.events
    assert attempt.source == "replayed" and attempt.cause == "call_timeout"
    assert "the attempt took longer than its 0.45 s cap (call_timeout)" in attempt.error
    assert "chunk 3 arrived after 0.50 s" in attempt.error
    assert attempt.end - attempt.start == pytest.approx(0.45), "cut at the cap, not after the recorded time"


def test_a_paced_replay_that_stalls_longer_than_idle_timeout_is_cut_by_it(tmp_path: Path) -> None:
    """Stream budgets bind a paced replay as they bind a live stream: a recorded gap longer than
    idle_timeout ends the attempt at the budget, with its own message."""
    path = tmp_path / "stream.yaml"
    record_stream(path)
    gaps = [b - a for a, b in itertools.pairwise(timings(path)[0]["chunks"])]
    idle = min(g for g in gaps if g > 0) / 2  # shorter than every recorded gap: the second chunk is late
    clock = FakeClock()
    with pytest.raises(LLMBudgetExceeded):
        with guarded(path, clock, "none", replay_speed=1, idle_timeout=idle, retries=0) as guard:
            with client(Server(clock)) as chat:
                ask_stream(chat)
    (attempt,) = guard.events
    assert attempt.source == "replayed" and attempt.cause == "idle_timeout"
    assert f"stalled {idle:g} s after chunk 1 (idle_timeout)" in (attempt.error or "")


def test_a_replay_cut_before_its_headers_is_given_back_and_replayed_again_by_the_retry(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)  # headers after 0.2 s
    clock = FakeClock()
    with pytest.raises(LLMBudgetExceeded) as raised:
        with guarded(path, clock, "none", replay_speed=1, call_timeout=0.15, retries=1) as guard:
            with client(Server(clock)) as chat:
                ask_stream(guard.guard(chat))
    assert raised.value.budget == "call_timeout"
    first, second = guard.events
    assert first.source == second.source == "replayed", "a retry replays the cut answer again, not a miss"
    assert "no response headers within the attempt's 0.15 s cap (call_timeout)" in second.error


def test_a_paced_replay_whose_headers_come_after_the_deadline_fails_at_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    clock = FakeClock()
    with pytest.raises(LLMBudgetExceeded) as raised:
        with guarded(path, clock, "none", replay_speed=1, deadline=0.1) as guard, client(Server(clock)) as chat:
            ask_stream(chat)
    assert raised.value.budget == "deadline"
    (attempt,) = guard.events
    assert "no response headers within the attempt's 0.10 s cap (deadline)" in attempt.error
    assert clock.slept == pytest.approx([0.1])


# -- where the speed comes from ------------------------------------------------------------------------


def test_the_marker_speed_wins_over_the_option_and_keeps_the_cassette_a_farther_marker_chose() -> None:
    session = Settings().merged({"replay_speed": "2"}, "the command line")
    module, function = pytest.mark.llm_cassette("shared").mark, pytest.mark.llm_cassette(speed=1).mark
    settings = apply_markers(session, [function, module], "test_x")
    assert (settings.replay_speed, settings.cassette_name) == (1.0, "shared")
    assert "llm_cassette" in settings.source_of("replay_speed")
    assert apply_markers(session, [module], "test_x").replay_speed == 2.0


@pytest.mark.parametrize("speed", [-1, "fast", True])
def test_a_bad_marker_speed_is_a_clear_error(speed: object) -> None:
    with pytest.raises(LLMGuardConfigError, match=r"llm_cassette on test_x: speed=.* must be a non-negative number"):
        apply_markers(Settings(), [pytest.mark.llm_cassette(speed=speed).mark], "test_x")


# -- what other tools read -------------------------------------------------------------------------


def test_plain_vcrpy_replays_a_cassette_with_timing(tmp_path: Path) -> None:
    import vcr

    path = tmp_path / "stream.yaml"
    record_stream(path)
    with vcr.VCR(record_mode="none", match_on=["method", "path"]).use_cassette(str(path)):
        chat = openai.OpenAI(base_url="http://llm.test/v1", api_key="sk-test", max_retries=0)
        with chat:
            assert ask_stream(chat) == "Hello there"


# -- through pytest --------------------------------------------------------------------------------

PROJECT = """
import openai
import pytest

import pytest_llm_guard


def pytest_llm_guard_clock(item):
    return pytest_llm_guard.FakeClock()


@pytest.fixture
def waited(llm_guard):
    def ask():
        with openai.OpenAI(base_url="http://llm.test/v1", api_key="sk-test", max_retries=0) as chat:
            stream = chat.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hello"}],
                                                  stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello there"
        return round(sum(llm_guard.clock.slept), 3)
    return ask
"""

TESTS = """
import pytest

pytestmark = pytest.mark.llm_cassette(path="timed.yaml")


def test_the_option_sets_the_pace(waited):
    assert waited() == 0.35


@pytest.mark.llm_cassette(speed=1)
def test_the_marker_wins(waited):
    assert waited() == 0.7


@pytest.mark.llm_cassette(speed="fast")
def test_a_bad_speed(waited):
    pass
"""


def test_the_option_and_the_marker_pace_a_replay_in_a_suite(pytester: pytest.Pytester) -> None:
    record_stream(pytester.path / "timed.yaml")
    pytester.makeconftest(PROJECT)
    pytester.makepyfile(test_paced=TESTS)
    result = pytester.runpytest_inprocess("--llm-record=none", "--llm-replay-speed=2")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*llm_cassette on test_paced.py::test_a_bad_speed: speed='fast' is not valid*"])


def test_a_cassette_with_broken_timing_fails_its_test_naming_the_interaction(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    data = yaml.safe_load(path.read_text())
    data["interactions"][0]["response"]["timing"]["chunks"] = [0.3, 0.2]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(LLMCassetteError, match=r"interaction 1's response.timing has 2 chunk times for 5 sizes"):
        cassettes.open_cassette(
            path,
            Settings(),
            mode="none",
            nodeid="case",
            matcher=lambda r, s: None,
            scrubber=Guard(Settings(), test_id="t").scrubber,
        )


def test_our_writer_keeps_the_timing_of_what_the_file_held(tmp_path: Path) -> None:
    path = tmp_path / "stream.yaml"
    record_stream(path)
    clock = FakeClock()
    with guarded(path, clock, "new_episodes"), client(Server(clock)) as chat:
        assert ask_stream(chat) == "Hello there"  # replayed
        assert ask(chat) == "Hello"  # recorded beside it
    first, second = timings(path)
    assert first["chunks"] == [0.3, 0.4, 0.5, 0.6, 0.7] and second["headers"] == 0.2
