"""Coming from pytest-recording: its cassettes keep working, with the plugin installed and with guard_all on."""

from __future__ import annotations

import json

import pytest
import yaml

from pytest_llm_guard.fault import FaultServer

pytest_plugins = ["pytester"]

pytest.importorskip("pytest_recording", reason="pytest-recording is in the dev extra: pip install -e '.[dev]'")

SUITE = """
import openai
import pytest

def ask(content):
    client = openai.OpenAI()
    return client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": content}])

@pytest.mark.vcr
def test_marker():
    assert ask("with the marker").choices[0].message.content == "echo: with the marker"

@pytest.mark.vcr
def test_fixture(vcr):
    assert vcr is not None and ask("with the fixture").choices[0].message.content == "echo: with the fixture"

@pytest.mark.vcr
@pytest.mark.parametrize("model", ["gpt-4o-mini"])
def test_param(model):
    assert ask("a parameter").choices[0].message.content == "echo: a parameter"
"""


def cassettes(pytester: pytest.Pytester) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((pytester.path / "cassettes").rglob("*.yaml"))}


@pytest.fixture
def recorded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A project that recorded its cassettes with pytest-recording alone (the plugin disabled)."""
    pytester.makepyfile(test_app=SUITE)
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        pytester.runpytest("-p", "no:llm_guard", "--record-mode=once").assert_outcomes(passed=3)
    return cassettes(pytester)


@pytest.mark.parametrize("guard_all", [[], ["--llm-guard-all"]], ids=["installed", "guard_all"])
def test_a_pytest_recording_suite_gives_the_same_outcomes(
    pytester: pytest.Pytester, recorded: dict[str, str], guard_all: list[str]
) -> None:
    assert set(recorded) == {"test_marker.yaml", "test_fixture.yaml", "test_param[gpt-4o-mini].yaml"}
    result = pytester.runpytest("--record-mode=none", *guard_all)  # offline: the server is gone
    result.assert_outcomes(passed=3)
    assert cassettes(pytester) == recorded  # its cassettes, untouched
    if guard_all:
        result.stdout.fnmatch_lines(["3 guarded tests: 3 LLM calls, 3 attempts (3 live)*"])  # vcrpy answered


def test_our_cassettes_find_pytest_recordings_names(pytester: pytest.Pytester, recorded: dict[str, str]) -> None:
    pytester.makepyfile(
        test_app=SUITE.replace("@pytest.mark.vcr\n", "")
        .replace("(vcr)", "(llm_guard)")
        .replace("vcr is not None and ", "")
    )
    result = pytester.runpytest("--llm-guard-all", "--llm-record=none", "--llm-match-on=method,path", "-k", "param")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 attempt (1 replayed)*"])


def test_a_cassette_in_another_format_is_reported_never_to_be_deleted(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "cassettes" / "test_app"
    folder.mkdir(parents=True)
    (folder / "test_x.yaml").write_text(yaml.safe_dump({"interactions": [{"request": {"parsed_body": {}}}]}))
    pytester.makepyfile(test_app="def test_x(llm_guard):\n    pass\n")
    result = pytester.runpytest("--llm-record=none")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*cassette *test_x.yaml cannot be replayed: interaction 1 has no request.method*"])
    assert "delete it" not in result.stdout.str()
    assert json.dumps(yaml.safe_load((folder / "test_x.yaml").read_text()))  # left as it was


ASYNC_REPLAY = """
import openai
import pytest
from blockbuster import blockbuster_ctx

@pytest.fixture
def blockbuster():
    with blockbuster_ctx() as bb:
        yield bb

@pytest.mark.asyncio
async def test_async_replay_and_miss(async_llm_client, blockbuster):
    reply = await async_llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "echo: hi"
    from pytest_llm_guard import LLMCassetteMiss
    with pytest.raises(LLMCassetteMiss):
        await async_llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "new"}])
"""


def test_the_async_request_path_does_no_blocking_io(pytester: pytest.Pytester, monkeypatch) -> None:
    pytest.importorskip("blockbuster", reason="blockbuster is in the dev extra: pip install -e '.[dev]'")
    pytester.makepyfile(test_app=ASYNC_REPLAY)
    with FaultServer() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        pytester.makepyfile(test_app=ASYNC_REPLAY.replace("blockbuster):", "):").split("    from pytest_llm")[0])
        pytester.runpytest("--llm-record=once").assert_outcomes(passed=1)  # recorded, without the checker
    pytester.makepyfile(test_app=ASYNC_REPLAY)
    pytester.runpytest("--llm-record=none").assert_outcomes(passed=1)  # replayed and missed under blockbuster
