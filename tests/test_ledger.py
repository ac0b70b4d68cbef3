"""The ledger's words, as every count uses them: call, attempt (and its source), retry, failover, network seconds."""

from __future__ import annotations

import openai
import pytest

from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.ledger import Attempt, Category, Ledger

pytest_plugins = ["pytester"]

HELLO = [{"role": "user", "content": "hello there"}]


def attempt(ledger: Ledger, kind: str = "first", source: str = "live", start: float = 0.0) -> Attempt:
    record = Attempt(ledger.test, 1, 1, kind, "http://x", "/v1/chat/completions", "m", start, 0.0, source=source)
    ledger.open(record)
    return record


def test_network_seconds_count_live_and_recorded_attempts_only() -> None:
    ledger = Ledger("t")
    for source in ("live", "recorded", "replayed", "refused"):
        ledger.close(attempt(ledger, source=source), 2.0, "ok", Category.OK)
    stats = ledger.stats()
    assert stats.network_seconds == 4.0
    assert (stats.live, stats.recorded, stats.replayed, stats.refused) == (1, 1, 1, 1)


def test_a_changed_source_moves_the_attempt_between_counts() -> None:
    """A recording that never reached its file is counted live; one read on after its close, recorded."""
    ledger = Ledger("t")
    record = attempt(ledger, source="recorded")
    ledger.close(record, 2.0, "ok", Category.OK)
    ledger.change_source(record, "live")
    stats = ledger.stats()
    assert (stats.live, stats.recorded, stats.network_seconds, record.source) == (1, 0, 2.0, "live")
    ledger.change_source(record, "replayed")
    assert (ledger.stats().replayed, ledger.stats().network_seconds) == (1, 0.0)


def test_an_attempt_is_counted_once_however_often_it_is_closed() -> None:
    ledger = Ledger("t")
    record = attempt(ledger)
    assert ledger.close(record, 1.0, "HTTP 503", Category.SERVER)
    assert not ledger.close(record, 2.0, "ok", Category.OK)
    assert (ledger.stats().failures, record.outcome, record.end) == (1, "HTTP 503", 1.0)


def test_a_failure_followed_by_a_failover_is_not_charged_to_retries() -> None:
    ledger = Ledger("t")
    first = attempt(ledger)
    first.failover_to = "backup"
    ledger.close(first, 1.0, "ReadTimeout", Category.TIMEOUT)
    ledger.close(attempt(ledger, kind="failover"), 1.5, "HTTP 503", Category.SERVER)
    stats = ledger.stats()
    assert (stats.failures, ledger.counted_failures, stats.failovers, stats.retries) == (2, 1, 1, 0)


@pytest.mark.llm_budget(retries=2)
def test_a_flaky_call_is_one_call_of_three_attempts_and_two_retries(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard
) -> None:
    llm_fault_server.plan(Fault.status(503), Fault.reset())
    llm_client.chat.completions.create(model="m", messages=HELLO)
    stats = llm_guard.stats
    assert (stats.calls, stats.attempts, stats.retries, stats.failovers, stats.failures) == (1, 3, 2, 0, 2)
    assert [a.kind for a in llm_guard.events] == ["first", "retry", "retry"]
    assert [a.call for a in llm_guard.events] == [1, 1, 1]


def test_the_sdks_own_retries_of_an_application_client_are_retries(llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(503))
    client = openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-app", max_retries=1)
    client.with_options(timeout=5).chat.completions.create(model="m", messages=HELLO)
    client.chat.completions.create(model="m", messages=HELLO)
    stats = llm_guard.stats
    assert (stats.calls, stats.attempts, stats.retries) == (2, 3, 1)
    assert [(a.call, a.kind) for a in llm_guard.events] == [(1, "first"), (1, "retry"), (2, "first")]
    assert [(a.by, a.sdk_max_retries) for a in llm_guard.events] == [(None, None), ("sdk", 1), (None, None)]


async def test_the_sdks_max_retries_is_told_for_async_clients_too(llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(503), Fault.status(503))
    async with openai.AsyncOpenAI(base_url=llm_fault_server.base_url, api_key="sk-app", max_retries=3) as client:
        await client.chat.completions.create(model="m", messages=HELLO)
    assert [(a.by, a.sdk_max_retries) for a in llm_guard.events] == [(None, None), ("sdk", 3), ("sdk", 3)]


def test_backoff_is_the_gap_after_an_attempt_that_did_not_succeed() -> None:
    ledger = Ledger("t")
    ledger.close(attempt(ledger, start=0.0), 1.0, "ReadTimeout", Category.TIMEOUT)
    retry = attempt(ledger, kind="retry", start=1.75)
    ledger.close(retry, 2.0, "ok", Category.OK)
    after_an_answer = attempt(ledger, start=5.0)
    ledger.close(after_an_answer, 6.0, "ok", Category.OK)
    assert (retry.backoff, after_an_answer.backoff, ledger.stats().backoff_seconds) == (0.75, 0.0, 0.75)


def test_a_new_call_after_a_failure_is_the_applications_retry() -> None:
    ledger = Ledger("t")
    ledger.close(attempt(ledger), 1.0, "HTTP 503", Category.SERVER)
    again = attempt(ledger, start=1.5)
    assert (again.kind, again.by, again.backoff) == ("first", "app", 0.5)


def test_a_refused_attempt_is_no_failure_and_no_retry() -> None:
    ledger = Ledger("t")
    ledger.close(attempt(ledger, kind="retry", source="refused"), 0.0, "LLMEndpointUnavailable", Category.REFUSED)
    stats = ledger.stats()
    assert (stats.refused, stats.failures, stats.retries, ledger.counted_failures) == (1, 0, 0, 0)


REPLAY_AND_MISS = """
import os
import openai
import pytest
from pytest_llm_guard import LLMCassetteMiss

HELLO = [{"role": "user", "content": "hello there"}]

def test_replay(llm_client, llm_guard):
    llm_client.chat.completions.create(model="m", messages=HELLO)
    s = llm_guard.stats
    if os.environ["PHASE"] == "replay":
        assert (s.calls, s.attempts, s.replayed, s.live, s.network_seconds) == (1, 1, 1, 0, 0.0)
    else:
        assert (s.calls, s.attempts, s.recorded, s.live) == (1, 1, 1, 0) and s.network_seconds > 0

def test_miss(llm_client, llm_guard):
    if os.environ["PHASE"] == "record":
        return
    with pytest.raises(LLMCassetteMiss):
        llm_client.chat.completions.create(model="m", messages=HELLO)
    s = llm_guard.stats
    assert (s.calls, s.attempts, s.refused, s.live, s.network_seconds) == (1, 1, 1, 0, 0.0)
"""


def test_a_replay_spends_no_network_time_and_a_miss_is_a_refused_attempt(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_app=REPLAY_AND_MISS)
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("PHASE", "record")
        pytester.runpytest("--llm-record=once").assert_outcomes(passed=2)
    monkeypatch.setenv("PHASE", "replay")
    result = pytester.runpytest("--llm-record=none")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["2 guarded tests: 2 LLM calls, 2 attempts (1 replayed, 1 refused),*0.00 s on the network*"]
    )
