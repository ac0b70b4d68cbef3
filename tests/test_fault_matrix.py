"""Every fault meets every kind of client, and every cell ends by its deadline with the real cause named.

{hang, trickled headers, trickled body, reset, 401, 429 with a short and a long Retry-After, 503,
malformed 200, stream cut, the API's error event in a stream after its content began and before}
x {llm_client, async_llm_client, the application's own client in a naive ``except Exception``
loop with ``timeout=60``}, each under ``llm_budget(deadline, retries=2)``
with the deadline scaled down from 2 s to 0.6 s. Part of the end-to-end set that measures
wall-clock time (see ``test_end_to_end.py``): each cell must end by its deadline + 1 s, in real time.
"""

from __future__ import annotations

import asyncio
import time

import openai
import pytest
from fault_cells import FAULTS

from pytest_llm_guard import LLMBudgetExceeded
from pytest_llm_guard.fault import FaultServer

DEADLINE = 0.6
HELLO = [{"role": "user", "content": "hello"}]


# What each cell must end with: the exception, the budget it names (if a budget), a phrase of its message.
DEADLINE_CUT = (LLMBudgetExceeded, "deadline", "deadline passed")
GUARDED = {
    "hang": DEADLINE_CUT,
    "trickled headers": DEADLINE_CUT,
    "trickled body": (LLMBudgetExceeded, "deadline", "while the response was still arriving"),
    "reset": (LLMBudgetExceeded, "retries", "3 failed attempts"),
    "401": (openai.AuthenticationError, None, "refused the credentials"),
    "429, short Retry-After": (LLMBudgetExceeded, "retries", "HTTP 429"),
    "429, Retry-After beyond the deadline": (LLMBudgetExceeded, "deadline", "asked to wait 10 s"),
    "503": (LLMBudgetExceeded, "retries", "HTTP 503"),
    "malformed 200": (LLMBudgetExceeded, "retries", "malformed JSON in a 200 from"),
    "stream cut": (openai.APIConnectionError, None, "ended before its end event after 2 events"),
    "mid-stream error": (openai.APIConnectionError, None, "an error event after 2 events of a stream"),
    # Before the answer began: a failed attempt at the transport, retried like a 5xx.
    "error before content": (LLMBudgetExceeded, "retries", "an error event after 1 events of a stream"),
}
# The SDK's own retries (left on, as users leave them) sleep half a second and more between
# attempts: past this deadline, so the deadline ends those cells while the SDK sleeps.
SDK_BACKOFF = (LLMBudgetExceeded, "deadline", "outside any LLM call")
NAIVE_LOOP = {
    **GUARDED,
    "reset": SDK_BACKOFF,
    "401": (LLMBudgetExceeded, "retries", "refused the credentials"),  # the loop retries even a 401
    "503": SDK_BACKOFF,
    "malformed 200": SDK_BACKOFF,
    "stream cut": (LLMBudgetExceeded, "retries", "ended before its end event after 2 events"),
    "mid-stream error": (LLMBudgetExceeded, "retries", "an error event after 2 events of a stream"),
    "error before content": SDK_BACKOFF,
}
NAMED_IN_THE_ATTEMPTS = {"reset": "ReadError", "503": "HTTP 503", "malformed 200": "malformed JSON in a 200 from"}


def consume(result, stream: bool) -> None:
    if stream:
        for _ in result:
            pass


async def consume_async(result, stream: bool) -> None:
    if stream:
        async for _ in result:
            pass


def naive_loop(server: FaultServer, stream: bool) -> None:
    """The application's own loop: its own client, 5 attempts, timeout=60, backoff on any Exception."""
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-app-key")
    try:
        for attempt in range(5):
            try:
                consume(client.chat.completions.create(model="m", messages=HELLO, stream=stream, timeout=60), stream)
                return
            except Exception:
                time.sleep(0.01 * 2**attempt)
    finally:
        client.close()


def message_of(error: BaseException) -> str:
    return str(error) + "".join(f" | {a}" for a in [error.__cause__, error.__context__] if a is not None)


def check(info: pytest.ExceptionInfo[BaseException], expected: tuple, started: float, llm_guard) -> None:
    kind, budget, phrase = expected
    assert time.monotonic() - started < DEADLINE + 1.0, "every cell ends by its deadline + 1 s"
    assert isinstance(info.value, kind), f"{type(info.value).__name__}: {info.value}"
    if budget is not None:
        assert info.value.budget == budget, str(info.value)
    attempts = " ".join(f"{a.outcome} {a.error}" for a in llm_guard.events)
    assert phrase in message_of(info.value) + attempts, message_of(info.value) + attempts


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
def test_llm_client(fault: str, llm_client: openai.OpenAI, llm_fault_server: FaultServer, llm_guard) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault)
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        consume(
            llm_client.chat.completions.create(model="m", messages=HELLO, stream=cell.stream, timeout=60), cell.stream
        )
    check(info, GUARDED[fault], started, llm_guard)


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
async def test_async_llm_client(
    fault: str, async_llm_client: openai.AsyncOpenAI, llm_fault_server: FaultServer, llm_guard
) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault)
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        result = await async_llm_client.chat.completions.create(
            model="m", messages=HELLO, stream=cell.stream, timeout=60
        )
        await consume_async(result, cell.stream)
    check(info, GUARDED[fault], started, llm_guard)
    await asyncio.sleep(0)


@pytest.mark.llm_budget(deadline=DEADLINE, retries=2)
@pytest.mark.parametrize("fault", FAULTS)
def test_application_loop(fault: str, llm_fault_server: FaultServer, llm_guard) -> None:
    cell = FAULTS[fault]
    llm_fault_server.plan(then=cell.fault)
    started = time.monotonic()
    with pytest.raises(BaseException) as info:
        naive_loop(llm_fault_server, cell.stream)
    check(info, NAIVE_LOOP[fault], started, llm_guard)
    assert NAMED_IN_THE_ATTEMPTS.get(fault, "") in str(info.value)
