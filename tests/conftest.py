from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# pytester's in-process runs drop the modules first imported inside them, and the
# plugin imports httpx2, the SDKs, vcrpy and tenacity only when a guarded test starts:
# a later run would re-import fresh copies while objects of the old ones live on
# (httpx2 also imports httpcore2 lazily and maps its exceptions by class). Import
# them once, up front, as a suite that uses them at module level does anyway.
import anthropic  # noqa: F401
import httpcore2  # noqa: F401
import httpx2  # noqa: F401
import openai  # noqa: F401
import pytest
import tenacity  # noqa: F401
import vcr  # noqa: F401
from redis_server import RedisServer

import pytest_llm_guard.clients  # noqa: F401  (the client fixtures' TLS context, built once, outlives those runs)
import pytest_llm_guard.tls  # noqa: F401  (its class, which that context is an instance of)
from pytest_llm_guard import FakeClock
from pytest_llm_guard.fault import FaultServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fake_clock: the guarded test runs on a pytest_llm_guard.FakeClock")


def pytest_llm_guard_clock(item: pytest.Item) -> FakeClock | None:
    """Tests of timing logic run on a fake clock: waits take no time and are exact (``llm_guard.clock``)."""
    return FakeClock() if item.get_closest_marker("fake_clock") else None


@pytest.fixture(autouse=True)
def _inner_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester projects run live against the fault server, on CI too (where the default is replay-only).

    Tests about cassettes choose their own record mode.
    """
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("LLM_GUARD_RECORD", "off")


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> Iterator[pytest.Pytester]:
    """pytester, with the pytest-asyncio setting whose absence makes every inner run warn.

    An in-process run leaves its projects' objects (clients, their pools and sockets) in this
    process; some sit in reference cycles that only the garbage collector frees, at a moment of
    its choosing, inside whichever later test happens to run then. Collecting them as this test
    ends keeps any warning they raise with the test that made them.
    """
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    yield pytester
    gc.collect()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[FaultServer, FaultServer]]:
    """Two fault servers, a primary endpoint and its backup, for routing and failover; each test starts them afresh."""
    with FaultServer() as primary, FaultServer() as backup:
        yield primary, backup


@pytest.fixture
def primary(servers: tuple[FaultServer, FaultServer]) -> Iterator[FaultServer]:
    servers[0].reset()
    yield servers[0]
    servers[0].reset()


@pytest.fixture
def backup(servers: tuple[FaultServer, FaultServer]) -> Iterator[FaultServer]:
    servers[1].reset()
    yield servers[1]
    servers[1].reset()


@pytest.fixture
def llm_client_options(llm_fault_server: FaultServer) -> dict[str, Any]:
    """Point the guarded fixture clients at the fault server; no real key, no internet."""
    return {"base_url": llm_fault_server.base_url, "api_key": "sk-test-not-a-real-key"}


@pytest.fixture(scope="module")
def module_server() -> Iterator[FaultServer]:
    """One fault server per test module: starting one per test would cost more than the tests."""
    with FaultServer() as server:
        yield server


@pytest.fixture
def server(module_server: FaultServer) -> Iterator[FaultServer]:
    """The module's fault server with no plan and no counts left by the test before."""
    module_server.reset()
    yield module_server
    module_server.reset()  # frees anything a failed test left hanging


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server per test module (skips, naming why, where none is installed)."""
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_server(module_redis: RedisServer) -> RedisServer:
    """The module's redis-server with no keys left by the test before."""
    module_redis.flush()
    return module_redis


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may pause or kill."""
    with RedisServer(tmp_path) as server:
        yield server
