"""Plugin behaviour end to end, through pytester: markers, configuration, fixtures, outcomes, messages."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

FAULT_CONFTEST = """
import pytest

@pytest.fixture
def llm_client_options(llm_fault_server):
    return {"base_url": llm_fault_server.base_url, "api_key": "sk-test"}
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(FAULT_CONFTEST)
    return pytester


def test_marker_is_registered(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.llm_budget(deadline=..., call_timeout=..., first_token_timeout=..., idle_timeout=..., "
            "retries=..., calls=..., tokens=..., cost=...)*"
        ]
    )


def test_marker_is_accepted_under_strict_markers(project: pytest.Pytester) -> None:
    project.makepyfile(
        """
        import pytest
        @pytest.mark.llm_budget(deadline=3)
        def test_x(llm_guard):
            assert llm_guard.settings.deadline == 3
        """
    )
    project.runpytest("--strict-markers").assert_outcomes(passed=1)


def test_quickstart_needs_nothing_but_the_sdk_environment(pytester: pytest.Pytester, monkeypatch) -> None:
    from pytest_llm_guard.fault import FaultServer

    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        pytester.makepyfile(
            """
            import pytest
            @pytest.mark.llm_budget(deadline=10, retries=1)
            def test_answer(llm_client, llm_guard):
                reply = llm_client.chat.completions.create(
                    model=llm_guard.model, messages=[{"role": "user", "content": "ping"}]
                )
                assert reply.choices[0].message.content == "echo: ping"
            """
        )
        result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*llm-guard*", "1 guarded test: 1 LLM call, 1 attempt (1 live), 0 retries, 0 failovers, 0 failed attempts;*"]
    )


def test_missing_api_key_is_explained(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    pytester.makepyfile("def test_x(llm_client):\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cannot build the OpenAI fixture client*OPENAI_API_KEY*llm_client_options*"])
    assert "During handling" not in result.stdout.str(), "the SDK's message once, inside ours"


SEED_APP = """
import time
import openai
import pytest

def ask_with_retries(base_url, prompt):
    # The canonical harness loop: its own client, 5 attempts, 60 s timeout, backoff on any Exception.
    client = openai.OpenAI(base_url=base_url, api_key="sk-app")
    for attempt in range(5):
        try:
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], timeout=60
            )
        except Exception:
            time.sleep(0.01 * 2 ** attempt)
    raise RuntimeError("gave up")
"""


def test_seed_scenario_hanging_endpoint_ends_at_the_deadline(project: pytest.Pytester) -> None:
    project.makepyfile(
        SEED_APP
        + """
from pytest_llm_guard.fault import Fault

@pytest.mark.llm_budget(deadline=2)
def test_agent_turn(llm_fault_server):
    llm_fault_server.plan(then=Fault.hang())
    ask_with_retries(llm_fault_server.base_url, "hello")
"""
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "LLMBudgetExceeded: LLM deadline budget spent in test_seed_scenario*"
            "limit deadline=2.0 s, set by @pytest.mark.llm_budget*",
            "Attempts (1):",
            "  1. call 1: http://127.0.0.1:*/v1/chat/completions model=gpt-4o-mini: ReadTimeout*",
            "What to do: raise `deadline`*",
            "Where the LLM call was made:",
            "test_seed_scenario_hanging_endpoint_ends_at_the_deadline.py:*: in test_agent_turn",
            "    ask_with_retries(llm_fault_server.base_url, *",
            "test_seed_scenario_hanging_endpoint_ends_at_the_deadline.py:*: in ask_with_retries",
            "    return client.chat.completions.create(",
        ]
    )
    assert "httpx2" not in result.stdout.str()  # no frames (nor their arguments) from below the application
    # How soon such a loop ends is measured in real time by the fault matrix (test_fault_matrix.py).


def test_except_exception_loop_cannot_outlive_the_retry_budget(project: pytest.Pytester) -> None:
    project.makepyfile(
        SEED_APP
        + """
from pytest_llm_guard.fault import Fault

@pytest.mark.llm_budget(retries=1)
def test_agent_turn(llm_fault_server):
    llm_fault_server.plan(then=Fault.status(503))
    try:
        ask_with_retries(llm_fault_server.base_url, "hello")
    finally:
        # the SDK retries twice by default; the guard still stops the loop at the second failure
        assert len(llm_fault_server.requests) == 2
"""
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LLM retries budget spent*2 failed attempts*", "*HTTP 503*", "*HTTP 503*"])


def test_layers_resolve_in_documented_order(pytester: pytest.Pytester, monkeypatch) -> None:
    pytester.makepyprojecttoml("[tool.pytest_llm_guard]\ndeadline = 50\nretries = 5\ncalls = 7\n")
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nllm_retries = 4\nllm_calls = 8\n"
    )  # pytest.ini wins over pyproject as inifile
    monkeypatch.setenv("LLM_GUARD_CALLS", "9")
    pytester.makepyfile(
        """
        import pytest
        pytestmark = pytest.mark.llm_budget(tokens=1000, deadline=40)

        class TestLayers:
            pytestmark = pytest.mark.llm_budget(deadline=30)

            @pytest.mark.llm_budget(deadline=20)
            def test_x(self, llm_guard):
                s = llm_guard.settings
                assert (s.deadline, s.retries, s.calls, s.tokens, s.call_timeout) == (20, 4, 9, 1000, 3)
                assert "command line" in s.source_of("call_timeout")
        """
    )
    pytester.runpytest("--llm-call-timeout=3").assert_outcomes(passed=1)


def test_guard_all_guards_unmarked_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import httpx2
        from pytest_llm_guard import transport
        def test_x():
            assert transport.current() is not None
        """
    )
    pytester.runpytest("--llm-guard-all=true").assert_outcomes(passed=1)


def test_unguarded_tests_are_untouched_and_patches_are_undone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import httpx2
        import pytest
        ORIGINAL = httpx2.Client._send_single_request, httpx2.AsyncClient._send_single_request

        @pytest.mark.llm_budget(deadline=5)
        def test_guarded():
            assert httpx2.Client._send_single_request is not ORIGINAL[0]

        def test_plain_after_guarded():
            assert (httpx2.Client._send_single_request, httpx2.AsyncClient._send_single_request) == ORIGINAL
        """
    )
    # unguarded = "allow": a test that is not guarded runs httpx2's own code (by default the seam watches it)
    pytester.runpytest("-p", "no:randomly", "--llm-unguarded=allow").assert_outcomes(passed=2)


def test_a_pytester_session_inside_a_guarded_test_nests(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_outer="""
        import httpx2
        import pytest
        from pytest_llm_guard import transport

        pytest_plugins = ["pytester"]

        @pytest.mark.llm_budget(deadline=30)
        def test_outer(pytester, llm_fault_server):
            outer = transport.current()
            pytester.makepyfile(test_inner=(
                "import openai\\n"
                "def test_inner(llm_guard):\\n"
                f"    with openai.OpenAI(base_url='{llm_fault_server.base_url}', api_key='k') as client:\\n"
                "        client.models.list()\\n"
                "    assert llm_guard.stats.attempts == 1\\n"
            ))
            pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
            assert transport.current() is outer
            assert len(llm_fault_server.requests) == 1
        """
    )
    project.runpytest().assert_outcomes(passed=1)
    assert transport_restored()


def transport_restored() -> bool:
    import httpx2

    from pytest_llm_guard import transport

    return transport.current() is None and httpx2.Client._send_single_request.__module__ == "httpx2._client"


def test_an_httpx2_without_the_seam_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import httpx2
        del httpx2.Client._send_single_request  # as a future httpx2 might
        """
    )
    pytester.makepyfile("import pytest\n@pytest.mark.llm_budget(deadline=5)\ndef test_x():\n    pass\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*httpx2 * has no Client._send_single_request, the seam the guard wraps*"])


def test_boolean_options_are_flags(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(request):\n    assert request.config.getoption('llm_guard_all') == 'true'\n")
    pytester.runpytest("--llm-guard-all").assert_outcomes(passed=1)
    pytester.makepyfile("def test_x(request):\n    assert request.config.getoption('llm_guard_all') == 'false'\n")
    pytester.runpytest("--no-llm-guard-all").assert_outcomes(passed=1)


def test_help_shows_each_default_once(pytester: pytest.Pytester) -> None:
    help_text = " ".join(pytester.runpytest("--help").stdout.str().split())
    assert "endpoint of the llm_client fixtures; a string (default: OPENAI_BASE_URL)" in help_text
    assert "(default: none when CI is set, else once)" in help_text
    assert "(default None)" not in help_text and "(default: OPENAI_BASE_URL) (default" not in help_text


UNMARKED = """
import openai

def test_unmarked(fault_url):
    with openai.OpenAI(base_url=fault_url, api_key="sk-real-looking") as client:  # closed: no socket left to the GC
        client.models.list()

def test_plain():
    assert True
"""

FAULT_URL = """
import pytest
from pytest_llm_guard.fault import FaultServer

@pytest.fixture(scope="session")
def fault_url():
    with FaultServer() as server:
        yield server.base_url
"""


def test_an_unmarked_test_that_calls_an_llm_is_listed_on_ci(pytester: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    pytester.makeconftest(FAULT_URL)
    pytester.makepyfile(test_app=UNMARKED)
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*test_app.py::test_unmarked is not guarded, yet sent 1 LLM request (GET http://127.0.0.1:*/v1/models)*",
            "*llm-guard: unguarded LLM requests*",
            "1 test sent LLM requests without a guard: no deadline or budget, no cassette of ours, not counted*",
            "  test_app.py::test_unmarked: 1 request, first GET http://127.0.0.1:*/v1/models",
            "To fix: guard it with an llm_* marker*guard_all = true*",
        ]
    )


def test_unguarded_fail_refuses_the_request(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAULT_URL)
    pytester.makepyfile(test_app=UNMARKED)
    result = pytester.runpytest("--llm-unguarded=fail")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*LLMUnguardedRequest: pytest-llm-guard: test_app.py::test_unmarked is not guarded*"])
    assert "refused, nothing was sent (unguarded = fail, set by the command line)" in result.stdout.str()
