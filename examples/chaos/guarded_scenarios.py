"""The guarded half of the chaos demo: run.py runs these tests in a pytest session of its own.

That session's configuration (written by run.py, printed when it runs) names the two
endpoints: ``primary``, which hangs, and ``backup``, which answers. Not collected by
``pytest examples``: the file name does not start with ``test_``.
"""

from __future__ import annotations

import json
import os
import time

import harness
import pytest

from pytest_llm_guard import LLMNoEndpoint

QUESTIONS = list(harness.QUESTIONS)[: int(os.environ.get("CHAOS_QUESTIONS", len(harness.QUESTIONS)))]


def _report(name: str, seconds: float, guard, answer: str | None, explanation: str | None = None) -> None:
    """What each attempt met and how the test ended, for run.py to print."""
    steps = []
    for attempt in guard.events:
        step = f"{attempt.endpoint_name or attempt.endpoint}: {attempt.outcome}"
        if attempt.cause:
            step += f" (cut at {attempt.duration:.2f} s by the {attempt.cause})"
        if attempt.source == "refused":
            step += " (refused, nothing sent)"
        if attempt.failover_to:
            step += f", failover to {attempt.failover_to}"
        steps.append(step)
    line = f"{name}: {seconds:.2f} s; " + "; ".join(steps) + (f" -> {answer!r}" if answer else "")
    record = {"test": name, "seconds": seconds, "answered": answer is not None, "line": line}
    with open(os.environ["CHAOS_RESULTS"], "a") as results:
        results.write(json.dumps({**record, "explanation": explanation}) + "\n")


@pytest.mark.parametrize("question", QUESTIONS)
def test_the_harness_answers_through_llm_client(question: str, llm_client, llm_guard) -> None:
    # The same harness code, handed the llm_client fixture: routed over the endpoints.
    started = time.monotonic()
    answer = harness.ask(question, client=llm_client)
    _report(question, time.monotonic() - started, llm_guard, answer)
    assert harness.correct(question, answer)


@pytest.mark.llm_budget(deadline=2)
@pytest.mark.llm_breaker(on_open="fail")
def test_the_harness_own_client_is_stopped_with_a_reason(llm_guard) -> None:
    # The harness builds its own client for the primary (OPENAI_BASE_URL): the guard does not
    # move it. The primary's breaker opened in the tests above, so its first request is refused
    # at once; on_open="fail" makes that refusal a stop its `except Exception` cannot swallow
    # (the default for the application's own clients, "fallback", hands it a connection error).
    started = time.monotonic()
    with pytest.raises(LLMNoEndpoint) as stopped:
        harness.ask(QUESTIONS[0])
    _report("the harness's own client", time.monotonic() - started, llm_guard, None, str(stopped.value))
