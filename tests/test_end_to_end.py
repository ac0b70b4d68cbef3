"""The end-to-end set: guarded clients against the fault server, in real (scaled) time.

These tests measure wall-clock time on purpose: a hang or a trickle is cut by real
socket timeouts and the real alarm, which no fake clock can stand in for. Time is
measured from the guard's own start (``llm_guard.budget.elapsed()``), so fixture
set-up on a loaded machine does not shift it, and the bounds are the promise users
read in the README: a test ends by its deadline + 1 s. Timing logic (backoff,
Retry-After, caps, cooldowns) is tested on a fake clock elsewhere; the other modules
that measure real time are the alarm's (``test_deadline.py``), the fault server's own
(``test_fault.py``, ``test_fault_anthropic.py``) and the fault matrix (``test_fault_matrix.py``).
"""

from __future__ import annotations

import openai
import pytest

from pytest_llm_guard import LLMBudgetExceeded
from pytest_llm_guard.fault import Fault, FaultServer

HELLO = [{"role": "user", "content": "hello there"}]
DEADLINE = 1.0


def ask(client: openai.OpenAI, **kwargs):
    return client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, **kwargs)


@pytest.mark.llm_budget(deadline=DEADLINE)
def test_hang_is_cut_at_the_deadline(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(then=Fault.hang())
    with pytest.raises(LLMBudgetExceeded) as info:
        ask(llm_client, timeout=60)
    assert DEADLINE <= llm_guard.budget.elapsed() < DEADLINE + 1.0
    assert info.value.budget == "deadline"
    assert "ReadTimeout" in str(info.value)


@pytest.mark.llm_budget(deadline=DEADLINE)
def test_trickling_body_is_cut_at_the_deadline(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    # ~300 bytes at one byte per 50 ms would take 15 s; the SDK's read timeout never fires.
    llm_fault_server.plan(then=Fault.trickle(interval=0.05, chunk_size=1))
    with pytest.raises(LLMBudgetExceeded, match="while the response was still arriving"):
        ask(llm_client, timeout=60)
    assert llm_guard.budget.elapsed() < DEADLINE + 1.0


@pytest.mark.llm_budget(deadline=DEADLINE)
async def test_async_hang_is_cut_at_the_deadline(async_llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(then=Fault.hang())
    with pytest.raises(LLMBudgetExceeded):
        await async_llm_client.chat.completions.create(model="m", messages=HELLO, timeout=60)
    assert llm_guard.budget.elapsed() < DEADLINE + 1.0


def test_retry_after_is_waited_out_in_real_time(llm_client, llm_fault_server: FaultServer, llm_guard) -> None:
    llm_fault_server.plan(Fault.status(429, retry_after=0.3))
    ask(llm_client)
    first, second = llm_fault_server.requests
    assert second.time - first.time >= 0.3, "the server saw the pause it asked for"
    assert llm_guard.stats.backoff_seconds >= 0.3
