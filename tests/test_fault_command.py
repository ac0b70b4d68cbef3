"""The fault server on its own: faults chosen by a path prefix, and the command that serves them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from pkgutil import resolve_name

import httpx2
import openai
import pytest

from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.fault.prefixes import PREFIXES, parse, split

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

USER = [{"role": "user", "content": "hello"}]
ROOT = Path(__file__).resolve().parents[1]


def client(base_url: str, **options: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0, **options)


@pytest.mark.parametrize(
    ("segment", "fault"),
    [
        ("hang", Fault.hang()),
        ("delay-1.5", Fault.ok(1.5)),
        ("s429", Fault.status(429)),
        ("s503-2", Fault.status(503)),
        ("flaky-3", Fault.status(503)),
        ("trickle", Fault.trickle(0.05, headers=True)),
        ("trickle-0.2", Fault.trickle(0.2, headers=True)),
        ("trickle-body", Fault.trickle(0.05)),
        ("trickle-body-1", Fault.trickle(1.0)),
        ("malformed", Fault.malformed()),
        ("cut", Fault.cut_stream(1)),
        ("cut-3", Fault.cut_stream(3)),
        ("reset", Fault.reset(0)),
        ("reset-10", Fault.reset(10)),
        ("stall-first", Fault.stall(0)),
        ("stall-after-3", Fault.stall(3)),
        ("paced-25", Fault.paced(0.025)),
    ],
)
def test_each_prefix_names_the_fault_of_the_same_name(segment: str, fault: Fault) -> None:
    prefix = parse(segment)
    assert prefix is not None and prefix.fault == fault


def test_a_counting_status_prefix_fails_the_first_n_requests_only() -> None:
    prefix = parse("s429-2")
    assert prefix is not None
    assert [prefix.fault_for(n) for n in (1, 2, 3, 4)] == [Fault.status(429)] * 2 + [Fault.ok()] * 2


def test_a_flaky_prefix_fails_one_request_in_n_starting_with_the_first() -> None:
    prefix = parse("flaky-3")
    assert prefix is not None
    assert [prefix.fault_for(n) == Fault.status(503) for n in range(1, 8)] == [1, 0, 0, 1, 0, 0, 1]


def test_a_limit_prefix_answers_429_beyond_n_requests_in_the_same_second(server: FaultServer) -> None:
    prefix = parse("limit-2")
    assert prefix is not None and prefix.fault == Fault.status(429, message=prefix.fault.message)
    assert [prefix.fault_for(9, in_second=k) for k in (1, 2, 3)] == [Fault.ok(), Fault.ok(), prefix.fault]
    for _ in range(3):  # two requests land in the same second at the first or second try
        server.reset()
        answers = [httpx2.get(server.url + "/limit-1/v1/models") for _ in range(2)]
        if answers[1].status_code != 200:
            break
    assert [a.status_code for a in answers] == [200, 429]
    assert "1 requests per second" in answers[1].json()["error"]["message"]


def test_a_path_without_a_prefix_is_left_whole() -> None:
    assert split("/v1/chat/completions") == (None, "/v1/chat/completions")
    assert split("/openai/models") == (None, "/openai/models")
    prefix, rest = split("/hang/openai/deployments/d/chat/completions")
    assert prefix == parse("hang") and rest == "/openai/deployments/d/chat/completions"


def test_a_prefix_out_of_range_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="HTTP error code from 400 to 599, got 200"):
        parse("s200")
    with pytest.raises(ValueError, match=r"/flaky-0: N must be an int >= 1"):
        parse("flaky-0")


def test_the_base_url_prefix_chooses_the_fault_and_the_plan_is_left_for_others(server: FaultServer) -> None:
    server.plan(Fault.status(503))
    with client(server.url + "/s429-2/v1") as prefixed:
        for _ in range(2):
            with pytest.raises(openai.RateLimitError):
                prefixed.chat.completions.create(model="m", messages=USER)
        answer = prefixed.chat.completions.create(model="m", messages=USER)
        assert answer.choices[0].message.content == "echo: hello"
    with client(server.base_url) as planned, pytest.raises(openai.InternalServerError):
        planned.chat.completions.create(model="m", messages=USER)
    assert [r.path for r in server.requests] == ["/s429-2/v1/chat/completions"] * 3 + ["/v1/chat/completions"]
    assert [r.route for r in server.requests] == ["chat"] * 4


def test_reset_starts_the_prefix_counts_again(server: FaultServer) -> None:
    with client(server.url + "/s500-1/v1") as prefixed:
        with pytest.raises(openai.InternalServerError):
            prefixed.models.list()
        server.reset()
        with pytest.raises(openai.InternalServerError):
            prefixed.models.list()
        assert prefixed.models.list().data


def test_a_hang_by_prefix_meets_the_clients_timeout(server: FaultServer) -> None:
    with client(server.url + "/hang/v1", timeout=0.3) as hanging, pytest.raises(openai.APITimeoutError):
        hanging.chat.completions.create(model="m", messages=USER)


def test_a_mistyped_prefix_is_a_404_that_says_what_was_meant(server: FaultServer) -> None:
    answer = httpx2.get(server.url + "/hangg/v1/models")
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == (
        "Unknown route GET /hangg/v1/models: /hangg is not a fault prefix; did you mean 'hang'? the prefixes are "
        "hang, delay-S, sCODE[-N], flaky-N, limit-N, trickle[-S], trickle-body[-S], stall-first, stall-after-N, "
        "paced-M, malformed, cut[-N], stream-error[-N], reset[-N]"
    )


def command(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest_llm_guard.fault", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_the_command_serves_prefixed_faults_and_stops_cleanly_on_ctrl_c() -> None:
    process = command("--host", "127.0.0.1", "--port", "0")
    try:
        assert process.stdout is not None
        greeting = [process.stdout.readline() for _ in range(5)]
        assert greeting[0].startswith("fault server listening on http://127.0.0.1:"), greeting
        url = greeting[0].split()[-1]
        assert f"openai:     base_url={url}/v1   a hang: {url}/hang/v1" in greeting[1]
        assert f"anthropic:  base_url={url}   a hang: {url}/hang (the SDK adds /v1)" in greeting[2]
        assert greeting[4] == "Ctrl-C stops it.\n"
        with client(url + "/s429-1/v1") as prefixed:
            with pytest.raises(openai.RateLimitError):
                prefixed.chat.completions.create(model="m", messages=USER)
            answer = prefixed.chat.completions.create(model="m", messages=USER)
            assert answer.choices[0].message.content == "echo: hello"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0
    assert err == ""
    *requests, last = out.splitlines()
    assert [line.split(" ", 1)[1] for line in requests] == [  # without the time of day
        "POST /s429-1/v1/chat/completions: HTTP 429",
        "POST /s429-1/v1/chat/completions: ok",
    ]
    assert last == "fault server stopped"


def test_the_commands_help_lists_every_prefix_and_route() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_llm_guard.fault", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    for form in PREFIXES:
        assert f"  /{form.syntax} " in done.stdout
    for route in ("POST /v1/chat/completions", "GET  /v1/models", "POST /openai/deployments/{deployment}/embeddings"):
        assert route in done.stdout


def test_the_command_on_a_taken_port_says_so_and_exits_2(server: FaultServer) -> None:
    port = server.url.rsplit(":", 1)[1]
    done = subprocess.run(
        [sys.executable, "-m", "pytest_llm_guard.fault", "--port", port], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr == (
        f"fault server: cannot listen on 127.0.0.1:{port} ([Errno 98] Address already in use); "
        "choose another --port (0: any free one)\n"
    )


def test_the_console_script_runs_the_same_command() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    from pytest_llm_guard.fault.command import main

    assert resolve_name(scripts["llm-fault-server"]) is main


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_the_command_refuses_a_port_out_of_range_with_a_usage_error(port: str) -> None:
    from pytest_llm_guard.fault.command import main

    with pytest.raises(SystemExit) as exited:
        main(["--port", port])
    assert exited.value.code == 2


def test_a_port_out_of_range_is_named_with_the_range(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_llm_guard.fault.command import main

    with pytest.raises(SystemExit):
        main(["--port", "99999"])
    assert capsys.readouterr().err.endswith(
        "error: argument --port: '99999' is not a port: a whole number from 0 to 65535 (0: any free one)\n"
    )


def test_an_address_the_machine_does_not_have_points_at_host_too(capsys: pytest.CaptureFixture[str]) -> None:
    from pytest_llm_guard.fault.command import main

    assert main(["--host", "192.0.2.1", "--port", "0"]) == 2
    assert capsys.readouterr().err == (
        "fault server: cannot listen on 192.0.2.1:0 ([Errno 99] Cannot assign requested address); "
        "choose another --port (0: any free one), or another --host\n"
    )


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        (Fault.trickle(headers=True), "trickle, head included"),
        (Fault.trickle(), "trickle, body only"),
        (Fault.cut_stream(1), "stream cut"),
        (Fault.stream_error(1), "stream error event"),
        (Fault.malformed(), "malformed 200"),
        (Fault.hang(), "hang"),
        (Fault.status(503), "HTTP 503"),
    ],
)
def test_each_request_line_names_its_fault_in_words(
    fault: Fault, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_llm_guard.fault.command import _said
    from pytest_llm_guard.fault.server import RecordedRequest

    _said(RecordedRequest("POST", "/x/v1/chat/completions", {}, None, b"", 0.0, fault))
    assert capsys.readouterr().out.split(" ", 1)[1] == f"POST /x/v1/chat/completions: {said}\n"


def test_stream_timing_prefixes_pace_and_stall_a_stream(server: FaultServer) -> None:
    with client(server.url + "/paced-20/v1") as paced:
        started = time.monotonic()
        events = list(paced.chat.completions.create(model="m", messages=USER, stream=True))
        assert time.monotonic() - started >= 0.02 * len(events)  # each event 20 ms after the one before
    received: list[object] = []
    with client(server.url + "/stall-after-2/v1", timeout=0.2) as stalling, pytest.raises(openai.APITimeoutError):
        for event in stalling.chat.completions.create(model="m", messages=USER, stream=True):
            received.append(event)
    assert len(received) == 2  # the head and two events, then nothing
