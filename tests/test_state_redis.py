"""The Redis store against a real redis-server (``redis_server.py``): what it shares, and that losing it
costs at most one timeout and one warning. ``test_state.py`` runs the store contract on it too."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from redis_server import RedisServer
from test_routing import calls_file, project

from pytest_llm_guard.config import Settings
from pytest_llm_guard.errors import LLMGuardConfigError
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.state import MemoryStore
from pytest_llm_guard.state_redis import FallbackStore, RedisStore, masked, open_store, run_id

PASSWORD = "s3cret:p@ss"
QUOTED = "s3cret%3Ap%40ss"  # as a URL writes it


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        (f"redis://:{QUOTED}@cache:6380/2", "redis://:***@cache:6380/2"),
        (f"rediss://worker:{QUOTED}@[::1]:6379", "rediss://worker:***@[::1]:6379"),
    ],
)
def test_masked_urls_show_no_password(url: str, shown: str) -> None:
    assert masked(url) == shown


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ("own", None)),
        ({"GITHUB_RUN_ID": "42", "GITHUB_RUN_ATTEMPT": "2"}, ("42-2", "GITHUB_RUN_ID")),
        ({"CI_PIPELINE_ID": "7", "LLM_GUARD_RUN_ID": "mine"}, ("mine", "LLM_GUARD_RUN_ID")),
        ({"BUILDKITE_BUILD_ID": "b"}, ("b", "BUILDKITE_BUILD_ID")),
        ({"CIRCLE_WORKFLOW_ID": " "}, ("own", None)),
    ],
)
def test_run_id_is_the_first_shared_one_set(environ: dict[str, str], expected: tuple[str, str | None]) -> None:
    assert run_id(environ, "own") == expected


def test_keys_carry_the_run_and_expire_and_cassette_keys_are_the_sessions_own(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, prefix="proj:run1:", session_prefix="proj:run1:me:")
    store.update("endpoint:primary", lambda record: record.update(open=True))
    store.update("cassette:/x.yaml", lambda record: record.update(existed=True))
    store.update("session", lambda record: None)  # changes nothing: writes nothing
    store.close()
    client = redis_server.client()
    assert sorted(client.keys("*")) == ["proj:run1:endpoint:primary", "proj:run1:me:cassette:/x.yaml"]
    assert 0 < client.ttl("proj:run1:endpoint:primary") <= 24 * 3600
    client.close()


_INCREMENTS = """
import sys, threading
from pytest_llm_guard.state_redis import RedisStore

store = RedisStore(sys.argv[1], prefix="race:", session_prefix="race:me:")
def bump(record):
    record["n"] = record.get("n", 0) + 1
def work():
    for _ in range(int(sys.argv[2])):
        store.update("counter", bump)
threads = [threading.Thread(target=work) for _ in range(3)]
for thread in threads: thread.start()
for thread in threads: thread.join()
store.close()
"""


def test_concurrent_updates_from_processes_and_threads_lose_nothing(redis_server: RedisServer) -> None:
    workers = [
        subprocess.Popen([sys.executable, "-c", _INCREMENTS, redis_server.url, "50"], stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err.decode()
    store = RedisStore(redis_server.url, prefix="race:", session_prefix="race:me:")
    assert store.get("counter") == {"n": 300}  # 2 processes x 3 threads x 50
    store.close()


def test_a_hung_server_costs_one_timeout_then_the_local_store_answers(own_redis: RedisServer) -> None:
    warned: list[str] = []
    remote = RedisStore(own_redis.url, prefix="p:", session_prefix="p:me:", timeout=0.2)
    store = FallbackStore(remote, MemoryStore, warned.append)
    store.update("session", lambda record: record.update(calls=1))
    own_redis.pause()  # holds its port, answers nothing
    started = time.monotonic()
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.update("k", lambda r: r.setdefault("n", 1))))
               for _ in range(3)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    took = time.monotonic() - started
    assert results == [1, 1, 1] and store.get("k") == {"n": 1} and not store.remote
    assert took < 5, f"three calls on a hung server took {took:.1f} s: each may wait 0.2 s once"
    assert len(warned) == 1 and f"lost the shared state store {own_redis.url}" in warned[0]
    store.close()


def test_losing_redis_where_warnings_are_errors_fails_nothing_and_logs_it(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    def warn(message: str) -> None:
        raise pytest.PytestConfigWarning(message)  # what -W error makes of the warning

    store = FallbackStore(RedisStore(own_redis.url, prefix="p:", session_prefix="p:me:"), MemoryStore, warn)
    own_redis.kill()
    assert store.update("k", lambda record: record.setdefault("n", 1)) == 1
    assert [r.getMessage() for r in caplog.records if "lost the shared state store" in r.getMessage()]
    store.close()


def _redis_project(pytester: pytest.Pytester, *servers: FaultServer, url: str, options: str = "") -> None:
    project(pytester, *servers, options=f'state_url = "{url}"\nstate_namespace = "t"\n{options}')


def test_two_sessions_of_one_run_share_a_breaker_trip_and_other_runs_do_not(
    pytester: pytest.Pytester,
    primary: FaultServer,
    backup: FaultServer,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    primary.plan(then=Fault.status(500))
    _redis_project(pytester, primary, backup, url=redis_server.url)
    pytester.makepyfile(test_app=calls_file(tests=6, calls=1))
    monkeypatch.setenv("LLM_GUARD_RUN_ID", "run-1")
    first = pytester.runpytest_subprocess("-n", "2", "-p", "xdist")  # each worker on Redis itself
    first.assert_outcomes(passed=6)
    assert 3 <= len(primary.requests) <= 4, "three failures trip it, for both workers"
    primary.reset()
    primary.plan(then=Fault.status(500))

    second = pytester.runpytest()  # another process, the same run: the breaker is already open
    second.assert_outcomes(passed=6)
    assert primary.requests == []
    second.stdout.fnmatch_lines(["endpoint primary (*) model gpt-test: tripped 1x, now breaker open*"])

    monkeypatch.setenv("LLM_GUARD_RUN_ID", "run-2")
    pytester.runpytest().assert_outcomes(passed=6)
    assert len(primary.requests) >= 1, "another run finds out for itself"


KILLS_REDIS = """
import os, signal

def test_before(llm_client):
    llm_client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])

def test_redis_dies():
    os.kill(int(os.environ["REDIS_PID"]), signal.SIGKILL)

@pytest.mark.parametrize("n", range(3))
def test_after(llm_client, n):
    llm_client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
"""


def test_redis_killed_mid_session_warns_once_and_the_session_finishes(
    pytester: pytest.Pytester, backup: FaultServer, own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _redis_project(pytester, backup, url=own_redis.url, options="max_calls = 100")
    pytester.makepyfile(test_app="import pytest\n" + KILLS_REDIS)
    assert own_redis.process is not None
    monkeypatch.setenv("REDIS_PID", str(own_redis.process.pid))
    result = pytester.runpytest("-p", "no:xdist")  # as where xdist is not installed
    result.assert_outcomes(passed=5)
    output = result.stdout.str()
    assert output.count(f"lost the shared state store {own_redis.url}") == 1, output
    assert len(backup.requests) == 4


@pytest.mark.parametrize("fallback", ["fail", "local"])
def test_unreachable_at_start_is_a_usage_error_or_a_warning(pytester: pytest.Pytester, fallback: str) -> None:
    closed = RedisServer(pytester.path)  # a free port nobody listens on
    url = f"redis://:{QUOTED}@127.0.0.1:{closed.port}/0"
    pytester.makepyprojecttoml(f'[tool.pytest_llm_guard]\nstate_url = "{url}"\nstate_fallback = "{fallback}"\n')
    pytester.makepyfile(test_app="def test_runs(llm_guard):\n    pass\n")
    result = pytester.runpytest()
    output = result.stdout.str() + result.stderr.str()
    shown = f"cannot reach the shared state store redis://:***@127.0.0.1:{closed.port}/0"
    if fallback == "fail":
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        assert shown in output and 'state_fallback = "local"' in output
    else:
        result.assert_outcomes(passed=1)
        assert shown in output and "(state_fallback = local)" in output
    assert PASSWORD not in output and QUOTED not in output


def test_a_wrong_password_is_a_clear_error_that_shows_no_password(pytester: pytest.Pytester, tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="the-right-one") as guarded:
        pytester.makepyprojecttoml(f'[tool.pytest_llm_guard]\nstate_url = "{guarded.url}"\nstate_fallback = "local"\n')
        pytester.makepyfile(test_app="def test_runs(llm_guard):\n    pass\n")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("REDIS_PASSWORD", PASSWORD)
            result = pytester.runpytest()
    output = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"the Redis server {guarded.url}" in output and "refused REDIS_PASSWORD" in output
    assert "Put the right password in the URL or in REDIS_PASSWORD" in output
    assert PASSWORD not in output


def test_a_run_shares_its_session_budgets_and_a_session_alone_leaves_no_keys(
    pytester: pytest.Pytester, backup: FaultServer, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _redis_project(pytester, backup, url=redis_server.url, options="max_calls = 3")
    pytester.makepyfile(test_app=calls_file(tests=2, calls=1))
    for variable in ("GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILDKITE_BUILD_ID", "CIRCLE_WORKFLOW_ID"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LLM_GUARD_RUN_ID", "shards")
    first = pytester.runpytest()
    first.assert_outcomes(passed=2)
    assert "unknown environment variable" not in first.stdout.str()
    second = pytester.runpytest("-rs")
    second.assert_outcomes(passed=1, skipped=1)  # the run's third call was its last
    second.stdout.fnmatch_lines(["*max_calls=3 LLM calls *, summed over every session of this run (shared through*"])
    keys = redis_server.client().keys("*")
    assert sorted(k for k in keys if not k.endswith(":cassette-clock")) == [
        "t:shards:endpoint:primary",
        "t:shards:session",
    ]
    assert len([k for k in keys if k.endswith(":cassette-clock")]) == 2, "each session keeps its own start"

    monkeypatch.delenv("LLM_GUARD_RUN_ID")
    pytester.runpytest().assert_outcomes(passed=2)  # on its own id: a budget of its own
    assert sorted(redis_server.client().keys("*")) == sorted(keys), "and it deleted its keys at its end"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"http://:{QUOTED}@cache:6379", "http://:***@cache:6379 is not a Redis URL; write redis://host:6379/0"),
        (f"redis://:{QUOTED}@cache:63a9", "redis://:***@cache:? is not a Redis URL; write redis://host:6379/0"),
        (
            f"redis://:{QUOTED}@cache:6379",
            "needs redis-py, which is not installed; pip install 'pytest-llm-guard[redis]'",
        ),
    ],
)
def test_a_wrong_url_or_a_missing_redis_py_is_a_usage_error(
    url: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "not installed" in said:
        monkeypatch.setitem(sys.modules, "redis", None)  # import redis fails, as where it is not installed
    with pytest.raises(LLMGuardConfigError) as raised:
        open_store(Settings(state_url=url), MemoryStore, root_name="app", workerinput=None, environ={}, warn=print)
    assert said in str(raised.value)
    assert QUOTED not in str(raised.value) and PASSWORD not in str(raised.value)
