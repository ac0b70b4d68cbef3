"""The healthy path costs almost nothing: what a guarded session and a guarded call do not do.

A session loads only the SDKs its client fixtures build; a healthy endpoint's breaker is
kept in the process (``routing.Router``): no store round trip while nothing changes, the
shared store read at most once per breaker cooldown, and every change (a failure, a
transition, a spent token, a Retry-After) written and seen at once. Stores are counted,
never timed.
"""

from __future__ import annotations

import importlib

import pytest

from pytest_llm_guard import dialects

pytest_plugins = ["pytester"]


def test_a_guarded_session_loads_only_the_sdks_of_the_client_fixtures_it_uses(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[set[str]] = []
    monkeypatch.setattr(dialects, "load_sdks", lambda kinds: asked.append(set(kinds)))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")  # the fixture builds its client; nothing is sent
    pytester.makepyfile(
        """
        def test_fixture(llm_client):
            pass

        def test_guard_only(llm_guard):
            pass
        """
    )
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    assert asked == [{"openai"}], "the anthropic SDK (over a second to import) is loaded only for its fixtures"


def test_loading_sdks_imports_those_of_the_kinds_asked_only(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    monkeypatch.setattr(importlib, "import_module", imported.append)
    dialects.load_sdks({"openai"})
    assert imported == ["openai"]
    imported.clear()
    dialects.load_sdks(set())
    assert imported == []
