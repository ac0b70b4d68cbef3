"""Secrets never reach a cassette, a message or a log: what is known when written, and anything shaped like a key."""

from __future__ import annotations

import pytest
import yaml

from pytest_llm_guard.fault import FaultServer
from pytest_llm_guard.scrub import Scrubber, find_shapes

pytest_plugins = ["pytester"]

PLAIN_KEY = "Zq7vT3kP9mW2xY8nQ4rS6tU"  # no credential shape: only knowing it scrubs it
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


NEAR_MISSES = {
    "English after bearer": "the ring bearer responsibilities are few",
    "hyphenated phrase after Bearer": "Bearer authentication-and-authorization explained",
    "camelCase after bearer": "bearer getAuthorizationHeaderValue()",
    "a template in code": 'headers = {"Authorization": f"Bearer {token}"}',
    "an environment reference in code": "Authorization: Bearer ${OPENAI_API_KEY}",
    "a library name": "an sk-learn-compatible-estimator-interface",
    "base64 of ordinary text": "aGVsbG8gd29ybGQsIHRoaXMgaXMgYW4gb3JkaW5hcnkgc2VudGVuY2UgZm9yIHlvdQ==",
    "base64 of a PNG header": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
    "AAAABJRU5ErkJggg==",
    "a UUID": "request 123e4567-e89b-12d3-a456-426614174000 failed",
    "a chat completion id": '"id": "chatcmpl-9aBcDeFgHiJkLmNoPqRsTuV"',
}
REAL_SHAPED = {
    "a bearer header": ("Authorization: Bearer abc12345xyz", "Authorization: Bearer REDACTED"),
    "a JSON authorization field": (
        '"authorization": "Bearer Zq7vT3kP9mW2xY8nQ4rS6tU"',
        '"authorization": "Bearer REDACTED"',
    ),
    "a hex token after bearer": ("bearer 5f4dcc3b5aa765d61d8327deb882cf99 ok", "bearer REDACTED ok"),
    "a mixed-case token after bearer": ("Bearer XkQpRmWvTzYbNsLdAq", "Bearer REDACTED"),
    "a JWT after bearer": ("Bearer " + SHAPED["JSON Web Token"] + " x", "Bearer REDACTED x"),
    "a basic credential": ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic REDACTED"),
}


@pytest.mark.parametrize("text", NEAR_MISSES.values(), ids=NEAR_MISSES.keys())
def test_words_code_and_ordinary_data_are_not_credentials(text: str) -> None:
    assert list(find_shapes(text)) == []
    assert Scrubber(environ={}).text(text) == text


@pytest.mark.parametrize(("text", "scrubbed"), REAL_SHAPED.values(), ids=REAL_SHAPED.keys())
def test_real_shaped_credentials_are_redacted(text: str, scrubbed: str) -> None:
    assert Scrubber(environ={}).text(text) == scrubbed


def test_english_about_bearers_replays_as_recorded(
    pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pytester.makepyfile(
        """
        import openai
        import pytest

        @pytest.mark.parametrize("prompt", [
            "list the ring bearer responsibilities",
            "what is Bearer authentication-and-authorization",
            "plain",
        ])
        def test_echo(prompt):
            reply = openai.OpenAI().chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
            assert reply.choices[0].message.content == "echo: " + prompt
        """
    )
    pytester.runpytest("--llm-guard-all=true", "--llm-record=once").assert_outcomes(passed=3)
    written = "".join(p.read_text() for p in (pytester.path / "cassettes").rglob("*.yaml"))
    assert "REDACTED" not in written
    pytester.runpytest("--llm-guard-all=true", "--llm-record=none").assert_outcomes(passed=3)


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
    result = pytester.runpytest("--llm-guard-all=true", "--llm-record=once")
    result.assert_outcomes(passed=1, warnings=1)  # the answer echoed the key: its replay will differ
    result.stdout.fnmatch_lines(["*(interaction 1 response body: key known to the test x1)*"])
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
            "*credential-shaped strings were redacted from cassette *test_x.yaml before it was written "
            "(interaction 1 response body: AWS access key x1); a replay returns REDACTED where an answer held one*"
        ]
    )
    written = "".join(p.read_text() for p in (pytester.path / "cassettes").rglob("*.yaml"))
    assert SHAPED["AWS access key"] not in written and "your AWS key is REDACTED" in written


def test_library_logs_carry_no_cookies_or_keys_in_any_form(
    pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llm_guard.fault import Fault

    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", PLAIN_KEY)
    server.plan(then=Fault.ok(headers={"Set-Cookie": "__cf_bm=SERVERCOOKIE; path=/; HttpOnly"}))
    pytester.makepyfile(
        """
        import logging
        import os
        import httpx2
        import openai

        LOGGERS = ["httpcore2.http11", "httpx2", "vcr.cassette", "openai._base_client", "anthropic", "pytest_llm_guard"]

        def test_x():
            for n, name in enumerate(LOGGERS):
                log = logging.getLogger(name)
                # bytes pairs in the record's args, str pairs in its message, any case, and vcrpy's dict form
                log.debug("pairs %s", [(b"Set-Cookie", b"a=CRUMB%dA" % n), (b"authorization", b"Bearer KEY%dA" % n)])
                log.debug(f"pairs [('SET-COOKIE', 'b=CRUMB{n}B'), ('Proxy-Authorization', 'Basic KEY{n}B')]")
                headers = {"set-cookie": [f"c=CRUMB{n}C"], "X-Api-Key": f"KEY{n}C"}
                log.info("Appending request %s and response %s", "req", headers)
                try:
                    key = os.environ["OPENAI_API_KEY"]
                    raise RuntimeError(f"Incorrect API key: {key}, ('set-cookie', 'd=CRUMB{n}D')")
                except RuntimeError:
                    log.debug("pairs in a traceback", exc_info=True)
            httpx2.post(os.environ["OPENAI_BASE_URL"] + "/chat/completions?key=QUERYKEYVALUE", json={"model": "m"})
            openai.OpenAI().chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        """
    )
    junit, log_file = pytester.path / "junit.xml", pytester.path / "debug.log"
    result = pytester.runpytest(
        "--llm-guard-all=true",
        "--llm-record=once",
        "--log-level=DEBUG",
        f"--log-file={log_file}",
        "--log-file-level=DEBUG",
        f"--junitxml={junit}",
        "-o",
        "junit_logging=all",
        "-rA",
    )
    result.assert_outcomes(passed=1)
    for output in (result.stdout.str(), junit.read_text(), log_file.read_text()):
        assert "(b'Set-Cookie', b'REDACTED')" in output  # httpcore2's own trace of the answer's headers
        assert "/chat/completions?key=REDACTED" in output and output.count("pairs") == 18
        assert "RuntimeError: Incorrect API key: REDACTED, ('set-cookie', 'REDACTED')" in output
        for secret in ("SERVERCOOKIE", "CRUMB", *(f"KEY{n}" for n in range(6)), "QUERYKEYVALUE", PLAIN_KEY):
            assert secret not in output


def test_failures_the_guard_did_not_raise_carry_no_key(
    pytester: pytest.Pytester, server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llm_guard.fault import Fault

    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", PLAIN_KEY)
    server.plan(
        Fault.status(400, message="bad request"),
        Fault.status(401, message=f"Incorrect API key provided: {PLAIN_KEY}"),
    )
    pytester.makepyfile(
        """
        import os
        import openai

        def ask(api_key, content):  # its arguments are printed in the traceback
            with openai.OpenAI(api_key=api_key) as client:  # closed: no socket left for a later test's GC
                return client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}])

        def test_1_sdk_frame_arguments_on_a_400():
            ask(os.environ["OPENAI_API_KEY"], "hi")

        def test_2_server_echoing_the_key_in_a_401():
            ask(os.environ["OPENAI_API_KEY"], "hi")

        def test_3_assertion_diff_of_an_echo():
            reply = ask(os.environ["OPENAI_API_KEY"], "my key is " + os.environ["OPENAI_API_KEY"])
            print("got", reply.choices[0].message.content)
            assert reply.choices[0].message.content == "something else"
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest(
        "--llm-guard-all=true", "--tb=long", "-l", "-rA", f"--junitxml={junit}", "-o", "junit_logging=all"
    )
    result.assert_outcomes(failed=3)
    output = result.stdout.str()
    assert "api_key = 'REDACTED'" in output  # the frame argument, scrubbed
    assert "Incorrect API key provided: REDACTED" in output and "+ echo: my key is REDACTED" in output
    assert "got echo: my key is REDACTED" in output  # captured output
    assert PLAIN_KEY not in output and PLAIN_KEY not in junit.read_text()
    assert junit.read_text().count("<failure") == 3


def test_audit_reports_file_line_and_kind_and_fails(pytester: pytest.Pytester) -> None:
    folder = pytester.path / "tests" / "cassettes" / "test_app"
    folder.mkdir(parents=True)
    (folder / "clean.yaml").write_text("interactions:\n- request:\n    body: hello\n")
    (folder / "leaky.yaml").write_text(
        f"interactions:\n- request:\n    body: |\n      hello\n      key {SHAPED['OpenAI API key']}\n"
    )
    (pytester.path / ".venv").mkdir()
    (pytester.path / ".venv" / "x.yaml").write_text(f"interactions: {SHAPED['AWS access key']}\n")  # not the project's
    result = pytester.runpytest("--llm-audit")
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        [
            "tests/cassettes/test_app/leaky.yaml:5: OpenAI API key (32 characters, sha256 ????????)",
            "pytest-llm-guard audit: 2 cassettes under *, 1 credential-shaped string found",
        ]
    )
    assert "collected" not in result.stdout.str()  # no test ran
    _assert_no_part_shown(result.stdout.str(), SHAPED["OpenAI API key"])


GZIP_KEY = "sk-proj-" + "Qm7" * 12
FOLDED_TOKEN = "Zq7vT3kP9mW2xY8nQ4rS6tUaB1cD2eF3"
AZURE_KEY = "0123456789abcdef" * 2


def _assert_no_part_shown(output: str, secret: str) -> None:
    """Not the secret, nor any 4 characters of it (the old report showed the first 4)."""
    assert not [secret[i : i + 4] for i in range(len(secret) - 3) if secret[i : i + 4] in output]


def test_audit_sees_gzip_bodies_folded_strings_and_json_cassettes(pytester: pytest.Pytester) -> None:
    import base64
    import gzip
    import json
    import textwrap

    body = base64.encodebytes(gzip.compress(json.dumps({"echo": f"key {GZIP_KEY}"}).encode())).decode()
    (pytester.path / "gzipped.yaml").write_text(
        "interactions:\n- response:\n    body:\n      string: !!binary |\n" + textwrap.indent(body, "        ")
    )
    (pytester.path / "folded.yaml").write_text(  # as PyYAML folds a long double-quoted string at spaces
        'interactions:\n- request:\n    body: "send Authorization: Bearer\\\n'
        f'      \\ {FOLDED_TOKEN} and \\"api-key\\":\\\n      \\ {AZURE_KEY}"\n'
    )
    (pytester.path / "plain.json").write_text(
        json.dumps({"interactions": [{"request": {"body": f"x {SHAPED['Anthropic API key']}"}}]})
    )
    result = pytester.runpytest("--llm-audit")
    assert result.ret == 1
    result.stdout.fnmatch_lines_random(
        [
            "gzipped.yaml:5: OpenAI API key (44 characters, sha256 *)",
            "folded.yaml:3: Authorization credential (32 characters, sha256 *)",
            "folded.yaml:3: Azure api-key (32 characters, sha256 *)",
            "plain.json: Anthropic API key (37 characters, sha256 *)",
        ]
    )
    for secret in (GZIP_KEY, FOLDED_TOKEN, AZURE_KEY, SHAPED["Anthropic API key"]):
        _assert_no_part_shown(result.stdout.str(), secret.removeprefix("sk-proj-").removeprefix("sk-ant-api03-"))


def test_audit_of_clean_cassettes_exits_zero(pytester: pytest.Pytester) -> None:
    (pytester.path / "c.yaml").write_text("interactions: []\n")
    near_misses = "\n".join(f"      {text}" for text in NEAR_MISSES.values())
    (pytester.path / "words.yaml").write_text(f"interactions:\n- request:\n    body: |\n{near_misses}\n")
    result = pytester.runpytest("--llm-audit")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["pytest-llm-guard audit: 2 cassettes under *, no credential-shaped strings found"])


def test_written_cassettes_hold_no_key_in_folded_strings_or_compressed_bodies(tmp_path) -> None:  # noqa: ANN001
    import gzip

    from vcr.request import Request

    from pytest_llm_guard.audit import findings
    from pytest_llm_guard.cassettes.vcr_bridge import AtomicPersister, ReadableYaml

    # One line with a tab (so YAML writes it double-quoted) long enough to be folded around the token.
    prompt = "\t" + "word " * 20 + "Authorization: Bearer " + FOLDED_TOKEN + " " + "more " * 20
    request = Request("POST", "http://127.0.0.1/v1/chat/completions", prompt, {})
    answer = gzip.compress(f'{{"echo": "key {GZIP_KEY}"}}'.encode())  # kept compressed: no content-encoding
    response = {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": answer}}
    path = tmp_path / "c.yaml"
    AtomicPersister(Scrubber(environ={})).save_cassette(
        path, {"requests": [request], "responses": [response]}, ReadableYaml
    )
    loaded = yaml.safe_load(path.read_text())["interactions"][0]
    assert FOLDED_TOKEN not in loaded["request"]["body"] and "Bearer REDACTED" in loaded["request"]["body"]
    assert gzip.decompress(loaded["response"]["body"]["string"]) == b'{"echo": "key REDACTED"}'
    assert findings(path, tmp_path) == []


def test_a_header_name_inside_a_word_is_not_a_header_in_log_text() -> None:
    scrubber = Scrubber(environ={})
    ours = "tests/test_cookie.py::test_cookie: attempt http://127.0.0.1:1/v1/chat/completions model=m: ok"
    assert scrubber.log_text(ours) == ours
    assert scrubber.log_text("my_api-key: value") == "my_api-key: value"
    assert scrubber.log_text("cookie: __cf_bm=abc123, set-cookie: x=1") == "cookie: 'REDACTED', set-cookie: 'REDACTED'"
    headers = "{'x-api-key': ['k1'], 'Cookie': 'a=b'}"
    assert scrubber.log_text(headers) == "{'x-api-key': 'REDACTED', 'Cookie': 'REDACTED'}"
