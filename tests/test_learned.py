"""Timeouts learned from history, and retry amplification: what earlier runs teach the next one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from pytest_llm_guard import FakeClock, LLMBudgetExceeded, learned
from pytest_llm_guard.budget import Budget
from pytest_llm_guard.config import Settings
from pytest_llm_guard.errors import LLMGuardConfigError
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.ledger import Attempt, Category, Ledger, amplification
from pytest_llm_guard.report import learned_lines

pytest_plugins = ["pytester"]

HELLO = [{"role": "user", "content": "hi"}]


def attempt(call: int, kind: str = "first", by: str | None = None, **more: Any) -> dict[str, Any]:
    """An attempt record as reports hold it (``report_json.record``), with what these tests vary."""
    return {
        "call": call, "kind": kind, "by": by, "sdk_max_retries": None, "source": "live", "category": "ok",
        "path": "/v1/chat/completions", "model": "fast", "endpoint": "http://h", "endpoint_name": None,
        "offset": 0.0, "duration": 0.1, "first_chunk": 0.05, "end": 1.0, "error": None, **more,
    }  # fmt: skip


def test_only_successful_live_attempts_teach_latency_in_the_order_they_started() -> None:
    tests = [
        {"started": 100.0, "attempts": [attempt(1, offset=0.5, duration=0.3), attempt(2, source="replayed")]},
        {"started": 50.0, "attempts": [
            attempt(1, offset=0.0, duration=0.2, first_chunk=None),
            attempt(2, category="timeout", duration=9.0),
            attempt(3, error="body not read to the end"),
            attempt(4, model="slow", endpoint_name="primary", duration=2.0),
        ]},
    ]  # fmt: skip
    found = learned.samples(tests)
    assert found[("http://h", "fast")] == {"attempt": [0.2, 0.3], "first_token": [0.05]}
    assert found[("primary", "slow")]["attempt"] == [2.0]


def write(path: Path, endpoint: str, model: str, values: list[float]) -> None:
    path.write_text(learned.merged({}, {(endpoint, model): {"attempt": values, "first_token": values}}))


def test_limits_are_p99_times_the_factor_at_least_the_floor_and_need_enough_samples(tmp_path: Path) -> None:
    file = tmp_path / "learned.json"
    file.write_text(
        learned.merged(
            {},
            {
                ("e", "fast"): {"attempt": [0.1] * 9 + [0.2], "first_token": [0.05] * 10},
                ("e", "slow"): {"attempt": [20.0] * 10, "first_token": []},
                ("e", "rare"): {"attempt": [0.1] * (learned.MIN_SAMPLES - 1), "first_token": []},
            },
        )
    )
    found = learned.read(file, factor=3, floor=0.5)
    assert found.limits("e", "fast") == (0.5, pytest.approx(0.6), 10)  # first token: 0.15, raised to the floor
    assert found.limits("e", "slow") == (None, 60.0, 10)
    assert found.limits("e", "rare") is None and found.limits("e", "other") is None
    assert found.limits("elsewhere", "fast") is None


def test_runs_merge_into_the_newest_samples_in_a_stable_readable_file(tmp_path: Path) -> None:
    file = tmp_path / "learned.json"
    write(file, "e", "m", [1.0] * learned.KEPT)
    old = learned.read(file, factor=3, floor=1).summaries
    text = learned.merged(old, {("e", "m"): {"attempt": [2.0, 3.0, 4.0], "first_token": []}})
    kept = json.loads(text)["endpoints"]["e"]["m"]
    assert kept["attempt"]["samples"][-4:] == [1.0, 2.0, 3.0, 4.0] and kept["attempt"]["n"] == learned.KEPT
    assert kept["attempt"]["p99"] == 2.0 and kept["first_token"]["n"] == learned.KEPT
    assert learned.merged(learned.read(file, factor=3, floor=1).summaries, {}) == file.read_text()  # nothing new
    assert '"samples": [1.0, 1.0,' in file.read_text()  # one line per list, not one per number


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("{", "Expecting property name"),
        ('{"format": 1, "endpoints": {"e": {"m": {"attempt": {"n": 3, "p99": "fast"}}}}}', "p99 seconds"),
        ('{"format": 1, "endpoints": {"e": {"m": {"latency": {"n": 3, "p99": 1}}}}}', "unknown measure 'latency'"),
        ("[]", '"format": 1'),
    ],
)
def test_a_broken_file_is_a_usage_error_naming_it_and_what_to_do(tmp_path: Path, text: str, said: str) -> None:
    file = tmp_path / "learned.json"
    file.write_text(text)
    with pytest.raises(LLMGuardConfigError) as error:
        learned.read(file, factor=3, floor=1)
    message = str(error.value)
    assert str(file) in message and said in message
    assert f"delete it and learn it again with --llm-learn-timeouts {file}" in message


def test_the_summary_says_when_a_learned_limit_is_above_the_configured_one() -> None:
    fast = {"endpoint": "e", "model": "fast", "call_timeout": 3.0, "first_token_timeout": None, "samples": 9}
    slow = {"endpoint": "e", "model": "slow", "call_timeout": 63.0, "first_token_timeout": 30.0, "samples": 9}
    limits = [{**fast, "capped": 2}, {**slow, "capped": 0}]
    section = {"file": "t.json", "missing": False, "factor": 3, "floor": 1, "limits": limits}
    assert learned_lines(section, "--llm-learn-timeouts", 30.0) == [
        "learned timeouts from t.json (p99 x 3, at least 1 s): 2 models, 2 attempts capped by them this run",
        "  e fast: call_timeout 3.00 s (9 samples; capped 2 attempts)",
        "  e slow: call_timeout 63.00 s (above call_timeout=30 s, which applies), first_token_timeout 30.00 s "
        "(9 samples; capped 0 attempts)",
    ]


def test_a_missing_file_learns_nothing() -> None:
    found = learned.read(Path("/nonexistent/learned.json"), factor=3, floor=1)
    assert found.missing and found.limits("e", "m") is None


def test_a_test_ended_by_a_learned_limit_says_where_it_was_learned_and_what_to_raise() -> None:
    ledger = Ledger("t")
    budget = Budget(Settings(retries=0, learned_timeouts="llm-timeouts.json"), ledger, clock=FakeClock())
    cut = Attempt("t", 1, 1, "first", "http://h", "/v1/chat/completions", "fast", 0.0, 0.0, cap=0.3)
    cut.cap_by = cut.cause = learned.LEARNED_CALL_TIMEOUT
    ledger.open(cut)
    ledger.close(cut, 0.3, "ReadTimeout", Category.TIMEOUT)
    with pytest.raises(LLMBudgetExceeded) as info:
        budget.check_failure(cut)
    assert info.value.budget == "call_timeout"
    assert "cut at its learned call_timeout (0.30 s) (learned from llm-timeouts.json as p99 x learned_factor: " in str(
        info.value
    )


def test_an_sdk_inside_an_application_loop_multiplies_the_attempts() -> None:
    attempts = []
    for call in range(1, 4):  # the app's loop of 3 calls, each retried twice by the SDK
        by = "app" if call > 1 else None
        attempts.append(attempt(call, by=by, category="http_5xx"))
        attempts.extend(attempt(call, "retry", "sdk", sdk_max_retries=2, category="http_5xx") for _ in range(2))
    attempts.append(attempt(4, by="app", path="/v1/embeddings"))  # another request: a call of its own
    [found] = amplification(attempts)
    assert found == {
        "call": 1, "attempts": 9, "calls": 3, "retries_by": {"sdk": 6, "app": 2, "guard": 0},
        "sdk_max_retries": 2, "switch_off": "sdk",
    }  # fmt: skip


def test_a_loop_around_the_guards_retries_is_amplified_a_single_layer_is_not() -> None:
    guarded = [attempt(1, category="http_5xx"), attempt(1, "retry", "guard", category="http_5xx"),
               attempt(2, by="app", category="http_5xx"), attempt(2, "retry", "guard")]  # fmt: skip
    [found] = amplification(guarded)
    assert found["retries_by"] == {"sdk": 0, "app": 1, "guard": 2} and found["switch_off"] == "app"
    sdk_only = [attempt(1, category="http_5xx"), attempt(1, "retry", "sdk")]
    failover_and_loop = [attempt(1, category="reset"), attempt(1, "failover", "guard"), attempt(2, by="app")]
    assert amplification(sdk_only) == [] and amplification(failover_and_loop) == []


def _learned(url: str, **p99: float) -> learned.Learned:
    """Limits as a file gives them: ``fast=0.05``, a p99 of 0.05 s for model "fast" at ``url`` (9 samples)."""
    summaries = {(url, model): {"attempt": {"n": 9, "p99": value}} for model, value in p99.items()}
    return learned.Learned(Path("learned.json"), factor=3, floor=0.1, summaries=summaries)


@pytest.mark.llm_budget(call_timeout=2, deadline=30)
def test_a_learned_limit_lowers_an_attempts_cap_and_never_raises_it(llm_guard, llm_fault_server: FaultServer) -> None:
    llm_guard.learned = _learned(llm_fault_server.url, fast=0.05, slow=20.0)
    llm_fault_server.plan(Fault.ok(), Fault.ok(), Fault.ok(), Fault.hang())
    with openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-test", max_retries=0) as client:
        for model in ("slow", "other", "fast"):
            client.chat.completions.create(model=model, messages=HELLO)
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="fast", messages=HELLO)
    caps = [(a.cap, a.cap_by, a.category) for a in llm_guard.events]
    assert caps == [
        (2, "call_timeout", "ok"),  # learned 60 s: the configured 2 s stands
        (2, "call_timeout", "ok"),  # nothing learned of this model
        (pytest.approx(0.15), "learned call_timeout", "ok"),
        (pytest.approx(0.15), "learned call_timeout", "timeout"),  # a hang, cut at 3 x its p99
    ]
    assert llm_guard.events[-1].cause == "learned call_timeout"


@pytest.mark.llm_budget(deadline=30)
async def test_an_async_clients_hang_is_cut_at_its_learned_limit(llm_guard, llm_fault_server: FaultServer) -> None:
    llm_guard.learned = _learned(llm_fault_server.url, fast=0.05)
    llm_fault_server.plan(Fault.hang())
    async with openai.AsyncOpenAI(base_url=llm_fault_server.base_url, api_key="sk-test", max_retries=0) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="fast", messages=HELLO)
    [cut] = llm_guard.events
    assert (cut.cap, cut.cause, cut.category) == (pytest.approx(0.15), "learned call_timeout", "timeout")


# -- across pytest runs ---------------------------------------------------------------

LEARNING = """
import os
import openai
import pytest

URL = os.environ["LEARN_FAULT_URL"]

def ask(prefix, model, times):
    with openai.OpenAI(base_url=f"{URL}/{prefix}/v1", api_key="sk-test", max_retries=0) as client:
        for _ in range(times):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])

@pytest.mark.llm_budget()
def test_fast():
    ask("delay-0.01", "fast", 5)

@pytest.mark.llm_budget()
def test_slow():
    ask("delay-0.3", "slow", 5)  # well above a fast call, first connections under load included
"""

USING = """
import os
import openai
import pytest
from pytest_llm_guard.fault import Fault

URL = os.environ["LEARN_FAULT_URL"]

def ask(prefix, model, **options):
    with openai.OpenAI(base_url=f"{URL}/{prefix}/v1", api_key="sk-test", **options) as client:
        return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])

@pytest.mark.llm_budget()
def test_fast_hangs():
    with pytest.raises(openai.APITimeoutError):
        ask("hang", "fast", max_retries=0)

@pytest.mark.llm_budget()
def test_slow_is_healthy():
    ask("delay-0.1", "slow", max_retries=0)

@pytest.mark.llm_budget(retries=None)
def test_own_loop(llm_fault_server):
    # the application's own client (the SDK's default max_retries=2) in its own retry loop
    llm_fault_server.plan(then=Fault.status(503, retry_after_ms=1))
    with openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-test") as client:
        for _ in range(5):
            try:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            except Exception:
                continue
"""


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


FACTOR = 10  # wide: a 0.1 s answer stays under the cap learned from 0.3 s ones, even on a busy machine


def test_a_learned_file_cuts_a_hang_on_a_fast_model_and_leaves_the_slow_one_alone(
    pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEARN_FAULT_URL", server.url)
    pytester.makepyfile(test_learning=LEARNING)
    first = pytester.runpytest(
        "--llm-learn-timeouts=timeouts/learned.json", "-o", "llm_learned_timeouts=timeouts/learned.json"
    )
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines([
        "learned timeouts: */timeouts/learned.json not found, so no limits were learned; "
        "write it with --llm-learn-timeouts */timeouts/learned.json",
        "pytest-llm-guard: learned timeouts written to */timeouts/learned.json: "
        "10 new samples of 2 endpoint/model pairs*",
    ])  # fmt: skip
    file = pytester.path / "timeouts" / "learned.json"
    models = json.loads(file.read_text())["endpoints"][server.url]
    assert {m: models[m]["attempt"]["n"] for m in models} == {"fast": 5, "slow": 5}
    assert models["fast"]["attempt"]["p99"] < models["slow"]["attempt"]["p99"]

    # a second run, under xdist: each worker's samples reach the controller, and join the first run's
    xdist = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--llm-learn-timeouts=timeouts/learned.json")
    xdist.assert_outcomes(passed=2)
    models = json.loads(file.read_text())["endpoints"][server.url]
    assert {m: models[m]["attempt"]["n"] for m in models} == {"fast": 10, "slow": 10}

    pytester.makepyfile(test_learning="", test_using=USING)
    using = pytester.runpytest(
        "-o", "llm_learned_timeouts=timeouts/learned.json", "-o", f"llm_learned_factor={FACTOR}",
        "-o", "llm_learned_floor=0.05", "--llm-report=report.json",
    )  # fmt: skip
    using.assert_outcomes(passed=3)
    report = json.loads((pytester.path / "report.json").read_text())
    jsonschema.validate(report, json.loads((Path(__file__).parent.parent / "docs" / "report-schema.json").read_text()))
    attempts = {t["nodeid"].split("::")[1]: t["attempts"] for t in report["tests"]}
    [hang], [healthy] = attempts["test_fast_hangs"], attempts["test_slow_is_healthy"]
    # A hang sends no headers, which an answer that is not a stream takes as its first token: it is cut by
    # whichever learned limit falls due first (the samples are kept to the millisecond, so a fast model's
    # two p99s may be equal, and then the call's cap, set first, names it).
    call, first_token = (max(0.05, FACTOR * models["fast"][m]["p99"]) for m in ("attempt", "first_token"))
    cause = "first_token_timeout (learned)" if first_token < call else "learned call_timeout"
    assert (hang["category"], hang["cap_by"], hang["cause"]) == ("timeout", "learned call_timeout", cause)
    assert hang["cap"] == pytest.approx(call)
    assert hang["duration"] == pytest.approx(min(call, first_token), abs=1.0)  # cut at its learned limit,
    assert hang["duration"] < 30 / 2  # not at call_timeout's 30 s
    assert (healthy["category"], healthy["cap_by"]) == ("ok", "learned call_timeout")
    assert healthy["cap"] == pytest.approx(max(0.05, FACTOR * models["slow"]["attempt"]["p99"]))
    limits = {entry["model"]: entry for entry in report["learned_timeouts"]["limits"]}
    assert limits["fast"]["samples"] == 10 and limits["fast"]["capped"] == 1
    assert report["endpoints"][0]["models"]["slow"]["attempt"]["n"] == 1
    using.stdout.fnmatch_lines([
        "retry amplification (calls retried by more than one layer):",
        "  test_using.py::test_own_loop: 15 attempts for 1 logical call (SDK max_retries=2 x your loop of 5): "
        "set max_retries=0 on the client *or drop the loop",
        f"learned timeouts from */timeouts/learned.json (p99 x {FACTOR}, at least 0.05 s): "
        "2 models, 2 attempts capped by them*",
        f"  {server.url} fast: call_timeout *s, first_token_timeout *s (10 samples; capped 1 attempt)",
    ])  # fmt: skip
    [loop] = next(t for t in report["tests"] if t["nodeid"].endswith("test_own_loop"))["amplification"]
    assert loop["attempts"] == 15 and loop["retries_by"] == {"sdk": 10, "app": 4, "guard": 0}

    file.write_text("{")
    broken = pytester.runpytest("-o", "llm_learned_timeouts=timeouts/learned.json")
    assert broken.ret == pytest.ExitCode.USAGE_ERROR
    broken.stderr.fnmatch_lines(
        ["*the learned timeouts file */timeouts/learned.json (learned_timeouts, set by *) is not valid*"]
    )


@pytest.mark.llm_budget(call_timeout=2, deadline=30)
def test_a_learned_first_token_limit_cuts_a_stream_that_never_begins(llm_guard, llm_fault_server: FaultServer) -> None:
    summaries = {(llm_fault_server.url, "fast"): {"first_token": {"n": 9, "p99": 0.05}}}
    llm_guard.learned = learned.Learned(Path("learned.json"), factor=3, floor=0.1, summaries=summaries)
    llm_fault_server.plan(Fault.stall(0))
    with openai.OpenAI(base_url=llm_fault_server.base_url, api_key="sk-test", max_retries=0) as client:
        with pytest.raises(openai.APITimeoutError):
            list(client.chat.completions.create(model="fast", messages=HELLO, stream=True))
    [cut] = llm_guard.events
    assert (cut.cap, cut.cause, cut.category) == (2, "first_token_timeout (learned)", "timeout")
    assert "no first token within 0.15 s (first_token_timeout (learned))" in (cut.error or "")
