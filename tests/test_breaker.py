"""The endpoint health state machine, driven by a fake clock: nothing sleeps, nothing is sent."""

from __future__ import annotations

import re

import httpx2
import pytest

from pytest_llm_guard.breaker import EndpointHealth, Outcome, classify
from pytest_llm_guard.config import LLMGuardConfigError, Settings
from pytest_llm_guard.errors import LLMBudgetExceeded

F, S, T, N = Outcome.FAILURE, Outcome.SUCCESS, Outcome.THROTTLED, Outcome.NEUTRAL
POLICY = Settings(
    breaker_failures=3,
    breaker_failure_rate=0.5,
    breaker_window=10,
    breaker_min_calls=6,
    breaker_cooldown=30,
    breaker_cooldown_max=100,
)
MODEL = "gpt-test"


def admit(health: EndpointHealth, now: float, *, retry: bool = False, lease: float = 5.0, policy=POLICY):
    return health.admit(MODEL, now, policy, retry=retry, lease=lease)


def feed(health: EndpointHealth, outcomes: list[Outcome], now: float = 0.0, policy=POLICY) -> None:
    for outcome in outcomes:
        health.record(MODEL, outcome, now, policy, error="ReadTimeout" if outcome is F else None)


def state(health: EndpointHealth) -> str:
    return health.breaker(MODEL).state


def test_trips_after_consecutive_failures() -> None:
    health = EndpointHealth()
    feed(health, [F, F])
    assert state(health) == "closed" and admit(health, 1).ok
    feed(health, [F])
    assert state(health) == "open"
    verdict = admit(health, 1)
    assert not verdict.ok
    assert "breaker open" in verdict.reason and "after 3 consecutive failures" in verdict.reason
    assert "ReadTimeout" in verdict.reason and "next probe at" in verdict.reason and "in 29.0 s" in verdict.reason


def test_each_last_error_starts_with_its_time_so_commas_in_a_message_do_not_blur_the_list() -> None:
    health = EndpointHealth()
    slow = "ReadTimeout: the server sent its headers too slowly, or not at all"
    for now in (1.0, 2.0, 3.0):
        health.record(MODEL, F, now, POLICY, error=slow)
    described = health.breaker(MODEL).describe(3.0)
    errors = described.split("; last errors: ")[1].split("; next probe at")[0]
    assert re.fullmatch(rf"\[\d\d:\d\d:\d\d\.\d\] {slow}( \[\d\d:\d\d:\d\d\.\d\] {slow}){{2}}", errors), errors


def test_a_success_resets_the_consecutive_count() -> None:
    health = EndpointHealth()
    feed(health, [F, F, S, F, F])
    assert state(health) == "closed"


def test_trips_on_failure_rate_once_enough_calls() -> None:
    health = EndpointHealth()
    feed(health, [S, F, S, F, F])  # 60 %, but only 5 calls of the 6 needed
    assert state(health) == "closed"
    feed(health, [S, F])  # 4 of 7 = 57 %, judged when a failure comes in
    assert state(health) == "open"
    assert "after 4 failures in the last 7 attempts" in health.breaker(MODEL).describe(0)


def test_failure_rate_is_over_a_sliding_window() -> None:
    health = EndpointHealth()
    feed(health, [F, S, F, S] + [S] * 10)  # old failures slide out of the 10-call window
    feed(health, [F, S, F, S])
    assert state(health) == "closed"


def test_rate_or_count_can_be_switched_off() -> None:
    only_rate = Settings(breaker_failures=None, breaker_failure_rate=0.5, breaker_window=4, breaker_min_calls=4)
    health = EndpointHealth()
    feed(health, [S, F, F], policy=only_rate)
    assert state(health) == "closed"
    feed(health, [F], policy=only_rate)  # 3 of 4
    assert state(health) == "open"


def test_half_open_lets_one_probe_through_at_a_time() -> None:
    health = EndpointHealth()
    feed(health, [F, F, F])
    assert not admit(health, 29.9).ok
    probe = admit(health, 30.0, lease=5)
    assert probe.ok and probe.probe and state(health) == "half_open"
    refused = admit(health, 31.0)
    assert not refused.ok and "a probe is in flight" in refused.reason and "in 4.0 s" in refused.reason
    assert admit(health, 35.0).ok, "a probe that never reported frees its place after its lease"


def test_successful_probe_closes() -> None:
    health = EndpointHealth()
    feed(health, [F, F, F])
    assert admit(health, 30).probe
    feed(health, [S], now=30.5)
    assert state(health) == "closed" and admit(health, 31).ok and not admit(health, 31).probe


def test_failed_probe_reopens_with_doubled_cooldown_up_to_the_cap() -> None:
    health = EndpointHealth()
    feed(health, [F, F, F], now=0)
    cooldowns = []
    now = 0.0
    for _ in range(4):
        breaker = health.breaker(MODEL)
        now = breaker.opened_at + breaker.cooldown
        assert admit(health, now).probe
        feed(health, [F], now=now)
        cooldowns.append(health.breaker(MODEL).cooldown)
    assert cooldowns == [60, 100, 100, 100]
    assert "when its probe failed (cooldown now 100 s)" in admit(health, now + 1).reason


def test_inconclusive_probe_frees_the_probe_slot() -> None:
    health = EndpointHealth()
    feed(health, [F, F, F])
    assert admit(health, 30).probe
    feed(health, [N], now=30.1)
    assert state(health) == "half_open" and admit(health, 30.2).probe


def test_late_answers_to_attempts_sent_before_the_trip_change_nothing() -> None:
    health = EndpointHealth()
    feed(health, [F, F, F])
    feed(health, [S, S])
    assert state(health) == "open"


request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


@pytest.mark.parametrize(
    ("status", "error", "expected"),
    [
        (None, httpx2.ReadTimeout("slow", request=request), F),
        (None, httpx2.ConnectError("refused", request=request), F),
        (None, httpx2.RemoteProtocolError("cut", request=request), F),
        (500, None, F),
        (503, None, F),
        (408, None, F),
        (429, None, T),
        (400, None, S),
        (401, None, S),
        (404, None, S),
        (200, None, S),
        (None, LLMBudgetExceeded("deadline", "out of time"), N),
        (None, KeyboardInterrupt(), N),
        (None, ValueError("a bug of ours"), N),
    ],
)
def test_what_counts_against_an_endpoint(status, error, expected) -> None:
    assert classify(status, error) is expected


def test_4xx_do_not_trip() -> None:
    health = EndpointHealth()
    feed(health, [S] * 10)  # what 400/401/404 are classified as
    assert state(health) == "closed"


def test_retry_after_sets_a_not_before_on_the_endpoint() -> None:
    health = EndpointHealth()
    health.record(MODEL, T, 100.0, POLICY, retry_after=2.0)
    refused = health.admit("another-model", 101.0, POLICY, retry=False, lease=5)
    assert not refused.ok and refused.wait == pytest.approx(1.0)
    assert "rate-limited until" in refused.reason and "HTTP 429 Retry-After 2 s" in refused.reason
    waited = health.admit(MODEL, 101.0, POLICY, retry=False, lease=5, max_wait=1.5)
    assert waited.ok and waited.wait == pytest.approx(1.0)
    assert admit(health, 102.0).ok and admit(health, 102.0).wait == 0
    assert state(health) == "closed", "a 429 is not a breaker failure"


def test_a_shorter_retry_after_does_not_shorten_the_cooldown() -> None:
    health = EndpointHealth()
    health.record(MODEL, T, 100.0, POLICY, retry_after=10.0)
    health.record(MODEL, T, 101.0, POLICY, retry_after=1.0)
    assert health.not_before == 110.0


def test_retry_tokens_failures_spend_successes_refund() -> None:
    policy = Settings(breaker_failures=None, breaker_failure_rate=None, retry_tokens=4, retry_token_ratio=0.5)
    health = EndpointHealth()
    assert health.admit(MODEL, 0, policy, retry=True, lease=1).ok
    feed(health, [F, F], policy=policy)  # 4 -> 2: not above half any more
    refused = health.admit(MODEL, 0, policy, retry=True, lease=1)
    assert not refused.ok and "retry budget spent (2.0 of 4 tokens" in refused.reason
    assert health.admit(MODEL, 0, policy, retry=False, lease=1).ok, "first attempts never need tokens"
    feed(health, [S], policy=policy)  # 2.5
    assert health.admit(MODEL, 0, policy, retry=True, lease=1).ok
    feed(health, [S] * 10, policy=policy)
    assert health.tokens == 4, "the bucket never holds more than its size"


def test_records_survive_the_store_round_trip() -> None:
    health = EndpointHealth()
    feed(health, [F, F, F])
    health.record(MODEL, T, 0, POLICY, retry_after=5)
    record: dict = {}
    health.dump(record)
    again = EndpointHealth.load(record)
    assert again == health


def test_peek_takes_no_probe() -> None:
    health = EndpointHealth()
    feed(health, [F, F, F])
    assert health.peek(MODEL, 30, POLICY, retry=False).ok
    assert state(health) == "open"
    assert admit(health, 30).probe


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"breaker_window": 5, "breaker_min_calls": 6},
            "breaker_min_calls = 6 (set by default) cannot exceed breaker_window = 5",
        ),
        (
            {"breaker_cooldown": 10, "breaker_cooldown_max": 5},
            "breaker_cooldown = 10 (set by default) cannot exceed breaker_cooldown_max = 5",
        ),
        (
            {"backoff_initial": 10, "backoff_max": 1},
            "backoff_initial = 10 (set by default) cannot exceed backoff_max = 1",
        ),
    ],
)
def test_inconsistent_options_are_a_usage_error(kwargs, message) -> None:
    with pytest.raises(LLMGuardConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings(**kwargs).checked()


def test_a_429_spends_no_retry_token_its_retry_after_paces_instead() -> None:
    health = EndpointHealth()
    policy = Settings(breaker_failures=None, breaker_failure_rate=None, retry_tokens=4)
    for _ in range(8):
        health.record(MODEL, Outcome.THROTTLED, 0, policy, retry_after=0.0)
    assert health.admit(MODEL, 1, policy, retry=True, lease=1).ok, "a storm of 429s leaves retries possible"
