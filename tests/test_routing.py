"""Failover routing and breakers on real fault servers.

In-process tests drive a real guard, router layer and openai client on one fake clock
(cooldowns pass without sleeping, every wait is listed in ``clock.slept``); pytester runs
check what a suite sees through the plugin, including two xdist workers sharing one
breaker. Hangs are cut by call timeouts scaled down to half a second: socket timeouts
are real. Nothing here asserts on elapsed wall-clock time (``test_end_to_end.py`` does).
"""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import openai
import pytest
from routed import routed_test

from pytest_llm_guard import FakeClock, probes, report_html, report_json
from pytest_llm_guard.config import Settings
from pytest_llm_guard.endpoints import Endpoint, EndpointSet
from pytest_llm_guard.errors import LLMBudgetExceeded, LLMNoEndpoint
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.guard import Guard
from pytest_llm_guard.routing import LLMEndpointUnavailable, Router
from pytest_llm_guard.state import MemoryStore

HELLO = [{"role": "user", "content": "hello there"}]
CALL_TIMEOUT = 0.5  # short enough to keep hang tests fast, long enough for a busy machine
PROBE_CAP = 0.2  # a test's call_timeout where a probe meets a hang: the probe ends at it (nothing waits on it)


class Harness:
    """One router for a 'session'; ``test()`` opens a guarded 'test' with a fixture-like client."""

    def __init__(self, primary: FaultServer, backup: FaultServer) -> None:
        self.clock = FakeClock()
        self.primary, self.backup = primary, backup
        endpoints = EndpointSet(
            (
                Endpoint("primary", primary.base_url, call_timeout=CALL_TIMEOUT, priority=0),
                Endpoint("backup", backup.base_url, priority=1),
            ),
            configured=True,
            source="the test",
        )
        policy = Settings(breaker_failures=2, breaker_cooldown=30, breaker_cooldown_max=100)
        self.router = Router(endpoints, MemoryStore(), policy, clock=self.clock)

    def test(self, **settings: Any) -> AbstractContextManager[tuple[Guard, openai.OpenAI]]:
        values = {"backoff_initial": 0.01, "backoff_max": 0.05, **settings}
        return routed_test(self.router, self.primary.base_url, "test_routing::case", self.clock, **values)

    def settle(self) -> bool:
        """Wait for the probes sent in the background (each ends within its cap)."""
        return self.router.prober.wait(10 * CALL_TIMEOUT)

    def trip_primary(self) -> None:
        """Two tests meet a 503 on the primary (breaker_failures=2) and fail over; its breaker is open."""
        self.primary.plan(then=Fault.status(503))
        for _ in range(2):
            with self.test() as (_, client):
                ask(client)

    def app_client(self) -> openai.OpenAI:
        """What code under test builds itself: aimed at the primary, no routing header, SDK retries off."""
        return openai.OpenAI(base_url=self.primary.base_url, api_key="sk-test", max_retries=0)


@pytest.fixture
def harness(primary: FaultServer, backup: FaultServer) -> Harness:
    return Harness(primary, backup)


def ask(client: openai.OpenAI) -> str:
    return client.chat.completions.create(model="gpt-test", messages=HELLO).choices[0].message.content


def test_hanging_primary_fails_over_without_backoff_or_retry_budget(harness: Harness) -> None:
    harness.primary.plan(then=Fault.hang())
    with harness.test(backoff_initial=5, backoff_max=5, retries=0) as (guard, client):
        assert ask(client) == "echo: hello there"
    assert sum(harness.clock.slept) == 0, "a 5 s backoff was slept before the failover"
    first, second = guard.events
    assert (first.endpoint_name, first.outcome, first.failover_to) == ("primary", "ReadTimeout", "backup")
    assert (second.endpoint_name, second.outcome, second.kind) == ("backup", "ok", "failover")
    assert second.backoff == 0.0, "no backoff slept between the two attempts"
    stats = guard.stats
    assert (stats.calls, stats.attempts, stats.retries, stats.failovers) == (1, 2, 0, 1), "a failover is not a retry"
    assert len(harness.primary.requests) == 1 and len(harness.backup.requests) == 1


def test_after_the_trip_nothing_waits_on_the_primary(harness: Harness) -> None:
    harness.primary.plan(then=Fault.hang())
    for _ in range(5):
        with harness.test() as (_, client):
            assert ask(client) == "echo: hello there"
    assert len(harness.primary.requests) == 2, "breaker_failures=2: two discoveries, then no more"
    assert len(harness.backup.requests) == 5
    assert "breaker open" in harness.router.status()[0]


def test_the_routed_request_carries_the_endpoints_address_and_nothing_of_ours(harness: Harness) -> None:
    harness.primary.plan(Fault.status(503))
    with harness.test() as (_, client):
        ask(client)
    sent = harness.backup.requests[0]
    assert not [h for h in sent.headers if "llm-guard" in h] and sent.path == "/v1/chat/completions"
    assert sent.headers["host"] == harness.backup.url.removeprefix("http://")


def test_a_due_probe_goes_beside_the_attempt_and_costs_the_test_no_timeout(harness: Harness) -> None:
    harness.trip_primary()
    harness.primary.plan(then=Fault.hang())  # still down, now hanging
    harness.clock.advance(30)
    with harness.test(call_timeout=PROBE_CAP) as (guard, client):
        assert ask(client) == "echo: hello there"
    assert [(e.endpoint_name, e.outcome) for e in guard.events] == [("backup", "ok")], "no attempt waited on the probe"
    assert guard.stats.attempts == 1 and guard.stats.failures == 0
    assert harness.settle(), "the probe ended within its cap"
    assert len(harness.primary.requests) == 3, "two trips, then the probe"
    (probe,) = guard.ledger.probes
    assert (probe.endpoint_name, probe.beside, probe.outcome) == ("primary", "backup", "ReadTimeout")
    assert "still hanging: breaker open again" in probe.describe()
    assert "when its probe failed (cooldown now 60 s)" in harness.router.status()[0]


def test_a_probe_that_succeeds_closes_the_breaker_and_later_requests_go_back(harness: Harness) -> None:
    harness.trip_primary()
    harness.primary.reset()  # healed
    harness.clock.advance(29)
    with harness.test() as (guard, client):
        ask(client)
    assert guard.events[0].endpoint_name == "backup" and not guard.ledger.probes, "still cooling down"
    harness.clock.advance(1)
    with harness.test() as (guard, client):
        ask(client)
    assert [e.endpoint_name for e in guard.events] == ["backup"], "the test's request went to the healthy endpoint"
    assert harness.settle()
    assert [p.endpoint_name for p in guard.ledger.probes] == ["primary"]
    assert "ok, breaker closed" in guard.ledger.probes[0].describe()
    assert "tripped 1x, now breaker closed" in harness.router.status()[0]
    with harness.test() as (guard, client):
        ask(client)
    assert guard.events[0].endpoint_name == "primary" and not guard.ledger.probes


def test_failed_probe_reopens_for_twice_the_cooldown(harness: Harness) -> None:
    harness.trip_primary()
    harness.clock.advance(30)
    with harness.test() as (guard, client):
        ask(client)
    assert [e.endpoint_name for e in guard.events] == ["backup"]
    assert harness.settle() and guard.ledger.probes[0].outcome == "HTTP 503"
    harness.clock.advance(59)
    with harness.test() as (guard, client):
        ask(client)
    assert [e.endpoint_name for e in guard.events] == ["backup"] and not guard.ledger.probes
    assert "when its probe failed (cooldown now 60 s)" in harness.router.status()[0]
    harness.clock.advance(1)
    with harness.test() as (guard, client):
        ask(client)
    assert harness.settle() and [p.endpoint_name for p in guard.ledger.probes] == ["primary"], "probed again"


def test_with_no_other_endpoint_available_the_probe_is_the_attempt(harness: Harness) -> None:
    harness.trip_primary()
    harness.primary.reset()
    harness.clock.advance(30)
    with harness.test(endpoints=("primary",)) as (guard, client):
        ask(client)
    assert [e.endpoint_name for e in guard.events] == ["primary"] and not guard.ledger.probes
    assert "now breaker closed" in harness.router.status()[0]
    harness.trip_primary()
    harness.primary.reset()
    harness.clock.advance(30)
    with harness.test() as (guard, _):
        harness.app_client().chat.completions.create(model="gpt-test", messages=HELLO)  # not routed: not moved
    assert [e.endpoint_name for e in guard.events] == ["primary"] and not guard.ledger.probes


def test_a_streamed_probe_is_judged_by_its_first_content(harness: Harness) -> None:
    harness.trip_primary()
    harness.primary.plan(then=Fault.stall(0))  # headers at once, then no event
    harness.clock.advance(30)
    with harness.test(call_timeout=PROBE_CAP) as (guard, client):
        chunks = client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert harness.settle() and guard.ledger.probes[0].outcome == "ReadTimeout", "a 200 without content failed it"
    harness.primary.reset()
    harness.clock.advance(60)
    with harness.test() as (guard, client):
        for _ in client.chat.completions.create(model="gpt-test", messages=HELLO, stream=True):
            pass
    assert harness.settle() and guard.ledger.probes[0].outcome == "ok"
    assert "now breaker closed" in harness.router.status()[0]


def test_the_json_report_shows_the_probe_as_a_probe(harness: Harness) -> None:
    harness.trip_primary()
    harness.clock.advance(30)
    with harness.test() as (guard, client):
        ask(client)
    harness.settle()
    record = report_json.record(guard, "test_a.py::t", "passed", 0.1, 0.0)
    assert [a["endpoint_name"] for a in record["attempts"]] == ["backup"], "the probe is no attempt of the test"
    (probe,) = record["probes"]
    assert (probe["endpoint_name"], probe["outcome"]) == ("primary", "HTTP 503")
    assert probe["text"].startswith("probe of primary (beside call 1's attempt to backup): HTTP 503, still failing")
    whole = report_json.build([record], harness.router.health(), duration=0.1)
    jsonschema.validate(whole, json.loads((Path(__file__).parent.parent / "docs" / "report-schema.json").read_text()))
    page = report_html.render(whole)
    assert '<ul class="probes"><li>probe of primary (beside call 1' in page and "still failing" in page


def test_a_failure_message_lists_the_probe_apart_from_the_attempts(harness: Harness) -> None:
    harness.trip_primary()
    harness.backup.plan(Fault.status(503))
    harness.clock.advance(30)
    with harness.test(retries=0) as (_, client), pytest.raises(LLMBudgetExceeded) as info:
        ask(client)
    assert harness.settle()
    message = str(info.value)
    assert "Attempts (1):" in message and "Breaker probes beside them, off the test's clock (1):" in message
    assert "  - probe of primary (beside call 1's attempt to backup): " in message


def test_while_vcrpy_answers_the_transport_the_probe_is_the_attempt(harness: Harness, tmp_path: Path) -> None:
    import vcr

    harness.trip_primary()
    harness.primary.reset()
    harness.clock.advance(30)
    with vcr.use_cassette(str(tmp_path / "c.yaml"), record_mode="all") as cassette, harness.test() as (guard, client):
        ask(client)
    assert [e.endpoint_name for e in guard.events] == ["primary"] and not guard.ledger.probes
    assert [r.uri for r in cassette.requests] == [harness.primary.base_url + "/chat/completions"], "one request"


def test_a_probe_sent_before_a_cassette_starts_never_reaches_it(harness: Harness, tmp_path: Path) -> None:
    import vcr

    harness.trip_primary()
    harness.primary.plan(then=Fault.hang())
    harness.clock.advance(30)
    with harness.test(call_timeout=PROBE_CAP) as (guard, client):
        ask(client)  # its probe hangs on in the background
    with vcr.use_cassette(str(tmp_path / "c.yaml"), record_mode="all") as cassette:
        assert harness.settle() and guard.ledger.probes[0].outcome == "ReadTimeout"
    assert not cassette.requests


def test_a_mocked_client_probes_through_its_mock_as_the_attempt(harness: Harness) -> None:
    primary = httpx2.URL(harness.primary.base_url).port
    failing = [True]

    def answer(request: httpx2.Request) -> httpx2.Response:  # 4xx proves an endpoint up, 503 counts against it
        down = request.url.port == primary and failing[0]
        return httpx2.Response(503 if down else 400, json={"error": {"message": "mock"}})

    def mocked(guard: Guard) -> openai.OpenAI:
        http_client = openai.DefaultHttpx2Client(transport=httpx2.MockTransport(answer))
        return guard.fixture_client(
            openai.OpenAI(base_url=harness.primary.base_url, api_key="k", http_client=http_client)
        )

    for _ in range(2):  # breaker_failures=2
        with harness.test() as (guard, _), pytest.raises(openai.BadRequestError):
            ask(mocked(guard))
    failing[0] = False
    harness.clock.advance(30)
    with harness.test() as (guard, _), pytest.raises(openai.BadRequestError):
        ask(mocked(guard))
    assert [e.endpoint_name for e in guard.events] == ["primary"] and not guard.ledger.probes
    assert not harness.primary.requests, "nothing of a mocked suite went to the network"
    assert "now breaker closed" in harness.router.status()[0]


def test_the_session_end_leaves_a_hanging_probe_which_records_nothing_after_it(harness: Harness) -> None:
    harness.trip_primary()
    harness.primary.plan(then=Fault.hang())
    harness.clock.advance(30)
    with harness.test() as (guard, client):
        ask(client)
    harness.router.close()  # the session ends while the probe hangs (its cap: the primary's call_timeout)
    assert harness.settle(), "its thread ended at its cap, its connection closed"
    assert not [t for t in threading.enumerate() if t.name.startswith(probes.THREAD)]
    assert guard.ledger.probes[0].end is None
    assert "half-open" in harness.router.status()[0], "its late answer changed nothing"


def test_everything_down_refuses_in_milliseconds_naming_the_breakers(harness: Harness) -> None:
    harness.primary.plan(then=Fault.status(503))
    harness.backup.plan(then=Fault.status(502))
    with harness.test(retries=5) as (_, client), pytest.raises(LLMNoEndpoint):
        ask(client)  # primary, backup, primary (trips), backup (trips), then nothing is left
    sent = len(harness.primary.requests), len(harness.backup.requests)
    slept = sum(harness.clock.slept)
    with harness.test() as (guard, client), pytest.raises(LLMNoEndpoint) as info:
        ask(client)
    assert (len(harness.primary.requests), len(harness.backup.requests)) == sent, "refused at once, nothing sent"
    assert sum(harness.clock.slept) == slept, "refused at once, no backoff slept"
    message = str(info.value)
    for words in ("primary (http://", "backup (http://", "breaker open since", "HTTP 503", "HTTP 502", "next probe at"):
        assert words in message
    assert "on_open=fail (set by default for llm_client): the test fails at once" in message
    assert guard.events[0].outcome == "LLMNoEndpoint"


def test_a_spent_retry_budget_counts_what_it_lists(harness: Harness) -> None:
    harness.primary.plan(then=Fault.status(503))
    harness.backup.plan(then=Fault.status(502))
    with harness.test(retries=1) as (guard, client), pytest.raises(LLMBudgetExceeded) as info:
        ask(client)  # primary, failover to backup, then a retry on the primary
    message = str(info.value)
    assert info.value.budget == "retries"
    assert "2 failed attempts charged to retries (and 1 failed attempt followed by a failover, not charged)" in message
    assert (
        "Attempts (3):" in message
        and "call 1, failover: [backup]" in message
        and "call 1, retry 2 by the guard: [primary]" in message
    )
    assert (
        "Endpoints http://127.0.0.1:" in message and "(primary), http://127.0.0.1:" in message
    )  # every endpoint tried
    assert "nothing was sent" not in message


def test_code_under_test_gets_a_connection_error_at_once_and_uncharged(harness: Harness) -> None:
    harness.trip_primary()
    requests_before = len(harness.primary.requests)
    with harness.test(retries=1) as (guard, _):
        for _ in range(3):  # the application's loop: each refusal reaches it at once, none is charged
            app = openai.OpenAI(base_url=harness.primary.base_url, api_key="sk-test")  # the SDK's max_retries=2
            with app, pytest.raises(openai.APIConnectionError) as info:
                ask(app)
            assert isinstance(info.value, LLMEndpointUnavailable) and isinstance(info.value, httpx2.ConnectError)
        message = str(info.value)
        assert "primary" in message and "breaker open" in message and "next probe at" in message
        assert "on_open=fallback (set by default for clients the code under test builds)" in message
        assert (guard.stats.refused, guard.stats.failures, guard.stats.retries) == (3, 0, 0)
        assert [e.endpoint_name for e in guard.events] == ["primary"] * 3
    assert len(harness.primary.requests) == requests_before


def test_marker_endpoints_limit_what_a_test_may_use(harness: Harness) -> None:
    with harness.test(endpoints=("backup",)) as (guard, client):
        ask(client)
        assert [e.endpoint_name for e in guard.events] == ["backup"]
        with harness.app_client() as app, pytest.raises(openai.APIConnectionError) as info:
            ask(app)
    assert "not among the endpoints this test may use" in str(info.value)
    assert harness.primary.requests == []


def test_rate_limited_primary_fails_over_at_once_despite_a_long_retry_after(harness: Harness) -> None:
    harness.primary.plan(Fault.status(429, retry_after=60))
    with harness.test(deadline=5) as (guard, client):
        ask(client)
    assert sum(harness.clock.slept) == 0, "the 60 s Retry-After was not waited out: the call failed over"
    assert [e.endpoint_name for e in guard.events] == ["primary", "backup"]
    with harness.test() as (guard, client):
        ask(client)
    assert [e.endpoint_name for e in guard.events] == ["backup"], "the primary's Retry-After is honoured"
    assert len(harness.primary.requests) == 1


def test_a_dying_endpoint_gets_no_retries_once_its_tokens_are_spent(primary: FaultServer, backup: FaultServer) -> None:
    harness = Harness(primary, backup)
    harness.router.policy = Settings(
        breaker_failures=None, breaker_failure_rate=None, retry_tokens=4, retry_token_ratio=0.1
    )
    harness.router.endpoints = EndpointSet((Endpoint("primary", primary.base_url),), True, "the test")
    primary.plan(then=Fault.status(503))
    with harness.test(retries=10) as (_, client), pytest.raises(LLMNoEndpoint) as info:
        ask(client)
    # 4 tokens: the first failure leaves 3 (> half: one retry), the retry's failure leaves 2 (not > half).
    assert len(primary.requests) == 2
    assert "retry budget spent (2.0 of 4 tokens" in str(info.value)


def test_cap_on_endpoints_tried_per_call(primary: FaultServer, backup: FaultServer) -> None:
    harness = Harness(primary, backup)
    harness.router.max_endpoints = 1
    primary.plan(Fault.status(503))
    with harness.test() as (guard, client):
        ask(client)
    assert [e.endpoint_name for e in guard.events] == ["primary", "primary"]


async def test_an_async_call_sends_its_probe_beside_it_too(harness: Harness) -> None:
    harness.trip_primary()
    harness.primary.plan(then=Fault.hang())
    harness.clock.advance(30)
    with harness.test(call_timeout=PROBE_CAP) as (guard, _):
        client = guard.fixture_client(openai.AsyncOpenAI(base_url=harness.primary.base_url, api_key="k"))
        completion = await client.chat.completions.create(model="gpt-test", messages=HELLO)
        await client.close()
    assert completion.choices[0].message.content == "echo: hello there"
    assert [e.endpoint_name for e in guard.events] == ["backup"]
    assert harness.settle() and guard.ledger.probes[0].outcome == "ReadTimeout"


async def test_async_clients_are_routed_too(harness: Harness) -> None:
    harness.primary.plan(then=Fault.hang())
    with harness.test() as (guard, _):
        client = guard.fixture_client(openai.AsyncOpenAI(base_url=harness.primary.base_url, api_key="k"))
        completion = await client.chat.completions.create(model="gpt-test", messages=HELLO)
        await client.close()
    assert completion.choices[0].message.content == "echo: hello there"
    assert [e.endpoint_name for e in guard.events] == ["primary", "backup"]


# -- through the plugin: what a suite sees ------------------------------------------------------


def project(
    pytester: pytest.Pytester, *servers: FaultServer, options: str = "", call_timeout: float = CALL_TIMEOUT
) -> None:
    """A project whose endpoints are ``servers`` in priority order (the first with a short call timeout)."""
    endpoints = "".join(
        f'\n[[tool.pytest_llm_guard.endpoints]]\nname = "{name}"\nbase_url = "{server.base_url}"\npriority = {i}\n'
        + (f"call_timeout = {call_timeout}\n" if i == 0 else "")
        for i, (name, server) in enumerate(zip(("primary", "backup"), servers, strict=False))
    )
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n\n'
        f'[tool.pytest_llm_guard]\nrecord = "off"\nbackoff_initial = 0.01\nbackoff_max = 0.05\n{options}\n{endpoints}'
    )


def calls_file(tests: int, calls: int) -> str:
    return f"""
import pytest

@pytest.mark.parametrize("n", range({tests}))
def test_calls(llm_client, n):
    for _ in range({calls}):
        reply = llm_client.chat.completions.create(model="gpt-test", messages=[{{"role": "user", "content": "hi"}}])
        assert reply.choices[0].message.content == "echo: hi"
"""


def call_reports(result: pytest.RunResult) -> list[pytest.TestReport]:
    reports = result.reprec.getreports("pytest_runtest_logreport")  # type: ignore[attr-defined]
    return [r for r in reports if r.when == "call" or (r.when == "setup" and r.skipped)]


def test_marker_chooses_endpoints_and_skips_when_they_are_down(
    pytester: pytest.Pytester, primary: FaultServer, backup: FaultServer
) -> None:
    primary.plan(then=Fault.status(500))
    project(pytester, primary, backup, options="breaker_failures = 1")
    pytester.makepyfile(
        test_app="""
        import pytest

        MESSAGES = [{"role": "user", "content": "hi"}]

        def test_trips_the_primary(llm_client):
            llm_client.chat.completions.create(model="gpt-test", messages=MESSAGES)

        @pytest.mark.llm_breaker(endpoints=["primary"], on_open="skip")
        def test_primary_only(llm_client):
            llm_client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_app.py:*: pytest-llm-guard: no endpoint can take this request*"])
    assert len(primary.requests) == 1


def test_marker_naming_an_unknown_endpoint_errors_that_test(pytester: pytest.Pytester, primary: FaultServer) -> None:
    project(pytester, primary)
    pytester.makepyfile(
        test_app="""
        import pytest

        @pytest.mark.llm_breaker(endpoints=["primray"])
        def test_typo(llm_client):
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*llm_breaker on test_app.py::test_typo names unknown endpoints 'primray'*primary*"])


def test_bad_endpoint_config_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(
        '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n'
        '[tool.pytest_llm_guard]\n[[tool.pytest_llm_guard.endpoints]]\nname = "a"\n'
    )
    pytester.makepyfile(test_app="def test_nothing(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*endpoint 1 ('a'): base_url is missing in *pyproject.toml*must be an http(s) URL*"])


@pytest.mark.parametrize(
    ("options", "outcomes", "reason"),
    [
        (
            "max_calls = 3",
            {"passed": 3, "skipped": 2},
            "3 LLM calls of max_calls=3 LLM calls (set by *), summed over the session's tests, on every worker",
        ),
        ('max_calls = 3\non_session_spent = "fail"', {"passed": 3, "errors": 2}, "remaining LLM tests fail"),
        ("max_tokens = 10", {"passed": 4, "skipped": 1}, "12 tokens of max_tokens=10 tokens"),  # 3 per call
    ],
)
def test_session_budgets_stop_the_remaining_llm_tests(
    pytester: pytest.Pytester, backup: FaultServer, options: str, outcomes: dict[str, int], reason: str
) -> None:
    project(pytester, backup, options=options)
    pytester.makepyfile(test_app=calls_file(tests=5, calls=1) + "\ndef test_no_llm():\n    pass\n")
    result = pytester.runpytest("-rsf")
    result.assert_outcomes(**{**outcomes, "passed": outcomes["passed"] + 1})
    result.stdout.fnmatch_lines([f"*session budget spent: *{reason}*"])


def test_session_deadline_from_the_command_line(pytester: pytest.Pytester, backup: FaultServer) -> None:
    project(pytester, backup)
    pytester.makepyfile(test_app=calls_file(tests=2, calls=1))
    result = pytester.runpytest("--llm-session-deadline=0.001", "-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*of session_deadline=0.001 s (set by the command line), since the session started;*"])
    assert backup.requests == []


def test_two_xdist_workers_share_one_breaker(
    pytester: pytest.Pytester, primary: FaultServer, backup: FaultServer
) -> None:
    primary.plan(then=Fault.hang())
    project(pytester, primary, backup)
    pytester.makepyfile(test_app=calls_file(tests=20, calls=1))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=20)
    # Shared: three timeouts in all trip it for both workers (the other worker may have had one request
    # in flight at that moment); nothing is sent after, the cooldown being 30 s. Each worker on a breaker
    # of its own would send three.
    assert 3 <= len(primary.requests) <= 4, [r.time for r in primary.requests]
    assert len(backup.requests) == 20
    result.stdout.fnmatch_lines(
        ["2 workers [[]20 items[]]", "*", "endpoint primary (*) model gpt-test: tripped 1x, now breaker open*"]
    )


def test_a_sessions_json_report_lists_a_probe_under_the_test_it_went_beside(
    pytester: pytest.Pytester, primary: FaultServer, backup: FaultServer
) -> None:
    primary.plan(then=Fault.hang())
    project(pytester, primary, backup, options="breaker_failures = 1\nbreaker_cooldown = 0.1", call_timeout=0.2)
    pytester.makepyfile(
        test_app="""
import time

def ask(client):
    reply = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "echo: hi"

def test_trips_the_primary(llm_client):
    ask(llm_client)

def test_after_its_cooldown(llm_client):
    time.sleep(0.15)
    ask(llm_client)
"""
    )
    result = pytester.runpytest("--llm-report=report.json")
    result.assert_outcomes(passed=2)
    tests = json.loads((pytester.path / "report.json").read_text())["tests"]
    assert [[a["endpoint_name"] for a in test["attempts"]] for test in tests] == [["primary", "backup"], ["backup"]]
    assert "probes" not in tests[0]
    (probe,) = tests[1]["probes"]
    assert (probe["endpoint_name"], probe["beside"], probe["call"]) == ("primary", "backup", 1)
    assert tests[1]["stats"]["attempts"] == 1 and tests[1]["stats"]["failures"] == 0


def test_a_plugin_can_provide_the_state_store(pytester: pytest.Pytester, backup: FaultServer) -> None:
    project(pytester, backup, options="max_calls = 5")
    pytester.makeconftest(
        """
        from pytest_llm_guard.state import MemoryStore

        STORE = MemoryStore()

        def pytest_llm_guard_state_store(config):
            return STORE
        """
    )
    pytester.makepyfile(
        test_app=calls_file(tests=2, calls=1)
        + "\ndef test_the_session_counts_went_to_our_store():\n"
        + "    from conftest import STORE\n"
        + "    assert STORE.get('session')['calls'] == 2\n"
    )
    pytester.runpytest().assert_outcomes(passed=3)
