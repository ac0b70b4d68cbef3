"""A guarded 'test' in this process whose pipeline routes through a given router: the harness of
the routing and rate-limit tests, which play a session's router against fault servers on a FakeClock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from pytest_llm_guard import pipeline, transport
from pytest_llm_guard.config import Settings
from pytest_llm_guard.guard import Guard
from pytest_llm_guard.routing import Router, RouterLayer


@contextmanager
def routed_test(
    router: Router, base_url: str, test_id: str, clock: Any, **settings: Any
) -> Iterator[tuple[Guard, openai.OpenAI]]:
    """The guard and a fixture-like client of one test; the client is closed and the guard let go after it."""
    guard = Guard(Settings(**{"deadline": 10.0, **settings}), test_id=test_id, clock=clock)
    guard.pipeline = pipeline.build(routing=RouterLayer(router, guard.settings))
    client = openai.OpenAI(base_url=base_url, api_key="sk-test")
    transport.activate(guard)
    try:
        yield guard, guard.fixture_client(client)
    finally:
        transport.deactivate(guard)
        client.close()
