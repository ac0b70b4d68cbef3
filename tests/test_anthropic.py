"""The Anthropic Messages API, guarded like OpenAI's: the fault matrix, usage, real recordings, both providers.

End to end against the fault server (``/v1/messages``) in real, scaled-down time: every
cell of {hang, trickled headers, trickled body, reset, 401, 429 with a short and a long
Retry-After, 529, 503, malformed 200, stream cut, mid-stream error event} x
{anthropic_client, async_anthropic_client, the application's own ``anthropic.Anthropic``
in a naive ``except Exception`` loop with ``timeout=60``} runs under
``llm_budget(deadline=0.6, retries=2)`` and must end by deadline + 1 s with the right
exception and a message naming the real cause (the only wall-clock assertion here).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from pytest_llm_guard import LLMBudgetExceeded
from pytest_llm_guard.fault import Fault, FaultServer
from pytest_llm_guard.transport import LLMStreamCut, LLMStreamError

pytest_plugins = ["pytester"]

DEADLINE = 0.6
MODEL = "claude-test"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def anthropic_client_options(llm_fault_server: FaultServer) -> dict[str, Any]:
    return {"base_url": llm_fault_server.url, "api_key": "sk-ant-test"}


@dataclass(frozen=True)
class Cell:
    fault: Fault
    stream: bool = False


FAULTS = {
    "hang": Cell(Fault.hang()),
    "trickled headers": Cell(Fault.trickle(interval=0.05, headers=True)),
    "trickled body": Cell(Fault.trickle(interval=0.05)),
    "reset": Cell(Fault.reset()),
    "401": Cell(Fault.status(401)),
    "429, short Retry-After": Cell(Fault.status(429, retry_after=0.05)),
    "429, Retry-After beyond the deadline": Cell(Fault.status(429, retry_after=10)),
    "529": Cell(Fault.status(529)),
    "503": Cell(Fault.status(503)),
    "malformed 200": Cell(Fault.malformed()),
    "stream cut": Cell(Fault.cut_stream(after_chunks=2), stream=True),
    "mid-stream error": Cell(Fault.stream_error(after_chunks=2), stream=True),
}

# What each cell must end with: the exception, the budget it names (if a budget), a phrase of its message.
DEADLINE_CUT = (LLMBudgetExceeded, "deadline", "deadline passed")
GUARDED = {
    "hang": DEADLINE_CUT,
    "trickled headers": DEADLINE_CUT,
    "trickled body": (LLMBudgetExceeded, "deadline", "while the response was still arriving"),
    "reset": (LLMBudgetExceeded, "retries", "3 failed attempts"),
    "401": (anthropic.AuthenticationError, None, "refused the credentials"),
    "429, short Retry-After": (LLMBudgetExceeded, "retries", "HTTP 429"),
    "429, Retry-After beyond the deadline": (LLMBudgetExceeded, "deadline", "asked to wait 10 s"),
    "529": (LLMBudgetExceeded, "retries", "HTTP 529"),
    "503": (LLMBudgetExceeded, "retries", "HTTP 503"),
    "malformed 200": (LLMBudgetExceeded, "retries", "malformed JSON in a 200 from"),
    # The anthropic SDK hands a stream's transport errors to the caller as they are.
    "stream cut": (LLMStreamCut, None, "ended before its end event after 2 events"),
    "mid-stream error": (LLMStreamError, None, "overloaded_error"),
}
# The SDK's own retries (left on, as users leave them) sleep half a second and more between
# attempts: past this deadline, so the deadline ends those cells while the SDK sleeps.
SDK_BACKOFF = (LLMBudgetExceeded, "deadline", "outside any LLM call")
NAIVE_LOOP = {
    **GUARDED,
    "reset": SDK_BACKOFF,
    "401": (LLMBudgetExceeded, "retries", "refused the credentials"),  # the loop retries even a 401
    "529": SDK_BACKOFF,
    "503": SDK_BACKOFF,
    "malformed 200": SDK_BACKOFF,
    "stream cut": (LLMBudgetExceeded, "retries", "ended before its end event after 2 events"),
    "mid-stream error": (LLMBudgetExceeded, "retries", "overloaded_error"),
}


def create(client: Any, stream: bool) -> Any:
    return client.messages.create(model=MODEL, max_tokens=50, messages=HELLO, stream=stream, timeout=60)


def consume(result: Any, stream: bool) -> None:
    if stream:
        for _ in result:
            pass


async def consume_async(result: Any, stream: bool) -> None:
    if stream:
        async for _ in result:
            pass


def naive_loop(server: FaultServer, stream: bool) -> None:
    """The application's own loop: its own client, 5 attempts, timeout=60, backoff on any Exception."""
    client = anthropic.Anthropic(base_url=server.url, api_key="sk-ant-app-key")
    try:
        for attempt in range(5):
            try:
                consume(create(client, stream), stream)
                return
            except Exception:
                time.sleep(0.01 * 2**attempt)
    finally:
        client.close()


def message_of(error: BaseException) -> str:
    return str(error) + "".join(f" | {a}" for a in [error.__cause__, error.__context__] if a is not None)


def check(info: pytest.ExceptionInfo[BaseException], expected: tuple, started: float, llm_guard: Any) -> None:
    kind, budget, phrase = expected
    assert time.monotonic() - started < DEADLINE + 1.0, "every cell ends by its deadline + 1 s"
    assert isinstance(info.value, kind), f"{type(info.value).__name__}: {info.value}"
    if budget is not None:
        assert info.value.budget == budget, str(info.value)
    attempts = " ".join(f"{a.outcome} {a.error}" for a in llm_guard.events)
    assert phrase in message_of(info.value) + attempts, message_of(info.value) + attempts
    assert {a.dialect for a in llm_guard.events} == {"anthropic"}


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
def test_anthropic_client(
    fault: str, anthropic_client: anthropic.Anthropic, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault, route="messages")
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        consume(create(anthropic_client, cell.stream), cell.stream)
    check(info, GUARDED[fault], started, llm_guard)


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
async def test_async_anthropic_client(
    fault: str, async_anthropic_client: anthropic.AsyncAnthropic, llm_fault_server: FaultServer, llm_guard: Any
) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault, route="messages")
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        await consume_async(await create(async_anthropic_client, cell.stream), cell.stream)
    check(info, GUARDED[fault], started, llm_guard)
    await asyncio.sleep(0)


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
def test_application_loop(fault: str, llm_fault_server: FaultServer, llm_guard: Any) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault, route="messages")
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        naive_loop(llm_fault_server, cell.stream)
    check(info, NAIVE_LOOP[fault], started, llm_guard)
