"""Only true answers are recorded, and broken ones are failed attempts named as such."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest
import yaml

from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.transport import LLMMalformedResponse, LLMStreamCut

pytest_plugins = ["pytester"]

HELLO = [{"role": "user", "content": "hello there"}]


@pytest.mark.llm_budget(retries=2)
def test_a_malformed_200_is_a_failed_attempt_retried_like_a_5xx(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard
) -> None:
    llm_fault_server.plan(Fault.malformed())
    assert (
        llm_client.chat.completions.create(model="m", messages=HELLO).choices[0].message.content == "echo: hello there"
    )
    first, second = llm_guard.events
    assert (first.outcome, first.error) == (
        "LLMMalformedResponse",
        f"malformed JSON in a 200 from {llm_fault_server.url}",
    )
    assert (second.kind, second.outcome) == ("retry", "ok")


def test_a_malformed_200_reaches_an_application_client_as_a_connection_error(
    llm_fault_server: FaultServer, llm_guard
) -> None:
    llm_fault_server.plan(then=Fault.malformed())
    client = openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-app", max_retries=0)
    with pytest.raises(openai.APIConnectionError) as info:
        client.chat.completions.create(model="m", messages=HELLO)
    assert isinstance(info.value.__cause__, LLMMalformedResponse)
    assert [(a.outcome, a.failed) for a in llm_guard.events] == [("LLMMalformedResponse", True)]


def test_a_stream_cut_midway_says_so_to_the_caller(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard
) -> None:
    llm_fault_server.plan(Fault.cut_stream(after_chunks=2))
    stream = llm_client.chat.completions.create(model="m", messages=HELLO, stream=True)
    with pytest.raises(openai.APIConnectionError) as info:  # the SDK wraps what breaks a stream
        for _ in stream:
            pass
    cut = info.value.__cause__
    assert isinstance(cut, LLMStreamCut) and "ended before its end event after 2 events" in str(cut)
    assert cut.__cause__ is None and cut.__suppress_context__  # no httpcore chain under it
    assert llm_guard.events[0].outcome == "LLMStreamCut" and len(llm_fault_server.requests) == 1


def test_a_malformed_stream_event_before_any_content_is_a_failed_attempt_retried(
    llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard
) -> None:
    llm_fault_server.plan(Fault.malformed())
    chunks = list(llm_client.chat.completions.create(model="m", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there"
    first, second = llm_guard.events
    assert first.outcome == "LLMMalformedResponse"
    assert first.error == f"malformed JSON in event 1 of a stream in a 200 from {llm_fault_server.url}"
    assert (second.kind, second.outcome) == ("retry", "ok")


def recorded(project: pytest.Pytester) -> list[dict]:
    return [
        i for p in (project.path / "cassettes").rglob("*.yaml") for i in yaml.safe_load(p.read_text())["interactions"]
    ]


BROKEN = """
import openai
import pytest

def test_malformed_then_ok(llm_client):
    llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "one"}])

def test_cut_stream(llm_client):
    messages = [{"role": "user", "content": "two three"}]
    with pytest.raises(openai.APIConnectionError):
        for _ in llm_client.chat.completions.create(model="m", messages=messages, stream=True):
            pass

def test_error_event_before_content(llm_client):
    messages = [{"role": "user", "content": "four"}]
    assert len(list(llm_client.chat.completions.create(model="m", messages=messages, stream=True))) > 1
"""


def test_broken_answers_are_never_recorded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        # The stream is cut after its answer began (cut before it, the attempt would be retried).
        server.plan(Fault.malformed(), Fault.ok(), Fault.cut_stream(after_chunks=3), Fault.stream_error(after_chunks=1))
        pytester.makepyfile(test_app=BROKEN)
        pytester.runpytest("--llm-record=once").assert_outcomes(passed=3)
    bodies = [i["response"]["body"]["string"] for i in recorded(pytester)]
    # The retries' answers; not the malformed one, not the cut, not the stream that failed before its content.
    assert len(bodies) == 2 and "echo: one" in bodies[0]
    assert '"echo:"' in bodies[1] and "[DONE]" in bodies[1] and "error" not in bodies[1]
    assert not Path(pytester.path / "cassettes" / "test_app" / "test_cut_stream.yaml").exists()


FAILS_WHILE_RECORDING = """
import openai
import pytest

def ask(content):
    return openai.OpenAI().chat.completions.create(model="m", messages=[{"role": "user", "content": content}])

def test_fails():
    ask("first")
    assert False, "the application broke after its first call"

def test_interrupted():
    ask("first")
    raise KeyboardInterrupt
"""


def test_a_test_that_fails_while_recording_leaves_no_new_cassette(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One session (in a subprocess: its clients are never closed): a test that fails, then one that is
    interrupted, which ends the session."""
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        pytester.makepyfile(test_app=FAILS_WHILE_RECORDING)
        result = pytester.runpytest_subprocess("--llm-guard-all=true", "--llm-record=once")
        result.stdout.fnmatch_lines(["*KeyboardInterrupt*", "*1 failed*"])
        assert len(server.requests) == 2
    assert not (pytester.path / "cassettes" / "test_app").exists()


def test_new_episodes_keeps_the_complete_interactions_of_a_failing_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = pytester.path / "cassettes" / "test_app" / "test_fails.yaml"
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        pytester.makepyfile(
            test_app=FAILS_WHILE_RECORDING.replace('assert False, "the application', '# "the application')
        )
        pytester.runpytest("--llm-guard-all=true", "--llm-record=once", "-k", "test_fails").assert_outcomes(passed=1)
        pytester.makepyfile(
            test_app=FAILS_WHILE_RECORDING.replace('ask("first")\n    assert', 'ask("second")\n    assert')
        )
        pytester.runpytest("--llm-guard-all=true", "--llm-record=new_episodes", "-k", "test_fails").assert_outcomes(
            failed=1
        )
    texts = [i["request"]["body"] for i in yaml.safe_load(path.read_text())["interactions"]]
    assert len(texts) == 2 and "second" in texts[1]


SHARED = """
import pytest

@pytest.mark.llm_cassette("shared")
@pytest.mark.parametrize("n", range(20))
def test_shared(n, llm_client):
    for turn in range(3):
        content = f"test {n} turn {turn}"
        reply = llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])
        assert reply.choices[0].message.content == f"echo: {content}"
"""


@pytest.mark.parametrize("workers", [[], ["-n", "2", "-p", "xdist"]], ids=["serial", "xdist"])
def test_a_cassette_shared_by_20_tests_records_in_once_mode(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    pytester.makepyfile(test_app=SHARED)
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        result = pytester.runpytest("--llm-guard-all=true", "--llm-record=once", *workers)
        result.assert_outcomes(passed=20)
        assert len(server.requests) == 60
    shared = yaml.safe_load((pytester.path / "cassettes" / "test_app" / "shared.yaml").read_text())
    assert len(shared["interactions"]) == 60
    monkeypatch.delenv("OPENAI_API_KEY")  # the next session in once mode only replays: offline, no key
    pytester.runpytest("--llm-guard-all=true", "--llm-record=once", *workers).assert_outcomes(passed=20)


def test_a_broken_answer_that_fails_a_test_is_reported_in_a_few_lines(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_app="""
        import openai
        from pytest_llm_guard.fault import Fault

        def test_agent(llm_fault_server, llm_guard):
            llm_fault_server.plan(then=Fault.cut_stream(after_chunks=2))
            client = openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-app", max_retries=0)
            messages = [{"role": "user", "content": "hi"}]
            stream = client.chat.completions.create(model="m", messages=messages, stream=True)
            print("".join(chunk.choices[0].delta.content or "" for chunk in stream))
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "APIConnectionError: Connection error.",
            "  caused by LLMStreamCut: stream from http://127.0.0.1:* ended before its end event after 2 events*",
            "Attempts (1):",
            "  1. call 1: http://127.0.0.1:*/v1/chat/completions model=m: LLMStreamCut*",
            "",
            "Where the LLM call was made:",
            "test_app.py:*: in test_agent",
        ]
    )
    assert "httpcore2" not in result.stdout.str() and "_base_client.py" not in result.stdout.str()


@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "handed-over-whole"])
def test_a_gzip_answer_is_judged_and_counted_decompressed(llm_guard, whole: bool) -> None:
    import gzip
    import json as _json

    import httpx2

    body = _json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}).encode()  # fmt: skip

    def answer(request: httpx2.Request) -> httpx2.Response:
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        if whole:  # as a mock transport's content=: already read, httpx2 holds it decoded
            return httpx2.Response(200, headers=headers, content=gzip.compress(body))
        return httpx2.Response(200, headers=headers, stream=httpx2.ByteStream(gzip.compress(body)))

    client = openai.OpenAI(
        base_url="http://llm.test/v1",
        api_key="sk-x",
        http_client=openai.DefaultHttpx2Client(transport=httpx2.MockTransport(answer)),
    )
    assert client.chat.completions.create(model="m", messages=HELLO).choices[0].message.content == "hi"
    (attempt,) = llm_guard.events
    assert (attempt.outcome, attempt.tokens) == ("ok", 3)
