"""The newcomer's story, end to end: a hanging endpoint, two tests in one session, one true story in every output.

The first test's application calls a hanging endpoint with the SDK's defaults and fails at
its ``call_timeout``, the timeouts and the SDK's own retries named; that opens the
endpoint's breaker. The second test's application has its own fallback on
``APIConnectionError``: the refusal reaches it at once (or the test fails or skips at once
under ``on_open`` fail/skip), with the breaker's story. The terminal, the JSON report,
JUnit and the HTML report agree on every count and name.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from pytest_llm_guard.fault import Fault, FaultServer

pytest_plugins = ["pytester"]

SCHEMA = json.loads((Path(__file__).parent.parent / "docs" / "report-schema.json").read_text())

APP = """
import time

import openai
import pytest


def answer(prompt):
    # The application: its own client, the SDK's defaults (max_retries=2, 600 s timeout), OPENAI_BASE_URL.
    with openai.OpenAI(api_key="sk-app-not-a-real-key") as client:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return reply.choices[0].message.content


def answer_with_retries(prompt):
    # The issue's retry loop: five tries on any Exception, then it gives up.
    for attempt in range(5):
        try:
            return answer(prompt)
        except Exception:
            time.sleep(0.01)
    raise RuntimeError("gave up after 5 tries")


def answer_or_fallback(prompt):
    try:
        return answer(prompt)
    except openai.APIConnectionError:
        return "the fallback answer"


@pytest.mark.llm_budget(call_timeout=0.4, deadline=30)
def test_first_meets_the_hang():
    answer("hello")


@pytest.mark.llm_budget(call_timeout=0.4, deadline=30)
def test_second_falls_back():
    assert answer_or_fallback("hello") == "the fallback answer"
"""

LOOP = """
import pytest

from test_app import answer_with_retries


@pytest.mark.llm_budget(call_timeout=0.4, deadline=30)
def test_third_loops_over_refusals():
    answer_with_retries("hello")
"""


@pytest.fixture
def hanging() -> Iterator[FaultServer]:
    with FaultServer() as server:
        server.plan(then=Fault.hang())
        yield server


def run(pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch, *options: str):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)  # the app's client and the plugin's one endpoint
    pytester.makepyfile(test_app=APP)
    return pytester.runpytest(
        "-v", "-rfEs", "--llm-report=report.json", "--llm-report-html=report.html", "--junitxml=junit.xml", *options
    )


@pytest.mark.parametrize(
    ("on_open", "second"),
    [(None, "passed"), ("fail", "failed"), ("skip", "skipped")],
    ids=["fallback-by-default", "on-open-fail", "on-open-skip"],
)
def test_two_tests_against_a_hanging_endpoint_tell_one_story(
    pytester: pytest.Pytester,
    hanging: FaultServer,
    monkeypatch: pytest.MonkeyPatch,
    on_open: str | None,
    second: str,
) -> None:
    result = run(pytester, hanging, monkeypatch, *([f"--llm-on-open={on_open}"] if on_open else []))
    outcomes = {"passed": 0, "failed": 1, "skipped": 0}
    outcomes[second] += 1
    result.assert_outcomes(**outcomes)
    out = result.stdout.str()
    policy = on_open or "fallback"

    # The first test: its call_timeout named, the three timeouts listed, the SDK's retries named and the way off.
    result.stdout.fnmatch_lines(
        [
            "LLMBudgetExceeded: LLM call_timeout budget spent in test_app.py::test_first_meets_the_hang: "
            "3 failed attempts, the last cut at its call_timeout (0.40 s)*",
            "  1. call 1: [[]default] http://127.0.0.1:*: ReadTimeout (*) after * s, cut at its call_timeout",
            "  2. call 1, retry 1 by the SDK (max_retries=2): [[]default] *cut at its call_timeout, after *s backoff",
            "  3. call 1, retry 2 by the SDK (max_retries=2): [[]default] *cut at its call_timeout, after *s backoff",
            "What to do: 2 attempts of 3 were the SDK's own retries (max_retries=2), inside the same create(): "
            "build the client with max_retries=0*",
        ]
    )
    assert "raise `retries`" not in out

    report = json.loads((pytester.path / "report.json").read_text())
    jsonschema.validate(report, SCHEMA)
    first, then = (next(t for t in report["tests"] if t["nodeid"].endswith(name)) for name in ("hang", "back"))
    assert [(a["category"], a["by"], a["endpoint_name"]) for a in first["attempts"]] == [
        ("timeout", None, "default"),
        ("timeout", "sdk", "default"),
        ("timeout", "sdk", "default"),
    ]
    assert first["why"] == {
        "exception": "LLMBudgetExceeded",
        "budget": "call_timeout",
        "breaker": None,
        "message": out.split("LLMBudgetExceeded: ", 1)[1].splitlines()[0],
    }

    # The second test: one attempt, refused at once, named after its endpoint, never charged, never retried.
    assert [(a["source"], a["endpoint_name"]) for a in then["attempts"]] == [("refused", "default")]
    assert (then["stats"]["retries"], then["stats"]["failures"], then["stats"]["refused"]) == (0, 0, 1)
    assert then["outcome"] == second
    assert len(hanging.requests) == 3, "refused at once: only the first test's three attempts reached the endpoint"
    assert then["stats"]["backoff_seconds"] == 0, "refused at once: neither the SDK nor the guard waited"
    refusal = then["attempts"][0]["error"]
    assert refusal.startswith(f"default ({hanging.base_url}): breaker open since ")
    last_errors = r"after 3 consecutive failures; last errors: \[[\d:.]{10}\] ReadTimeout: no response headers within"
    assert re.search(last_errors, refusal)
    assert "next probe at" in refusal and "…" not in refusal
    if second == "passed":
        assert then["why"] is None
    else:
        assert then["why"]["exception"] == "LLMNoEndpoint" and then["why"]["breaker"] == "default"
        story = out.split("no endpoint can take this request (model gpt-4o-mini) of test_app.py::test_second_falls")
        assert len(story) == 2 and f"on_open={policy} (set by the command line): the test " in story[1]
        assert "  - default (http://127.0.0.1:" in story[1] and "next probe at" in story[1]

    # One endpoint everywhere.
    assert [e["name"] for e in report["endpoints"]] == ["default"]
    assert report["endpoints"][0]["attempts_by_category"] == {"timeout": 3, "refused": 1}
    assert re.findall(r"^endpoint (\S+): ", out, re.M) == ["default"]

    # Every count and the one backoff agree: terminal, JSON, JUnit, HTML.
    totals = report["session"]["totals"]
    assert (totals["attempts"], totals["retries"], totals["failures"], totals["refused"]) == (4, 2, 3, 1)
    backoff = first["stats"]["backoff_seconds"]
    assert backoff > 0 and totals["backoff_seconds"] == backoff + then["stats"]["backoff_seconds"]
    assert sum(a["backoff"] for a in first["attempts"]) == pytest.approx(backoff, abs=1e-9)
    attributed = next(p["seconds"] for p in first["attribution"] if p["what"] == "backoff")
    assert attributed == pytest.approx(backoff, abs=1e-9)
    result.stdout.fnmatch_lines(
        [
            "2 guarded tests: 2 LLM calls, 4 attempts (3 live, 1 refused), 2 retries, 0 failovers, "
            f"3 failed attempts; * s on the network, {totals['backoff_seconds']:.2f} s in backoff, 0 tokens",
            f"  test_app.py::test_first_meets_the_hang *s = *s in 3 timeouts + {backoff:.1f}s backoff + *s other",
        ]
    )

    cases = {case.get("name"): case for case in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    junit = {name: {p.get("name"): p.get("value") for p in case.iter("property")} for name, case in cases.items()}
    hang = junit["test_first_meets_the_hang"]
    assert (hang["llm_attempts"], hang["llm_retries"], hang["llm_live"]) == ("3", "2", "3")
    assert float(hang["llm_backoff_seconds"]) == round(backoff, 3)
    assert (hang["llm_why_exception"], hang["llm_why_budget"]) == ("LLMBudgetExceeded", "call_timeout")
    assert hang["llm_why_message"] == first["why"]["message"]
    fell = junit["test_second_falls_back"]
    assert (fell["llm_attempts"], fell["llm_retries"]) == ("1", "0")
    assert ("llm_why_breaker" in fell) == (second != "passed")

    html = (pytester.path / "report.html").read_text()
    assert html.count('<article class="panel">') == 1 and "<h3>default <span" in html
    rows = re.findall(r"<tr><td class=\"c-num\">(\d+)\.(\d+)</td><td>([^<]*)</td>(.*?)</tr>", html)
    shown = [(kind, float(re.findall(r'<td class="c-num">([\d.]+)</td>', rest)[1])) for _, _, kind, rest in rows]
    assert shown == [
        ("first", 0.0),
        ("retry 1 by the SDK (max_retries=2)", round(first["attempts"][1]["backoff"], 3)),
        ("retry 2 by the SDK (max_retries=2)", round(first["attempts"][2]["backoff"], 3)),
        ("first", 0.0),
    ]
    assert "LLMBudgetExceeded · call_timeout budget" in html


def test_an_applications_loop_over_refusals_is_never_charged_and_its_failure_names_the_breaker(
    pytester: pytest.Pytester, hanging: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_loop=LOOP)
    result = run(pytester, hanging, monkeypatch, "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=2)
    report = json.loads((pytester.path / "report.json").read_text())
    loop = next(t for t in report["tests"] if t["nodeid"].endswith("loops_over_refusals"))
    assert [(a["source"], a["by"]) for a in loop["attempts"]] == [("refused", None)] + [("refused", "app")] * 4
    assert (loop["stats"]["retries"], loop["stats"]["failures"], loop["stats"]["refused"]) == (0, 0, 5)
    assert loop["why"] == {
        "exception": "RuntimeError",
        "budget": None,
        "breaker": "default",
        "message": "gave up after 5 tries",
    }
    result.stdout.fnmatch_lines(["*test_loop.py::test_third_loops_over_refusals * 5 refused attempts + *s backoff*"])
