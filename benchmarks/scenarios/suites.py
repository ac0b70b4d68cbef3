"""The test suite most scenarios share: N tests of M calls each, written for each contender.

A test makes its calls, then checks the answers (as an evaluation does): a call that
raises ends its test; one that gives up quietly (the naive loop returns None) does not.
"""

from __future__ import annotations

from ..projects import app, pyproject, sdk_conftest
from ..runner import Context, Unit

SUITE = """\
import pytest

import benchapp

URLS = {urls!r}


@pytest.mark.parametrize("i", range({tests}))
def test_answers(i{fixtures}):
    answers = [{call} for j in range({calls})]
    assert all(answers)
"""

# What one call looks like for each way of calling; `text` is the question.
CALLS = {
    "llm_client": "llm_client.chat.completions.create(model=benchapp.MODEL, "
    "messages=benchapp.messages(text)).choices[0].message.content",
    "raw": 'benchapp.raw_ask(URLS["{primary}"], text)',
    "naive": 'benchapp.naive_ask(URLS["{primary}"], text)',
    "sdk": 'benchapp.sdk_defaults_ask(URLS["{primary}"], URLS.get("{backup}"), text)',
    "tenacity": 'benchapp.tenacity_ask(URLS["{primary}"], text)',
}


def suite_files(
    context: Context,
    how: str,
    tests: int,
    calls: int,
    guard: dict | None = None,
    endpoints: list[dict] | None = None,
    primary: str = "primary",
    backup: str = "backup",
    marker: str = "",
) -> dict[str, str]:
    """The files of one contender's project: the suite, the application code, the config."""
    call = CALLS[how].format(primary=primary, backup=backup).replace("text", 'f"question {i}.{j}"')
    test = SUITE.format(
        urls=context.urls,
        tests=tests,
        calls=calls,
        fixtures=", llm_client" if how == "llm_client" else "",
        call=call,
    )
    if marker:
        test = test.replace("@pytest.mark.parametrize", marker + "\n@pytest.mark.parametrize")
    return {
        "pyproject.toml": pyproject(guard, endpoints or ()),
        "conftest.py": sdk_conftest(context.scale),
        "benchapp.py": app(context.scale),
        "test_suite.py": test,
    }


def healthy_unit(tests: int, calls: int) -> Unit:
    """The suite against a healthy endpoint, raw client, plugin off: the ideals' measured part.

    S1, S2 and S3 share it (``same_as``): one run per repeat serves them all.
    """
    return Unit(
        "healthy",
        "raw client, plugin off",
        None,
        {"backup": lambda server: None},
        lambda context: suite_files(context, "raw", tests, calls, primary="backup"),
    )
