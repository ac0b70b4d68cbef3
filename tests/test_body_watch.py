"""The body watcher's two ways of reading, and the per-call shortcuts around it.

A body that is not a stream of events, with no idle limit, is read under one fixed limit (the
attempt's cap) with no per-read clock bookkeeping; a stream, or a body with an idle limit, keeps its
stream clock. Both must still cut a body that trickles. Times are scaled down (0.2-0.4 s budgets
against a fault server sending a byte every 0.05 s); assertions bound durations generously.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import Any

import httpx2
import openai
import pytest

from pytest_llm_guard import LLMBudgetExceeded
from pytest_llm_guard.alarm import Alarm
from pytest_llm_guard.dialects import header
from pytest_llm_guard.dialects.base import has_header
from pytest_llm_guard.endpoints import Endpoint, EndpointSet
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.ledger import Attempt
from pytest_llm_guard.scrub import Scrubber

HELLO = [{"role": "user", "content": "hello there"}]


def ask(client: openai.OpenAI, **kwargs: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, **kwargs)


# -- a body that is not a stream: one fixed limit, still binding a trickle ----------------------------


@pytest.mark.llm_budget(call_timeout=0.3, retries=0)
def test_a_trickled_json_body_is_cut_at_its_cap_where_it_is_read(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    # In a worker thread no alarm can interrupt: only the reads' own limit ends the body at the cap.
    llm_fault_server.plan(Fault.trickle(interval=0.05, chunk_size=1))
    with concurrent.futures.ThreadPoolExecutor(1) as pool, pytest.raises(LLMBudgetExceeded) as info:
        pool.submit(ask, llm_client, timeout=60).result(timeout=10)
    assert info.value.budget == "call_timeout"
    (cut,) = llm_guard.events
    assert (cut.cause, cut.category, cut.outcome) == ("call_timeout", "timeout", "ReadTimeout")
    assert "0.30 s cap (call_timeout)" in cut.error
    assert cut.first_chunk is not None, "the body had begun: the cut came while it arrived"
    assert 0.3 <= cut.duration < 1.5


@pytest.mark.llm_budget(deadline=0.4)
def test_a_trickled_json_body_is_cut_at_the_deadline(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.plan(then=Fault.trickle(interval=0.05, chunk_size=1))
    started = time.monotonic()
    with pytest.raises(LLMBudgetExceeded) as info:
        ask(llm_client, timeout=60)
    assert info.value.budget == "deadline"
    assert time.monotonic() - started < 2.0
    cut = llm_guard.events[0]
    assert cut.category in ("timeout", "cut") and cut.first_chunk is not None


@pytest.mark.llm_budget(idle_timeout=0.1, retries=0)
def test_a_json_body_with_an_idle_limit_keeps_its_clock_and_is_cut_by_the_gap(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.plan(Fault.trickle(interval=0.3, chunk_size=20))
    with pytest.raises(LLMBudgetExceeded):
        ask(llm_client, timeout=60)
    (cut,) = llm_guard.events
    assert (cut.cause, cut.category) == ("idle_timeout", "timeout")
    assert cut.error.startswith("stalled 0.1 s after chunk 1 (idle_timeout)")
    assert cut.stream.chunks == 1, "each read of the body was counted by its clock"


def test_a_whole_json_answer_is_counted_and_timed(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    assert ask(llm_client).choices[0].message.content == "echo: hello there"
    (answer,) = llm_guard.events
    record = answer.to_dict()
    assert (record["category"], record["tokens"] is not None) == ("ok", True)
    assert 0 <= record["first_chunk"] <= answer.duration
    assert answer.read_ahead is not None and list(answer.read_ahead[1]) == [], "headers' time, no chunk read ahead"


# -- a stream keeps its clock ------------------------------------------------------------------------


def test_a_stream_keeps_its_clock_and_its_times_reach_the_record(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.plan(Fault.paced(0.01))
    chunks = list(ask(llm_client, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    (answer,) = llm_guard.events
    assert answer.stream.content and answer.stream.chunks >= len(chunks), "its events were counted"
    assert answer.read_ahead is not None and len(answer.read_ahead[1]) >= 1, "read ahead to its first content"
    record = answer.to_dict()
    assert record["category"] == "ok" and 0 < record["first_chunk"] <= answer.duration


# -- what no longer runs per call, and answers the same ------------------------------------------------


def test_a_header_read_from_httpx2s_list_is_what_httpx2_answers() -> None:
    headers = httpx2.Headers([("Content-Type", "application/json"), ("X-Twice", "a"), ("x-twice", "b")])
    for name in ("content-type", "x-twice", "absent"):
        assert header(headers, name.encode()) == headers.get(name, "")
        assert has_header(headers, name.encode()) == (name in headers)
    latin = httpx2.Headers([(b"x-name", "caf\xe9".encode("latin-1"))])
    assert header(latin, b"x-name") == latin.get("x-name")
    assert header({"content-type": "text/plain"}, b"content-type") == "text/plain"  # any other mapping
    assert has_header({"x-stainless-lang": "python"}, b"x-stainless-lang")


def test_a_key_is_learned_from_any_headers_once() -> None:
    scrubber = Scrubber(key_variables=(), environ={})
    scrubber.learn(httpx2.Headers({"Authorization": "Bearer sk-learned-from-httpx2-0001"}), "")
    scrubber.learn({"X-Api-Key": "sk-learned-from-a-mapping-0002"}, "")
    assert scrubber.text("sk-learned-from-httpx2-0001 sk-learned-from-a-mapping-0002").count("sk-learned") == 0
    pattern = scrubber._exact
    scrubber.learn(httpx2.Headers({"Authorization": "Bearer sk-learned-from-httpx2-0001"}), "")
    assert scrubber._exact is pattern, "a key known already changes nothing"


def test_an_urls_owner_is_the_same_for_every_request_to_it() -> None:
    endpoints = EndpointSet(
        (Endpoint("root", "http://127.0.0.1:9/v1"), Endpoint("deep", "http://127.0.0.1:9/v1/deep")), True, "test"
    )
    for _ in range(2):  # asked anew, then answered from what was kept
        assert endpoints.owner(httpx2.URL("http://127.0.0.1:9/v1/chat/completions")).name == "root"
        assert endpoints.owner(httpx2.URL("http://127.0.0.1:9/v1/deep/chat/completions")).name == "deep"
        assert endpoints.owner(httpx2.URL("http://127.0.0.1:8/v1/chat/completions")) is None


def test_an_attempts_record_keeps_its_fields_in_order() -> None:
    attempt = Attempt(
        test="t", call=1, number=1, kind="first", endpoint="http://e", path="/v1", model="m", start=0.0, wall_start=0.0
    )
    hidden = {"headers_timer", "stream", "cap_binds", "result", "on_end"}
    names = [f.name for f in dataclasses.fields(Attempt) if f.name not in hidden]
    assert list(attempt.to_dict()) == [*names, "category"]
    assert dataclasses.replace(attempt, error="x").error == "x"
    assert not hasattr(attempt, "__dict__"), "slotted: a test keeps thousands"


@pytest.mark.skipif(not Alarm.available(), reason="SIGALRM in the main thread only")
def test_cancelling_a_timer_leaves_a_sooner_one_set_and_the_last_one_clears_it() -> None:
    alarm = Alarm()
    alarm.start()
    set_for: list[float] = []
    below = alarm._below["setitimer"]  # the timer under the alarm: each call is a system call

    def setitimer(which: int, seconds: float, interval: float = 0.0) -> Any:
        set_for.append(seconds)
        return below(which, seconds, interval)

    alarm._below["setitimer"] = setitimer
    try:
        later = alarm.at(alarm._clock() + 60, lambda: None)
        sooner = alarm.at(alarm._clock() + 30, lambda: None)
        assert len(set_for) == 2
        alarm.cancel(sooner)
        assert len(set_for) == 2, "left set for the sooner time: it then finds nothing due and sets the next"
        alarm.cancel(later)
        assert set_for[-1] == 0, "nothing left: the timer is cleared"
    finally:
        alarm.stop()
