"""The exact words users meet when a setting is wrong or a summary counts something: each checked as written."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llm_guard.config import LLMGuardConfigError, load_settings
from pytest_llm_guard.fault import Fault, FaultServer

pytest_plugins = ["pytester"]

CONFTEST = """
import pytest

@pytest.fixture
def llm_client_options(llm_fault_server):
    return {"base_url": llm_fault_server.base_url, "api_key": "sk-test"}
"""

ONE_CALL = """
def test_ask(llm_client):
    llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
"""


def test_mistyped_marker_keys_error_their_own_tests_and_the_rest_of_the_suite_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
        import pytest

        @pytest.mark.llm_budget(deadlin=3)
        def test_typo():
            pass

        @pytest.mark.llm_budget(deadline=-1)
        def test_negative():
            pass

        def test_fine():
            pass
        """,
        test_b="def test_other():\n    pass\n",
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*_ ERROR at setup of test_typo _*",
            "pytest-llm-guard: unknown key 'deadlin' in @pytest.mark.llm_budget on test_a.py::test_typo; "
            "did you mean 'deadline'? allowed keys: deadline, call_timeout, first_token_timeout, idle_timeout, "
            "retries, calls, tokens, cost",
            "*_ ERROR at setup of test_negative _*",
            "pytest-llm-guard: deadline = -1 in @pytest.mark.llm_budget on test_a.py::test_negative is not valid; "
            "deadline must be a positive number, or none/off",
        ]
    )


def test_mistyped_breaker_and_cassette_marker_keys_say_which_key_was_meant(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="""
        import pytest

        @pytest.mark.llm_breaker(on_opne="skip")
        def test_breaker():
            pass

        @pytest.mark.llm_cassette(paht="x.yaml")
        def test_cassette():
            pass
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "pytest-llm-guard: unknown key 'on_opne' in @pytest.mark.llm_breaker on test_a.py::test_breaker; "
            "did you mean 'on_open'? allowed keys: endpoints, on_open",
            "pytest-llm-guard: unknown key 'paht' in @pytest.mark.llm_cassette on test_a.py::test_cassette; "
            "did you mean 'path'? allowed keys: name, path, speed, on_unplayed, cassette_max_age, on_expiry, "
            "match_ignore",
        ]
    )


def test_a_mistyped_pyproject_key_names_the_key_meant_not_every_key(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml("[tool.pytest_llm_guard]\nretry = 3\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*pytest-llm-guard: unknown key 'retry' in [[]tool.pytest_llm_guard] in {pytester.path}/pyproject.toml; "
         "did you mean 'retries'?"]
    )  # fmt: skip
    assert "call_timeout" not in result.stderr.str()


def test_an_unknown_pyproject_key_like_no_other_says_where_the_keys_are(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.pytest_llm_guard]\nzzz = 1\n")
    with pytest.raises(LLMGuardConfigError) as info:
        load_settings(pyproject=pyproject, ini={}, ini_source="ini", cli={}, environ={})
    assert str(info.value) == (
        f"pytest-llm-guard: unknown key 'zzz' in [tool.pytest_llm_guard] in {pyproject}; the keys are the options "
        "of pytest --help's pytest-llm-guard section (--llm-call-timeout: call_timeout)"
    )


def test_a_bad_value_says_what_is_allowed_once(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.pytest_llm_guard]\ndeadline = -1\n")
    with pytest.raises(LLMGuardConfigError) as info:
        load_settings(pyproject=pyproject, ini={}, ini_source="ini", cli={}, environ={})
    assert str(info.value) == (
        f"pytest-llm-guard: deadline = -1 in [tool.pytest_llm_guard] in {pyproject} is not valid; "
        "deadline must be a positive number, or none/off"
    )


def test_an_unknown_environment_variable_warning_points_at_the_variable(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_GUARD_DEADLNE", "3")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "LLM_GUARD_DEADLNE (environment):1",
            "  LLM_GUARD_DEADLNE (environment):1: PytestConfigWarning: pytest-llm-guard: unknown environment "
            "variable LLM_GUARD_DEADLNE is ignored; did you mean LLM_GUARD_DEADLINE?",
        ]
    )
    assert "plugin.py" not in result.stdout.str()


def test_a_guard_fixture_asked_for_only_at_run_time_says_how_to_guard_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        def test_dynamic(request):
            request.getfixturevalue("llm_client")

        @pytest.mark.llm_budget(deadline=5)
        def test_dynamic_and_marked(request):
            request.getfixturevalue("llm_client").chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*pytest-llm-guard: test_a_guard_fixture_asked_for_only_at_run_time_says_how_to_guard_the_test.py::"
        "test_dynamic asks for llm_guard (or a client fixture, which uses it) through request.getfixturevalue, "
        "so it was not guarded when collected. Name the fixture among the test's arguments, or mark the test "
        "with @pytest.mark.llm_budget.",
    ])  # fmt: skip
    result.stdout.no_fnmatch_line("*KeyError*")


def test_one_slowest_test_is_one_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_one=ONE_CALL)
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["where the time went (1 slowest guarded test; --llm-durations=N):"])


def test_quiet_prints_the_totals_line_only(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(test_one=ONE_CALL)
    with FaultServer() as server:  # the default endpoint, failing: its breaker opens, which -q leaves out
        server.plan(then=Fault.status(503))
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        fast = ("--llm-backoff-initial=0.01", "--llm-backoff-max=0.02")
        normal = pytester.runpytest(*fast).stdout.lines
        quiet = pytester.runpytest("-q", *fast).stdout.lines
    assert any(line.startswith("endpoint default (") and "breaker open" in line for line in normal)
    section = quiet[quiet.index(next(line for line in quiet if "llm-guard" in line)) + 1 :]
    assert section[0].startswith("1 guarded test: 1 LLM call, 3 attempts")
    assert section[1].startswith("=") and "short test summary info" in section[1]


def test_report_lines_stand_on_their_own_lines_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_one=ONE_CALL, test_two=ONE_CALL.replace("test_ask", "test_ask_again"))
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--llm-report=r.json", "--llm-report-html=r.html")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            f"pytest-llm-guard: JSON report written to {pytester.path}/r.json",
            f"pytest-llm-guard: HTML report written to {pytester.path}/r.html",
        ]
    )
    assert "[100%]pytest-llm-guard" not in result.stdout.str()


def test_audit_counts_in_the_singular(pytester: pytest.Pytester) -> None:
    key = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"
    (pytester.path / "c.yaml").write_text(f"interactions:\n- request:\n    body: key {key}\n")
    result = pytester.runpytest("--llm-audit")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            f"pytest-llm-guard audit: 1 cassette under {pytester.path}, 1 credential-shaped string found",
            "Re-record that cassette (recording redacts such strings), or edit the line above.",
        ]
    )


def test_a_mistyped_ini_key_warns_at_its_line_with_the_key_meant(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nllm_deadlin = 3\n")
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, warnings=2)  # pytest's "Unknown config option", and ours
    result.stdout.fnmatch_lines(
        [
            f"  {pytester.path}/tox.ini:3: PytestConfigWarning: pytest-llm-guard: unknown ini key llm_deadlin is "
            "ignored; did you mean 'llm_deadline'?",
        ]
    )


def test_under_xdist_a_configuration_warning_is_given_once(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_GUARD_DEADLNE", "3")
    pytester.makepyfile("def test_x():\n    pass\n\ndef test_y():\n    pass\n")
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist")
    result.assert_outcomes(passed=2, warnings=1)


def test_the_unguarded_list_advises_guarding_it_or_each_as_the_count_says() -> None:
    from pytest_llm_guard.report import unguarded_lines

    one = [{"nodeid": "t.py::a", "requests": ["POST http://x/v1/chat/completions"]}]
    two = [*one, {"nodeid": "t.py::b", "requests": ["POST http://x/v1/embeddings"] * 2}]
    assert unguarded_lines(one)[-1].startswith("To fix: guard it with an llm_* marker (@pytest.mark.llm_budget())")
    assert unguarded_lines(two) == [
        "2 tests sent LLM requests without a guard: no deadline or budget, no cassette of ours, not counted "
        '(unguarded = warn; "fail" refuses them):',
        "  t.py::a: 1 request, first POST http://x/v1/chat/completions",
        "  t.py::b: 2 requests, first POST http://x/v1/embeddings",
        "To fix: guard each with an llm_* marker (@pytest.mark.llm_budget()) or the llm_guard fixture, "
        "or guard every test: guard_all = true in [tool.pytest_llm_guard] (--llm-guard-all).",
    ]


def test_an_unguarded_test_of_the_fault_server_is_told_to_guard_it_without_a_cassette(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import openai

        def test_retry(llm_fault_server):
            with openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-test") as client:
                client.models.list()
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*To fix: guard it with @pytest.mark.llm_cassette(False) (a cassette would record the fault server's "
            "last answer, and a replay would never meet its faults). To silence: *"
        ]
    )
