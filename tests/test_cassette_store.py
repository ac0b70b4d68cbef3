"""Cassette internals as plain unit tests: keys, indexed look-up, atomic and merging saves, readable files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml
from vcr.record_mode import RecordMode
from vcr.request import Request
from vcr.serialize import deserialize

from pytest_llm_guard.cassettes import (
    AtomicPersister,
    LLMCassette,
    ReadableYaml,
    canonical_body,
    file_safe,
    open_cassette,
    path_for,
    record_mode,
    request_key,
    vcr_bridge,
)
from pytest_llm_guard.cassettes.replaying import ReplayCassette, replay_only
from pytest_llm_guard.config import Settings
from pytest_llm_guard.errors import LLMCassetteError
from pytest_llm_guard.scrub import Scrubber

MATCH = ("method", "path", "body")


def chat(content: str, host: str = "127.0.0.1:8000", **extra) -> Request:
    body = {"model": "m", "messages": [{"role": "user", "content": content}], **extra}
    return Request("POST", f"http://{host}/v1/chat/completions", json.dumps(body), {})


def answer(text: str) -> dict:
    return {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": text}}


def make(path: Path, *, mode: str = "new_episodes", matcher=lambda request, recorded: None) -> LLMCassette:
    return LLMCassette.load(
        path=str(path),
        serializer=ReadableYaml,
        persister=AtomicPersister(Scrubber()),
        record_mode=RecordMode(mode),
        match_on=(),
        match_parts=MATCH,
        ignore=frozenset({"user"}),
        matcher=matcher,
    )


def test_body_is_compared_canonically() -> None:
    assert canonical_body('{"b": 1, "a": [1, 2]}') == canonical_body(b'{"a":[1,2],"b":1}')
    assert canonical_body('{"a": 1, "user": "x"}', frozenset({"user"})) == canonical_body('{"a": 1}')
    assert canonical_body("not json") == "not json"


def test_host_and_port_are_not_part_of_the_default_key() -> None:
    assert request_key(chat("hi", "127.0.0.1:1"), MATCH, frozenset()) == request_key(
        chat("hi", "api.example.com:443"), MATCH, frozenset()
    )
    assert request_key(chat("hi", "a:1"), ("host", "port"), frozenset()) != request_key(
        chat("hi", "b:2"), ("host", "port"), frozenset()
    )


def test_a_renamed_base_url_still_matches() -> None:
    gateway = Request("POST", "https://gw.example/openai/v1/chat/completions", chat("hi").body, {})
    assert request_key(gateway, MATCH, frozenset()) == request_key(chat("hi"), MATCH, frozenset())


def test_identical_requests_replay_in_recorded_order(tmp_path: Path) -> None:
    cassette = make(tmp_path / "c.yaml")
    for text in ("first", "second"):
        cassette.append(chat("same"), answer(text))
    cassette.rewound = True  # as after loading from a file
    played = [cassette.play_response(chat("same"))["body"]["string"] for _ in range(2)]
    assert played == ["first", "second"]
    assert not cassette.can_play_response_for(chat("same"))


def test_look_up_only_consults_requests_with_the_same_key(tmp_path: Path) -> None:
    calls = []
    cassette = make(tmp_path / "c.yaml", matcher=lambda request, recorded: calls.append(recorded) or None)
    for i in range(500):
        cassette.append(chat(f"prompt {i}"), answer(str(i)))
    cassette.rewound = True
    assert cassette.play_response(chat("prompt 321", user="ignored"))["body"]["string"] == "321"
    assert len(calls) == 1


def test_a_replay_scrubs_the_request_only_when_its_recording_needs_it(tmp_path: Path) -> None:
    """Recordings are scrubbed as written: a request carrying a secret (in the query, in the body) is
    found by its scrubbed key; any other by its key as sent, without a scrub. A matcher hook always
    sees the scrubbed request."""
    secret = "sk-proj-" + "a1B2c3D4" * 4
    path = tmp_path / "c.yaml"

    def opened(mode: str, matcher=None) -> LLMCassette:
        return vcr_bridge.load(
            path, mode=mode, match_on=(*MATCH, "query"), ignore=frozenset(), matcher=matcher, scrubber=Scrubber()
        )

    def sent(content: str, query: str = "") -> Request:
        request = chat(content)
        request.uri += query
        return request

    recording = opened("new_episodes")
    recording.append(sent(f"my key is {secret}", "?api-key=" + secret), answer("secret"))
    recording.append(sent("plain"), answer("plain"))
    recording._save()
    assert secret not in path.read_text()

    cassette = opened("none")
    scrubs = []
    scrub = cassette._before_record_request
    cassette._before_record_request = lambda request: scrubs.append(request) or scrub(request)
    plain = vcr_bridge.Sent("POST", sent("plain").uri, sent("plain").body, {"authorization": "Bearer " + secret})
    assert cassette.replay(plain)["body"]["string"] == b"plain" and scrubs == []
    assert "vcr" not in plain.__dict__  # vcrpy's request (its headers) was not even built
    assert cassette.replay(sent(f"my key is {secret}", "?api-key=" + secret))["body"]["string"] == b"secret"
    assert len(scrubs) == 1 and cassette.replay(sent("plain")) is None  # played: the scrubbed key is tried too

    seen = []
    hooked = opened("none", matcher=lambda request, recorded: seen.append(request) or None)
    assert hooked.replay(sent(f"my key is {secret}", "?api-key=" + secret))["body"]["string"] == b"secret"
    assert seen and all(secret not in f"{r.uri} {r.body}" for r in seen)


def test_custom_matcher_can_refuse(tmp_path: Path) -> None:
    cassette = make(tmp_path / "c.yaml", matcher=lambda request, recorded: False)
    cassette.append(chat("hi"), answer("x"))
    cassette.rewound = True
    assert not cassette.can_play_response_for(chat("hi"))


def test_concurrent_writers_keep_each_others_interactions(tmp_path: Path) -> None:
    path = tmp_path / "shared.yaml"
    first, second = make(path), make(path)  # both loaded before either saved, as two xdist workers
    first.append(chat("from worker one"), answer("1"))
    second.append(chat("from worker two"), answer("2"))
    first._save()
    second._save()
    contents = [i["request"]["body"] for i in yaml.safe_load(path.read_text())["interactions"]]
    assert any("worker one" in c for c in contents) and any("worker two" in c for c in contents)


def test_a_cassette_is_parsed_once_per_session_and_again_once_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every test of a shared cassette, and the session's end, reuse one parse of its text; a file written
    since (a recording, here or by another worker) is parsed anew. Parsed answers are shared, so writing
    the file must not change them (vcrpy's serializer decodes bodies in place)."""
    parsed = []
    read = vcr_bridge.ReadableYaml.deserialize
    monkeypatch.setattr(
        vcr_bridge.ReadableYaml, "deserialize", staticmethod(lambda text: parsed.append(text) or read(text))
    )
    path = tmp_path / "shared.yaml"
    first = make(path)
    first.append(chat("one"), answer("1"))
    first._save()
    one = path.read_text()
    worker, other = (make(path) for _ in range(2))
    assert parsed == [one] and [r["body"]["string"] for r in vcr_bridge.parse(one)[1]] == [b"1"]
    other.append(chat("two"), answer("2"))
    other._save()
    two = path.read_text()
    assert [r["body"]["string"] for r in vcr_bridge.parse(two)[1]] == [b"1", b"2"] and parsed == [one, two]
    worker.append(chat("three"), answer("3"))
    worker._save()  # merges what the file holds now (the shared parse of `two`) into what it writes
    assert [r["body"]["string"] for r in vcr_bridge.parse(two)[1]] == [b"1", b"2"]  # not changed by the write
    assert len(make(path).data) == 3 and parsed == [one, two, path.read_text()]


def test_a_shared_cassette_is_indexed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "shared.yaml"
    first = make(path)
    for i in range(5):
        first.append(chat(f"prompt {i}"), answer(str(i)))
    first._save()
    keyed = []
    monkeypatch.setattr(vcr_bridge, "request_key", lambda *args: keyed.append(args) or request_key(*args))
    opened = [make(path) for _ in range(4)]
    assert len(keyed) == 5 and all(c.replay(chat("prompt 3", user="x"))["body"]["string"] == b"3" for c in opened)


def test_rerecording_replaces_rather_than_resurrects(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    old = make(path)
    old.append(chat("hi"), answer("old"))
    old._save()
    again = make(path, mode="all")
    again.append(chat("hi"), answer("new"))
    again._save()
    bodies = [i["response"]["body"]["string"] for i in yaml.safe_load(path.read_text())["interactions"]]
    assert bodies == ["new"]


def test_saved_file_is_readable_yaml_with_block_strings(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    cassette = make(path)
    cassette.append(chat("hi"), answer('{\n  "id": 1\n}'))
    cassette._save()
    text = path.read_text()
    assert "string: |-\n" in text and "!!binary" not in text
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


FULL = vcr_bridge.yamlserializer.deserialize
UNUSUAL = {
    "anchors and aliases": "a: &x [1, 2]\nb: *x\n",
    "a merge key": "base: &b {x: 1}\nderived:\n  <<: *b\n  y: 2\n",
    "vcrpy's python tags": "t: !!python/tuple [1, 2]\ns: !!python/str text\n",
    "an explicit collection tag": "s: !!set {a, b}\n",
    "a non-scalar key": "? [1, 2]\n: pair\n",
    "several documents": "a: 1\n---\nb: 2\n",
    "no document": "",
    "a bare scalar": "just text\n",
}


def test_the_fast_loader_builds_what_the_full_loader_builds() -> None:
    """Every scalar type a cassette holds, written by our dumper, and YAML written by hand or other tools."""
    data = {
        "version": 1,
        "interactions": [
            {
                "request": {"method": "POST", "uri": "http://h/v1/x?a=1", "body": '{\n  "a": 1\n}', "headers": {}},
                "response": {
                    "status": {"code": 200, "message": "OK"},
                    "headers": {"x": ["1", "true", "null", "0x1F", "1e3", "2026-01-01", "~", "yes", ""]},
                    "body": {"string": b"\x1f\x8b binary"},
                    "timing": {"headers": 0.0, "chunks": [0.01, 1, 2.5e-07]},
                    "flags": [True, False, None, -3, 1.5, float("inf")],
                    "unicode": "é ✓ \t tab, 'quotes' \"double\" # not a comment: colon",
                    "trailing": "line\n",
                    "multi": "a\n\nb\n\n",
                },
            }
        ],
    }

    def unused(text: str) -> None:
        raise AssertionError("the full loader was not needed here")

    written = vcr_bridge.files.dump_yaml(data)
    assert vcr_bridge.files.load_yaml(written, unused) == FULL(written) == data
    by_hand = "a: 0o17\nb: 1_000\nc: .inf\nd: 2001-12-14t21:59:43.10-05:00\ne: !!binary aGk=\n"
    by_hand += "f: !!str 12\ng: [x, {h: i}]\nh: 'single '' quoted'\ni: >\n  folded\n  text\n"
    assert vcr_bridge.files.load_yaml(by_hand, unused) == FULL(by_hand)


def test_a_parse_builds_the_requests_vcrpy_builds() -> None:
    """Requests are built without vcrpy's per-header calls: the same method, URL, body and headers."""
    response = {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": "ok"}}
    recorded = [
        {"method": "POST", "uri": "http://h/v1/x?a=1", "body": '{"a": 1}', "headers": {"A": ["1"], "b": "2"}},
        {"method": "POST", "uri": "http://h/v1/x?a=1", "body": b"\x1f\x8b", "headers": {"X-K": ["1"], "x-k": ["2"]}},
        {"method": "GET", "uri": "https://h:8/v1/y", "body": None, "headers": {}},
        {"method": "GET", "uri": "https://h:8/v1/y", "body": "", "headers": [["odd", "shape"]]},
    ]
    text = yaml.safe_dump({"version": 1, "interactions": [{"request": r, "response": response} for r in recorded]})
    ours, theirs = vcr_bridge.parse(text)[0], deserialize(text, vcr_bridge.ReadableYaml)[0]
    assert len(ours) == len(theirs) == len(recorded)
    for mine, vcrs in zip(ours, theirs, strict=True):
        assert vars(mine).keys() == vars(vcrs).keys()
        fields = ("method", "uri", "parsed_uri", "body")
        assert [getattr(mine, f) for f in fields] == [getattr(vcrs, f) for f in fields]
        assert list(mine.headers.items()) == list(vcrs.headers.items()) and type(mine.headers) is type(vcrs.headers)


@pytest.mark.parametrize("text", list(UNUSUAL.values()), ids=list(UNUSUAL))
def test_what_the_fast_loader_leaves_to_the_full_loader(text: str) -> None:
    try:
        expected = FULL(text)
    except yaml.YAMLError as exc:
        with pytest.raises(type(exc)):
            vcr_bridge.files.load_yaml(text, FULL)
    else:
        assert vcr_bridge.files.load_yaml(text, FULL) == expected


def test_unparseable_cassette_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("interactions:\n- request: {method: POST\n")
    with pytest.raises(LLMCassetteError, match=rf"cannot parse cassette {path} at line 3, column 1"):
        make(path)


def test_a_yaml_file_that_is_not_a_cassette(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("just: a mapping\n")
    with pytest.raises(LLMCassetteError, match="cannot be replayed: it has no 'interactions' list") as info:
        make(path)
    assert "delete" not in str(info.value)


@pytest.mark.parametrize(
    ("response", "missing"),
    [
        ("{status: {code: 200}, body: {string: ok}}", "interaction 2 has no response.headers"),
        ("{status: {}, headers: {}, body: {string: ok}}", "interaction 2 has no response.status.code"),
        ("{status: {code: 200}, headers: {}, body: {}}", "interaction 2 has no response.body.string"),
    ],
)
def test_a_cassette_missing_a_field_names_the_interaction_and_the_field(
    tmp_path: Path, response: str, missing: str
) -> None:
    path = tmp_path / "c.yaml"
    request = "{method: POST, uri: 'http://h/v1/chat/completions', body: '{}', headers: {}}"
    good = "{status: {code: 200, message: OK}, headers: {}, body: {string: ok}}"
    path.write_text(
        f"interactions:\n- request: {request}\n  response: {good}\n- request: {request}\n  response: {response}\n"
    )
    with pytest.raises(LLMCassetteError, match=rf"cassette {path} cannot be replayed: {missing}\. It may have been"):
        make(path)


def test_empty_file_counts_as_missing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("\n")
    assert len(make(path)) == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("test_x", "test_x"), ("test_p[a b]", "test_p_a_b-"), ("test_p[../../etc]", "test_p_etc-"), ("[]", "test-")],
)
def test_file_safe_names(name: str, expected: str) -> None:
    """A name that had to change ends with a hash of the raw id; one that did not is kept as it is."""
    safe = file_safe(name)
    assert safe.startswith(expected) and len(safe) == len(expected) + (12 if expected.endswith("-") else 0)


def test_ids_that_sanitise_alike_get_distinct_files() -> None:
    assert file_safe("test_q[What is 2+2?]") != file_safe("test_q[What is 2*2?]")


def test_a_cassette_under_its_earlier_name_is_still_found(tmp_path: Path) -> None:
    test_file = tmp_path / "test_app.py"
    folder = tmp_path / "cassettes" / "test_app"
    assert path_for(test_file, "test_q[a b]", Settings()) == folder / f"{file_safe('test_q[a b]')}.yaml"
    folder.mkdir(parents=True)
    (folder / "test_q_a_b.yaml").write_text("interactions: []\n")  # committed before names had a hash
    assert path_for(test_file, "test_q[a b]", Settings()) == folder / "test_q_a_b.yaml"


def test_long_names_are_shortened_with_a_hash() -> None:
    one, two = file_safe("test_" + "a" * 200 + "1"), file_safe("test_" + "a" * 200 + "2")
    assert len(one) == 100 and one != two


@pytest.mark.parametrize(
    ("configured", "ci", "expected"),
    [(None, "", "once"), (None, "true", "none"), (None, "0", "once"), ("all", "true", "all"), ("off", "", "off")],
)
def test_record_mode_defaults_to_replay_only_on_ci(configured, ci, expected) -> None:
    assert record_mode(Settings(record=configured), {"CI": ci}) == expected


def opened(path: Path, mode: str, **kwargs) -> LLMCassette:
    return vcr_bridge.load(
        path, mode=mode, match_on=MATCH, ignore=frozenset(), matcher=lambda r, s: None, scrubber=Scrubber(), **kwargs
    )


def contents(path: Path) -> list[tuple[str, str]]:
    stored = yaml.safe_load(path.read_text())["interactions"]
    asked = [json.loads(i["request"]["body"])["messages"][0]["content"] for i in stored]
    return sorted(zip(asked, [i["response"]["body"]["string"] for i in stored], strict=True))


def test_rerecording_workers_replace_what_the_file_held_before_the_session(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    old = opened(path, "new_episodes")
    for content in ("a", "b", "c"):
        old.append(chat(content), answer("old"))
    old.save()
    os.utime(path, (1, 1))  # written long before this session
    started = time.time()
    one, two = opened(path, "all", session_started=started), opened(path, "all", session_started=started)
    one.append(chat("a"), answer("new"))
    one.save()  # the session's first write: the old file goes
    two.append(chat("b"), answer("new"))
    two.append(chat("c"), answer("new"))
    two.save()  # loaded the old file too: keeps what `one` wrote, nothing older
    assert contents(path) == [("a", "new"), ("b", "new"), ("c", "new")]


def test_an_abandoned_note_is_kept_until_the_request_is_recorded(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    first = opened(path, "new_episodes")
    first.note_abandoned(chat("hi"), {"test": "t", "request": "POST /v1/chat/completions", "reason": "too slow"})
    first.save()
    again = opened(path, "new_episodes")
    assert again.abandoned(again.scrubbed(chat("hi")))["reason"] == "too slow"
    assert again.abandoned(again.scrubbed(chat("other"))) is None
    again.append(chat("hi"), answer("whole"))
    again.save()
    assert "metadata" not in yaml.safe_load(path.read_text())


# -- the replay-only cassette (no vcrpy) -----------------------------------------------------------


def replaying(path: Path, mode: str = "none", matcher=None) -> ReplayCassette:
    layer = open_cassette(
        path, Settings(match_on=(*MATCH, "query")), mode=mode, nodeid="t", matcher=matcher, scrubber=Scrubber()
    )
    assert isinstance(layer.cassette, ReplayCassette) and layer.replay_only
    return layer.cassette


def test_a_replay_only_cassette_looks_up_as_vcrpys_does(tmp_path: Path) -> None:
    """Record mode none, and once on a recorded file: the first unplayed recording of the key as sent,
    then of the scrubbed key (a recording holds REDACTED where the request held a secret); a matcher
    hook sees the scrubbed request and vcrpy's recorded one; an answer cut short is given back."""
    secret = "sk-proj-" + "a1B2c3D4" * 4
    path = tmp_path / "c.yaml"
    recording = vcr_bridge.load(
        path, mode="new_episodes", match_on=(*MATCH, "query"), ignore=frozenset(), matcher=None, scrubber=Scrubber()
    )
    recording.append(Request("POST", chat("s").uri + "?api-key=" + secret, chat(secret).body, {}), answer("secret"))
    for text in ("first", "second"):
        recording.append(chat("same"), answer(text))
    recording._save()

    def sent(content: str, query: str = "") -> vcr_bridge.Sent:
        return vcr_bridge.Sent("POST", chat(content).uri + query, chat(content).body, {"authorization": secret})

    cassette = replaying(path)
    plain = sent("same")
    assert cassette.replay(plain)["body"]["string"] == b"first" and "vcr" not in plain.__dict__
    second = cassette.replay(sent("same"))
    assert second["body"]["string"] == b"second" and cassette.replay(sent("same")) is None
    cassette.unplay(second)
    assert cassette.replay(sent("same")) is second
    assert cassette.replay(sent(secret, "?api-key=" + secret))["body"]["string"] == b"secret"
    assert [iid for iid, _ in cassette.unplayed()] == [] and cassette.save() is None

    seen = []
    hooked = replaying(path, "once", matcher=lambda request, recorded: seen.append((request, recorded)) or None)
    assert hooked.replay(sent(secret, "?api-key=" + secret))["body"]["string"] == b"secret"
    assert all(secret not in f"{q.uri} {q.body}" and isinstance(r, Request) for q, r in seen)
    refused = replaying(path, matcher=lambda request, recorded: False)
    assert refused.replay(sent("same")) is None and len(refused.unplayed()) == 3


def test_a_replay_only_cassette_is_chosen_by_mode_and_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    assert replay_only(path, "none") == (True, None) and replay_only(path, "once") == (False, None)
    path.write_text("\n")  # empty counts as missing: once records into it
    assert replay_only(path, "once") == (False, None)
    assert len(replaying(path).data) == 0
    path.write_text("interactions: []\n")
    assert replay_only(path, "once") == (True, "interactions: []\n")
    assert all(replay_only(path, mode)[0] is False for mode in ("new_episodes", "all"))
    path.write_text("interactions:\n- request: {method: POST\n")
    with pytest.raises(LLMCassetteError, match=rf"cannot parse cassette {path} at line 3, column 1"):
        replaying(path)
