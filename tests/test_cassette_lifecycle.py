"""Cassettes that stay true: metadata, stable re-records, unplayed recordings, reviewable re-recording."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
import yaml
from vcr.cassette import Cassette
from vcr.request import Request
from vcr.serializers import yamlserializer

from pytest_llm_guard.cassettes import canonical_body, request_key, review
from pytest_llm_guard.config import Settings
from pytest_llm_guard.errors import LLMGuardConfigError
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.markers import apply_markers

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _default_record_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_GUARD_RECORD", raising=False)
    monkeypatch.delenv("CI", raising=False)


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server: FaultServer) -> pytest.Pytester:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    return pytester


def key(request: Request) -> tuple[str, ...]:
    return request_key(request, ("method", "path", "body"), frozenset())


def chat_request(content: str, model: str = "gpt-4o-mini") -> Request:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    return Request("POST", "https://api.openai.com/v1/chat/completions", json.dumps(body), {})


def chat_answer(text: str, *, answer_id: str = "chatcmpl-1", created: int = 1, headers: dict | None = None) -> dict:
    body = {"id": answer_id, "created": created, "choices": [{"message": {"role": "assistant", "content": text}}]}
    return {
        "status": {"code": 200, "message": "OK"},
        "headers": {"content-type": ["application/json"], **(headers or {})},
        "body": {"string": json.dumps(body)},
    }


def test_ids_dates_and_request_ids_never_make_an_answer_new() -> None:
    request = chat_request("hi")
    old = chat_answer("Paris.", headers={"date": ["Mon"], "x-request-id": ["a"], "openai-processing-ms": ["12"]})
    new = chat_answer("Paris.", answer_id="chatcmpl-2", created=2, headers={"date": ["Tue"], "x-request-id": ["b"]})
    assert review.same_answer(request, old, new)
    assert not review.same_answer(request, old, chat_answer("Lyon."))

    anthropic = Request("POST", "https://api.anthropic.com/v1/messages", json.dumps({"model": "c", "messages": []}), {})
    stream = 'event: message_start\ndata: {"type": "message_start", "message": {"id": "%s"}}\n\n' + (
        'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"type": "text_delta", '
        '"text": "Hello"}}\n\n'
    )
    first = {"status": {"code": 200}, "headers": {"request-id": ["r1"]}, "body": {"string": stream % "msg_1"}}
    second = {"status": {"code": 200}, "headers": {"request-id": ["r2"]}, "body": {"string": stream % "msg_2"}}
    assert review.same_answer(anthropic, first, second)
    assert review.answer_text(anthropic, second) == "Hello"


def test_a_changed_answer_is_shown_as_a_word_diff() -> None:
    assert review.word_diff("The capital is Paris.", "The capital is Lyon.") == "The capital is [-Paris.-] {+Lyon.+}"
    before = [(chat_request("capital?"), chat_answer("The capital is Paris."))]
    after = [(chat_request("capital?"), chat_answer("The capital is Lyon."))]
    result = review.review("c.yaml", before, after, key=key)
    assert (result.unchanged, result.added, result.removed) == (0, 0, 0)
    assert [c.as_dict() for c in result.changed] == [
        {"request": "model=gpt-4o-mini, last user message 'capital?'", "diff": "The capital is [-Paris.-] {+Lyon.+}",
         "note": ""}
    ]  # fmt: skip


def test_a_change_of_usage_alone_says_so() -> None:
    request = chat_request("hi")
    old, new = chat_answer("Hi."), chat_answer("Hi.")
    new_body = json.loads(new["body"]["string"])
    new["body"]["string"] = json.dumps({**new_body, "usage": {"total_tokens": 9}})
    result = review.review("c.yaml", [(request, old)], [(request, new)], key=key)
    assert [(c.diff, c.note) for c in result.changed] == [("", "only usage changed")]


def test_an_edited_prompt_is_one_change_and_the_rest_is_added_or_removed() -> None:
    kept, edited, gone = chat_request("kept"), chat_request("old prompt"), chat_request("gone", model="other")
    before = [(kept, chat_answer("k")), (edited, chat_answer("old answer")), (gone, chat_answer("g"))]
    after = [(kept, chat_answer("k", answer_id="x")), (chat_request("new prompt"), chat_answer("new answer"))]
    after.append((chat_request("brand new", model="third"), chat_answer("n")))
    result = review.review("c.yaml", before, after, key=key)
    assert (result.unchanged, result.added, result.removed) == (1, 1, 1)
    assert [(c.diff, c.note) for c in result.changed] == [("[-old-] {+new+} answer", "the request changed")]

    # new_episodes: the old recording stays in the file, unplayed; the new one still replaces it
    unplayed = review.ids([edited], key)
    after = [before[0], before[1], (chat_request("new prompt"), chat_answer("new answer"))]
    result = review.review("c.yaml", before[:2], after, key=key, unplayed=unplayed)
    assert (result.unchanged, len(result.changed), result.added, result.removed) == (1, 1, 0, 0)


STABLE_TESTS = """
def ask(client, prompt):
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    ).choices[0].message.content

def test_two_questions(llm_client):
    assert ask(llm_client, "first question")
    assert ask(llm_client, "second question")
"""


def test_metadata_and_a_rerecord_that_changes_nothing_leaves_the_file_alone(
    project: pytest.Pytester, server: FaultServer
) -> None:
    project.makepyfile(test_app=STABLE_TESTS)
    project.runpytest().assert_outcomes(passed=1)
    path = project.path / "cassettes" / "test_app" / "test_two_questions.yaml"
    written = path.read_text()
    data = yaml.safe_load(written)
    assert list(data) == ["version", "metadata", "interactions"]
    header = data["metadata"]
    assert header["recorded_with"]["plugin"].startswith("pytest-llm-guard ")
    assert header["recorded_with"]["sdk"].startswith("openai 3.")
    assert header["recorded_with"]["dialect"] == "openai"
    assert header["models"] == ["gpt-4o-mini"]
    stamps = [i["recorded"] for i in data["interactions"]]
    assert all(s["model"] == "gpt-4o-mini" and s["at"].endswith("Z") for s in stamps)
    assert "sk-test" not in written and "?" not in data["interactions"][0]["request"]["uri"]
    # vcrpy (and so pytest-recording) reads the file: the stamps and the header are extra keys it keeps
    plain = Cassette.load(path=str(path), serializer=yamlserializer)
    assert len(plain.data) == 2 and plain._metadata["models"] == ["gpt-4o-mini"]

    # the server numbers its answers (ids differ), the words are the same: nothing to write
    project.runpytest("--llm-record=all").assert_outcomes(passed=1)
    assert path.read_text() == written

    server.reply("a new answer", when="second")
    project.runpytest("--llm-record=all").assert_outcomes(passed=1)
    again = yaml.safe_load(path.read_text())["interactions"]
    assert again[0] == data["interactions"][0]  # the unchanged answer as it was recorded
    assert "a new answer" in again[1]["response"]["body"]["string"]
    assert again[1]["recorded"]["at"] >= data["interactions"][1]["recorded"]["at"]


def test_a_recording_run_that_recorded_nothing_has_nothing_to_review(project: pytest.Pytester, server) -> None:
    """Every answer failed (a 503, not recorded): no cassette was written, and the summary does not
    announce a review of zero interactions."""
    server.plan(then=Fault.status(503))
    project.makepyfile(test_app=STABLE_TESTS)
    result = project.runpytest("--llm-record=all", "--llm-retries=0")
    result.assert_outcomes(failed=1)
    assert not (project.path / "cassettes").exists()
    result.stdout.no_fnmatch_line("*llm-guard: cassettes*")
    result.stdout.no_fnmatch_line("*recorded into*")


DRIFTING_SUITE = """
import os

import pytest

def ask(client, prompt):
    return client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
    ).choices[0].message.content

def test_same(llm_client):
    assert ask(llm_client, "same question")

def test_edited(llm_client):
    assert ask(llm_client, os.environ.get("PROMPT", "old prompt"))

def test_deleted(llm_client):
    assert ask(llm_client, "soon gone")

def test_skipped_later(llm_client):
    if os.environ.get("PROMPT"):
        pytest.skip("a skipped test plays nothing, and leaves nothing unplayed")
    assert ask(llm_client, "asked once")

@pytest.mark.llm_cassette("shared")
@pytest.mark.parametrize("n", [1, 2])
def test_shared(llm_client, n):
    assert ask(llm_client, f"shared {n}")
    if os.environ.get("PROMPT") is None:
        assert ask(llm_client, f"only once {n}")
"""


def test_a_drifted_suite_rerecorded_shows_what_changed_and_what_no_test_played(
    project: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_app=DRIFTING_SUITE)
    project.runpytest().assert_outcomes(passed=6)
    folder = project.path / "cassettes" / "test_app"
    written = {path.name: path.read_text() for path in folder.glob("*.yaml")}

    # One prompt edited (and its answer changed at the server), one test deleted, one added; the
    # shared cassette's tests no longer ask their second question.
    monkeypatch.setenv("PROMPT", "new prompt")
    server.reply("a different answer", when="new prompt")
    source = DRIFTING_SUITE.replace("def test_deleted", "def _deleted")
    project.makepyfile(test_app=source + "\ndef test_added(llm_client):\n    assert ask(llm_client, 'added')\n")
    result = project.runpytest("-n", "2", "--llm-record=new_episodes", "--llm-report=report.json")
    result.assert_outcomes(passed=5, skipped=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*llm-guard: cassettes*",
            "recorded into 5 cassettes: 1 changed, 1 added, 0 removed, 4 unchanged (unchanged answers are kept*",
            "  cassettes/test_app/test_added.yaml: 1 added",
            "  cassettes/test_app/test_edited.yaml: 1 changed",
            "    model=gpt-4o-mini, last user message 'new prompt': the request changed; "
            "[-echo: old prompt-] {+a different answer+}",
            "3 recordings in 2 cassettes not played by any passing test*",
            "  cassettes/test_app/shared.yaml: 2 unplayed, first model=gpt-4o-mini, last user message 'only once 1'; "
            "drop: pytest 'test_app.py::test_shared[1]' 'test_app.py::test_shared[2]' --llm-record=new_episodes "
            "--llm-prune-unplayed",
            "  cassettes/test_app/test_edited.yaml: 1 unplayed*",
            "1 cassette beside these that no test of this run used*",
            "  cassettes/test_app/test_deleted.yaml",
        ]
    )
    assert "passed without replaying 1 recording of its cassette" in result.stdout.str()  # the test's own
    now = {path.name: path.read_text() for path in folder.glob("*.yaml")}
    assert {name for name in written if now[name] != written[name]} == {"test_edited.yaml"}
    assert set(now) - set(written) == {"test_added.yaml"}
    report = json.loads((project.path / "report.json").read_text())
    jsonschema.validate(report, json.loads((Path(__file__).parent.parent / "docs" / "report-schema.json").read_text()))
    cassettes = report["cassettes"]
    assert [c["changed"][0]["note"] for c in cassettes["rerecorded"] if c["changed"]] == ["the request changed"]
    assert sorted(u["count"] for u in cassettes["unplayed"]) == [1, 2]

    # Shared recordings no test plays fail the session under on_unplayed = fail, and the prune drops them
    result = project.runpytest("--llm-on-unplayed=fail")
    assert result.ret == 1
    result.assert_outcomes(passed=4, failed=1, skipped=1)  # test_edited: its own cassette, failed in the test
    result = project.runpytest("--llm-record=new_episodes", "--llm-prune-unplayed")
    result.assert_outcomes(passed=5, skipped=1)
    result.stdout.fnmatch_lines(["*shared.yaml: 2 unplayed*; dropped", "*test_edited.yaml: 1 unplayed*; dropped"])
    for name in ("shared.yaml", "test_edited.yaml"):
        text = (folder / name).read_text()
        assert "only once" not in text and "old prompt" not in text
    assert project.runpytest("--llm-on-unplayed=fail").ret == 0


def test_an_expired_cassette_warns_fails_or_is_recorded_again_where_recording_is_allowed(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_app=STABLE_TESTS)
    project.runpytest().assert_outcomes(passed=1)
    path = project.path / "cassettes" / "test_app" / "test_two_questions.yaml"
    data = yaml.safe_load(path.read_text())
    data["interactions"][0]["recorded"]["at"] = "2020-01-01T00:00:00Z"  # the other answer is recent
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    aged = path.read_text()
    shared = """
import pytest

@pytest.mark.llm_cassette("pair", cassette_max_age="90d")
@pytest.mark.parametrize("n", [1, 2])
def test_pair(llm_client, n):
    llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"pair {n}"}])
"""

    result = project.runpytest("--llm-cassette-max-age=90d")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*cassette *test_two_questions.yaml of test_app.py::test_two_questions has expired: its oldest answer "
            "was recorded * days ago, more than cassette_max_age = 90 days; re-record it: "
            "pytest 'test_app.py::test_two_questions' --llm-record=all.",
            "1 cassette older than cassette_max_age:",
            "  cassettes/test_app/test_two_questions.yaml: * days old; "
            "re-record: pytest test_app.py::test_two_questions --llm-record=all",
        ]
    )
    project.makepyprojecttoml('[tool.pytest_llm_guard]\ncassette_max_age = "90d"\non_expiry = "fail"\n')
    project.runpytest().assert_outcomes(errors=1)

    monkeypatch.setenv("CI", "true")  # replay only: rerecord cannot, and says so
    result = project.runpytest("--llm-on-expiry=rerecord")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(["*on_expiry = rerecord, but recording is not allowed here*it warns instead*"])
    assert path.read_text() == aged

    # a shared cassette: the first test to find it expired records it again, and so does every later
    # one (its old answers are gone from the file by then)
    project.makepyfile(test_pair=shared)
    project.runpytest("--llm-record=all", "test_pair.py").assert_outcomes(passed=2)
    pair = project.path / "cassettes" / "test_pair" / "pair.yaml"
    pair.write_text(pair.read_text().replace("at: '2", "at: '2020-01-01T00:00:00Z' #"))
    monkeypatch.delenv("CI")
    result = project.runpytest("--llm-on-expiry=rerecord", "test_pair.py")
    result.assert_outcomes(passed=2)
    assert all(i["recorded"]["at"] > "2026" for i in yaml.safe_load(pair.read_text())["interactions"])

    result = project.runpytest("--llm-on-expiry=rerecord", "test_app.py")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_two_questions.yaml: * days old; recorded again"])
    again = yaml.safe_load(path.read_text())["interactions"]
    assert again[0]["recorded"]["at"] > "2026" and again[1] == data["interactions"][1]  # only the date moved
    assert again[0]["response"] == data["interactions"][0]["response"]
    project.runpytest().assert_outcomes(passed=3)  # on_expiry = "fail" in pyproject.toml: none has expired


def test_ignored_paths_leave_fields_out_of_matching() -> None:
    body = {
        "model": "m",
        "user": "u-1",
        "metadata": {"run": 1},
        "stream_options": {"include_usage": True, "other": 1},
        "messages": [{"role": "user", "name": "alice", "content": "hi"}],
    }
    ignore = frozenset({"user", "metadata", "stream_options.include_usage", "messages[*].name"})
    assert json.loads(canonical_body(json.dumps(body), ignore)) == {
        "model": "m",
        "stream_options": {"other": 1},
        "messages": [{"role": "user", "content": "hi"}],
    }
    with pytest.raises(LLMGuardConfigError, match=r"match_ignore = \['messages\[0\]\.name'\] in @pytest.mark"):
        marker = SimpleNamespace(name="llm_cassette", args=(), kwargs={"match_ignore": ["messages[0].name"]})
        apply_markers(Settings(), [marker], "t.py::x")


MATCH_IGNORE_TESTS = """
import os

import pytest

@pytest.mark.llm_cassette(match_ignore=["user", "messages[*].name"])
def test_asks(llm_client):
    llm_client.chat.completions.create(
        model="m", user=os.environ.get("RUN_ID", "run-1"),
        messages=[{"role": "user", "name": os.environ.get("RUN_ID", "run-1"), "content": "hi"}],
    )
"""


def test_match_ignore_from_the_marker_replays_a_request_whose_ignored_fields_changed(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makepyfile(test_app=MATCH_IGNORE_TESTS)
    project.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("RUN_ID", "run-2")
    monkeypatch.setenv("CI", "true")
    project.runpytest().assert_outcomes(passed=1)
    project.makepyfile(test_app=MATCH_IGNORE_TESTS.replace(', "messages[*].name"', ""))
    project.runpytest().assert_outcomes(failed=1)  # the name now counts: a miss
    # the marker's list replaces the configured one, as every marker value does; the ini key alone:
    project.makepyfile(
        test_app=MATCH_IGNORE_TESTS.replace('@pytest.mark.llm_cassette(match_ignore=["user", "messages[*].name"])', "")
    )
    project.runpytest("-o", "llm_match_ignore=user,messages[*].name").assert_outcomes(passed=1)


LISTED_TESTS = """
import pytest

def ask(client, prompt):
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])

@pytest.mark.llm_cassette("shared")
@pytest.mark.parametrize("n", [1, 2])
def test_shared(llm_client, n):
    ask(llm_client, f"q{n}")

@pytest.mark.llm_cassette(path="data/explicit.yaml")
def test_explicit(llm_client):
    ask(llm_client, "explicit")

def test_own(llm_client):
    ask(llm_client, "own")
"""


def test_llm_cassettes_lists_every_cassette_and_its_tests_and_marks_orphans(project: pytest.Pytester) -> None:
    project.makepyfile(test_app=LISTED_TESTS + "\ndef test_gone(llm_client):\n    ask(llm_client, 'gone')\n")
    project.runpytest().assert_outcomes(passed=5)
    project.makepyfile(test_app=LISTED_TESTS)
    (project.path / "notes.yaml").write_text("interactions: []\n")  # an empty cassette of another tool

    result = project.runpytest("--llm-cassettes", "-n", "2")
    assert result.ret == 0
    result.assert_outcomes(deselected=4)
    result.stdout.fnmatch_lines(
        [
            "notes.yaml: 17 B, 0 interactions, no model, age unknown (no recorded dates); ORPHAN*",
            "cassettes/test_app/shared.yaml: * KiB, 2 interactions, gpt-4o-mini, * old; "
            "test_app.py::test_shared?1?, test_app.py::test_shared?2?",
            "cassettes/test_app/test_gone.yaml: *, 1 interaction, gpt-4o-mini, * old; ORPHAN: no collected test*",
            "cassettes/test_app/test_own.yaml: *; test_app.py::test_own",
            "data/explicit.yaml: *; test_app.py::test_explicit",
            "5 cassettes under *, 2 orphans",
            "*To delete them: rm notes.yaml cassettes/test_app/test_gone.yaml (--llm-strict makes orphans exit 1*",
        ]
    )
    assert (project.path / "cassettes" / "test_app" / "test_gone.yaml").exists()  # never deleted here
    assert project.runpytest("--llm-cassettes", "--llm-strict").ret == 1
    (project.path / "notes.yaml").unlink()
    (project.path / "cassettes" / "test_app" / "test_gone.yaml").unlink()
    assert project.runpytest("--llm-cassettes", "--llm-strict").ret == 0


def _note(**changes: object) -> dict[str, object]:
    """A test's note of its cassette (``CassetteLayer.note``): by default a replay that played everything."""
    note = {
        "path": "/nowhere/cassette.yaml",  # never read when there is nothing to judge
        "test": "test_x.py::test_x",
        "mode": "none",
        "shared": False,
        "passed": True,
        "saved": False,
        "unplayed": [],
        "expiry": None,
        "on_unplayed": "warn",
        "prune": False,
        "match_on": ["method", "path", "body"],
        "ignore": [],
    }
    return {**note, **changes}


QUIET = [_note(), _note(passed=False, unplayed=None), _note(mode="once"), _note(on_unplayed="fail")]
BUSY = [_note(unplayed=["a1b2c3"]), _note(expiry={"age": 9e9, "action": "warn"}), _note(mode="all")]


@pytest.mark.parametrize("note", QUIET, ids=["played all", "failed", "once", "fail on unplayed"])
def test_a_replay_that_played_everything_leaves_the_sessions_end_nothing_to_judge(note: dict[str, object]) -> None:
    """The session's end skips upkeep.py (not even imported) for such notes: upkeep finds nothing in them."""
    from pytest_llm_guard.cassettes import nothing_to_judge, upkeep

    assert nothing_to_judge(note)
    judged = upkeep.judge([note, _note()], lambda path: None)
    assert judged.as_dict() == {"unplayed": [], "rerecorded": [], "expired": [], "unused": []}


@pytest.mark.parametrize("note", BUSY, ids=["unplayed", "expired", "recorded"])
def test_unplayed_expired_or_recorded_cassettes_are_judged(note: dict[str, object]) -> None:
    from pytest_llm_guard.cassettes import nothing_to_judge

    assert not nothing_to_judge(note)
