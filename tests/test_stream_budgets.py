"""Stream budgets: first_token_timeout and idle_timeout, and the read-ahead to a stream's first content.

The budget logic runs on a fake clock below; the end-to-end part runs against the fault
server in real, scaled-down time (budgets of 0.05 s): a server that sends its headers and
then nothing is cut by first_token_timeout, one that stalls after three events by
idle_timeout, a slow but steady stream of 20 events passes, for both APIs, sync and async,
through the guarded fixtures and the application's own clients. It asserts that each cut
comes within 0.1 s of its budget.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest

from pytest_llm_guard import FakeClock, LLMBudgetExceeded, pipeline, report_json, transport
from pytest_llm_guard.config import Settings
from pytest_llm_guard.endpoints import Endpoint, EndpointSet
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.guard import Guard
from pytest_llm_guard.ledger import Attempt
from pytest_llm_guard.routing import Router, RouterLayer
from pytest_llm_guard.state import MemoryStore
from pytest_llm_guard.streams import StreamClock, chunk_due
from pytest_llm_guard.transport import LLMStreamError

BUDGET = 0.05
HELLO = [{"role": "user", "content": "hello"}]
STEADY = " ".join(f"w{i}" for i in range(17))  # 20 events or more in either API's stream
DIALECTS = ("openai", "anthropic")
CLIENTS = ("fixture", "own")


@pytest.fixture
def anthropic_client_options(llm_fault_server: FaultServer) -> dict[str, Any]:
    return {"base_url": llm_fault_server.url, "api_key": "sk-ant-test"}


# ----------------------------------------------------------------------------- on a fake clock


def attempt_on(clock: FakeClock, cap: float = 30.0) -> Attempt:
    attempt = Attempt("t", 1, 1, "first", "http://e", "/v1/messages", "m", clock.now(), 0.0, cap, "call_timeout")
    attempt.stream = StreamClock(attempt, clock.now)
    return attempt


def test_the_first_limit_due_binds_and_names_itself() -> None:
    clock = FakeClock()
    attempt = attempt_on(clock)
    budgets = attempt.stream
    budgets.limit(5.0, 12.0)
    assert budgets.due().message.startswith("no first token within 5.0 s (first_token_timeout) from http://e")
    assert budgets.due().when == attempt.start + 5.0
    clock.advance(1.0)
    budgets.arrived(1, False)  # an event without content (message_start): the first token is still due
    assert budgets.due().cause == "first_token_timeout"
    for chunk in (2, 3):
        clock.advance(0.5)
        budgets.arrived(chunk, True)
    clock.advance(4.0)  # the caller was busy: the gap is the server's from when it asks again
    budgets.asked()
    due = budgets.due()
    assert (due.when, due.cause) == (clock.now() + 12.0, "idle_timeout")
    assert due.message.startswith("stalled 12.0 s after chunk 3 (idle_timeout) from http://e (model m)")
    assert budgets.cause_of(httpx2.ReadTimeout(due.message)) == "idle_timeout"
    assert budgets.cause_of(httpx2.ReadTimeout("timed out")) is None
    when, error = chunk_due(attempt)
    assert when == due.when and str(error) == due.message
    attempt.cap = 2.0  # the cap ends first now
    assert budgets.due().cause == "call_timeout"


def test_limits_are_only_lowered_and_an_endpoints_says_whose_it_is() -> None:
    clock = FakeClock()
    lowered = []
    attempt = attempt_on(clock)
    attempt.stream = budgets = StreamClock(attempt, clock.now, lowered=lambda: lowered.append(True))
    budgets.limit(5.0, None)
    budgets.limit(10.0, 0.5, " of endpoint backup")
    assert budgets.first_token == (5.0, "first_token_timeout")
    assert budgets.idle == (0.5, "idle_timeout of endpoint backup")
    assert len(lowered) == 2
    assert "raise first_token_timeout if" in budgets.due(headers=True).message
    assert "sent no response headers" in budgets.due(headers=True).message


def test_without_budgets_only_the_cap_is_due() -> None:
    clock = FakeClock()
    attempt = attempt_on(clock, cap=float("inf"))
    assert chunk_due(attempt)[0] == float("inf")


# ----------------------------------------------------------------------------- end to end, scaled


def ask(dialect: str, client: Any) -> Any:
    if dialect == "openai":
        return client.chat.completions.create(model="m", messages=HELLO, stream=True)
    return client.messages.create(model="claude-test", max_tokens=50, messages=HELLO, stream=True)


def text_of(dialect: str, items: list[Any]) -> str:
    if dialect == "openai":
        return "".join(c.choices[0].delta.content or "" for c in items if c.choices)
    return "".join(e.delta.text for e in items if e.type == "content_block_delta")


def own_client(dialect: str, server: FaultServer, *, is_async: bool) -> Any:
    """What the application builds itself, its SDK's retries off (the guard still sees every attempt)."""
    if dialect == "openai":
        kind = openai.AsyncOpenAI if is_async else openai.OpenAI
        return kind(base_url=server.base_url, api_key="sk-app", max_retries=0)
    kind = anthropic.AsyncAnthropic if is_async else anthropic.Anthropic
    return kind(base_url=server.url, api_key="sk-ant-app", max_retries=0)


def client_for(request: pytest.FixtureRequest, dialect: str, which: str, *, is_async: bool) -> Any:
    """The guarded fixture, or the application's own client (an async one is closed by :func:`closing`)."""
    if which == "own":
        client = own_client(dialect, request.getfixturevalue("llm_fault_server"), is_async=is_async)
        if not is_async:
            request.addfinalizer(client.close)
        return client
    name = ("async_" if is_async else "") + ("llm_client" if dialect == "openai" else "anthropic_client")
    return request.getfixturevalue(name)


@contextlib.asynccontextmanager
async def closing(client: Any, which: str) -> AsyncIterator[Any]:
    try:
        yield client
    finally:
        if which == "own":
            await client.close()


CUTS = [
    pytest.param(
        Fault.stall(0),
        f"no first token within {BUDGET} s (first_token_timeout)",
        "first_token_timeout",
        id="stall-first",
        marks=pytest.mark.llm_budget(first_token_timeout=BUDGET, retries=0),
    ),
    pytest.param(
        Fault.stall(3),
        f"stalled {BUDGET} s after chunk 3 (idle_timeout)",
        "idle_timeout",
        id="stall-after-3",
        marks=pytest.mark.llm_budget(idle_timeout=BUDGET, retries=0),
    ),
]


def check_cut(info: pytest.ExceptionInfo[BaseException], llm_guard: Any, message: str, cause: str) -> None:
    assert isinstance(info.value, LLMBudgetExceeded) and info.value.budget == "retries", str(info.value)
    assert message in str(info.value)  # the failure names the budget, and where (endpoint, model)
    (cut,) = llm_guard.events
    assert (cut.cause, cut.category, cut.outcome) == (cause, "timeout", "ReadTimeout")
    assert cut.error.startswith(message + f" from {cut.endpoint} (model ")
    # a stall lasts until the client gives up: nothing but its budget cuts it within a second
    assert BUDGET <= cut.duration < BUDGET + 1.0, "cut at its budget, not by a later limit"


@pytest.mark.parametrize(("fault", "message", "cause"), CUTS)
@pytest.mark.parametrize("which", CLIENTS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_stalled_stream_is_cut_by_its_budget(
    request: pytest.FixtureRequest, dialect: str, which: str, fault: Fault, message: str, cause: str, llm_guard: Any
) -> None:
    request.getfixturevalue("llm_fault_server").plan(then=fault)
    client = client_for(request, dialect, which, is_async=False)
    with pytest.raises(BaseException) as info:
        list(ask(dialect, client))
    check_cut(info, llm_guard, message, cause)


@pytest.mark.parametrize(("fault", "message", "cause"), CUTS)
@pytest.mark.parametrize("which", CLIENTS)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_stalled_async_stream_is_cut_by_its_budget(
    request: pytest.FixtureRequest, dialect: str, which: str, fault: Fault, message: str, cause: str, llm_guard: Any
) -> None:
    request.getfixturevalue("llm_fault_server").plan(then=fault)
    async with closing(client_for(request, dialect, which, is_async=True), which) as client:
        with pytest.raises(BaseException) as info:
            [item async for item in await ask(dialect, client)]
    check_cut(info, llm_guard, message, cause)


STEADY_BUDGETS = pytest.mark.llm_budget(first_token_timeout=BUDGET, idle_timeout=BUDGET, retries=0)


@STEADY_BUDGETS
@pytest.mark.parametrize("which", CLIENTS)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_slow_but_steady_stream_passes(
    request: pytest.FixtureRequest, dialect: str, which: str, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.reply(STEADY)
    llm_fault_server.plan(then=Fault.paced(BUDGET / 10))
    assert text_of(dialect, list(ask(dialect, client_for(request, dialect, which, is_async=False)))) == STEADY
    assert [(a.outcome, a.cause) for a in llm_guard.events] == [("ok", None)]


@STEADY_BUDGETS
@pytest.mark.parametrize("which", CLIENTS)
@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_slow_but_steady_async_stream_passes(
    request: pytest.FixtureRequest, dialect: str, which: str, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.reply(STEADY)
    llm_fault_server.plan(then=Fault.paced(BUDGET / 10))
    async with closing(client_for(request, dialect, which, is_async=True), which) as client:
        assert text_of(dialect, [item async for item in await ask(dialect, client)]) == STEADY
    assert [(a.outcome, a.cause) for a in llm_guard.events] == [("ok", None)]


@pytest.mark.llm_budget(first_token_timeout=BUDGET, retries=1)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_first_token_cut_is_retried_while_nothing_reached_the_caller(
    dialect: str, request: pytest.FixtureRequest, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.plan(Fault.stall(0))
    assert text_of(dialect, list(ask(dialect, client_for(request, dialect, "fixture", is_async=False)))) == (
        "echo: hello"
    )
    cut, answer = llm_guard.events
    assert (cut.cause, cut.category, answer.kind, answer.outcome) == ("first_token_timeout", "timeout", "retry", "ok")
    reported = report_json.record(llm_guard, "t", "passed", 1.0, 0.0)["attempts"]
    assert [(a["cause"], a["category"]) for a in reported] == [("first_token_timeout", "timeout"), (None, "ok")]


@pytest.mark.llm_budget(first_token_timeout=BUDGET)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_non_streamed_answer_gets_its_headers_within_the_first_token_budget(
    is_async: bool, request: pytest.FixtureRequest, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.plan(Fault.ok(delay=BUDGET * 3))
    client = client_for(request, "openai", "fixture", is_async=is_async)
    answer = client.chat.completions.create(model="m", messages=HELLO)
    assert (await answer if is_async else answer).choices[0].message.content == "echo: hello"
    cut, ok = llm_guard.events
    assert cut.error.startswith(f"no first token within {BUDGET} s (first_token_timeout)")
    assert "sent no response headers" in cut.error and cut.cause == "first_token_timeout"
    assert BUDGET <= cut.duration < BUDGET * 3 and ok.outcome == "ok"  # cut before the headers came


@pytest.mark.llm_budget(first_token_timeout=BUDGET, retries=0)
def test_a_worker_threads_stream_is_cut_in_that_thread(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer
) -> None:
    llm_fault_server.plan(then=Fault.stall(0))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(lambda: list(ask("openai", llm_client)))
        with pytest.raises(LLMBudgetExceeded, match=r"no first token within 0\.05 s \(first_token_timeout\)"):
            future.result(timeout=5)


# ----------------------------------------------------------------------------- failures before content


@pytest.mark.parametrize(
    ("fault", "outcome", "category", "error"),
    [
        (Fault.stream_error(after_chunks=1), "LLMStreamError", "http_5xx", "an error event after 1 events of a stream"),
        (Fault.cut_stream(after_chunks=1), "LLMStreamCut", "cut", "ended before its end event after 1 events"),
    ],
    ids=["error event", "cut"],
)
@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_stream_failing_before_any_content_is_a_failed_attempt_retried(
    dialect: str,
    is_async: bool,
    fault: Fault,
    outcome: str,
    category: str,
    error: str,
    request: pytest.FixtureRequest,
    llm_fault_server: FaultServer,
    llm_guard: Any,
) -> None:
    llm_fault_server.plan(fault)  # after message_start (or a chunk with the role only)
    client = client_for(request, dialect, "fixture", is_async=is_async)
    items = [i async for i in await ask(dialect, client)] if is_async else list(ask(dialect, client))
    assert text_of(dialect, items) == "echo: hello"
    failed, answer = llm_guard.events
    assert (failed.outcome, failed.category, answer.kind, answer.outcome) == (outcome, category, "retry", "ok")
    assert error in failed.error


def test_the_sdks_own_retry_takes_over_an_overloaded_stream_that_had_not_begun(
    llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.plan(Fault.stream_error(after_chunks=1))
    with anthropic.Anthropic(base_url=llm_fault_server.url, api_key="sk-ant-app", max_retries=1) as client:
        assert text_of("anthropic", list(ask("anthropic", client))) == "echo: hello"
    assert [(a.outcome, a.by) for a in llm_guard.events] == [("LLMStreamError", None), ("ok", "sdk")]
    assert "overloaded_error" in llm_guard.events[0].error


@pytest.mark.llm_budget(retries=2)
def test_an_error_event_after_content_reaches_the_caller(
    anthropic_client: anthropic.Anthropic, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.plan(Fault.stream_error(after_chunks=2))  # content_block_start is content: the answer began
    with pytest.raises(LLMStreamError, match="overloaded_error"):
        list(ask("anthropic", anthropic_client))
    assert [a.outcome for a in llm_guard.events] == ["LLMStreamError"]


# ----------------------------------------------------------------------------- per endpoint


def test_an_endpoints_own_first_token_budget_cuts_it_and_the_call_fails_over(
    primary: FaultServer, backup: FaultServer
) -> None:
    endpoints = EndpointSet(
        (
            Endpoint("primary", primary.base_url, first_token_timeout=BUDGET),
            Endpoint("backup", backup.base_url, priority=1),
        ),
        configured=True,
        source="the test",
    )
    guard = Guard(Settings(first_token_timeout=5.0, backoff_initial=0.01, backoff_max=0.05), test_id="t")
    guard.pipeline = pipeline.build(routing=RouterLayer(Router(endpoints, MemoryStore(), Settings()), guard.settings))
    primary.plan(then=Fault.stall(0))
    with openai.OpenAI(base_url=primary.base_url, api_key="sk-test") as client:
        transport.activate(guard)
        try:
            assert text_of("openai", list(ask("openai", guard.fixture_client(client)))) == "echo: hello"
        finally:
            transport.deactivate(guard)
    cut, answer = guard.events
    assert (cut.endpoint_name, cut.cause) == ("primary", "first_token_timeout of endpoint primary")
    assert cut.error.startswith(f"no first token within {BUDGET} s (first_token_timeout of endpoint primary)")
    assert (answer.kind, answer.endpoint_name, answer.outcome) == ("failover", "backup", "ok")
