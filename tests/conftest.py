from __future__ import annotations

from typing import Any

# httpx2 imports httpcore2 lazily, at the first request, and maps its exceptions by
# class. pytester's in-process runs drop modules first imported inside them, so a
# later re-import would bring new classes that map to nothing: import it up front.
import httpcore2  # noqa: F401
import pytest

from pytest_llm_guard.fault import FaultServer


@pytest.fixture(autouse=True)
def _inner_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytester projects run live against the fault server, on CI too (where the default is replay-only).

    Tests about cassettes choose their own record mode.
    """
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("LLM_GUARD_RECORD", "off")


@pytest.fixture
def pytester(pytester: pytest.Pytester) -> pytest.Pytester:
    """pytester, with the pytest-asyncio setting whose absence makes every inner run warn."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    return pytester


@pytest.fixture
def llm_client_options(llm_fault_server: FaultServer) -> dict[str, Any]:
    """Point the guarded fixture clients at the fault server; no real key, no internet."""
    return {"base_url": llm_fault_server.base_url, "api_key": "sk-test-not-a-real-key"}
