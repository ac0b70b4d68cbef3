"""Installing the plugin changes no outcome of a suite that knows nothing of it.

Each project runs twice, with the plugin and with ``-p no:llm_guard``, and every test must end
the same way: under ``filterwarnings = error``, replaying pytest-recording cassettes (sync,
async, streamed), with a mock transport and with respx and pytest-httpx (they patch httpx and
httpcore, not httpx2, so their tests use plain httpx), pytest-asyncio in strict and auto mode,
xdist, and pytest-timeout's two methods. A request that really goes live without a guard is
listed and warned about once, and changes the test's outcome only where the user made warnings
errors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from pytest_llm_guard.fault import FaultServer

pytest_plugins = ["pytester"]

pytest.importorskip("pytest_recording", reason="pytest-recording is in the dev extra: pip install -e '.[dev]'")
pytest.importorskip("pytest_asyncio", reason="pytest-asyncio is in the dev extra: pip install -e '.[dev]'")

INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

REPLAYED = """
import httpx2
import openai
import pytest
import pytest_asyncio

ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}

@pytest.fixture
def client():
    with openai.OpenAI() as client:
        yield client

@pytest.mark.vcr
def test_vcr_sync(client):
    assert client.chat.completions.create(**ASK).choices[0].message.content == "echo: hello"

@pytest.mark.vcr
def test_vcr_streamed(client):
    chunks = client.chat.completions.create(**ASK, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello"

@pytest_asyncio.fixture
async def async_client():
    async with openai.AsyncOpenAI() as client:
        yield client

@pytest.mark.vcr
@pytest.mark.asyncio
async def test_vcr_async(async_client):
    answer = await async_client.chat.completions.create(**ASK)
    assert answer.choices[0].message.content == "echo: hello"

@pytest.mark.vcr
def test_vcr_miss_fails_as_it_always_did(client):
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "never recorded"}])

def answer(request):
    return httpx2.Response(200, json={
        "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "mocked"}}],
    })

def test_mock_transport():
    http = openai.DefaultHttpx2Client(transport=httpx2.MockTransport(answer))
    client = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", http_client=http)
    assert client.chat.completions.create(**ASK).choices[0].message.content == "mocked"

@pytest.mark.asyncio
async def test_async_mock_transport():
    http = openai.DefaultAsyncHttpx2Client(transport=httpx2.MockTransport(answer))
    client = openai.AsyncOpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test", http_client=http)
    assert (await client.chat.completions.create(**ASK)).choices[0].message.content == "mocked"

def test_pytest_httpx(httpx_mock):
    import httpx
    httpx_mock.add_response(url="http://127.0.0.1:9/v1/chat/completions", json={"ok": True})
    assert httpx.post("http://127.0.0.1:9/v1/chat/completions", json=ASK).json() == {"ok": True}

def test_respx():
    import httpx
    import respx
    with respx.mock:
        respx.post("http://127.0.0.1:9/v1/chat/completions").respond(json={"ok": True})
        assert httpx.post("http://127.0.0.1:9/v1/chat/completions", json=ASK).json() == {"ok": True}

@pytest.mark.timeout(60)
def test_own_timeout_marker():
    pass

def test_a_plain_failure():
    assert 1 == 2
"""

RUNS = {
    "asyncio-strict": ["-o", "asyncio_mode=strict"],
    "asyncio-auto": ["-o", "asyncio_mode=auto"],
    "xdist": ["-n", "2"],
    "timeout-signal": ["--timeout=60", "--timeout-method=signal"],
    "timeout-thread": ["--timeout=60", "--timeout-method=thread"],
    "unguarded-fail": ["--llm-unguarded=fail"],  # refuses what goes live: a replay does not
}


def outcomes(result: pytest.RunResult) -> dict[str, list[str]]:
    """Each test's outcomes from ``-rA`` (a test that passed and errored in teardown has two)."""
    found: dict[str, list[str]] = {}
    for line in result.outlines:
        match = re.match(r"(PASSED|FAILED|ERROR|XFAIL|XPASS) (\S+::\S+)", line)
        if match:
            found.setdefault(match.group(2), []).append(match.group(1))
    return {test: sorted(results) for test, results in found.items()}


def run(pytester: pytest.Pytester, *args: str, plugin: bool) -> pytest.RunResult:
    options = [*args] if plugin else ["-p", "no:llm_guard", *(a for a in args if not a.startswith("--llm-"))]
    return pytester.runpytest("-rA", "-p", "no:randomly", *options)


@pytest.fixture
def replaying(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A project whose cassettes pytest-recording recorded from the fault server, now gone: replays are offline."""
    pytester.makeini(INI)
    pytester.makepyfile(test_project=REPLAYED)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        recorded = pytester.runpytest("-p", "no:llm_guard", "--record-mode=once", "-k", "vcr and not miss")
        recorded.assert_outcomes(passed=3)
    return pytester


def test_cassette_replays_under_filterwarnings_error_are_not_live_and_warn_nothing(replaying: pytest.Pytester) -> None:
    """The reported false alarm and INTERNALERROR: vcrpy answered, nothing left the process."""
    with_plugin, without = run(replaying, plugin=True), run(replaying, plugin=False)
    assert with_plugin.ret == without.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(with_plugin) == outcomes(without)
    assert outcomes(without) == {
        **{f"test_project.py::test_{name}": ["PASSED"] for name in ("vcr_sync", "vcr_streamed", "vcr_async")},
        **{f"test_project.py::test_{name}": ["PASSED"] for name in ("mock_transport", "async_mock_transport")},
        **{f"test_project.py::test_{name}": ["PASSED"] for name in ("pytest_httpx", "respx", "own_timeout_marker")},
        "test_project.py::test_vcr_miss_fails_as_it_always_did": ["FAILED"],
        "test_project.py::test_a_plain_failure": ["FAILED"],
    }
    assert "INTERNALERROR" not in with_plugin.stdout.str()
    assert "warnings" not in with_plugin.parseoutcomes()
    assert "unguarded LLM requests" not in with_plugin.stdout.str()


@pytest.mark.parametrize("options", list(RUNS.values()), ids=list(RUNS))
def test_the_same_outcomes_with_the_plugin_as_without(replaying: pytest.Pytester, options: list[str]) -> None:
    with_plugin, without = run(replaying, *options, plugin=True), run(replaying, *options, plugin=False)
    assert outcomes(without) and outcomes(with_plugin) == outcomes(without), with_plugin.stdout.str()
    assert with_plugin.ret == without.ret
    assert "unguarded LLM requests" not in with_plugin.stdout.str()


LIVE = """
import openai
import pytest

ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}

def test_live(fault_url):
    with openai.OpenAI(base_url=fault_url, api_key="sk-test") as client:
        assert client.chat.completions.create(**ASK).choices[0].message.content == "echo: hello"

@pytest.mark.asyncio
async def test_live_async(fault_url):
    async with openai.AsyncOpenAI(base_url=fault_url, api_key="sk-test") as client:
        assert (await client.chat.completions.create(**ASK)).choices[0].message.content == "echo: hello"

def test_plain():
    pass
"""

FAULT_URL = """
import pytest
from pytest_llm_guard.fault import FaultServer

@pytest.fixture(scope="session")
def fault_url():
    with FaultServer() as server:
        yield server.base_url
"""


@pytest.fixture
def live(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(FAULT_URL)
    pytester.makepyfile(test_live=LIVE)
    return pytester


@pytest.mark.parametrize("options", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_live_unguarded_request_is_listed_and_warned_once_and_changes_no_outcome(
    live: pytest.Pytester, options: list[str]
) -> None:
    with_plugin = run(live, "--llm-report=report.json", *options, plugin=True)
    assert outcomes(with_plugin) == outcomes(run(live, *options, plugin=False))
    with_plugin.assert_outcomes(passed=3, warnings=2)
    with_plugin.stdout.fnmatch_lines(
        [
            "*test_live.py::test_live is not guarded, yet sent 1 LLM request (POST http://127.0.0.1:*"
            "/v1/chat/completions) to the network*",
            "*llm-guard: unguarded LLM requests*",
            "2 tests sent LLM requests without a guard*",
        ]
    )
    for test in ("test_live", "test_live_async"):  # under xdist, in the order they ended
        with_plugin.stdout.fnmatch_lines([f"  test_live.py::{test}: 1 request, first POST http://127.0.0.1:*"])
    report = json.loads((live.path / "report.json").read_text())
    jsonschema.validate(report, json.loads((Path(__file__).parent.parent / "docs" / "report-schema.json").read_text()))
    assert sorted((t["nodeid"], len(t["requests"])) for t in report["unguarded"]) == [
        ("test_live.py::test_live", 1),
        ("test_live.py::test_live_async", 1),
    ]


def test_under_w_error_a_live_unguarded_request_fails_only_its_test(live: pytest.Pytester) -> None:
    """The reported INTERNALERROR: the warning was raised from a hook wrapper and ended the session."""
    result = run(live, "-W", "error", plugin=True)
    assert "INTERNALERROR" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert outcomes(result) == {
        "test_live.py::test_live": ["FAILED"],
        "test_live.py::test_live_async": ["FAILED"],
        "test_live.py::test_plain": ["PASSED"],
    }
    result.stdout.fnmatch_lines(
        ["*LLMUnguardedWarning: pytest-llm-guard: test_live.py::test_live is not guarded*To fix: guard it*"]
    )
    text = result.stdout.str()
    assert "protocol.py" not in text and "During handling" not in text, "the warning's text alone, not our frames"
    assert outcomes(run(live, "-W", "error", plugin=False)) == {
        f"test_live.py::{test}": ["PASSED"] for test in ("test_live", "test_live_async", "test_plain")
    }


def test_under_w_error_a_cassettes_warning_fails_only_its_tests_teardown(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A guarded test's cassette warning was issued from a hook wrapper too: another INTERNALERROR."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makepyfile(
        test_app="""
        import openai

        def test_records_a_credential_shaped_answer():
            with openai.OpenAI() as client:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

        def test_next():
            pass
        """
    )
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        server.reply("your AWS key is AKIA" + "Q7" * 8)
        result = run(pytester, "-W", "error", "--llm-guard-all=true", "--llm-record=once", plugin=True)
    assert "INTERNALERROR" not in result.stdout.str()
    assert outcomes(result) == {
        "test_app.py::test_records_a_credential_shaped_answer": ["ERROR", "PASSED"],
        "test_app.py::test_next": ["PASSED"],
    }
    result.stdout.fnmatch_lines(["*PytestWarning: pytest-llm-guard: credential-shaped strings were redacted*"])


def test_a_cassette_saved_after_a_failed_teardown_warns_without_raising_under_w_error(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When teardown raised, the cassette is saved from a wrapper: its warning is shown, never raised there."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makepyfile(
        test_app="""
        import openai
        import pytest

        @pytest.fixture
        def breaks_in_teardown(request):
            yield
            if request.config.option.ask == "second":
                raise RuntimeError("teardown broke")

        def test_records(breaks_in_teardown, request):
            ask = [{"role": "user", "content": request.config.option.ask}]
            with openai.OpenAI() as client:
                client.chat.completions.create(model="m", messages=ask)

        def test_next():
            pass
        """
    )
    pytester.makeconftest("def pytest_addoption(parser):\n    parser.addoption('--ask')\n")
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        run(pytester, "--llm-guard-all=true", "--llm-record=once", "--ask=first", plugin=True).assert_outcomes(passed=2)
        server.reply("your AWS key is AKIA" + "Q7" * 8)
        options = ("-W", "error", "--llm-guard-all=true", "--llm-record=new_episodes", "--ask=second")
        options += ("--llm-on-unplayed=ignore",)  # the new prompt leaves the first one's recording unplayed
        result = run(pytester, *options, plugin=True)
    assert "INTERNALERROR" not in result.stdout.str()
    assert outcomes(result) == {"test_app.py::test_records": ["ERROR", "PASSED"], "test_app.py::test_next": ["PASSED"]}
    result.stdout.fnmatch_lines(["*teardown broke*", "*credential-shaped strings were redacted from cassette*"])
