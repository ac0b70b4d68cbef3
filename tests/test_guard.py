"""Guarded clients against the fault server: deadlines, retry budgets, Retry-After, call and token budgets.

Times are scaled down (deadlines of a second or two, tiny backoffs set in pyproject.toml);
assertions are on outcomes, attempt counts and the guard's own records. Timing logic runs
on a fake clock (``fake_clock``); the cuts that happen in real time are in ``test_end_to_end.py``.
"""

from __future__ import annotations

import openai
import pytest

from pytest_llm_guard import LLMBudgetExceeded
from pytest_llm_guard.fault import Fault, FaultServer

HELLO = [{"role": "user", "content": "hello there"}]


def ask(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, **kwargs)


def test_llm_client_is_a_real_openai_client(llm_client: openai.OpenAI, llm_guard) -> None:
    completion = ask(llm_client)
    assert isinstance(llm_client, openai.OpenAI)
    assert completion.choices[0].message.content == "echo: hello there"
    assert llm_guard.stats.calls == 1 and llm_guard.stats.attempts == 1
    assert llm_guard.stats.tokens == completion.usage.total_tokens


def test_401_is_attempted_once(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(then=Fault.status(401))
    with pytest.raises(openai.AuthenticationError):
        ask(llm_client)
    assert len(llm_fault_server.requests) == 1
    assert llm_guard.stats.retries == 0


@pytest.mark.llm_budget(retries=2)
def test_503_is_retried_within_the_budget(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(503), Fault.status(503))
    assert ask(llm_client).choices[0].message.content == "echo: hello there"
    assert len(llm_fault_server.requests) == 3
    assert (llm_guard.stats.calls, llm_guard.stats.retries, llm_guard.stats.failures) == (1, 2, 2)
    retry_counts = [r.headers.get("x-stainless-retry-count") for r in llm_fault_server.requests]
    assert retry_counts == ["0", "1", "2"]


@pytest.mark.llm_budget(retries=2)
def test_503_beyond_the_budget_ends_the_test(llm_client, llm_fault_server: FaultServer) -> None:
    llm_fault_server.plan(then=Fault.status(503))
    with pytest.raises(LLMBudgetExceeded) as info:
        ask(llm_client)
    assert info.value.budget == "retries"
    assert len(llm_fault_server.requests) == 3
    message = str(info.value)
    assert "3 failed attempts" in message and "limit retries=2" in message
    assert message.count("HTTP 503") == 3
    assert llm_fault_server.base_url.removesuffix("/v1") in message and "gpt-4o-mini" in message


@pytest.mark.fake_clock
def test_429_retry_after_is_honoured(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(429, retry_after=1))
    ask(llm_client)
    assert llm_guard.clock.slept == [1.0]
    assert llm_guard.stats.backoff_seconds == 1.0  # the whole gap between the attempts
    assert llm_guard.events[1].backoff == llm_guard.stats.backoff_seconds
    assert llm_guard.events[0].retry_after == 1.0


@pytest.mark.fake_clock
@pytest.mark.llm_budget(deadline=5)
def test_retry_after_beyond_the_deadline_fails_at_once(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(then=Fault.status(429, retry_after=60))
    with pytest.raises(LLMBudgetExceeded, match="asked to wait 60 s") as info:
        ask(llm_client)
    assert llm_guard.clock.slept == [], "nothing waited: the test failed instead of sleeping into a certain miss"
    assert info.value.budget == "deadline"
    assert len(llm_fault_server.requests) == 1


@pytest.mark.fake_clock
@pytest.mark.llm_budget(deadline=1)
def test_an_attempt_is_capped_by_the_time_left(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(503))
    llm_guard.clock.advance(0.25)
    ask(llm_client, timeout=60)
    first, second = llm_guard.events
    assert (first.cap, first.cap_by, first.cap_binds) == (0.75, "deadline", True)
    waited = llm_guard.clock.slept[0]
    assert second.cap == pytest.approx(0.75 - waited) and second.backoff == pytest.approx(waited)
    assert 0 < waited <= 0.75 / 2, "the backoff leaves half the time left for the next attempt"


@pytest.mark.llm_budget(call_timeout=1, retries=1)
def test_call_timeout_caps_each_attempt_even_when_trickling(llm_client, llm_fault_server: FaultServer) -> None:
    llm_fault_server.plan(Fault.trickle(interval=0.05, chunk_size=1))
    completion = ask(llm_client, timeout=60)
    assert completion.choices[0].message.content == "echo: hello there"
    assert len(llm_fault_server.requests) == 2


@pytest.mark.llm_budget(calls=2)
def test_call_budget_stops_a_runaway_loop(llm_client, llm_guard) -> None:
    ask(llm_client)
    ask(llm_client)
    with pytest.raises(LLMBudgetExceeded, match="beyond the 2 allowed") as info:
        ask(llm_client)
    assert info.value.budget == "calls"
    stats = llm_guard.stats
    assert (stats.calls, stats.attempts, stats.live, stats.refused) == (3, 3, 2, 1)  # the third was not sent


@pytest.mark.llm_budget(tokens=10)
def test_token_budget(llm_client, llm_fault_server: FaultServer) -> None:
    llm_fault_server.reply("one two three", usage={"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    ask(llm_client)
    with pytest.raises(LLMBudgetExceeded, match="14 tokens used") as info:
        ask(llm_client)
    assert info.value.budget == "tokens"


def test_stream_retried_before_its_first_chunk(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(503))
    stream = ask(llm_client, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "echo: hello there"
    assert llm_guard.stats.attempts == 2


def test_stream_not_retried_after_its_first_chunk(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.cut_stream(after_chunks=2))
    stream = ask(llm_client, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert len(llm_fault_server.requests) == 1
    assert llm_guard.events[0].failed


def test_guard_wraps_a_client_the_test_built(llm_guard, llm_fault_server: FaultServer) -> None:
    llm_fault_server.plan(Fault.status(500))
    client = llm_guard.guard(openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-x", max_retries=7))
    assert client.max_retries == 0
    ask(client)
    assert llm_guard.stats.attempts == 2


def test_guard_wraps_azure_clients(llm_guard, llm_fault_server: FaultServer) -> None:
    azure = openai.AzureOpenAI(azure_endpoint=llm_fault_server.url, api_key="k", api_version="2024-10-21")
    client = llm_guard.guard(azure)
    assert isinstance(client, openai.AzureOpenAI)
    assert client.chat.completions.create(model="my-deployment", messages=HELLO).model == "my-deployment"
    assert llm_guard.events[0].model == "my-deployment"


def test_guard_rejects_what_is_not_an_openai_client(llm_guard) -> None:
    with pytest.raises(TypeError, match=r"takes an SDK client \(anthropic.Anthropic, .*openai.OpenAI"):
        llm_guard.guard(object())


def test_remaining_counts_down_from_the_deadline(llm_guard) -> None:
    assert 0 < llm_guard.remaining() <= llm_guard.settings.deadline


async def test_async_client(async_llm_client: openai.AsyncOpenAI, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(503))
    completion = await async_llm_client.chat.completions.create(model="m", messages=HELLO)
    assert completion.choices[0].message.content == "echo: hello there"
    stream = await async_llm_client.chat.completions.create(model="m", messages=HELLO, stream=True)
    assert [c async for c in stream]
    assert (llm_guard.stats.calls, llm_guard.stats.attempts) == (2, 3)


@pytest.mark.llm_budget(deadline=None, call_timeout=None)
def test_without_limits_the_clients_own_timeouts_stand(llm_fault_server: FaultServer, llm_guard) -> None:
    import httpx2

    with httpx2.Client(timeout=None) as client:
        response = client.post(llm_fault_server.base_url + "/chat/completions", json={"model": "m", "messages": HELLO})
    assert response.status_code == 200
    assert llm_guard.stats.attempts == 1
