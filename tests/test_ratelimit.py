"""Shared rate limits (ratelimit.py): the arithmetic, the turn before a request is sent, the shared store.

The arithmetic and the routing layer run on a FakeClock (waits are exact and take no time); the
store is shared by two real processes; one pytester run per mode crosses xdist against a fault-server
route that answers 429 beyond N requests per second.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from routed import routed_test

from pytest_llm_guard import FakeClock, report
from pytest_llm_guard.config import Settings, load_settings
from pytest_llm_guard.dialects import for_kind
from pytest_llm_guard.endpoints import Endpoint, EndpointSet, load_endpoints
from pytest_llm_guard.errors import LLMGuardConfigError, LLMNoEndpoint
from pytest_llm_guard.fault import FaultServer
from pytest_llm_guard.guard import Guard
from pytest_llm_guard.ledger import Attempt, attribution
from pytest_llm_guard.ratelimit import Limit, RateLimiter, Turn, correct, limits, take
from pytest_llm_guard.routing import Router
from pytest_llm_guard.state import MemoryStore, SqliteStore

NOW = 1_800_000_000.0


def rpm(per_minute: float, burst: float = 1) -> Limit:
    return Limit("rpm", per_minute, burst)


def tpm(per_minute: float) -> Limit:
    return Limit("tpm", per_minute, per_minute)


# -- the arithmetic ---------------------------------------------------------------------------


def test_rpm_spaces_requests_60_over_rpm_apart_and_frees_turns_as_time_passes() -> None:
    record: dict[str, Any] = {}
    waits = [take(record, [(rpm(60), 1)], NOW, max_wait=100).wait for _ in range(3)]
    assert waits == [0.0, 1.0, 2.0], "each request waits for the turn after the ones taken before it"
    assert take(record, [(rpm(60), 1)], NOW + 10, max_wait=100).wait == 0.0, "idle time frees the turns"


def test_a_burst_goes_at_once_then_the_rest_is_spaced() -> None:
    record: dict[str, Any] = {}
    waits = [take(record, [(rpm(120, burst=3), 1)], NOW, max_wait=100).wait for _ in range(5)]
    assert waits == [0.0, 0.0, 0.0, 0.5, 1.0]


def test_tpm_counts_tokens_a_minute_of_them_at_once() -> None:
    record: dict[str, Any] = {}
    assert take(record, [(tpm(600), 500)], NOW, max_wait=100).wait == 0.0
    turn = take(record, [(tpm(600), 200)], NOW, max_wait=100)
    assert (turn.wait, turn.by) == (pytest.approx(10.0), tpm(600)), "100 tokens over the minute's 600, at 10/s"


def test_the_longer_of_rpm_and_tpm_sets_the_wait() -> None:
    record: dict[str, Any] = {}
    both = [(rpm(60), 1), (tpm(6000), 3000)]
    assert take(record, both, NOW, max_wait=100).wait == 0.0
    turn = take(record, both, NOW, max_wait=100)
    assert (turn.wait, str(turn.by)) == (pytest.approx(1.0), "rpm 60")
    turn = take(record, both, NOW, max_wait=100)
    assert (turn.wait, str(turn.by)) == (pytest.approx(30.0), "tpm 6000")


def test_the_usage_gives_back_or_charges_what_the_estimate_missed() -> None:
    record: dict[str, Any] = {}
    take(record, [(tpm(600), 500)], NOW, max_wait=100)
    correct(record, tpm(600), 20 - 500, NOW)  # the answer said 20 tokens
    assert take(record, [(tpm(600), 500)], NOW, max_wait=100).wait == 0.0, "480 tokens given back"
    correct(record, tpm(600), 300, NOW)  # this one cost 800
    assert take(record, [(tpm(600), 10)], NOW, max_wait=100).wait == pytest.approx(23.0), "(20+800+10-600)/10 s"


def test_a_turn_too_far_away_is_refused_and_takes_nothing() -> None:
    record: dict[str, Any] = {}
    take(record, [(rpm(60), 1)], NOW, max_wait=5)
    before = dict(record)
    turn = take(record, [(rpm(60), 1)], NOW, max_wait=1.0)
    assert (turn.refused, turn.wait, str(turn.by)) == (True, 1.0, "rpm 60")
    assert record == before, "a refused request holds no turn"
    assert not take(record, [(rpm(60), 1)], NOW, max_wait=1.5).refused


def test_the_options_are_every_endpoints_limits_unless_it_has_its_own() -> None:
    settings, _ = load_settings(
        pyproject=None, ini={}, ini_source="pytest.ini", cli={"rpm": "600"}, environ={"LLM_GUARD_TPM": "90000"}
    )
    plain = Endpoint("plain", "http://127.0.0.1:1/v1")
    own = Endpoint("own", "http://127.0.0.1:1/v1", rpm=60, rpm_burst=5)
    assert limits(plain, settings, "pyproject.toml") == (
        Limit("rpm", 600, 1, "the command line"),
        Limit("tpm", 90000, 90000, "the environment (LLM_GUARD_*)"),
    )
    assert limits(own, settings, "pyproject.toml")[0] == Limit("rpm", 60, 5, "endpoint own in pyproject.toml")
    assert limits(plain, Settings(), "pyproject.toml") == (), "no limit unless one is set"


def test_a_retry_after_waited_first_counts_toward_the_turn() -> None:
    limiter = RateLimiter(MemoryStore(), FakeClock(), "the test")
    endpoint = Endpoint("api", "http://127.0.0.1:1/v1", rpm=60)

    def turn(after: float, max_wait: float = 10.0) -> Turn:
        attempt = Attempt("t", 1, 1, "first", "http://127.0.0.1:1", "/v1/chat/completions", "m", 0.0, 0.0)
        return limiter.turn(endpoint, "m", lambda: 0, attempt, Settings(), after=after, max_wait=max_wait)

    assert turn(0.0).wait == 0.0
    assert turn(0.4).wait == pytest.approx(0.6), "its turn is 1 s away, 0.4 s of it spent on the Retry-After"
    assert turn(3.0).wait == 0.0, "a Retry-After longer than the turn's wait leaves none"
    refused = turn(0.5, max_wait=1.0)
    assert refused.refused and refused.wait == pytest.approx(3.5), "the turn after that is at +4 s"


# -- the estimate, per dialect ------------------------------------------------------------------


def test_the_estimate_is_the_prompts_characters_over_4_plus_the_answers_cap() -> None:
    openai_dialect, anthropic_dialect = for_kind("openai"), for_kind("anthropic")
    text = "x" * 400  # 100 tokens
    chat = {"model": "m", "messages": [{"role": "user", "content": text}], "max_completion_tokens": 50}
    assert openai_dialect.estimated_tokens(chat) == 101 + 50  # "user" is read too
    responses = {"model": "m", "input": text, "instructions": "y" * 40, "max_output_tokens": 7}
    assert openai_dialect.estimated_tokens(responses) == 110 + 7
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}
    parts = {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": text}, image]}]}
    assert openai_dialect.estimated_tokens(parts) < 200, "an inline image is left to the usage, not read as text"
    messages = {"model": "m", "system": "s" * 40, "messages": [{"role": "user", "content": text}], "max_tokens": 9}
    assert anthropic_dialect.estimated_tokens(messages) == 111 + 9
    assert openai_dialect.estimated_tokens(None) == 0


# -- before the send, on the test's clock --------------------------------------------------------


class Harness:
    """A session's router on a FakeClock, with one endpoint (the fault server) limited as asked."""

    def __init__(self, server: FaultServer, **limits: Any) -> None:
        self.clock = FakeClock()
        self.server = server
        endpoints = EndpointSet((Endpoint("api", server.base_url, **limits),), configured=True, source="the test")
        self.router = Router(endpoints, MemoryStore(), Settings(), clock=self.clock)

    def test(self, **settings: Any) -> AbstractContextManager[tuple[Guard, openai.OpenAI]]:
        return routed_test(self.router, self.server.base_url, "test_ratelimit::case", self.clock, **settings)


def ask(client: openai.OpenAI, **extra: Any) -> str:
    messages = [{"role": "user", "content": "hello there"}]
    return client.chat.completions.create(model="gpt-test", messages=messages, **extra).choices[0].message.content


def test_a_request_waits_its_turn_on_the_tests_clock_and_the_story_tells_it(server: FaultServer) -> None:
    harness = Harness(server, rpm=60)
    with harness.test() as (guard, client):
        for _ in range(3):
            assert ask(client) == "echo: hello there"
    assert harness.clock.slept == [1.0, 1.0]
    first, second, third = guard.events
    assert (first.limit_wait, second.limit_wait, third.limit_by) == (0.0, 1.0, "rpm 60")
    assert second.backoff == 0.0, "a turn waited for is no backoff"
    assert "after waiting 1.00 s its turn under rpm 60" in "\n".join(report.attempt_lines(guard.events))
    parts = attribution([a.to_dict() for a in guard.events], duration=5.0)
    assert {"what": "rate-limit wait", "seconds": 2.0} in parts, "where the time went names the waits"


async def test_an_async_request_waits_its_turn_too(server: FaultServer) -> None:
    harness = Harness(server, rpm=30)
    with harness.test() as (guard, _):
        client = guard.fixture_client(openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test"))
        for _ in range(2):
            await client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
        await client.close()
    assert harness.clock.slept == [2.0]
    assert [a.limit_wait for a in guard.events] == [0.0, 2.0]


def test_a_turn_past_the_tests_time_left_fails_at_once_naming_the_limit(server: FaultServer) -> None:
    harness = Harness(server, rpm=60)
    with harness.test(deadline=1.5) as (guard, client):
        ask(client)
        ask(client)  # its turn is 1 s away: it fits
        with pytest.raises(LLMNoEndpoint) as refused:
            ask(client)  # 1 s away again, 0.5 s left
    assert harness.clock.slept == [1.0], "nothing was waited for a turn that could not come in time"
    assert len(server.requests) == 2
    message = str(refused.value)
    told = ("api (", "rpm 60", "model gpt-test", "its turn in 1.0 s", "0.5 s left", "raise the test's deadline")
    for words in told:
        assert words in message, message
    assert guard.events[-1].source == "refused"


def test_the_answers_usage_gives_back_the_estimated_tokens(server: FaultServer) -> None:
    harness = Harness(server, tpm=1200)
    with harness.test() as (guard, client):
        ask(client, max_completion_tokens=1000)  # estimated at 1000 + the prompt; used about 10
        ask(client, max_completion_tokens=1000)
    assert harness.clock.slept == [], "the first answer's usage gave back what its estimate held"
    assert all(a.tokens and a.tokens < 50 for a in guard.events)
    tat = harness.router.store.get("ratelimit:api:gpt-test")["tpm"]
    used = sum(a.tokens or 0 for a in guard.events)
    assert tat == pytest.approx(harness.clock.wall() + used * 60 / 1200), "the limit holds what was used, no more"


def test_endpoint_keys_are_checked() -> None:
    raw = [{"name": "api", "base_url": "http://127.0.0.1:1/v1", "rpm": 600, "tpm": 90000, "rpm_burst": 5}]
    endpoint = load_endpoints(raw, "pyproject.toml", base_url=None, environ={}).endpoints[0]
    assert (endpoint.rpm, endpoint.tpm, endpoint.rpm_burst) == (600, 90000, 5)
    for key, bad in (("rpm", 0), ("tpm", "lots"), ("rpm_burst", 0.5)):
        with pytest.raises(LLMGuardConfigError, match=f"{key} = .* is not valid; {key} must be"):
            load_endpoints([{**raw[0], key: bad}], "pyproject.toml", base_url=None, environ={})


# -- shared: two processes on one SQLite store ---------------------------------------------------

_TAKER = """
import json, sys
from pytest_llm_guard.ratelimit import Limit, take
from pytest_llm_guard.state import SqliteStore
store = SqliteStore(__import__("pathlib").Path(sys.argv[1]))
limit = Limit("rpm", 60, 1)
turns = [store.update("ratelimit:api:m", lambda r: take(r, [(limit, 1)], 1_800_000_000.0, 1000)) for _ in range(40)]
waits = [turn.wait for turn in turns]
print(json.dumps(waits))
"""


def test_two_processes_never_take_the_same_turn(tmp_path: Path) -> None:
    path = tmp_path / SqliteStore.FILENAME
    SqliteStore(path).close()  # created once, as the xdist controller does
    takers = [subprocess.Popen([sys.executable, "-c", _TAKER, str(path)], stdout=subprocess.PIPE) for _ in range(2)]
    waits = [wait for taker in takers for wait in json.loads(taker.communicate(timeout=60)[0])]
    assert sorted(waits) == [float(n) for n in range(80)], "80 turns 1 s apart, each taken once"


# -- through xdist: a fault server that answers 429 beyond N requests a second -------------------

PER_SECOND = 12
RPM = 420  # 7 a second: room for a request's way from its turn to the server (0.5 s) on a busy machine


def test_four_workers_under_the_limiter_meet_no_429_and_many_without(
    pytester: pytest.Pytester, primary: FaultServer, backup: FaultServer
) -> None:
    """One session, two endpoints on two servers answering 429 beyond the same N a second: 40 tests go to
    the one without a limit first, then 40 to the one whose rpm is set below N. The first 40 ask twice (a
    429 ends the test), so that even a busy machine's 4 workers pass N a second without a limiter."""
    pytester.makepyprojecttoml(
        f'[tool.pytest_llm_guard]\nrecord = "off"\nretries = 0\n\n'
        f'[[tool.pytest_llm_guard.endpoints]]\nname = "free"\nbase_url = "{backup.url}/limit-{PER_SECOND}/v1"\n\n'
        f'[[tool.pytest_llm_guard.endpoints]]\nname = "limited"\nbase_url = "{primary.url}/limit-{PER_SECOND}/v1"\n'
        f"rpm = {RPM}\n"
    )
    pytester.makepyfile(
        test_app="""
        import pytest

        def ask(llm_client):
            llm_client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])

        @pytest.mark.llm_breaker(endpoints=["free"])
        @pytest.mark.parametrize("n", range(40))
        def test_free(llm_client, n):
            ask(llm_client)
            ask(llm_client)

        @pytest.mark.llm_breaker(endpoints=["limited"])
        @pytest.mark.parametrize("n", range(40))
        def test_limited(llm_client, n):
            ask(llm_client)
        """
    )
    result = pytester.runpytest_subprocess("-n", "4", "-p", "xdist", "--llm-report=report.json")

    def throttled(server: FaultServer) -> int:
        return sum(1 for r in server.requests if getattr(r.fault, "code", None) == 429)

    def per_second(server: FaultServer) -> list[int]:
        start = min(r.time for r in server.requests)
        return list(collections.Counter(int(r.time - start) for r in server.requests).values())

    assert (len(primary.requests), throttled(primary)) == (40, 0), (per_second(primary), result.stdout.str())
    assert throttled(backup) >= 3, f"requests a second to the endpoint without a limit: {per_second(backup)}"
    times = sorted(r.time for r in primary.requests)
    assert times[-1] - times[0] >= (40 - 1) * 60 / RPM * 0.8, "the turns spread the requests over the limit's time"
    result.stdout.fnmatch_lines(["endpoint limited: waited * s on shared rate limits (* attempts)"])
    report = json.loads((pytester.path / "report.json").read_text())
    jsonschema.validate(report, json.loads((Path(__file__).parent.parent / "docs" / "report-schema.json").read_text()))
    waited = {e["name"]: e["rate_limit_wait"]["seconds"] for e in report["endpoints"]}
    assert waited["free"] == 0 and waited["limited"] > 1.0
    assert sum(1 for t in report["tests"] if t["outcome"] == "passed" and "limited" in t["nodeid"]) == 40


@pytest.mark.parametrize("own", [{}, {"rpm": 60.0}, {"tpm": 1000.0}, {"rpm": 60.0, "tpm": 1000.0}])
@pytest.mark.parametrize("options", [{}, {"rpm": 30.0}, {"tpm": 500.0}])
def test_settings_say_an_endpoint_is_rate_limited_exactly_when_it_has_limits(
    own: dict[str, float], options: dict[str, float]
) -> None:
    """The routing layer asks ``Endpoint.rate_limited`` first, and looks limits up (loading this module)
    only when it says so: the two must agree."""
    endpoint = Endpoint("e", "http://127.0.0.1:9/v1", **own)
    settings = Settings(**options)
    assert endpoint.rate_limited(settings) is bool(limits(endpoint, settings, "the test"))
