"""How this example's cassettes were recorded, with no API key: against the fault server.

    SUPPORT_BOT_RECORD=1 pytest --llm-record=all

A real project records against its real endpoint instead (OPENAI_API_KEY set,
``pytest --llm-record=once``) and commits the cassettes; both replay the same way.
"""

from __future__ import annotations

import os

import pytest

from pytest_llm_guard.fault import FaultServer


@pytest.fixture(scope="session", autouse=True)
def _record_against_the_fault_server() -> None:
    if not os.environ.get("SUPPORT_BOT_RECORD"):
        yield
        return
    with FaultServer() as server:

        def task(word: str):
            return lambda body: word in body["messages"][0]["content"]

        server.reply(json={"category": "other"}, when=task("Classify"))
        server.reply(json={"category": "billing"}, when=lambda body: task("Classify")(body) and "charged" in str(body))
        server.reply(json={"category": "bug"}, when=lambda body: task("Classify")(body) and "crash" in str(body))
        server.reply(
            "Sorry about the double charge! We have started a refund; it will reach your card in 3-5 days.",
            when=task("reply"),
        )
        with pytest.MonkeyPatch.context() as env:
            env.setenv("OPENAI_BASE_URL", server.base_url)
            env.setenv("OPENAI_API_KEY", "sk-recording-against-the-fault-server")
            yield
