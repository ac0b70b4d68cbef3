"""'Why did this test take so long?' answered: the terminal's attribution, the JSON report, JUnit, the log, the hook."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from pytest_llm_guard.fault import FaultServer

pytest_plugins = ["pytester"]

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "report-schema.json").read_text())

STORY = """
import time
import openai
import pytest
from pytest_llm_guard.fault import Fault

def ask_with_retries(base_url, prompt):
    # The harness loop of the story: its own client, 5 attempts, a fixed timeout, backoff on any Exception.
    client = openai.OpenAI(base_url=base_url, api_key="sk-app", max_retries=0)
    for attempt in range(5):
        try:
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], timeout=0.2
            )
        except Exception:
            time.sleep(0.02 * 2 ** attempt)
    raise RuntimeError("gave up")

@pytest.mark.llm_budget(deadline=10, retries=None)
def test_agent_turn(llm_fault_server):
    llm_fault_server.plan(then=Fault.hang())
    ask_with_retries(llm_fault_server.base_url, "hello")

def test_quick(llm_client):
    llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
"""

CONFTEST = """
import pytest

@pytest.fixture
def llm_client_options(llm_fault_server):
    return {"base_url": llm_fault_server.base_url, "api_key": "sk-test"}
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_story=STORY)
    return pytester


def test_the_terminal_says_where_the_story_tests_time_went(project: pytest.Pytester) -> None:
    result = project.runpytest()
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "where the time went (2 slowest guarded tests; --llm-durations=N):",
            "  test_story.py::test_agent_turn *s = *s in 5 timeouts + 0.?s backoff + *s other",
            "  test_story.py::test_quick *s = 0.0s in 1 ok call + *s other",
        ]
    )


def test_durations_limit_and_quiet(project: pytest.Pytester) -> None:
    limited = project.runpytest("--llm-durations=1")
    assert "test_quick" not in limited.stdout.str().split("where the time went")[1]
    quiet = project.runpytest("-q")
    assert "where the time went" not in quiet.stdout.str() and "2 guarded tests" in quiet.stdout.str()


def validate(report: dict) -> None:
    jsonschema.validate(report, SCHEMA)


def test_the_json_report_follows_its_schema(project: pytest.Pytester) -> None:
    project.runpytest("--llm-report=out/report.json").assert_outcomes(failed=1, passed=1)
    report = json.loads((project.path / "out" / "report.json").read_text())
    validate(report)
    story = next(t for t in report["tests"] if t["nodeid"].endswith("test_agent_turn"))
    assert story["outcome"] == "failed" and [a["category"] for a in story["attempts"]] == ["timeout"] * 5
    assert story["attribution"][0] == {"what": "timeout", "seconds": pytest.approx(1.0, abs=0.3), "attempts": 5}
    parts = sum(part["seconds"] for part in story["attribution"])
    assert parts == pytest.approx(story["duration"], abs=0.05)
    endpoint = report["endpoints"][0]
    assert endpoint["attempts_by_category"] == {"timeout": 5, "ok": 1}
    assert report["session"]["totals"]["attempts"] == 6


def test_one_merged_report_under_xdist(project: pytest.Pytester) -> None:
    project.makepyfile(test_more="def test_more(llm_guard):\n    pass\n")
    result = project.runpytest_subprocess("-n", "2", "-p", "xdist", "--llm-report=report.json")
    result.assert_outcomes(failed=1, passed=2)
    report = json.loads((project.path / "report.json").read_text())
    validate(report)
    assert sorted(t["nodeid"].split("::")[1] for t in report["tests"]) == ["test_agent_turn", "test_more", "test_quick"]


def test_junit_properties(project: pytest.Pytester) -> None:
    project.runpytest("--junitxml=junit.xml")
    cases = {case.get("name"): case for case in ET.parse(project.path / "junit.xml").iter("testcase")}
    properties = {p.get("name"): p.get("value") for p in cases["test_agent_turn"].iter("property")}
    assert properties["llm_calls"] == "5" and properties["llm_attempts"] == "5" and properties["llm_live"] == "5"
    assert set(properties) >= {"llm_retries", "llm_failovers", "llm_seconds", "llm_backoff_seconds", "llm_tokens",
                               "llm_replayed"}  # fmt: skip


def test_the_live_log_and_the_attempt_hook(project: pytest.Pytester) -> None:
    project.makeconftest(
        CONFTEST
        + """
SEEN = []

def pytest_llm_guard_attempt(record):
    SEEN.append((record.test, record.category))

def pytest_sessionfinish(session):
    (session.config.rootpath / "seen.json").write_text(__import__("json").dumps(SEEN))
"""
    )
    result = project.runpytest("-o", "log_cli=true", "-o", "log_cli_level=INFO", "-k", "quick")
    result.stdout.fnmatch_lines(["*INFO*pytest_llm_guard*test_story.py::test_quick: attempt http://127.0.0.1:*: ok*"])
    assert json.loads((project.path / "seen.json").read_text()) == [["test_story.py::test_quick", "ok"]]


def test_prices_turn_tokens_into_cost_and_budgets(pytester: pytest.Pytester, monkeypatch) -> None:
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        pytester.makepyprojecttoml(
            '[tool.pytest_llm_guard]\ncurrency = "EUR"\n[tool.pytest_llm_guard.prices]\n'
            '"gpt-4o-mini" = { input = 1000000, output = 2000000 }\n'
        )
        pytester.makepyfile(
            """
            import pytest

            def ask(client):
                client.chat.completions.create(model="gpt-4o-mini-2024", messages=[{"role": "user", "content": "a b"}])

            def test_priced(llm_client, llm_guard):
                ask(llm_client)  # 2 input tokens ("a b"), 3 output ("echo: a b"): 2 + 6
                assert llm_guard.stats.cost == pytest.approx(8.0)

            @pytest.mark.llm_budget(cost=15)
            def test_budget(llm_client):
                ask(llm_client)
                ask(llm_client)
            """
        )
        result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*LLM cost budget spent*16.0000 EUR spent (limit cost=15 EUR*", "*24.0000 EUR"])


def test_a_bad_price_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml('[tool.pytest_llm_guard.prices]\n"m" = { input = -1, output = 2 }\n')
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*price of 'm' = {'input': -1, 'output': 2} in ?tool.pytest_llm_guard.prices? in *is not valid*"]
    )


def test_the_sample_report_the_html_tests_draw_follows_the_schema() -> None:
    validate(json.loads((Path(__file__).parent / "data" / "sample_report.json").read_text()))


def test_a_real_runs_html_report_opens_in_chromium(project: pytest.Pytester) -> None:
    from test_report_html import ROWS, chromium_binary, page_in_chromium

    binary = chromium_binary()  # skips, saying why, where no chromium is installed
    project.runpytest("--llm-report-html=report.html", "--llm-report=report.json")
    page = project.path / "report.html"
    report = json.loads((project.path / "report.json").read_text())
    with page_in_chromium(binary, page.as_uri()) as browser:
        assert browser.js(f"{ROWS}.length") == 2
        browser.js(f"{ROWS}.forEach(r => r.querySelector('button.tg').click())")
        categories = browser.js("Array.from(document.querySelectorAll('rect.attempt')).map(b => b.dataset.category)")
        assert sorted(categories) == sorted(a["category"] for t in report["tests"] for a in t["attempts"])
        assert browser.problems() == []
