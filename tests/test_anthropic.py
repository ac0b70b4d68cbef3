"""The Anthropic Messages API, guarded like OpenAI's: the fault matrix, usage, real recordings, both providers.

End to end against the fault server (``/v1/messages``) in real, scaled-down time: every
cell of {hang, trickled headers, trickled body, reset, 401, 429 with a short and a long
Retry-After, 529, 503, malformed 200, stream cut, mid-stream error event, error event before
any content} x
{anthropic_client, async_anthropic_client, the application's own ``anthropic.Anthropic``
in a naive ``except Exception`` loop with ``timeout=60``} runs under
``llm_budget(deadline=0.6, retries=2)`` and must end by deadline + 1 s with the right
exception and a message naming the real cause (the only wall-clock assertion here).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml
from fault_cells import FAULTS as COMMON_FAULTS
from fault_cells import Cell

from pytest_llm_guard import LLMBudgetExceeded
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.transport import LLMStreamCut, LLMStreamError

pytest_plugins = ["pytester"]

DEADLINE = 0.6
MODEL = "claude-test"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def anthropic_client_options(llm_fault_server: FaultServer) -> dict[str, Any]:
    return {"base_url": llm_fault_server.url, "api_key": "sk-ant-test"}


FAULTS = {
    **COMMON_FAULTS,
    "529": Cell(Fault.status(529)),
}

# What each cell must end with: the exception, the budget it names (if a budget), a phrase of its message.
DEADLINE_CUT = (LLMBudgetExceeded, "deadline", "deadline passed")
GUARDED = {
    "hang": DEADLINE_CUT,
    "trickled headers": DEADLINE_CUT,
    "trickled body": (LLMBudgetExceeded, "deadline", "while the response was still arriving"),
    "reset": (LLMBudgetExceeded, "retries", "3 failed attempts"),
    "401": (anthropic.AuthenticationError, None, "refused the credentials"),
    "429, short Retry-After": (LLMBudgetExceeded, "retries", "HTTP 429"),
    "429, Retry-After beyond the deadline": (LLMBudgetExceeded, "deadline", "asked to wait 10 s"),
    "529": (LLMBudgetExceeded, "retries", "HTTP 529"),
    "503": (LLMBudgetExceeded, "retries", "HTTP 503"),
    "malformed 200": (LLMBudgetExceeded, "retries", "malformed JSON in a 200 from"),
    # The anthropic SDK hands a stream's transport errors to the caller as they are.
    "stream cut": (LLMStreamCut, None, "ended before its end event after 2 events"),
    "mid-stream error": (LLMStreamError, None, "overloaded_error"),
    # Before the answer began: a failed attempt at the transport, retried like a 529.
    "error before content": (
        LLMBudgetExceeded,
        "retries",
        "an error event after 1 events of a stream (overloaded_error",
    ),
}
# The SDK's own retries (left on, as users leave them) sleep half a second and more between
# attempts: past this deadline, so the deadline ends those cells while the SDK sleeps.
SDK_BACKOFF = (LLMBudgetExceeded, "deadline", "outside any LLM call")
NAIVE_LOOP = {
    **GUARDED,
    "reset": SDK_BACKOFF,
    "401": (LLMBudgetExceeded, "retries", "refused the credentials"),  # the loop retries even a 401
    "529": SDK_BACKOFF,
    "503": SDK_BACKOFF,
    "malformed 200": SDK_BACKOFF,
    "stream cut": (LLMBudgetExceeded, "retries", "ended before its end event after 2 events"),
    "mid-stream error": (LLMBudgetExceeded, "retries", "overloaded_error"),
    "error before content": SDK_BACKOFF,
}


def create(client: Any, stream: bool) -> Any:
    return client.messages.create(model=MODEL, max_tokens=50, messages=HELLO, stream=stream, timeout=60)


def consume(result: Any, stream: bool) -> None:
    if stream:
        for _ in result:
            pass


async def consume_async(result: Any, stream: bool) -> None:
    if stream:
        async for _ in result:
            pass


def naive_loop(server: FaultServer, stream: bool) -> None:
    """The application's own loop: its own client, 5 attempts, timeout=60, backoff on any Exception."""
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-ant-app-key")
    try:
        for attempt in range(5):
            try:
                consume(create(client, stream), stream)
                return
            except Exception:
                time.sleep(0.01 * 2**attempt)
    finally:
        client.close()


def message_of(error: BaseException) -> str:
    return str(error) + "".join(f" | {a}" for a in [error.__cause__, error.__context__] if a is not None)


def check(info: pytest.ExceptionInfo[BaseException], expected: tuple, started: float, llm_guard: Any) -> None:
    kind, budget, phrase = expected
    assert time.monotonic() - started < DEADLINE + 1.0, "every cell ends by its deadline + 1 s"
    assert isinstance(info.value, kind), f"{type(info.value).__name__}: {info.value}"
    if budget is not None:
        assert info.value.budget == budget, str(info.value)
    attempts = " ".join(f"{a.outcome} {a.error}" for a in llm_guard.events)
    assert phrase in message_of(info.value) + attempts, message_of(info.value) + attempts
    assert {a.dialect for a in llm_guard.events} == {"anthropic"}


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
def test_anthropic_client(
    fault: str, anthropic_client: anthropic.Anthropic, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault, route="messages")
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        consume(create(anthropic_client, cell.stream), cell.stream)
    check(info, GUARDED[fault], started, llm_guard)


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
async def test_async_anthropic_client(
    fault: str, async_anthropic_client: anthropic.AsyncAnthropic, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault, route="messages")
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        await consume_async(await create(async_anthropic_client, cell.stream), cell.stream)
    check(info, GUARDED[fault], started, llm_guard)
    await asyncio.sleep(0)


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
def test_application_loop(fault: str, llm_fault_server: FaultServer, llm_guard: Any) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault, route="messages")
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        naive_loop(llm_fault_server, cell.stream)
    check(info, NAIVE_LOOP[fault], started, llm_guard)


# ----------------------------------------------------------------------------- the dialect


def sdk_request(client: Any, server: FaultServer) -> Any:
    """The request an SDK client sends, as the guard's seam sees it (nothing is sent)."""
    return client._build_request(
        anthropic._models.FinalRequestOptions.construct(method="post", url="/v1/messages", json_data={"model": MODEL})
        if isinstance(client, anthropic.Anthropic)
        else openai._models.FinalRequestOptions.construct(
            method="post", url="/chat/completions", json_data={"model": "m"}
        )
    )


def test_anthropic_is_claimed_before_openai(llm_fault_server: FaultServer) -> None:
    """Both SDKs send the same ``x-stainless-*`` headers; each request goes to its own dialect."""
    import httpx2

    from pytest_llm_guard.dialects import dialect_for

    with anthropic.Anthropic(base_url=llm_fault_server.url, api_key="k") as claude:
        with openai.OpenAI(base_url=llm_fault_server.base_url, api_key="k") as gpt:
            assert dialect_for(sdk_request(claude, llm_fault_server)).name == "anthropic"
            assert dialect_for(sdk_request(gpt, llm_fault_server)).name == "openai"
    raw = httpx2.Request("POST", "http://x/v1/messages", json={"model": MODEL, "messages": HELLO, "max_tokens": 5})
    assert dialect_for(raw).name == "anthropic"  # another client's request, by its route and body
    assert dialect_for(httpx2.Request("GET", "http://x/v1/messages/batches")) is None


def events(*pairs: tuple[str, dict[str, Any]]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (n.encode(), json.dumps({"type": n, **d}).encode()) for n, d in pairs)


def test_stream_usage_merges_message_start_and_the_latest_message_delta() -> None:
    from pytest_llm_guard.dialects import Usage, for_kind

    reader = for_kind("anthropic").reader("text/event-stream")
    start = {"message": {"usage": {"input_tokens": 17, "output_tokens": 1, "cache_read_input_tokens": 5}}}
    body = events(
        ("message_start", start),
        ("content_block_delta", {"delta": {"type": "text_delta", "text": "hi"}}),
        ("message_delta", {"usage": {"output_tokens": 6}}),
        ("message_delta", {"usage": {"output_tokens": 10}}),  # cumulative: replaces, never adds
    )
    assert reader.feed(body) is None
    assert not reader.ended and reader.finish() == "stream ended before its end event after 4 events"
    assert reader.feed(events(("message_stop", {}))) is None and reader.finish() is None
    assert reader.usage == Usage(total=27, input=17, output=10, cache=5)


def test_a_guarded_answer_counts_its_tokens_and_names_its_dialect(
    anthropic_client: anthropic.Anthropic, llm_guard: Any
) -> None:
    message = anthropic_client.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
    streamed = "".join(
        e.delta.text
        for e in anthropic_client.messages.create(model=MODEL, max_tokens=50, messages=HELLO, stream=True)
        if e.type == "content_block_delta"
    )
    assert message.content[0].text == streamed == "echo: hello"
    usage = message.usage.input_tokens + message.usage.output_tokens
    assert [(a.dialect, a.outcome, a.tokens) for a in llm_guard.events] == [("anthropic", "ok", usage)] * 2
    assert llm_guard.stats.tokens == 2 * usage


# ----------------------------------------------------------------------------- real recordings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "cassettes"
ANTHROPIC_RECORDINGS = sorted(p.name for p in SHARED.glob("llm_anthropic__*.yaml"))
"""Real recordings of the Anthropic API made by a public project (``../shared/cassettes/README.md``)."""

REPLAY = """
import asyncio, inspect, json, pathlib
import anthropic
import pytest

def arguments(method, body):
    # The recorded body as the method's arguments: what this SDK version no longer names goes in extra_body.
    known = set(inspect.signature(method).parameters)
    extra = {{k: v for k, v in body.items() if k not in known}}
    return {{**{{k: v for k, v in body.items() if k in known}}, **({{"extra_body": extra}} if extra else {{}})}}

def summary(events):
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta")
    blocks = [e.content_block for e in events if e.type == "content_block_start"]
    tools = [b.name for b in blocks if b.type == "tool_use"]
    return {{"text": text, "tools": tools}}

@pytest.mark.llm_cassette(path=r"{path}")
def test_replay(llm_guard):
    bodies = json.loads(pathlib.Path("bodies.json").read_text())
    results = []
    if "{how}" == "async":
        async def run():
            client = anthropic.AsyncAnthropic()
            for body in bodies:
                answer = await client.messages.create(**arguments(client.messages.create, body))
                results.append(summary([e async for e in answer]))
        asyncio.run(run())
    elif "{how}" == "helper":
        with anthropic.Anthropic() as client:
            for body in bodies:
                body.pop("stream")
                with client.messages.stream(**arguments(client.messages.stream, body)) as stream:
                    message = stream.get_final_message()
                results.append({{
                    "text": "".join(b.text for b in message.content if b.type == "text"),
                    "tools": [b.name for b in message.content if b.type == "tool_use"],
                }})
    else:
        with anthropic.Anthropic() as client:
            for body in bodies:
                results.append(summary(list(client.messages.create(**arguments(client.messages.create, body)))))
    attempts = [{{"dialect": a.dialect, "source": a.source, "tokens": a.tokens}} for a in llm_guard.events]
    pathlib.Path("results.json").write_text(json.dumps({{"results": results, "attempts": attempts}}))
"""


def recorded(path: Path) -> tuple[list[dict], list[dict], list[int]]:
    """What each interaction asked, answered and used, read straight from the file (not via the plugin)."""
    bodies, answers, tokens = [], [], []
    for interaction in yaml.safe_load(path.read_text())["interactions"]:
        bodies.append(json.loads(interaction["request"]["body"]))
        response = interaction["response"]
        raw = response["body"]["string"]
        if "gzip" in str({k.lower(): v for k, v in response["headers"].items()}.get("content-encoding")):
            raw = gzip.decompress(raw)
        lines = (raw.decode() if isinstance(raw, bytes) else raw).splitlines()
        data = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
        text = "".join(e["delta"].get("text", "") for e in data if e["type"] == "content_block_delta")
        tools = [e["content_block"]["name"] for e in data if e["type"] == "content_block_start"
                 and e["content_block"]["type"] == "tool_use"]  # fmt: skip
        answers.append({"text": text, "tools": tools})
        start = next(e for e in data if e["type"] == "message_start")["message"]["usage"]["input_tokens"]
        output = [e["usage"]["output_tokens"] for e in data if e["type"] == "message_delta"][-1]
        tokens.append(start + output)
    return bodies, answers, tokens


CASES = [(name, "async" if "async" in name else "create") for name in ANTHROPIC_RECORDINGS]
CASES += [(name, "helper") for name in ANTHROPIC_RECORDINGS if name == "llm_anthropic__prompt.yaml"]


@pytest.mark.skipif(not ANTHROPIC_RECORDINGS, reason=f"no shared real-world Anthropic cassettes at {SHARED}")
@pytest.mark.parametrize(("name", "how"), CASES)
def test_real_recordings_replay_through_the_applications_own_client(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str, how: str
) -> None:
    """No key and no network: replay only (CI), the SDK's own client, streamed events or the stream helper."""
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "LLM_GUARD_RECORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CI", "true")
    bodies, answers, tokens = recorded(SHARED / name)
    assert all(a["text"] or a["tools"] for a in answers)
    (pytester.path / "bodies.json").write_text(json.dumps(bodies))
    pytester.makepyfile(REPLAY.format(path=SHARED / name, how=how))
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    written = json.loads((pytester.path / "results.json").read_text())
    assert written["results"] == answers
    assert written["attempts"] == [{"dialect": "anthropic", "source": "replayed", "tokens": t} for t in tokens]


# ----------------------------------------------------------------------------- both providers


def test_one_test_calls_both_providers_with_failover_among_anthropic_endpoints(pytester: pytest.Pytester) -> None:
    """One deadline, one ledger: each attempt names its dialect; an Anthropic call fails over only to
    another ``kind = "anthropic"`` endpoint, an OpenAI call only to an OpenAI one."""
    with FaultServer() as down, FaultServer() as claude, FaultServer() as gpt:
        down.plan(then=Fault.status(503), route="messages")
        pytester.makepyprojecttoml(
            '[tool.pytest.ini_options]\nasyncio_default_fixture_loop_scope = "function"\n\n'
            '[tool.pytest_llm_guard]\nrecord = "off"\nbackoff_initial = 0.01\nbackoff_max = 0.05\n'
            + "".join(
                f'\n[[tool.pytest_llm_guard.endpoints]]\nname = "{name}"\nbase_url = "{url}"\n'
                f'kind = "{kind}"\npriority = {priority}\n'
                for name, url, kind, priority in [
                    ("openai-main", gpt.base_url, "openai", 0),
                    ("claude-down", down.url, "anthropic", 0),
                    ("claude-backup", claude.url, "anthropic", 1),
                ]
            )
        )
        pytester.makepyfile(
            """
            import json, pathlib
            import pytest

            @pytest.mark.llm_budget(deadline=5, retries=2)
            def test_both(anthropic_client, llm_client, llm_guard):
                hello = [{"role": "user", "content": "hello"}]
                claude = anthropic_client.messages.create(model="claude-test", max_tokens=20, messages=hello)
                gpt = llm_client.chat.completions.create(model="gpt-test", messages=hello)
                assert claude.content[0].text == gpt.choices[0].message.content == "echo: hello"
                attempts = [[a.dialect, a.endpoint_name, a.kind, a.outcome] for a in llm_guard.events]
                pathlib.Path("attempts.json").write_text(json.dumps(attempts))
            """
        )
        result = pytester.runpytest_subprocess("--llm-report=report.json", "--llm-report-html=report.html")
        result.assert_outcomes(passed=1)
        assert [r.path for r in down.requests] == ["/v1/messages"]
        assert [r.path for r in claude.requests] == ["/v1/messages"]
        assert [r.path for r in gpt.requests] == ["/v1/chat/completions"]
    assert json.loads((pytester.path / "attempts.json").read_text()) == [
        ["anthropic", "claude-down", "first", "HTTP 503"],
        ["anthropic", "claude-backup", "failover", "ok"],
        ["openai", "openai-main", "first", "ok"],
    ]
    report = json.loads((pytester.path / "report.json").read_text())
    assert [a["dialect"] for t in report["tests"] for a in t["attempts"]] == ["anthropic", "anthropic", "openai"]
    page = (pytester.path / "report.html").read_text()
    assert "model=claude-test (anthropic API)" in page and "model=gpt-test (openai API)" in page


# ----------------------------------------------------------------------------- keys


def test_anthropic_keys_never_reach_a_cassette(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 2.x SDK sends its key as ``Authorization: Bearer``; older clients and raw HTTP send ``x-api-key``."""
    monkeypatch.setenv("LLM_GUARD_RECORD", "all")
    with FaultServer() as server:
        pytester.makepyfile(
            f"""
            import anthropic, httpx2

            HELLO = [{{"role": "user", "content": "hi"}}]

            def test_keys(llm_guard):
                with anthropic.Anthropic(base_url="{server.url}", api_key="sk-ant-api03-SECRET-BEARER") as claude:
                    claude.messages.create(model="claude-test", max_tokens=5, messages=HELLO)
                headers = {{"x-api-key": "sk-ant-api03-SECRET-HEADER", "anthropic-version": "2023-06-01"}}
                body = {{"model": "claude-test", "max_tokens": 5, "messages": HELLO}}
                httpx2.post("{server.url}/v1/messages", headers=headers, json=body).raise_for_status()
                assert [a.dialect for a in llm_guard.events] == ["anthropic", "anthropic"]
            """
        )
        pytester.runpytest().assert_outcomes(passed=1)
    cassettes = list(pytester.path.rglob("*.yaml"))
    written = "".join(p.read_text() for p in cassettes)
    assert len(cassettes) == 1 and written.count("claude-test") >= 2
    assert "SECRET" not in written


def test_without_the_anthropic_extra_its_fixtures_skip_naming_the_extra(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("import sys\nsys.modules['anthropic'] = None  # as if not installed\n")
    pytester.makepyfile(
        """
        def test_sync(anthropic_client):
            pass

        def test_async(async_anthropic_client):
            pass

        def test_openai_still_works(llm_guard):
            pass
        """
    )
    result = pytester.runpytest_subprocess("-rs")
    result.assert_outcomes(passed=1, skipped=2)
    assert (
        result.stdout.str().count("anthropic package is not installed; pip install 'pytest-llm-guard[anthropic]'") == 2
    )


@pytest.mark.llm_budget(deadline=5, retries=2)
def test_the_sdks_own_retry_of_a_529_is_told_apart(llm_fault_server: FaultServer, llm_guard: Any) -> None:
    """The application's own client keeps its SDK's retries: the ledger names them, with the SDK's limit."""
    llm_fault_server.plan(Fault.status(529, retry_after=0), route="messages")
    with anthropic.Anthropic(base_url=llm_fault_server.url, api_key="sk-ant-app-key") as claude:
        claude.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
    assert [(a.kind, a.by, a.sdk_max_retries, a.outcome) for a in llm_guard.events] == [
        ("first", None, None, "HTTP 529"),
        ("retry", "sdk", 2, "ok"),
    ]


@pytest.mark.llm_budget(deadline=5, retries=2)
async def test_guard_wraps_an_application_client_and_leaves_the_original_alone(
    llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    llm_fault_server.plan(Fault.status(529, retry_after=0), Fault.status(529, retry_after=0), route="messages")
    own = anthropic.AsyncAnthropic(base_url=llm_fault_server.url, api_key="sk-ant-app-key")
    guarded = llm_guard.guard(own)
    message = await guarded.messages.create(model=MODEL, max_tokens=50, messages=HELLO)
    assert message.content[0].text == "echo: hello"
    assert [(a.kind, a.by, a.outcome) for a in llm_guard.events] == [
        ("first", None, "HTTP 529"),
        ("retry", "guard", "HTTP 529"),  # the guard's retries; the SDK's own are off in the copy
        ("retry", "guard", "ok"),
    ]
    assert own.max_retries == 2 and own._client.send.__self__ is own._client  # the original is untouched
    await own.close()


def test_keys_in_anthropic_variables_and_endpoint_variables_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wherever a key travels (an error message, a log line, a body), its value is redacted, whatever
    its variable is called: the SDKs' own (ANTHROPIC_AUTH_TOKEN) and every endpoint's api_key_env."""
    from pytest_llm_guard.config import Settings
    from pytest_llm_guard.endpoints import Endpoint, EndpointSet
    from pytest_llm_guard.guard import Guard

    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "token-from-the-anthropic-variable")
    monkeypatch.setenv("CLAUDE_PROD_SECRET", "secret-from-an-endpoint-variable")
    endpoints = EndpointSet(
        (Endpoint("claude", "http://127.0.0.1:1", api_key_env="CLAUDE_PROD_SECRET", kind="anthropic"),), True, "test"
    )
    guard = Guard(Settings(), test_id="test_keys", endpoints=endpoints)
    shown = guard.scrubber.text("auth token-from-the-anthropic-variable, key secret-from-an-endpoint-variable")
    assert "token-from" not in shown and "secret-from" not in shown


def test_a_call_with_no_endpoint_of_its_api_is_told_which_kind_it_needs(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    with FaultServer() as gpt:
        pytester.makepyprojecttoml(
            '[tool.pytest_llm_guard]\nrecord = "off"\n\n'
            f'[[tool.pytest_llm_guard.endpoints]]\nname = "openai-main"\nbase_url = "{gpt.base_url}"\n'
        )
        pytester.makepyfile(
            """
            def test_claude(anthropic_client):
                hello = [{"role": "user", "content": "hi"}]
                anthropic_client.messages.create(model="claude-test", max_tokens=5, messages=hello)
            """
        )
        result = pytester.runpytest_subprocess()
        assert gpt.requests == []  # an Anthropic call never goes to an OpenAI endpoint
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*openai-main (kind 'openai')*needs an endpoint of kind 'anthropic'*"])


def test_the_anthropic_fixture_without_a_key_says_which_variable_to_set(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    pytester.makepyfile("def test_claude(anthropic_client):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["*cannot build the Anthropic fixture client: it has no API key. Set ANTHROPIC_API_KEY*"]
    )


def test_counting_tokens_uses_none(anthropic_client: anthropic.Anthropic, llm_guard: Any) -> None:
    counted = anthropic_client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert counted.input_tokens == 1
    assert [(a.dialect, a.outcome, a.tokens) for a in llm_guard.events] == [("anthropic", "ok", None)]
