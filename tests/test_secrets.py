"""Secrets never reach a cassette, a message or a log: what is known when written, and anything shaped like a key."""

from __future__ import annotations

import pytest

from pytest_llm_guard.fault import FaultServer
from pytest_llm_guard.scrub import Scrubber, find_shapes

pytest_plugins = ["pytester"]

VAULT_KEY = "vault-vk-" + "9f3k" * 6  # set by the test itself, not in the environment when it starts
SHAPED = {
    "OpenAI API key": "sk-proj-" + "Ab3" * 8,
    "Anthropic API key": "sk-ant-api03-" + "Zx9" * 8,
    "AWS access key": "AKIA" + "Q7" * 8,
    "Google API key": "AIza" + "B" * 35,
    "JSON Web Token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlLXZhbHVl",
    "bearer token": "Bearer " + "t0k3n" * 5,
}


@pytest.fixture
def server() -> FaultServer:
    with FaultServer() as running:
        yield running


@pytest.mark.parametrize(("kind", "text"), sorted(SHAPED.items()))
def test_credential_shapes_are_found_and_redacted(kind: str, text: str) -> None:
    assert [k for k, _, _ in find_shapes(f"x {text} y")] == [kind]
    assert "REDACTED" in Scrubber(environ={}).text(f"x {text} y")


def test_a_key_set_during_the_test_is_scrubbed_when_written(
    pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("VAULT_KEY", VAULT_KEY)
    pytester.makepyfile(
        test_x="""
        import os
        import openai
        import pytest

        @pytest.fixture
        def vault(monkeypatch):
            monkeypatch.setenv("VAULT_API_KEY", os.environ["VAULT_KEY"])

        def test_x(vault):
            client = openai.OpenAI()
            reply = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "vault " + os.environ["VAULT_API_KEY"]}]
            )
            assert reply.choices[0].message.content.startswith("echo: vault")
        """
    )
    pytester.runpytest("--llm-guard-all=true", "--llm-record=once").assert_outcomes(passed=1)
    written = "".join(p.read_text() for p in (pytester.path / "cassettes").rglob("*.yaml"))
    assert "echo: vault REDACTED" in written and VAULT_KEY not in written
    # The miss message of a changed request is scrubbed with the same knowledge.
    pytester.makepyfile(
        test_x="""
        import os
        import openai
        import pytest

        @pytest.fixture
        def vault(monkeypatch):
            monkeypatch.setenv("VAULT_API_KEY", os.environ["VAULT_KEY"])

        def test_x(vault):
            openai.OpenAI().chat.completions.create(
                model="m", messages=[{"role": "user", "content": "other " + os.environ["VAULT_API_KEY"]}]
            )
        """
    )
    result = pytester.runpytest("--llm-guard-all=true", "--llm-record=none")
    result.assert_outcomes(failed=1)
    assert "LLMCassetteMiss" in result.stdout.str() and VAULT_KEY not in result.stdout.str()


def test_credentials_a_request_carried_are_scrubbed_wherever_they_appear(
    pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    pytester.makepyfile(
        """
        import openai

        def test_x():
            client = openai.OpenAI(api_key="custom-credential-7781aa")  # in no *_API_KEY variable
            messages = [{"role": "user", "content": "custom-credential-7781aa"}]
            client.chat.completions.create(model="m", messages=messages)
        """
    )
    pytester.runpytest("--llm-guard-all=true", "--llm-record=once").assert_outcomes(passed=1)
    written = "".join(p.read_text() for p in (pytester.path / "cassettes").rglob("*.yaml"))
    assert "custom-credential-7781aa" not in written and "echo: REDACTED" in written


def test_a_credential_shaped_answer_is_redacted_with_a_warning_naming_the_cassette(
    pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    server.reply(f"your AWS key is {SHAPED['AWS access key']}")
    pytester.makepyfile(
        """
        import openai

        def test_x():
            openai.OpenAI().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        """
    )
    result = pytester.runpytest("--llm-guard-all=true", "--llm-record=once")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*credential-shaped strings were redacted from cassette *test_x.yaml "
            "before it was written (AWS access key x1)*"
        ]
    )
    written = "".join(p.read_text() for p in (pytester.path / "cassettes").rglob("*.yaml"))
    assert SHAPED["AWS access key"] not in written and "your AWS key is REDACTED" in written


def test_library_logs_carry_no_cookies_or_query_keys(
    pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makepyfile(
        """
        import logging
        import os
        import httpx2

        def test_x():
            logging.getLogger("vcr.cassette").info(
                "Appending request %s and response %s", "req", {"set-cookie": ["__cf_bm=COOKIEVALUE; path=/"]}
            )
            httpx2.post(os.environ["OPENAI_BASE_URL"] + "/chat/completions?key=QUERYKEYVALUE", json={"model": "m"})
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "--llm-guard-all=true",
        "--llm-record=once",
        "--log-level=DEBUG",
        f"--junitxml={junit}",
        "-o",
        "junit_logging=all",
        "-rA",
    )
    result.assert_outcomes(passed=1)
    output = result.stdout.str() + junit.read_text()
    assert "Appending request" in output and "/chat/completions?key=REDACTED" in output  # the records are there
    assert "COOKIEVALUE" not in output and "QUERYKEYVALUE" not in output


def test_audit_reports_file_line_and_kind_and_fails(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "tests" / "cassettes" / "test_app"
    folder.mkdir(parents=True)
    (folder / "clean.yaml").write_text("interactions:\n- request:\n    body: hello\n")
    (folder / "leaky.yaml").write_text(
        f"interactions:\n- request:\n    body: |\n      key {SHAPED['OpenAI API key']}\n"
    )
    (pytester.path / ".venv").mkdir()
    (pytester.path / ".venv" / "x.yaml").write_text(f"interactions: {SHAPED['AWS access key']}\n")  # not the project's
    result = pytester.runpytest("--llm-audit")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "tests/cassettes/test_app/leaky.yaml:4: OpenAI API key (sk-p… 32 characters)",
            "pytest-llm-guard audit: 2 cassettes under *, 1 credential-shaped string found",
        ]
    )
    assert SHAPED["OpenAI API key"] not in result.stdout.str()
    assert "collected" not in result.stdout.str()  # no test ran


def test_audit_of_clean_cassettes_exits_zero(pytester: pytest.Pytester) -> None:
    (pytester.path / "c.yaml").write_text("interactions: []\n")
    result = pytester.runpytest("--llm-audit")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["pytest-llm-guard audit: 1 cassette under *, no credential-shaped strings found"])
