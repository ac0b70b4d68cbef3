"""The end-to-end set: guarded clients against the fault server, in real (scaled) time.

These tests measure wall-clock time on purpose: a hang or a trickle is cut by real
socket timeouts and the real alarm, which no fake clock can stand in for. Time is
measured from the guard's own start (``llm_guard.budget.elapsed()``), so fixture
set-up on a loaded machine does not shift it, and the bounds are the promise users
read in the README: a test ends by its deadline + 1 s. Timing logic (backoff,
Retry-After, caps, cooldowns) is tested on a fake clock elsewhere; the other modules
that measure real time are the alarm's (``test_deadline.py``), the fault server's own
(``test_fault.py``, ``test_fault_anthropic.py``) and the fault matrix (``test_fault_matrix.py``).
"""

from __future__ import annotations

import openai
import pytest
from test_cassettes import cassette, interactions
from test_routing import CALL_TIMEOUT, call_reports, calls_file, project

from pytest_llm_guard import LLMBudgetExceeded
from pytest_llm_guard.fault import Fault, FaultServer

pytest_plugins = ["pytester"]

HELLO = [{"role": "user", "content": "hello there"}]
DEADLINE = 1.0


def ask(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, **kwargs)


@pytest.mark.llm_budget(deadline=DEADLINE)
def test_hang_is_cut_at_the_deadline(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(then=Fault.hang())
    with pytest.raises(LLMBudgetExceeded) as info:
        ask(llm_client, timeout=60)
    assert DEADLINE - 0.01 <= llm_guard.budget.elapsed() < DEADLINE + 1.0  # the alarm may fire 1 ms early
    assert info.value.budget == "deadline"
    assert "ReadTimeout" in str(info.value)


@pytest.mark.llm_budget(deadline=DEADLINE)
def test_trickling_body_is_cut_at_the_deadline(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    # ~300 bytes at one byte per 50 ms would take 15 s; the SDK's read timeout never fires.
    llm_fault_server.plan(then=Fault.trickle(interval=0.05, chunk_size=1))
    with pytest.raises(LLMBudgetExceeded, match="while the response was still arriving"):
        ask(llm_client, timeout=60)
    assert llm_guard.budget.elapsed() < DEADLINE + 1.0


@pytest.mark.llm_budget(deadline=DEADLINE)
async def test_async_hang_is_cut_at_the_deadline(async_llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(then=Fault.hang())
    with pytest.raises(LLMBudgetExceeded):
        await async_llm_client.chat.completions.create(model="m", messages=HELLO, timeout=60)
    assert llm_guard.budget.elapsed() < DEADLINE + 1.0


def test_retry_after_is_waited_out_in_real_time(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(429, retry_after=0.3))
    ask(llm_client)
    first, second = llm_fault_server.requests
    assert second.time - first.time >= 0.3, "the server saw the pause it asked for"
    assert llm_guard.stats.backoff_seconds >= 0.3


def test_recording_hands_chunks_on_as_they_arrive(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, primary: FaultServer
) -> None:
    # About 670 bytes a second: the first event is in after ~0.25 s, the whole stream only after ~2.4 s.
    # A recorder that buffers the body (as plain vcrpy does) could not return the first chunk in time.
    primary.plan(Fault.trickle(interval=0.03, chunk_size=20))
    monkeypatch.setenv("OPENAI_BASE_URL", primary.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makepyfile(
        """
        import time
        def test_first_chunk(llm_client):
            started = time.monotonic()
            stream = llm_client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "a b c d e f g h"}], stream=True
            )
            next(iter(stream))
            assert time.monotonic() - started < 1.2
            stream.close()
        """
    )
    pytester.runpytest("--llm-record=once").assert_outcomes(passed=1)
    recorded = interactions(cassette(pytester, "test_recording_hands_chunks_on_as_they_arrive", "test_first_chunk"))
    assert recorded[0]["response"]["body"]["string"].endswith("data: [DONE]\n\n")  # read on after close, whole


# Breakers and failover across the tests of a session (fixtures and helpers: test_routing.py).


def test_done_when_primary_hangs_20_tests_of_3_calls_cost_one_trip(
    pytester: pytest.Pytester, primary: FaultServer, backup: FaultServer
) -> None:
    primary.plan(then=Fault.hang())
    project(pytester, primary, backup)
    pytester.makepyfile(test_app=calls_file(tests=20, calls=3))
    result = pytester.runpytest("-o", "log_cli=true", "-o", "log_cli_level=WARNING")
    result.assert_outcomes(passed=20)
    assert len(primary.requests) == 3, "three timeouts trip the breaker; nothing waits on the primary after"
    assert len(backup.requests) == 60
    durations = sorted(r.duration for r in call_reports(result))
    assert sum(durations[:-1]) < 1.5, f"19 tests after the trip should take milliseconds each: {durations}"
    assert durations[-1] < 3 * CALL_TIMEOUT + 0.5
    result.stdout.fnmatch_lines(
        [
            "20 guarded tests: 60 LLM calls, 63 attempts (63 live), 0 retries, 3 failovers, 3 failed attempts;*",
            "endpoint primary (*) model gpt-test: tripped 1x*",
        ]
    )
    assert result.stdout.str().count("failover primary -> backup") == 3, "one log line per failover"


@pytest.mark.parametrize("on_open", ["fail", "skip"])
def test_everything_down_each_test_ends_fast_naming_the_open_breaker(
    pytester: pytest.Pytester, primary: FaultServer, backup: FaultServer, on_open: str
) -> None:
    primary.plan(then=Fault.hang())
    backup.plan(then=Fault.status(503))
    project(pytester, primary, backup, options="breaker_failures = 2")
    pytester.makepyfile(test_app=calls_file(tests=10, calls=1))
    result = pytester.runpytest(f"--llm-on-open={on_open}", "-rs")
    reports = call_reports(result)
    refused = [r for r in reports if "no endpoint can take this request" in str(r.longrepr)]
    assert len(refused) >= 8 and all(getattr(r, on_open + "ed" if on_open == "fail" else "skipped") for r in refused)
    durations = [r.duration for r in refused]
    assert max(durations) < 0.5 and sum(durations) < 1.0, durations  # milliseconds each, bar a scheduling hiccup
    assert len(primary.requests) == 2 and len(backup.requests) == 2
    reason = str(refused[-1].longrepr)
    assert "primary (http://" in reason and "breaker open since" in reason and "ReadTimeout" in reason
    assert "backup (http://" in reason and "HTTP 503" in reason and "next probe at" in reason
    assert f"on_open={on_open} (set by the command line)" in reason


def test_429_retry_after_is_honoured_by_the_next_test(pytester: pytest.Pytester, primary: FaultServer) -> None:
    primary.plan(Fault.status(429, retry_after=0.5, should_retry=False))
    project(pytester, primary, call_timeout=10)  # nothing hangs here: no timeout on a busy machine
    pytester.makepyfile(
        test_app="""
        import openai, pytest

        MESSAGES = [{"role": "user", "content": "hi"}]

        def test_first_is_rate_limited(llm_client):
            with pytest.raises(openai.RateLimitError):
                llm_client.chat.completions.create(model="gpt-test", messages=MESSAGES)

        def test_second_waits_for_the_retry_after(llm_client, llm_guard):
            llm_client.chat.completions.create(model="gpt-test", messages=MESSAGES)
            assert 0 < llm_guard.stats.backoff_seconds <= 0.5  # what was left of the 429's Retry-After
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)
    first, second = primary.requests
    assert second.time - first.time >= 0.5
