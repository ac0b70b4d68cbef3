"""Configuration layering and validation, as plain unit tests (the pytest wiring is in test_plugin.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llm_guard.config import ConfigWarning, LLMGuardConfigError, Settings, load_settings
from pytest_llm_guard.markers import apply_markers


def load(tmp_path: Path, *, toml: str = "", ini=None, env=None, cli=None, overridden=None) -> Settings:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(toml)
    settings, _ = load_settings(
        pyproject=pyproject,
        ini=ini or {},
        ini_source="pytest.ini",
        cli=cli or {},
        overridden=overridden or {},
        environ=env or {},
    )
    return settings


def test_documented_defaults(tmp_path: Path) -> None:
    settings = load(tmp_path)
    assert (settings.deadline, settings.call_timeout, settings.retries) == (120.0, 30.0, 2)
    assert settings.calls is None and settings.tokens is None and settings.guard_all is False
    assert settings.source_of("deadline") == "default"


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    toml = "[tool.pytest_llm_guard]\ndeadline = 10\nretries = 1\ncalls = 4\ntokens = 99\n"
    settings = load(
        tmp_path,
        toml=toml,
        ini={"retries": "3", "calls": "5", "tokens": "100"},
        env={"LLM_GUARD_CALLS": "6", "LLM_GUARD_TOKENS": "101"},
        cli={"tokens": "102"},
    )
    assert (settings.deadline, settings.retries, settings.calls, settings.tokens) == (10.0, 3, 6, 102)
    assert "pyproject.toml" in settings.source_of("deadline")
    assert settings.source_of("retries") == "pytest.ini"
    assert "LLM_GUARD" in settings.source_of("calls")
    assert settings.source_of("tokens") == "the command line"


def test_off_switches_a_limit_off(tmp_path: Path) -> None:
    assert load(tmp_path, env={"LLM_GUARD_DEADLINE": "off"}).deadline is None


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[tool.pytest_llm_guard]\ndeadlin = 3\n", ["unknown key 'deadlin'", "did you mean 'deadline'?"]),
        ("[tool.pytest_llm_guard]\ndeadline = -1\n", ["deadline = -1", "pyproject.toml", "positive number"]),
        ("[tool.pytest_llm_guard]\nretries = 1.5\n", ["retries = 1.5", "non-negative whole number"]),
        ("[tool.pytest_llm_guard]\nretries = true\n", ["retries = True"]),
        ("[tool.pytest_llm_guard]\nguard_all = 'maybe'\n", ["guard_all = 'maybe'", "true or false"]),
        ("[tool.pytest_llm_guard\n", ["cannot parse", "pyproject.toml"]),
        ("[tool]\npytest_llm_guard = 3\n", ["must be a table"]),
    ],
)
def test_bad_pyproject_says_what_and_where(tmp_path: Path, toml: str, words: list[str]) -> None:
    with pytest.raises(LLMGuardConfigError) as info:
        load(tmp_path, toml=toml)
    for word in words:
        assert word in str(info.value)


def test_an_unknown_environment_variable_is_a_warning_with_a_suggestion(tmp_path: Path) -> None:
    settings, warnings = load_settings(
        pyproject=None, ini={}, ini_source="ini", cli={}, environ={"LLM_GUARD_DEADLNE": "3", "LLM_GUARD_RETRIES": "1"}
    )
    assert settings.retries == 1
    message = (
        "pytest-llm-guard: unknown environment variable LLM_GUARD_DEADLNE is ignored; did you mean LLM_GUARD_DEADLINE?"
    )
    assert warnings == [ConfigWarning(message, "LLM_GUARD_DEADLNE (environment)")]


def test_an_empty_environment_variable_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(LLMGuardConfigError, match="LLM_GUARD_DEADLINE is set but empty in the environment; unset it"):
        load(tmp_path, env={"LLM_GUARD_DEADLINE": ""})


def test_ini_values_given_with_dash_o_belong_to_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(LLMGuardConfigError, match=r"deadline = 'abc' in the command line \(-o llm_deadline=abc\)"):
        load(tmp_path, ini={"deadline": "abc"}, overridden={"deadline": "abc"})


def test_an_invalid_scrub_pattern_is_a_usage_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(LLMGuardConfigError) as info:
        load(tmp_path, toml='[tool.pytest_llm_guard]\nscrub_patterns = ["(unclosed"]\n')
    message = str(info.value)
    assert "scrub_patterns = ['(unclosed'] in [tool.pytest_llm_guard]" in message
    assert "'(unclosed' is not a regular expression: missing ), unterminated subpattern" in message


def test_retries_none_switches_the_retry_limit_off() -> None:
    assert apply_markers(Settings(), [FakeMarker(retries=None)], "t.py::test").retries is None


def test_bad_command_line_value(tmp_path: Path) -> None:
    with pytest.raises(LLMGuardConfigError, match="call_timeout = 'fast' in the command line"):
        load(tmp_path, cli={"call_timeout": "fast"})


class FakeMarker:
    def __init__(self, *args, **kwargs) -> None:
        self.name, self.args, self.kwargs = "llm_budget", args, kwargs


def test_closest_marker_wins_and_others_still_apply() -> None:
    module, cls, function = FakeMarker(deadline=9, retries=0), FakeMarker(deadline=8), FakeMarker(deadline=7)
    settings = apply_markers(Settings(), [function, cls, module], "t.py::T::test")
    assert (settings.deadline, settings.retries) == (7.0, 0)
    assert settings.source_of("retries") == "@pytest.mark.llm_budget on t.py::T::test"


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (FakeMarker(5), "keyword arguments only"),
        (FakeMarker(guard_all=True), "unknown key 'guard_all'"),
        (FakeMarker(deadline=0), "positive number"),
        (FakeMarker(calls=0), "positive whole number"),
        (FakeMarker(tokens="many"), "tokens = 'many'"),
    ],
)
def test_bad_marker_arguments(marker: FakeMarker, message: str) -> None:
    with pytest.raises(LLMGuardConfigError, match=message):
        apply_markers(Settings(), [marker], "t.py::test")


def test_marker_none_switches_a_limit_off() -> None:
    assert apply_markers(Settings(), [FakeMarker(deadline=None)], "t.py::test").deadline is None
