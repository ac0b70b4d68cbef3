from __future__ import annotations

from typing import Any

import pytest

from pytest_llm_guard.fault import FaultServer


@pytest.fixture
def llm_client_options(llm_fault_server: FaultServer) -> dict[str, Any]:
    """Point the guarded fixture clients at the fault server; no real key, no internet."""
    return {"base_url": llm_fault_server.base_url, "api_key": "sk-test-not-a-real-key"}
