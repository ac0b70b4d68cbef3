"""What a person reads when the guard ends a test: the true cause, every attempt, the right knob, our frames hidden."""

from __future__ import annotations

import openai
import pytest

from pytest_llm_guard import LLMBudgetExceeded
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.ledger import Attempt
from pytest_llm_guard.report import describe, plural

pytest_plugins = ["pytester"]

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.mark.parametrize(
    ("count", "word", "expected"),
    [
        (1, "failed attempt", "1 failed attempt"),
        (2, "failed attempt", "2 failed attempts"),
        (0, "retry", "0 retries"),
        (1, "retry", "1 retry"),
        (3, "LLM call", "3 LLM calls"),
        (1, "guarded test", "1 guarded test"),
    ],
)
def test_plurals(count: int, word: str, expected: str) -> None:
    assert plural(count, word) == expected


def test_an_attempt_line_says_what_happened_and_what_cut_it() -> None:
    attempt = Attempt("t", 1, 2, "retry", "http://h", "/v1/chat/completions", "m", 10.0, 0.0, end=10.5)
    attempt.outcome, attempt.cause, attempt.backoff = "ReadTimeout", "call_timeout", 0.25
    assert describe(attempt) == (
        "http://h/v1/chat/completions model=m: ReadTimeout after 0.50 s, cut at its call_timeout, after 0.25 s backoff"
    )


@pytest.mark.llm_budget(call_timeout=0.5, retries=0, deadline=10)
def test_an_attempt_cut_by_call_timeout_names_call_timeout_not_retries(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer
) -> None:
    llm_fault_server.plan(then=Fault.trickle(interval=0.05, chunk_size=1))
    with pytest.raises(LLMBudgetExceeded) as info:
        llm_client.chat.completions.create(model="m", messages=HELLO, timeout=60)
    message = str(info.value)
    assert info.value.budget == "call_timeout"
    assert "1 failed attempt, the last cut at its call_timeout" in message
    assert "limit call_timeout=0.5 s" in message
    assert "What to do: raise `call_timeout`" in message
    assert message.index("Attempts (1):") < message.index("see the attempts above")


@pytest.mark.llm_budget(call_timeout=0.5, retries=1, deadline=10)
def test_a_hang_cut_by_call_timeout_is_named_as_such(llm_client: openai.OpenAI, llm_fault_server: FaultServer) -> None:
    llm_fault_server.plan(then=Fault.hang())
    with pytest.raises(LLMBudgetExceeded) as info:
        llm_client.chat.completions.create(model="m", messages=HELLO, timeout=60)
    assert info.value.budget == "call_timeout"
    assert str(info.value).count("ReadTimeout") == 2 and "2 failed attempts" in str(info.value)


@pytest.mark.llm_budget(retries=0)
def test_an_error_the_client_timeout_did_not_cause_keeps_retries_as_the_cause(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer
) -> None:
    llm_fault_server.plan(then=Fault.status(503))
    with pytest.raises(LLMBudgetExceeded) as info:
        llm_client.chat.completions.create(model="m", messages=HELLO)
    assert info.value.budget == "retries"
    assert "1 failed attempt charged to retries (limit retries=0" in str(info.value)


ASYNC_HANG = """
import openai
import pytest
from pytest_llm_guard.fault import Fault

@pytest.mark.asyncio
@pytest.mark.llm_budget(deadline=0.5)
async def test_turn(llm_fault_server):
    llm_fault_server.plan(then=Fault.hang())
    client = openai.AsyncOpenAI(base_url=llm_fault_server.base_url, api_key="sk-app", max_retries=0)
    try:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], timeout=60)
    finally:
        await client.close()
"""


def test_an_async_failure_shows_only_the_tests_frames(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_async=ASYNC_HANG)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    result.stdout.fnmatch_lines(["Where the LLM call was made:", "test_async.py:*: in test_turn"])
    for hidden in ("asyncio", "pytest_asyncio", "concurrent", "_pytest", "openai/", "httpx2"):
        assert f"{hidden}" not in output.split("Where the LLM call was made:")[1].split("=====")[0], hidden


REFUSED_KEY = """
import time
import openai
import pytest
from pytest_llm_guard.fault import Fault

@pytest.mark.llm_budget(retries=1)
def test_agent(llm_fault_server, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", "sk-expired-0000")
    llm_fault_server.plan(then=Fault.status(401))
    client = openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-expired-0000", max_retries=0)
    for attempt in range(5):  # the naive loop retries even a 401
        try:
            return client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        except Exception:
            time.sleep(0.01)
"""


def test_a_refused_key_is_named_with_the_variable_it_came_from(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_key=REFUSED_KEY)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    output = result.stdout.str()
    assert "HTTP 401 (the endpoint refused the credentials; the key came from MY_LLM_KEY)" in output
    assert "What to do: fix the credentials" in output and "answer faster" not in output
    assert "sk-expired-0000" not in output


def _refused(number: int, seconds_left: float, by: str | None = "app") -> Attempt:
    attempt = Attempt("t", number, 1, "first", "http://h", "/v1/chat/completions", "m", float(number), 0.0)
    attempt.source, attempt.outcome, attempt.by = "refused", "LLMEndpointUnavailable", by
    attempt.error = (
        f"default (http://h/v1): breaker open since 08:00:00.0; next probe at 08:00:30.0 (in {seconds_left} s)"
    )
    return attempt


def test_a_refusal_told_in_full_once_is_referred_to_by_the_attempts_that_meet_it_again() -> None:
    from pytest_llm_guard.report import attempt_lines

    lines = attempt_lines([_refused(1, 29.5, by=None), _refused(2, 29.1), _refused(3, 28.0)])
    assert lines[1].endswith("refused, not sent (LLMEndpointUnavailable: default (http://h/v1): breaker open since "
                             "08:00:00.0; next probe at 08:00:30.0 (in 29.5 s))")  # fmt: skip
    assert lines[2] == (
        "  2. call 2, a new call by the app after a failure: http://h/v1/chat/completions model=m: "
        "refused, not sent (LLMEndpointUnavailable: the same as attempt 1)"
    )
    assert lines[3].endswith("(LLMEndpointUnavailable: the same as attempt 1)")


def test_a_deadline_spent_asking_an_open_breaker_again_says_the_retry_loop_caught_the_refusal() -> None:
    from pytest_llm_guard.config import Settings
    from pytest_llm_guard.ledger import Ledger
    from pytest_llm_guard.report import budget_message

    ledger = Ledger("t")
    for attempt in (_refused(1, 29.5, by=None), _refused(2, 29.1)):
        ledger.attempts.append(attempt)
    text = budget_message("deadline", "the deadline passed", Settings(), ledger, elapsed=4.0, in_call=False)
    assert "What to do: 2 attempts were refused at once by an open breaker, and the code kept asking: " \
        "the refusal reaches it as its SDK's APIConnectionError (on_open=fallback), which its retry loop caught. " \
        "Give APIConnectionError a fallback instead of a retry" in text  # fmt: skip
