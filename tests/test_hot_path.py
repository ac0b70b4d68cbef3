"""The healthy path costs almost nothing: what a guarded session and a guarded call do not do.

A session loads only the SDKs its client fixtures build; a healthy endpoint's breaker is
kept in the process (``routing.Router``): no store round trip while nothing changes, the
shared store read at most once per breaker cooldown, and every change (a failure, a
transition, a spent token, a Retry-After) written and seen at once. Stores are counted,
never timed.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from pytest_llm_guard import FakeClock, dialects
from pytest_llm_guard.breaker import EndpointHealth, Outcome
from pytest_llm_guard.config import Settings
from pytest_llm_guard.endpoints import Endpoint, EndpointSet
from pytest_llm_guard.routing import Router
from pytest_llm_guard.state import MemoryStore, Record, StateStore

pytest_plugins = ["pytester"]


def test_a_guarded_session_loads_only_the_sdks_of_the_client_fixtures_it_uses(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[set[str]] = []
    monkeypatch.setattr(dialects, "load_sdks", lambda kinds: asked.append(set(kinds)))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the fixture builds its client; nothing is sent
    pytester.makepyfile(
        """
        def test_fixture(llm_client):
            pass

        def test_guard_only(llm_guard):
            pass
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert asked == [{"openai"}], "the anthropic SDK (over a second to import) is loaded only for its fixtures"


def test_loading_sdks_imports_those_of_the_kinds_asked_only(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    monkeypatch.setattr(importlib, "import_module", imported.append)
    dialects.load_sdks({"openai"})
    assert imported == ["openai"]
    imported.clear()
    dialects.load_sdks(set())
    assert imported == []


# -- the router's copy of endpoint health -------------------------------------------------------------

POLICY = Settings(breaker_failures=3, breaker_window=10, breaker_min_calls=6, breaker_cooldown=30)
ENDPOINT = Endpoint("primary", "http://127.0.0.1:9/v1")
MODEL = "gpt-test"
S, F, N, T = Outcome.SUCCESS, Outcome.FAILURE, Outcome.NEUTRAL, Outcome.THROTTLED


class CountingStore(MemoryStore):
    """A process's store, counting its round trips."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = self.updates = 0

    def get(self, key: str) -> Record:
        self.gets += 1
        return super().get(key)

    def update(self, key: str, change: Callable[[Record], Any]) -> Any:
        self.updates += 1
        return super().update(key, change)


def router(store: StateStore, clock: FakeClock) -> Router:
    return Router(EndpointSet((ENDPOINT,), configured=True, source="the test"), store, POLICY, clock=clock)


def call(worker: Router, outcome: Outcome = S, **record: Any) -> bool:
    """One attempt: admitted? Then its outcome recorded."""
    admitted = worker.admit(ENDPOINT, MODEL, retry=False, lease=5.0).ok
    if admitted:
        worker.record(ENDPOINT, MODEL, outcome, **record)
    return admitted


def test_a_healthy_endpoint_costs_no_store_round_trip_once_its_window_is_full() -> None:
    store, clock = CountingStore(), FakeClock()
    worker = router(store, clock)
    for _ in range(POLICY.breaker_window):
        call(worker)
    assert store.updates == POLICY.breaker_window, "each success that changes the record is written"
    store.gets = store.updates = 0
    for _ in range(1000):
        assert call(worker)
        clock.advance(0.002)  # 2 s in all, inside a tenth of the cooldown (30 s)
    assert (store.gets, store.updates) == (0, 0)
    clock.advance(POLICY.breaker_cooldown / 10)
    for _ in range(100):
        call(worker)
    assert (store.gets, store.updates) == (1, 0), "the shared record is read again once per tenth of the cooldown"


class CountingClock(FakeClock):
    """A fake clock counting its readings of the time of day (what breakers keep)."""

    walls = 0

    def wall(self) -> float:
        self.walls += 1
        return super().wall()


def test_a_success_where_its_model_is_known_quiet_reads_no_clock_and_anything_else_is_judged_and_written() -> None:
    store, clock = CountingStore(), CountingClock()
    worker = router(store, clock)
    for _ in range(POLICY.breaker_window):
        call(worker)
    assert worker.quiet(ENDPOINT, MODEL), "the routing layer asks before it sends: now known quiet"
    store.updates = clock.walls = 0
    worker.record(ENDPOINT, MODEL, S)
    assert (store.updates, clock.walls) == (0, 0), "known quiet: nothing to read, nothing to write"
    worker.record(ENDPOINT, "another-model", S)
    assert store.updates == 1, "another model's window at the same endpoint is not full: its success is written"
    worker.record(ENDPOINT, MODEL, F, error="HTTP 503")
    assert store.updates == 2, "a failure is written at once"
    worker.record(ENDPOINT, MODEL, S)
    assert store.updates == 3, "a success after a failure changes the window: the copy written anew is not quiet"


def test_every_change_is_written_at_once_and_the_record_is_what_each_attempt_would_have_written() -> None:
    store, clock = CountingStore(), FakeClock()
    worker, reference = router(store, clock), EndpointHealth()
    outcomes = [S] * 12 + [F, S, N, S, F, F] + [S] * 15 + [T, S] + [F] * 3
    for outcome in outcomes:
        now = clock.wall()
        expected = reference.admit(MODEL, now, POLICY, retry=False, lease=5.0)
        retry_after = 0.5 if outcome is T else None
        assert call(worker, outcome, error="HTTP 503", retry_after=retry_after) == expected.ok
        if expected.ok:
            reference.record(MODEL, outcome, now, POLICY, error="HTTP 503", retry_after=retry_after)
        clock.advance(1.0)
    written, wanted = {}, {}
    EndpointHealth.load(store.get("endpoint:primary")).dump(written)
    reference.dump(wanted)
    assert written == wanted and reference.breaker(MODEL).state == "open"
    assert "primary" in worker.status()[0] and "tripped 1x" in worker.status()[0]


def test_a_worker_sees_a_trip_at_once_where_it_saw_trouble_and_at_its_next_failure_where_it_did_not() -> None:
    store, clock = MemoryStore(), FakeClock()
    first, second = router(store, clock), router(store, clock)
    call(second, F)  # the second worker saw a failure there: it reads the shared record at every attempt
    for _ in range(3):
        call(first, F)
    assert not call(second), "tripped by the first worker, refused at once"

    store, clock = MemoryStore(), FakeClock()
    first, second = router(store, clock), router(store, clock)
    for _ in range(POLICY.breaker_window):
        call(second)  # healthy here: its copy is trusted for a tenth of the cooldown
    for _ in range(3):
        call(first, F)
    assert call(second, F), "one attempt before it learns of the trip: the failure it writes"
    assert not call(second)

    store, clock = MemoryStore(), FakeClock()
    first, second = router(store, clock), router(store, clock)
    for _ in range(POLICY.breaker_window):
        call(second)
    for _ in range(3):
        call(first, F)
    clock.advance(POLICY.breaker_cooldown / 20)
    assert call(second), "its copy of a healthy endpoint is younger than a tenth of the cooldown"
    clock.advance(POLICY.breaker_cooldown / 20)
    assert not call(second), "read again after a tenth of the cooldown: the trip is seen"


def test_a_guarded_session_with_records_off_never_imports_the_cassette_machinery(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_guarded(llm_guard):
            assert not any(name.startswith(("pytest_llm_guard.cassettes", "vcr", "yaml")) for name in sys.modules)
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:recording").assert_outcomes(passed=1)


REPLAYED = """\
version: 1
interactions:
- request:
    method: POST
    uri: http://127.0.0.1:9/v1/chat/completions
    body: '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    headers: {}
  response:
    status: {code: 200, message: OK}
    headers:
      content-type: [application/json]
    body:
      string: '{"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "choices": [{"index": 0,
        "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}]}'
"""


def test_a_replay_loads_matches_and_answers_without_importing_vcrpy_or_httpcore2(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Record mode none (CI's) only replays: vcrpy, the recorder, is never imported. (``once`` on a recorded
    file opens the same replay-only cassette: test_cassette_store.py.) Nor is httpcore2: the fixture client's
    network transport is built at its first request that reaches the network (deferred.py). Through to the
    session's end, neither is the cassettes' upkeep (every recording was played), nor is a CA bundle read
    (no handshake is made)."""
    pytester.makepyprojecttoml('[tool.pytest_llm_guard]\nbase_url = "http://127.0.0.1:9/v1"\n')
    monkeypatch.setenv("SSL_CERT_FILE", str(pytester.path / "ca.pem"))  # httpx2 reads it on every platform
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    (pytester.path / "ca.pem").write_text("no certificate: a replay makes no handshake, so never reads it\n")
    pytester.makeconftest(
        """
        import json
        import ssl
        import sys

        READ = []  # CA files read (a directory is only named: OpenSSL reads it during handshakes)
        _real = ssl.SSLContext.load_verify_locations

        def _reading(self, cafile=None, capath=None, cadata=None):
            if cafile is not None or cadata is not None:
                READ.append(cafile)
            return _real(self, cafile, capath, cadata)

        ssl.SSLContext.load_verify_locations = _reading

        def pytest_sessionfinish(session):
            loaded = sorted(m for m in sys.modules if m in ("vcr", "httpcore2") or m.startswith(("vcr.", "wrapt")))
            (session.config.rootpath / "loaded.txt").write_text(" ".join(loaded))

        def pytest_unconfigure(config):
            later = sorted(m for m in sys.modules if m.startswith("pytest_llm_guard.cassettes."))
            (config.rootpath / "later.json").write_text(json.dumps({"modules": later, "read": READ}))
        """
    )
    pytester.makepyfile(
        test_replayed="""
        def test_replayed(llm_client):
            reply = llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            assert reply.choices[0].message.content == "hello"
        """
    )
    cassette = pytester.path / "cassettes" / "test_replayed" / "test_replayed.yaml"
    cassette.parent.mkdir(parents=True)
    cassette.write_text(REPLAYED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:recording", "--llm-record=none")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "loaded.txt").read_text() == ""
    assert cassette.read_text() == REPLAYED
    later = json.loads((pytester.path / "later.json").read_text())
    assert {"pytest_llm_guard.cassettes.replaying", "pytest_llm_guard.cassettes.parsed"} <= set(later["modules"])
    assert {"pytest_llm_guard.cassettes.upkeep", "pytest_llm_guard.cassettes.review"} & set(later["modules"]) == set()
    assert later["read"] == []


def test_fixture_clients_load_the_ca_bundle_once_not_once_per_test(monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    import openai

    from pytest_llm_guard import clients

    loaded: list[object] = []
    real = ssl.SSLContext.load_verify_locations
    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", lambda *a, **kw: loaded.append(a) or real(*a, **kw))
    for variable in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(variable, raising=False)
    clients.tls.cache_clear()
    options = {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-test"}
    sdks = ["openai"] + (["anthropic"] if importlib.util.find_spec("anthropic") else [])
    clients = [  # nothing is sent: no connection to close
        clients.build(sdk, asynchronous, options, "options") for sdk in sdks for asynchronous in (False, True, False)
    ]
    transports = [c._client._transport for c in clients]
    transports = [getattr(t, "transport", t) for t in transports]  # built now, where one was deferred
    contexts = {id(t._pool._ssl_context) for t in transports}
    assert len(contexts) == 1  # the SDKs alone build one per client: about 20 ms on every test
    assert len(loaded) <= 1  # and none until its first handshake (tls.py), where httpx2's default reads a bundle
    sync = clients[0]
    assert sync.timeout == openai.DEFAULT_TIMEOUT and sync._client.follow_redirects  # still the SDK's defaults


@pytest.mark.llm_budget  # guarded: its client fixture is asked for once the SDK's constructor is counted
def test_a_fixture_client_is_built_once_and_guarded_itself_not_copied(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai

    built: list[dict[str, Any]] = []
    real = openai.OpenAI.__init__
    monkeypatch.setattr(openai.OpenAI, "__init__", lambda self, **kw: built.append(kw) or real(self, **kw))
    client = request.getfixturevalue("llm_client")
    assert len(built) == 1  # with_options(max_retries=0) built a second client on every test
    assert "max_retries" not in built[0] and client.max_retries == 0  # the SDK's own retries are off all the same
    assert client.timeout == openai.DEFAULT_TIMEOUT and client._client.follow_redirects  # the SDK's defaults


@pytest.mark.llm_budget
def test_an_anthropic_fixture_client_is_built_once_too(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    anthropic = pytest.importorskip("anthropic")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    built: list[dict[str, Any]] = []
    real = anthropic.Anthropic.__init__
    monkeypatch.setattr(anthropic.Anthropic, "__init__", lambda self, **kw: built.append(kw) or real(self, **kw))
    client = request.getfixturevalue("anthropic_client")
    assert len(built) == 1 and client.max_retries == 0
    assert client._client.send is not built[0]["http_client"].send  # a view whose send is the guard's loop
    assert "send" not in vars(built[0]["http_client"])  # the httpx2 client itself is left as it was


# -- what a healthy call does not do ---------------------------------------------------------------


def test_a_healthy_call_parses_no_request_body_formats_no_timeout_message_and_reads_ahead_only_a_stream(
    llm_client: Any, llm_guard: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llm_guard import streams, transport
    from pytest_llm_guard.dialects import base

    counted: dict[str, int] = {}

    def count(module: object, name: str) -> None:
        real = getattr(module, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            counted[name] = counted.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    for name in ("_cap_message", "_first_token_message", "_idle_message"):
        count(streams, name)
    count(base, "request_json")
    count(transport, "_Ahead")
    messages = [{"role": "user", "content": 'say "model": "no"'}]
    reply = llm_client.chat.completions.create(model="gpt-test", messages=messages)
    assert reply.choices[0].message.content
    assert counted == {}, "a JSON answer: no body parsed for its model, no message formatted, nothing read ahead"
    stream = llm_client.chat.completions.create(model="gpt-test", messages=messages, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert counted == {"_Ahead": 1}, "a stream is read ahead; still no message formatted"
    assert [event.model for event in llm_guard.events] == ["gpt-test", "gpt-test"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": 'a"b\u00e9', "messages": []},
        {"messages": [{"role": "user", "content": '"model": "x"'}], "model": "m"},
        {"model": "top", "metadata": {"model": "nested"}},
        {"model": 3},
        {"messages": [], "tags": ["model"]},
    ],
)
def test_the_model_found_without_parsing_is_the_parsed_bodys(body: dict[str, Any]) -> None:
    import json

    import httpx2

    from pytest_llm_guard.dialects.base import request_model

    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions", content=json.dumps(body).encode())
    model = body.get("model")
    assert request_model(request) == (model if isinstance(model, str) else None)


def test_a_json_answer_is_parsed_once_and_the_sdk_gets_the_watchers_object(
    llm_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    answers: list[object] = []
    real = json.loads

    def loads(text: Any, **kwargs: Any) -> Any:
        if b'"choices"' in (text.encode() if isinstance(text, str) else bytes(text)):
            answers.append(text)
        return real(text, **kwargs)

    monkeypatch.setattr(json, "loads", loads)
    raw = llm_client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.parse().choices[0].message.content
    assert len(answers) == 1, "the watcher's parse (for the body's check and usage) is the SDK's too"
    again = raw.http_response.json()
    assert again == json.loads(raw.http_response.content) and len(answers) == 3, "a later call parses anew"


def test_a_quiet_endpoint_takes_its_attempts_without_a_verdict_and_anything_else_goes_the_full_way(
    primary: Any, backup: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from routed import routed_test

    from pytest_llm_guard.fault import Fault

    clock, store = FakeClock(), CountingStore()
    endpoints = EndpointSet(
        (Endpoint("primary", primary.base_url), Endpoint("backup", backup.base_url, priority=1)),
        configured=True,
        source="the test",
    )
    router = Router(endpoints, store, Settings(breaker_failures=3, breaker_window=3, breaker_cooldown=30), clock=clock)
    verdicts: list[str] = []
    admit = Router.admit
    monkeypatch.setattr(Router, "admit", lambda self, e, *a, **k: verdicts.append(e.name) or admit(self, e, *a, **k))

    def calls(n: int, **settings: Any) -> list[str | None]:
        """``n`` calls of one test; where their attempts went."""
        verdicts.clear()
        store.gets = store.updates = 0
        with routed_test(router, primary.base_url, "test_hot_path::quiet", clock, **settings) as (guard, client):
            for _ in range(n):
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        return [attempt.endpoint_name for attempt in guard.events]

    assert calls(3) == ["primary"] * 3 and verdicts == ["primary"] * 3, "its window fills: each success is written"
    assert calls(5) == ["primary"] * 5 and verdicts == [] and (store.gets, store.updates) == (0, 0)
    assert calls(2, rpm=6000) == ["primary"] * 2 and verdicts == ["primary"] * 2 and store.updates == 2, (
        "a shared rate limit: each attempt takes its turn through the store"
    )
    primary.plan(Fault.status(503))
    assert calls(1) == ["primary", "backup"] and verdicts == ["backup"], "the failover goes the full way"
    assert calls(1) == ["primary"] and verdicts == ["primary"], "a failure in its window: the full way until it is out"
    calls(12)  # its window all successes again, and the retry token the failure took given back (0.1 a success)
    assert calls(1) == ["primary"] and verdicts == []
    clock.advance(3.0)  # a tenth of the cooldown: the copy is read again, the full way
    assert calls(1) == ["primary"] and verdicts == ["primary"] and store.gets == 1


def test_a_header_timer_sooner_than_the_deadline_costs_no_system_call_and_an_early_signal_sets_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import signal
    import time

    from pytest_llm_guard.alarm import Alarm

    if signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0):
        pytest.skip("a timer of the outer session is armed")
    real, set_to = signal.setitimer, []
    monkeypatch.setattr(
        signal,
        "setitimer",
        lambda which, seconds, interval=0.0: set_to.append(seconds) or real(which, seconds, interval),
    )
    fired: list[str] = []
    alarm, now = Alarm(), time.monotonic()
    alarm.start()
    try:
        alarm.at(now + 0.3, lambda: fired.append("deadline"))
        set_to.clear()
        for call in range(100):  # each call's timer for its headers, at its cap, cancelled when they arrive
            alarm.cancel(alarm.at(now + 0.1 + call / 1e6, lambda: fired.append("headers")))
        assert len(set_to) == 1, "the first call's header timer sets it sooner; the other 99 cost nothing"
        waited = time.monotonic() + 10
        while not fired and time.monotonic() < waited:
            time.sleep(0.01)
        assert fired == ["deadline"] and time.monotonic() >= now + 0.3
        assert len(set_to) == 3 and 0.0 < set_to[1] <= 0.3 and set_to[2] == 0, (
            "the early signal found nothing due and set the timer for the deadline; with nothing left, it is unset"
        )
    finally:
        alarm.stop()


@pytest.mark.parametrize("fake", [False, True], ids=["real clock", "fake clock"])
def test_an_alarms_timer_keeps_real_time_whether_its_clock_is_real_or_fake(
    monkeypatch: pytest.MonkeyPatch, fake: bool
) -> None:
    import signal

    from pytest_llm_guard.alarm import Alarm
    from pytest_llm_guard.clock import REAL

    if signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0):
        pytest.skip("a timer of the outer session is armed")
    real_setitimer = signal.setitimer
    set_to: list[float] = []
    monkeypatch.setattr(
        signal,
        "setitimer",
        lambda which, seconds, interval=0.0: set_to.append(seconds) or real_setitimer(which, seconds, interval),
    )
    clock = FakeClock(start=5.0) if fake else REAL  # a fake clock's time is far from the real one's
    alarm = Alarm(clock.now)
    alarm.start()
    try:
        set_to.clear()
        alarm.at(clock.now() + 100, lambda: None)
        alarm.at(clock.now() + 50, lambda: None)
        alarm.at(clock.now() + 75, lambda: None)
        assert [round(s) for s in set_to] == [100, 50], "sooner re-arms the timer, later costs no system call"
        if fake:
            clock.advance(45)  # no real time passed: the timer set for 50 real seconds has 50 left
            alarm.at(clock.now() + 100, lambda: None)
            assert [round(s) for s in set_to] == [100, 50, 5], "the soonest event is 5 s ahead now: re-armed"
    finally:
        alarm.stop()


def test_every_credential_header_of_a_request_is_learned_and_only_those() -> None:
    import httpx2

    from pytest_llm_guard.scrub import Scrubber

    scrubber = Scrubber(key_variables=(), environ={})
    headers = httpx2.Headers(
        [
            ("Accept", "application/json"),
            ("Authorization", "Bearer sk-first-of-two-0001"),
            ("X-Note", "not-a-secret-but-long"),
            ("authorization", "Bearer sk-second-of-two-0002"),
            ("Api-Key", "azure-key-0003"),
        ]
    )
    scrubber.learn(headers, "")
    text = scrubber.text("sk-first-of-two-0001 sk-second-of-two-0002 azure-key-0003 not-a-secret-but-long")
    assert text.count("0001") + text.count("0002") + text.count("0003") == 0
    assert "not-a-secret-but-long" in text


@pytest.mark.parametrize(
    ("given", "capped", "binds"),
    [
        ({"connect": 0.5, "read": 9.0, "write": None, "pool": 0.0}, (0.5, 2.0, 2.0, 2.0), True),
        ({"connect": 0.5, "read": 0.5, "write": 2.0, "pool": 0.5}, (0.5, 0.5, 2.0, 0.5), False),
        ({"connect": None, "read": None, "write": None, "pool": None}, (2.0, 2.0, 2.0, 2.0), True),
        ({}, (2.0, 2.0, 2.0, 2.0), True),
    ],
    ids=["mixed", "none above the cap", "no limits", "none given"],
)
def test_a_cap_keeps_each_phases_own_lower_timeout_and_binds_only_below_the_clients_longest(
    given: dict[str, float | None], capped: tuple[float, ...], binds: bool
) -> None:
    import httpx2

    from pytest_llm_guard.guard import CLIENT_TIMEOUT, Guard
    from pytest_llm_guard.ledger import Attempt

    guard = Guard(Settings(deadline=60), test_id="t")
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions", extensions={"timeout": dict(given)})
    attempt = Attempt("t", 1, 1, "first", "http://127.0.0.1:9", "/v1/chat/completions", None, 0.0, 0.0)
    guard.cap(attempt, request, 2.0, "call_timeout")
    assert tuple(request.extensions["timeout"].values()) == capped and request.extensions[CLIENT_TIMEOUT] == given
    assert (attempt.cap, attempt.cap_by, attempt.cap_binds) == (2.0, "call_timeout", binds)
    guard.cap(attempt, request, 1.0, "deadline")
    assert tuple(request.extensions["timeout"].values()) == tuple(min(c, 1.0) for c in capped), "capped afresh"


@pytest.mark.parametrize(
    ("sent", "number"),
    [
        ([], 0),
        ([("X-Stainless-Retry-Count", "0")], 0),
        ([("x-stainless-retry-count", "2")], 2),
        ([("x-stainless-retry-count", "1"), ("x-stainless-retry-count", "1")], 0),
        ([("x-stainless-retry-count", "two")], 0),
    ],
    ids=["absent", "first", "second retry", "said twice", "not a number"],
)
def test_an_sdks_retry_number_is_read_from_its_header_as_httpx2_would(sent: list[tuple[str, str]], number: int) -> None:
    import httpx2

    request = httpx2.Request("POST", "http://127.0.0.1:9/v1/chat/completions", headers=sent)
    for dialect in dialects.DIALECTS:
        assert dialect.retry_number(request) == number


@pytest.mark.parametrize(
    ("answer", "usage"),
    [
        (
            {"usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7, "prompt_tokens_details": {}}},
            (7, 5, 2),
        ),
        ({"response": {"usage": {"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}}}, (7, 3, 4)),
        ({"usage": {"prompt_tokens": 5, "completion_tokens": 2}}, (7, 5, 2)),
        ({"usage": {"prompt_tokens": "5", "input_tokens": 6, "completion_tokens": None}}, (6, 6, None)),
        ({"usage": {"completion_tokens_details": {"reasoning_tokens": 3}}}, None),
        ({"usage": None}, None),
    ],
    ids=["chat", "responses stream end", "no total", "not a number", "details only", "none"],
)
def test_an_openai_answers_usage_is_read_from_the_counts_it_names(answer: dict[str, Any], usage: Any) -> None:
    from pytest_llm_guard.dialects.openai import OpenAIDialect

    found = OpenAIDialect.json_usage(answer)
    if usage is None:
        assert found is None
    else:
        assert found is not None and (found.total, found.input, found.output) == usage


def test_each_attempt_gets_its_own_context_with_the_tests_clock_budget_and_ledger() -> None:
    import json

    import httpx2

    from pytest_llm_guard import pipeline, transport
    from pytest_llm_guard.guard import Guard

    seen: list[Any] = []

    class Looking:
        def handle(self, request: httpx2.Request, ctx: Any, send: Any) -> httpx2.Response:
            ctx.cap(request, 5.0 + len(seen), "call_timeout of endpoint e")
            seen.append((ctx, ctx.attempt, ctx.network, ctx.clock, ctx.remaining, ctx.attempt_cap, ctx.ledger))
            return send(request)

    class Network(httpx2.HTTPTransport):
        """httpx2's network transport as the pipeline sees it, answering without a socket."""

        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            return httpx2.Response(200, json={"choices": []})

    guard = Guard(Settings(deadline=60), test_id="t")
    guard.pipeline = pipeline.build(routing=Looking())
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    transport.activate(guard)
    try:
        for inner in (Network(), httpx2.MockTransport(lambda request: httpx2.Response(200, json={"choices": []}))):
            with httpx2.Client(transport=inner) as client:
                assert client.post("http://127.0.0.1:9/v1/chat/completions", content=body).json() == {"choices": []}
    finally:
        transport.deactivate(guard)
    (first, *tools_first), (second, *tools_second) = [(s[0], *s[3:]) for s in seen]
    assert first is not second and [s[1] for s in seen] == guard.events, "one context per attempt, its own"
    assert [s[2] for s in seen] == [True, False], "network only for httpx2's own transport"
    assert (
        tools_first
        == tools_second
        == [guard.clock, guard.budget.remaining, guard.budget.attempt_cap_seconds, guard.ledger]
    )
    assert [(a.cap, a.cap_by) for a in guard.events] == [
        (5.0, "call_timeout of endpoint e"),
        (6.0, "call_timeout of endpoint e"),
    ]


def test_an_alarm_cancels_the_event_it_is_told_whichever_it_is_and_keeps_the_others_in_order() -> None:
    from pytest_llm_guard.alarm import Alarm

    alarm, clock = Alarm(FakeClock().now), FakeClock()
    handles = [alarm.at(clock.now() + seconds, lambda: None) for seconds in (30.0, 10.0, 20.0, 40.0)]
    alarm.cancel(handles[-1])  # the latest
    alarm.cancel(handles[1])  # one before it
    alarm.cancel(12345)  # none: nothing changes
    assert [(when - clock.now(), handle) for when, handle, _ in alarm._events] == [
        (30.0, handles[0]),
        (20.0, handles[2]),
    ]
    alarm.cancel(handles[2])
    alarm.cancel(handles[0])
    assert alarm._events == []


def test_a_dialect_is_found_by_the_name_an_attempt_records() -> None:
    for dialect in dialects.DIALECTS:
        assert dialects.named(dialect.name) is dialect
    assert dialects.named(None) is None and dialects.named("gopher") is None


@pytest.mark.parametrize("layers", [0, 1, 2])
def test_every_layer_runs_in_order_around_the_clients_transport_whatever_their_number(layers: int) -> None:
    import json

    import httpx2

    from pytest_llm_guard import pipeline, transport
    from pytest_llm_guard.guard import Guard

    met: list[str] = []

    class Layer:
        def __init__(self, name: str) -> None:
            self.name = name

        def handle(self, request: httpx2.Request, ctx: Any, send: Any) -> httpx2.Response:
            met.append(f"{self.name} in")
            response = send(request)
            met.append(f"{self.name} out {ctx.attempt.status}")
            return response

    def answer(request: httpx2.Request) -> httpx2.Response:
        met.append("transport")
        return httpx2.Response(200, json={"choices": []})

    guard = Guard(Settings(deadline=60), test_id="t")
    names = ["outer", "inner"][:layers]
    guard.pipeline = pipeline.Pipeline(tuple(Layer(name) for name in names))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    transport.activate(guard)
    try:
        with httpx2.Client(transport=httpx2.MockTransport(answer)) as client:
            assert client.post("http://127.0.0.1:9/v1/chat/completions", content=body).json() == {"choices": []}
    finally:
        transport.deactivate(guard)
    assert met == [f"{n} in" for n in names] + ["transport"] + [f"{n} out 200" for n in reversed(names)]
