"""The retry decisions, one table each; time is injected, nothing sleeps."""

from __future__ import annotations

import email.utils

import httpx2
import pytest
from tenacity import RetryCallState, Retrying
from tenacity.wait import wait_fixed

from pytest_llm_guard.backoff import wait_server_hint, wait_within_deadline
from pytest_llm_guard.dialects import DIALECTS, Dialect, hear
from pytest_llm_guard.ledger import CALL, Attempt, Call
from pytest_llm_guard.retry import is_retryable_error

NOW = 1_800_000_000.0


def headers(**values: str) -> httpx2.Headers:
    return httpx2.Headers({k.replace("_", "-"): v for k, v in values.items()})


@pytest.mark.parametrize(
    ("status", "hdrs", "expected"),
    [
        (400, {}, False),
        (401, {}, False),
        (403, {}, False),
        (404, {}, False),
        (422, {}, False),
        (408, {}, True),
        (409, {}, True),
        (429, {}, True),
        (500, {}, True),
        (503, {}, True),
        (529, {}, True),
        (599, {}, True),
        (503, {"x_should_retry": "false"}, False),
        (400, {"x_should_retry": "true"}, True),
        (429, {"retry_after": "121"}, False),
        (429, {"retry_after": "120"}, True),
        (200, {"x_should_retry": "true"}, False),
    ],
)
@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_should_retry_status(dialect: Dialect, status: int, hdrs: dict[str, str], expected: bool) -> None:
    """Both SDKs (Stainless-generated) retry by the same table, 529 ``overloaded_error`` included."""
    assert dialect.should_retry(status, headers(**hdrs)) is expected


@pytest.mark.parametrize(
    ("hdrs", "expected"),
    [
        ({}, None),
        ({"retry_after": "3"}, 3.0),
        ({"retry_after": "0.5"}, 0.5),
        ({"retry_after_ms": "250"}, 0.25),
        ({"retry_after_ms": "250", "retry_after": "9"}, 0.25),
        ({"retry_after_ms": "soon", "retry_after": "2"}, 2.0),
        ({"retry_after": "-4"}, 0.0),
        ({"retry_after": "garbage"}, None),
        ({"retry_after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry_after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
    ],
)
@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: d.name)
def test_parse_retry_after(dialect: Dialect, hdrs: dict[str, str], expected: float | None) -> None:
    assert dialect.retry_after(headers(**hdrs), now=lambda: NOW) == expected


request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx2.ReadTimeout("slow", request=request), True),
        (httpx2.ConnectTimeout("slow", request=request), True),
        (httpx2.ConnectError("refused", request=request), True),
        (httpx2.ReadError("reset", request=request), True),
        (httpx2.RemoteProtocolError("cut", request=request), True),
        (httpx2.UnsupportedProtocol("ftp", request=request), False),
        (httpx2.LocalProtocolError("bad header", request=request), False),
        (ValueError("bug"), False),
    ],
)
def test_is_retryable_error(error: Exception, expected: bool) -> None:
    assert is_retryable_error(error) is expected


def attempt_on(path: str = "/v1/chat/completions") -> Attempt:
    return Attempt("t", 1, 1, "first", "http://127.0.0.1", path, "m", 0.0, 0.0)


def state_after(result: object, last: Attempt | None = None) -> RetryCallState:
    """The retry state after an attempt of a guarded call answered ``result``."""
    sent = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions", extensions={CALL: Call(last=last)})
    state = RetryCallState(Retrying(), fn=None, args=(sent,), kwargs={})
    state.set_result(result)
    return state


def test_server_hint_wins_over_backoff() -> None:
    last = attempt_on()
    last.retry_after = 1.5
    assert wait_server_hint(wait_fixed(7))(state_after(httpx2.Response(429), last)) == 1.5


def test_the_hint_is_read_from_the_attempt_not_parsed_again() -> None:
    last = attempt_on()  # the dialect found no hint when the answer came in: the headers are not re-read
    response = httpx2.Response(429, headers={"retry-after": "1.5"})
    assert wait_server_hint(wait_fixed(7))(state_after(response, last)) == 7


@pytest.mark.parametrize(
    ("path", "headers"),
    [("/v1/chat/completions", {"x-stainless-lang": "python"}), ("/v1/messages", {"anthropic-version": "2023-06-01"})],
)
def test_the_responses_dialect_parses_the_hint_into_the_attempt(path: str, headers: dict[str, str]) -> None:
    request = httpx2.Request("POST", "http://127.0.0.1" + path, headers=headers)
    response = httpx2.Response(429, headers={"retry-after-ms": "250", "retry-after": "9"}, request=request)
    attempt = attempt_on(path)
    hear(attempt, response)
    assert (attempt.status, attempt.retry_after) == (429, 0.25)
    assert wait_server_hint(wait_fixed(7))(state_after(response, attempt)) == 0.25


def test_a_success_carries_no_hint() -> None:
    attempt = attempt_on()
    hear(attempt, httpx2.Response(200, headers={"retry-after": "3"}))
    assert (attempt.status, attempt.retry_after) == (200, None)


def test_backoff_used_without_hint() -> None:
    assert wait_server_hint(wait_fixed(7))(state_after(httpx2.Response(503), attempt_on())) == 7


def test_backoff_capped_to_half_the_remaining_deadline() -> None:
    assert wait_within_deadline(wait_fixed(8), remaining=lambda: 3.0)(state_after(None)) == 1.5


def test_backoff_unchanged_when_time_is_plenty() -> None:
    assert wait_within_deadline(wait_fixed(0.5), remaining=lambda: 100.0)(state_after(None)) == 0.5


def test_backoff_never_negative_after_the_deadline() -> None:
    assert wait_within_deadline(wait_fixed(0.5), remaining=lambda: -1.0)(state_after(None)) == 0.0
