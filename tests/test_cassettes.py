"""Cassettes end to end: record against the fault server, replay offline, scrub, stream, miss, survive."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pytest_llm_guard.cassettes import AtomicPersister, ReadableYaml
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.scrub import Scrubber

pytest_plugins = ["pytester"]

SECRET_KEY = "sk-proj-" + "Zq7" * 15  # looks like a real key; must never be written


@pytest.fixture(autouse=True)
def _default_record_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about record modes: each starts from the defaults (no CI, no LLM_GUARD_RECORD)."""
    monkeypatch.delenv("LLM_GUARD_RECORD", raising=False)


@pytest.fixture
def server() -> FaultServer:
    with FaultServer() as running:
        yield running


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server: FaultServer) -> pytest.Pytester:
    """A user project whose clients find the fault server through the SDK's own environment."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    return pytester


def go_offline(server: FaultServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the server, drop the key, set CI: any network attempt would now fail the run."""
    server.stop()
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("CI", "true")


def cassette(pytester: pytest.Pytester, module: str, test: str) -> Path:
    return pytester.path / "cassettes" / module / f"{test}.yaml"


def interactions(path: Path) -> list[dict]:
    return yaml.safe_load(path.read_text())["interactions"]


APP_TESTS = """
import openai
import pytest

def app_answer(prompt):
    client = openai.OpenAI()  # code under test builds its own client
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    return reply.choices[0].message.content

def test_fixture_client(llm_client):
    reply = llm_client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "echo: hi"

@pytest.mark.llm_budget(deadline=10)
def test_app_client():
    assert app_answer("first") == "echo: first"
    assert app_answer("second") == "echo: second"

@pytest.mark.parametrize("word", ["a b", "c/d"])
def test_param(llm_client, word):
    reply = llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": word}])
    assert reply.choices[0].message.content == f"echo: {word}"
"""


def test_record_then_replay_offline_with_no_key(project: pytest.Pytester, server: FaultServer, monkeypatch) -> None:
    project.makepyfile(test_app=APP_TESTS)
    project.runpytest().assert_outcomes(passed=4)
    assert len(server.requests) == 5
    assert "x-llm-guard" not in cassette(project, "test_app", "test_fixture_client").read_text()
    assert cassette(project, "test_app", "test_app_client").is_file()
    assert len(list((project.path / "cassettes" / "test_app").glob("test_param_a_b-*.yaml"))) == 1
    assert len(list((project.path / "cassettes" / "test_app").glob("test_param_c_d-*.yaml"))) == 1

    go_offline(server, monkeypatch)
    result = project.runpytest()
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*5 LLM calls, 5 attempts (5 replayed), *; 0.00 s on the network*"])


def test_ci_default_is_replay_only(project: pytest.Pytester, server: FaultServer, monkeypatch) -> None:
    project.makepyfile(test_app=APP_TESTS)
    monkeypatch.setenv("CI", "1")
    result = project.runpytest("-k", "fixture_client")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LLMCassetteMiss*record mode 'none'*no network request was made*"])
    assert server.requests == []


def test_secrets_never_reach_the_file(project: pytest.Pytester, server: FaultServer) -> None:
    project.makepyprojecttoml(
        """
        [tool.pytest_llm_guard]
        scrub_body_fields = ["user"]
        scrub_patterns = ["acct-[0-9]+"]
        scrub_headers = ["x-tenant"]
        """
    )
    project.makepyfile(
        """
        import openai

        def test_x():
            client = openai.OpenAI(
                organization="org-SECRETORG", project="proj_SECRETPROJ",
                default_headers={"Cookie": "session=SECRETCOOKIE", "X-Tenant": "SECRETTENANT"},
            )
            client.chat.completions.create(
                model="m", user="SECRETUSER",
                messages=[{"role": "user", "content": "my account is acct-123456"}],
            )

        def test_with_key_in_query():
            import os, httpx2
            httpx2.post(
                os.environ["OPENAI_BASE_URL"] + "/chat/completions?api-key=SECRETQUERY",
                json={"model": "m", "messages": []},
            )
        """
    )
    result = project.runpytest("--llm-guard-all=true")
    result.assert_outcomes(passed=2)
    written = "".join(p.read_text() for p in (project.path / "cassettes").rglob("*.yaml"))
    assert "echo: my account is REDACTED" in written  # recorded, and scrubbed inside bodies too
    for secret in (
        SECRET_KEY,
        "SECRETORG",
        "SECRETPROJ",
        "SECRETCOOKIE",
        "SECRETTENANT",
        "SECRETUSER",
        "acct-123456",
        "SECRETQUERY",
    ):
        assert secret not in written
    assert "authorization" not in written.lower()


STREAM_TESTS = """
import json, pathlib
import pytest

def collect(chunks):
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]

def test_sync_stream(llm_client, request):
    stream = llm_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "one two three four"}], stream=True
    )
    pathlib.Path("sync.json").write_text(json.dumps(collect(stream)))

async def test_async_stream(async_llm_client):
    stream = await async_llm_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "five six seven"}], stream=True,
        stream_options={"include_usage": True},
    )
    pathlib.Path("async.json").write_text(json.dumps(collect([c async for c in stream])))
"""


def test_streams_record_and_replay_in_order(project: pytest.Pytester, server: FaultServer, monkeypatch) -> None:
    project.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    project.makepyfile(test_streams=STREAM_TESTS)
    project.runpytest().assert_outcomes(passed=2)
    recorded = {name: (project.path / name).read_text() for name in ("sync.json", "async.json")}
    assert json.loads(recorded["sync.json"]) == ["echo:", " one", " two", " three", " four"]
    body = interactions(cassette(project, "test_streams", "test_sync_stream"))[0]["response"]["body"]["string"]
    assert body.count("data: ") == 8 and body.endswith("data: [DONE]\n\n")

    go_offline(server, monkeypatch)
    project.runpytest().assert_outcomes(passed=2)
    assert {name: (project.path / name).read_text() for name in recorded} == recorded


def test_only_the_final_success_is_recorded(project: pytest.Pytester, server: FaultServer) -> None:
    server.plan(Fault.status(503), Fault.status(429, retry_after=0.01))
    project.makepyfile(
        """
        def test_x(llm_client):
            llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        """
    )
    project.runpytest("--llm-backoff-initial=0").assert_outcomes(passed=1)
    recorded = interactions(cassette(project, "test_only_the_final_success_is_recorded", "test_x"))
    assert [i["response"]["status"]["code"] for i in recorded] == [200]
    assert len(server.requests) == 3


def test_a_miss_says_what_differs_and_how_to_record(project: pytest.Pytester, server, monkeypatch) -> None:
    project.makepyfile(
        test_app="""
        import os, time
        import openai

        def test_agent():
            client = openai.OpenAI()
            prompt = os.environ.get("PROMPT", "What is the capital of France?")
            for attempt in range(5):  # the application's own retry loop cannot swallow the miss
                try:
                    return client.chat.completions.create(
                        model="gpt-4o-mini", temperature=0, messages=[{"role": "user", "content": prompt}]
                    )
                except Exception:
                    time.sleep(0.01)
        """
    )
    project.runpytest("--llm-guard-all=true").assert_outcomes(passed=1)
    go_offline(server, monkeypatch)
    monkeypatch.setenv("PROMPT", "What is the capital of Spain?")
    result = project.runpytest("--llm-guard-all=true")
    result.assert_outcomes(failed=1)
    path = cassette(project, "test_app", "test_agent")
    result.stdout.fnmatch_lines(
        [
            f"*LLMCassetteMiss: No recorded response for this request in cassette {path} (record mode 'none')*",
            "*Request: POST http://127.0.0.1:*/v1/chat/completions model=gpt-4o-mini "
            "last user message: 'What is the capital of Spain?'",
            "*Closest recorded request: POST http://127.0.0.1:*/v1/chat/completions; differs in",
            "*body (recorded -> sent):",
            '*-*"content": "What is the capital of France?",',
            '*+*"content": "What is the capital of Spain?",',
            "*To record it (needs a real endpoint and key): pytest 'test_app.py::test_agent' --llm-record=new_episodes "
            "(or --llm-record=all to re-record the test from scratch), then commit the cassette: with CI set, the "
            "record mode defaults to 'none' (replay only; LLM_GUARD_RECORD or --llm-record overrides it).",
        ]
    )
    assert "Retrying" not in result.stdout.str()


def test_corrupt_cassette_fails_only_its_test(project: pytest.Pytester, monkeypatch) -> None:
    monkeypatch.setenv("CI", "true")
    broken = project.path / "cassettes" / "test_app" / "test_broken.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text("version: 1\ninteractions:\n- request: {method: POST\n  uri: [\n")
    project.makepyfile(test_app="def test_broken(llm_guard):\n    pass\n\ndef test_fine():\n    pass\n")
    result = project.runpytest()
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*LLMCassetteError: cannot parse cassette {broken} at line 4, column *"])
    assert "During handling" not in result.stdout.str(), "the message once, not twice"
    assert broken.read_text().endswith("uri: [\n")  # left as it was for the user to inspect


def test_opting_out_and_sharing_a_cassette(project: pytest.Pytester, server: FaultServer) -> None:
    project.makepyfile(
        test_app="""
        import pytest

        def ask(client, text):
            return client.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])

        @pytest.mark.llm_cassette(False)
        def test_live(llm_client):
            ask(llm_client, "live")

        @pytest.mark.llm_cassette("greetings")
        def test_hello(llm_client):
            ask(llm_client, "hello")

        @pytest.mark.llm_cassette("greetings")
        def test_bye(llm_client):
            ask(llm_client, "bye")
        """
    )
    result = project.runpytest("--llm-record=new_episodes")
    result.assert_outcomes(passed=3)
    files = sorted(p.name for p in (project.path / "cassettes" / "test_app").iterdir())
    assert files == ["greetings.yaml"]
    assert len(interactions(project.path / "cassettes" / "test_app" / "greetings.yaml")) == 2


def test_bad_cassette_marker_is_an_error_of_its_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("import pytest\n@pytest.mark.llm_cassette(3)\ndef test_x():\n    pass\n")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["pytest-llm-guard: @pytest.mark.llm_cassette on *::test_x takes a cassette name (str), False, or path=...*"]
    )


def test_xdist_workers_keep_each_others_interactions(project: pytest.Pytester) -> None:
    project.makepyfile(
        test_app="""
        import pytest

        @pytest.mark.llm_cassette("shared")
        @pytest.mark.parametrize("word", ["alpha", "beta", "gamma", "delta"])
        def test_word(llm_client, word):
            llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": word}])
        """
    )
    result = project.runpytest_subprocess("-n", "2", "--llm-record=new_episodes")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*4 guarded tests: 4 LLM calls, 4 attempts (4 recorded)*"])  # workers' stats
    recorded = interactions(project.path / "cassettes" / "test_app" / "shared.yaml")
    words = sorted(json.loads(i["request"]["body"])["messages"][0]["content"] for i in recorded)
    assert words == ["alpha", "beta", "delta", "gamma"]


KILLED_WRITER = """
import sys
from pathlib import Path
from vcr.request import Request
from pytest_llm_guard.cassettes import AtomicPersister, ReadableYaml
from pytest_llm_guard.scrub import Scrubber

path, n = Path(sys.argv[1]), 0
persister = AtomicPersister(Scrubber())
while True:
    n += 1
    requests = [Request("POST", f"http://x/v1/chat/completions", "x" * 200_000, {}) for _ in range(n % 5 + 1)]
    answer = {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": "y" * 200_000}}
    responses = [answer] * len(requests)
    persister.save_cassette(path, {"requests": requests, "responses": responses}, ReadableYaml)
    if n == 1:
        print("ready", flush=True)
"""


def test_a_killed_writer_never_leaves_half_a_cassette(tmp_path: Path) -> None:
    path = tmp_path / "cassettes" / "test.yaml"
    for delay in (0.0, 0.05, 0.13, 0.21):
        writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline() == "ready\n"
        if delay:
            try:
                writer.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        recorded = yaml.safe_load(path.read_text())["interactions"]
        assert 1 <= len(recorded) <= 5
        assert all(len(i["response"]["body"]["string"]) == 200_000 for i in recorded)
    AtomicPersister(Scrubber()).save_cassette(path, {"requests": [], "responses": []}, ReadableYaml)
    assert [p.name for p in path.parent.iterdir()] == ["test.yaml"]  # killed writers' temporary files are gone


SHARED = Path(__file__).resolve().parents[2] / "shared" / "cassettes"
OPENAI_RECORDINGS = sorted(p.name for p in SHARED.glob("*.yaml") if not p.name.startswith("llm_anthropic__"))
"""Real recordings of OpenAI traffic (the shared folder also holds Anthropic ones, replayed by their own SDK)."""

REPLAY_SHARED = """
import json, pathlib
import pytest

@pytest.mark.llm_cassette(path=r"{path}")
def test_replay(llm_client):
    results = []
    for body in json.loads(pathlib.Path("bodies.json").read_text()):
        if body.pop("_route") == "chat":
            answer = llm_client.chat.completions.create(**body)
            if body.get("stream"):
                chunks = list(answer)
                deltas = [c.choices[0].delta for c in chunks if c.choices]
                results.append({{
                    "text": "".join(d.content or "" for d in deltas),
                    "tools": [t.function.name for d in deltas for t in (d.tool_calls or []) if t.function.name],
                }})
            else:
                results.append({{"text": answer.choices[0].message.content, "tools": []}})
        else:
            answer = llm_client.responses.create(**body)
            if body.get("stream"):
                events = list(answer)
                done = [e for e in events if e.type == "response.completed"]
                results.append({{"text": done[0].response.output_text, "tools": []}})
            else:
                results.append({{"text": answer.output_text, "tools": []}})
    pathlib.Path("results.json").write_text(json.dumps(results))
"""


def recorded_answers(path: Path) -> tuple[list[dict], list[dict]]:
    """What each recorded interaction asked and answered, read straight from the file (not via the plugin)."""
    import gzip

    bodies, answers = [], []
    for interaction in yaml.safe_load(path.read_text())["interactions"]:
        request, response = interaction["request"], interaction["response"]
        body = json.loads(request["body"])
        body["_route"] = "chat" if request["uri"].endswith("/chat/completions") else "responses"
        bodies.append(body)
        raw = response["body"]["string"]
        headers = {k.lower(): v for k, v in response["headers"].items()}
        if "gzip" in headers.get("content-encoding", []):
            raw = gzip.decompress(raw)
        raw = raw.decode() if isinstance(raw, bytes) else raw
        if "text/event-stream" not in headers["content-type"][0]:
            payload = json.loads(raw)
            text = (
                payload["choices"][0]["message"]["content"]
                if "choices" in payload
                else "".join(c["text"] for o in payload["output"] if o["type"] == "message" for c in o["content"])
            )
            answers.append({"text": text, "tools": []})
            continue
        events = [
            json.loads(line[5:]) for line in raw.splitlines() if line.startswith("data:") and "[DONE]" not in line
        ]
        if body["_route"] == "responses":
            done = [e for e in events if e.get("type") == "response.completed"][0]["response"]
            text = "".join(c["text"] for o in done["output"] if o["type"] == "message" for c in o["content"])
            answers.append({"text": text, "tools": []})
            continue
        deltas = [e["choices"][0]["delta"] for e in events if e.get("choices")]
        answers.append(
            {
                "text": "".join(d.get("content") or "" for d in deltas),
                "tools": [
                    t["function"]["name"]
                    for d in deltas
                    for t in d.get("tool_calls") or []
                    if t["function"].get("name")
                ],
            }
        )
    return bodies, answers


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared real-world cassettes at {SHARED}")
@pytest.mark.parametrize("name", OPENAI_RECORDINGS)
def test_real_world_cassettes_replay_through_the_sdk(pytester: pytest.Pytester, monkeypatch, name: str) -> None:
    path = SHARED / name
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CI", "true")
    bodies, answers = recorded_answers(path)
    assert any(a["text"] or a["tools"] for a in answers)
    (pytester.path / "bodies.json").write_text(json.dumps(bodies))
    pytester.makepyfile(REPLAY_SHARED.format(path=path))
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert json.loads((pytester.path / "results.json").read_text()) == answers
    result.stdout.fnmatch_lines([f"*{len(bodies)} attempt{'s' if len(bodies) > 1 else ''} ({len(bodies)} replayed)*"])


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared real-world cassettes at {SHARED}")
def test_rerecording_a_real_world_cassette_scrubs_its_account_headers(project: pytest.Pytester, tmp_path) -> None:
    original = (SHARED / "llm__responses_basic_non_streaming.yaml").read_text()
    assert "set-cookie" in original and "openai-organization" in original
    copy = tmp_path / "legacy.yaml"
    copy.write_text(original)
    project.makepyfile(
        f"""
        import pytest
        @pytest.mark.llm_cassette(path=r"{copy}")
        def test_add_one(llm_client):
            llm_client.chat.completions.create(model="m", messages=[{{"role": "user", "content": "new"}}])
        """
    )
    project.runpytest("--llm-record=new_episodes").assert_outcomes(passed=1)
    rewritten = copy.read_text()
    assert len(yaml.safe_load(rewritten)["interactions"]) == 2
    for secret in ("set-cookie", "__cf_bm", "openai-organization", "openai-project", "!!binary"):
        assert secret not in rewritten
    assert '"output_text"' in rewritten or "pong" in rewritten  # the legacy answer is now readable text


def test_plain_vcrpy_works_inside_a_guarded_test_and_its_cassette_replays(
    project: pytest.Pytester, server: FaultServer, monkeypatch
) -> None:
    project.makepyfile(
        test_vcr="""
        import openai
        import pytest
        import vcr

        @pytest.mark.llm_cassette(False)
        def test_recorded_by_vcrpy(llm_guard):
            with vcr.use_cassette("plain.yaml", record_mode="once"):
                reply = openai.OpenAI().chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "from vcrpy"}]
                )
            assert reply.choices[0].message.content == "echo: from vcrpy"
            assert llm_guard.stats.attempts == 1  # vcrpy's stub sits under the guard's seam
        """
    )
    project.runpytest().assert_outcomes(passed=1)
    assert len(interactions(project.path / "plain.yaml")) == 1  # written by vcrpy, in its own format

    go_offline(server, monkeypatch)
    project.makepyfile(
        test_vcr="""
        import openai
        import pytest

        @pytest.mark.llm_cassette(path="plain.yaml")
        def test_replayed_by_the_plugin():
            reply = openai.OpenAI().chat.completions.create(
                model="m", messages=[{"role": "user", "content": "from vcrpy"}]
            )
            assert reply.choices[0].message.content == "echo: from vcrpy"
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*1 attempt (1 replayed)*"])


def test_a_miss_message_carries_no_secret(project: pytest.Pytester, server: FaultServer, monkeypatch) -> None:
    go_offline(server, monkeypatch)
    monkeypatch.setenv("TOKEN_IN_QUERY", "QUERYSECRET")  # from the environment: pytest prints source, not env
    monkeypatch.setenv("SOME_API_KEY", "sk-proj-" + "K3y" * 10)
    project.makepyfile(
        """
        import os
        import httpx2

        def test_x(llm_guard):
            key = os.environ["SOME_API_KEY"]
            httpx2.post(
                "http://127.0.0.1:9/v1/chat/completions?api-key=" + os.environ["TOKEN_IN_QUERY"],
                headers={"Authorization": "Bearer " + key},
                json={"model": "m", "messages": [{"role": "user", "content": "my key is " + key}]},
            )
        """
    )
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LLMCassetteMiss*", "*api-key=REDACTED*last user message: 'my key is REDACTED'*"])
    assert "QUERYSECRET" not in result.stdout.str() and "K3yK3y" not in result.stdout.str()


def test_a_cassette_that_cannot_be_written_warns_and_the_session_goes_on(project: pytest.Pytester) -> None:
    (project.path / "cassettes").write_text("a file where the cassette folder should be")
    project.makepyfile(
        test_app="""
        def test_one(llm_client):
            llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

        def test_two():
            pass
        """
    )
    result = project.runpytest()
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*pytest-llm-guard: cassette of test_app.py::test_one not saved*",
            "*1 guarded test: 1 LLM call, 1 attempt (1 live)*",  # not "1 recorded": nothing reached a file
        ]
    )

    strict = project.runpytest("-W", "error::pytest.PytestWarning")
    strict.assert_outcomes(passed=2, errors=1)  # the warning errors that test's teardown, not the session
    assert "INTERNALERROR" not in strict.stdout.str()


def test_parametrize_ids_that_sanitise_alike_record_separate_cassettes(project: pytest.Pytester, server) -> None:
    project.makepyfile(
        test_app="""
        import pytest

        @pytest.mark.parametrize("question", ["What is 2+2?", "What is 2*2?"])
        def test_q(llm_client, question):
            reply = llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": question}])
            assert reply.choices[0].message.content == f"echo: {question}"
        """
    )
    project.runpytest().assert_outcomes(passed=2)
    files = sorted((project.path / "cassettes" / "test_app").glob("*.yaml"))
    assert len(files) == 2
    asked = sorted(json.loads(interactions(f)[0]["request"]["body"])["messages"][0]["content"] for f in files)
    assert asked == ["What is 2*2?", "What is 2+2?"]


SHARED_CASSETTE_TESTS = """
import os

import pytest

@pytest.mark.llm_cassette("shared")
@pytest.mark.parametrize("n", range({tests}))
def test_ask(llm_client, n):
    for turn in range(3):
        prompt = f"test {{n}} turn {{turn}}{{os.environ.get('ROUND', '')}}"
        reply = llm_client.chat.completions.create(model="m", messages=[{{"role": "user", "content": prompt}}])
        assert reply.choices[0].message.content == f"echo: {{prompt}}"
"""


def answer_ids(path: Path) -> list[int]:
    """The fault server numbers its answers: which request of the server's life each recording is."""
    return [int(json.loads(i["response"]["body"]["string"])["id"].rsplit("-", 1)[1]) for i in interactions(path)]


BARRIER = """
import os
import time
from pathlib import Path

def pytest_collection_finish(session):
    '''Both sessions have started (and noted their start) before either runs a test.'''
    here = Path(__file__).parent
    (here / f"ready-{os.environ['SESSION_NAME']}").touch()
    deadline = time.monotonic() + 60
    while not ((here / "ready-A").exists() and (here / "ready-B").exists()):
        assert time.monotonic() < deadline, "the other session never started"
        time.sleep(0.01)
"""


def run_two_sessions(project: pytest.Pytester, *args: str) -> list[tuple[int, str]]:
    """Sessions A and B of the same project at once, started together (BARRIER)."""
    project.makeconftest(BARRIER)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=project.path,
            env={**os.environ, "SESSION_NAME": name},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("A", "B")
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    return [(run.returncode, output) for run, output in zip(runs, outputs, strict=True)]


def test_rerecording_under_xdist_replaces_every_old_answer(project: pytest.Pytester, monkeypatch) -> None:
    tests = 10
    project.makepyfile(test_app=SHARED_CASSETTE_TESTS.format(tests=tests))
    project.runpytest("--llm-record=all").assert_outcomes(passed=tests)
    shared = project.path / "cassettes" / "test_app" / "shared.yaml"
    assert sorted(answer_ids(shared)) == list(range(1, tests * 3 + 1))

    monkeypatch.setenv("ROUND", " again")  # new prompts: an answer that is the same is kept as it was
    result = project.runpytest_subprocess("-n", "2", "--llm-record=all")
    result.assert_outcomes(passed=tests)
    assert sorted(answer_ids(shared)) == list(range(tests * 3 + 1, 2 * tests * 3 + 1))  # all new, none old


def test_two_sessions_rerecording_at_once_keep_only_new_answers(project: pytest.Pytester, monkeypatch) -> None:
    tests = 6
    project.makepyfile(test_app=SHARED_CASSETTE_TESTS.format(tests=tests))
    project.runpytest("--llm-record=all").assert_outcomes(passed=tests)
    shared = project.path / "cassettes" / "test_app" / "shared.yaml"

    monkeypatch.setenv("ROUND", " again")
    for code, output in run_two_sessions(project, "--llm-record=all"):
        assert code == 0, output
    ids = answer_ids(shared)
    assert len(ids) == tests * 3 and min(ids) > tests * 3  # one answer per request, each from a new session


ONCE_TESTS = """
import os
import time
from pathlib import Path

import pytest

ME = os.environ["SESSION_NAME"]
SHARED = Path(__file__).parent / "cassettes" / "test_app" / "shared.yaml"

def test_b_starts_asking_once_a_has_saved():
    deadline = time.monotonic() + 60
    while ME == "B" and not SHARED.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)

@pytest.mark.llm_cassette("shared")
@pytest.mark.parametrize("n", range(3))
def test_ask(llm_client, n):
    llm_client.chat.completions.create(model="m", messages=[{"role": "user", "content": f"{ME} {n}"}])
"""


def test_once_judges_a_cassette_by_this_sessions_start(project: pytest.Pytester) -> None:
    """Session B started before A created the cassette: for B it did not exist, so B records into it."""
    project.makepyfile(test_app=ONCE_TESTS)
    for code, output in run_two_sessions(project, "--llm-record=once"):
        assert code == 0, output
    asked = sorted(
        json.loads(i["request"]["body"])["messages"][0]["content"]
        for i in interactions(project.path / "cassettes" / "test_app" / "shared.yaml")
    )
    assert asked == ["A 0", "A 1", "A 2", "B 0", "B 1", "B 2"]


ABANDONING_TESTS = """
import pytest

def ask(client, prompt):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], stream=True)

def test_breaks_out(llm_client):
    for chunk in ask(llm_client, "one two three four"):
        break  # the stream is left open: the SDK closes it only when it is garbage

def test_closes_early(llm_client):
    with ask(llm_client, "five six seven") as stream:
        next(iter(stream))

@pytest.mark.asyncio
async def test_breaks_out_async(async_llm_client):
    stream = await async_llm_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "eight nine"}], stream=True
    )
    async for chunk in stream:
        break

@pytest.mark.asyncio
async def test_closes_early_async(async_llm_client):
    stream = await async_llm_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "ten eleven"}], stream=True
    )
    async for chunk in stream:
        break
    await stream.close()
"""


def test_a_stream_the_caller_abandons_is_read_on_and_recorded_whole(
    project: pytest.Pytester, server: FaultServer, monkeypatch
) -> None:
    # Recording in a subprocess: the read-on's threads and the clients' sockets end with their session, so
    # none is left for this process's garbage collector to warn about during a later test. A replay opens
    # neither, so it runs in this process (without a second start-up, SDK imports included).
    project.makepyfile(test_app=ABANDONING_TESTS)
    recording = project.runpytest_subprocess("--llm-record=new_episodes")
    recording.assert_outcomes(passed=4)
    recording.stdout.fnmatch_lines(["*4 guarded tests: 4 LLM calls, 4 attempts (4 recorded)*"])
    for test in ("test_breaks_out", "test_closes_early", "test_breaks_out_async", "test_closes_early_async"):
        (recorded,) = interactions(cassette(project, "test_app", test))
        assert recorded["response"]["body"]["string"].endswith("data: [DONE]\n\n"), test

    go_offline(server, monkeypatch)
    result = project.runpytest()
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*4 guarded tests: 4 LLM calls, 4 attempts (4 replayed)*"])


def test_an_abandoned_stream_that_cannot_be_read_in_time_warns_and_its_miss_says_so(
    project: pytest.Pytester, server: FaultServer, monkeypatch
) -> None:
    # The answer begins within 0.5 s (the guard reads a stream ahead to its first content), its whole takes ~3 s.
    trickle = Fault.trickle(interval=0.05, chunk_size=40)
    server.plan(trickle, trickle)
    project.makepyfile(
        test_app="""
        import pytest

        @pytest.mark.llm_budget(call_timeout=1)
        def test_breaks_out(llm_client):
            stream = llm_client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "a b c d e f g h"}], stream=True
            )
            for chunk in stream:
                break

        @pytest.mark.asyncio
        @pytest.mark.llm_budget(call_timeout=1)
        async def test_breaks_out_async(async_llm_client):
            stream = await async_llm_client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "a b c d e f g h"}], stream=True
            )
            async for chunk in stream:
                break
        """
    )
    result = project.runpytest_subprocess("--llm-record=new_episodes")
    result.assert_outcomes(passed=2, warnings=2)  # the callers are unaffected
    for test in ("test_breaks_out", "test_breaks_out_async"):
        result.stdout.fnmatch_lines(
            [
                f"*{test} stopped reading an answer before its end (POST /v1/chat/completions), and the rest could "
                "not be read to record it: the rest did not arrive within the attempt's 1.00 s cap (call_timeout)*",
            ]
        )

    go_offline(server, monkeypatch)
    result = project.runpytest()  # a replay: in this process (see the test above)
    result.assert_outcomes(failed=2)
    for test in ("test_breaks_out", "test_breaks_out_async"):
        result.stdout.fnmatch_lines(
            ["*LLMCassetteMiss*", f"*Its recording was abandoned, not missed: test_app.py::{test} stopped*"]
        )


def test_only_a_registered_matcher_hook_makes_replay_scrub_the_request(pytester: pytest.Pytester) -> None:
    """The hook is handed the scrubbed request; without one, a replay looks the request up as sent
    and scrubs nothing (scrubbing is for what is written)."""
    check = """
        from pytest_llm_guard.protocol import CASSETTE

        def test_it(llm_guard, request):
            assert (request.node.stash[CASSETTE].cassette._matcher is None) is {expected}
    """
    pytester.makepyfile(
        **{"plain/test_plain": check.format(expected=True), "hooked/test_hooked": check.format(expected=False)}
    )
    pytester.makeconftest("")
    (pytester.path / "hooked" / "conftest.py").write_text(
        "def pytest_llm_cassette_match(request, recorded):\n    return None\n"
    )
    pytester.runpytest("--llm-record=none").assert_outcomes(passed=2)
