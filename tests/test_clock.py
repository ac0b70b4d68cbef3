"""The one clock, and the deadline arithmetic that reads it: exact, on a fake clock, in microseconds."""

from __future__ import annotations

import asyncio
import math

import pytest

from pytest_llm_guard import FakeClock, LLMBudgetExceeded
from pytest_llm_guard.budget import Budget
from pytest_llm_guard.config import Settings
from pytest_llm_guard.guard import Guard
from pytest_llm_guard.ledger import Ledger


def budget(clock: FakeClock, **settings: object) -> Budget:
    return Budget(Settings(**settings), Ledger("test_clock"), clock=clock)


def test_a_fake_clock_moves_only_when_slept_through_or_advanced() -> None:
    clock = FakeClock(start=10.0, wall=1_000.0)
    assert (clock.now(), clock.wall()) == (10.0, 1_000.0)
    clock.sleep(1.5)
    clock.advance(0.5)
    asyncio.run(clock.async_sleep(2.0))
    assert (clock.now(), clock.wall()) == (14.0, 1_004.0)
    assert clock.slept == [1.5, 2.0]


def test_time_left_counts_down_from_the_start_on_the_clock() -> None:
    clock = FakeClock()
    spent = budget(clock, deadline=10.0)
    clock.advance(4.0)
    assert (spent.elapsed(), spent.remaining()) == (4.0, 6.0)
    assert budget(clock, deadline=None).remaining() == math.inf


@pytest.mark.parametrize(
    ("call_timeout", "after", "cap"),
    [
        (3.0, 0.0, (3.0, "call_timeout")),  # the call timeout fits in the time left
        (3.0, 8.0, (2.0, "deadline")),  # less time left than the call timeout
        (None, 8.0, (2.0, "deadline")),
        (3.0, 12.0, (0.0, "deadline")),  # past the deadline: nothing, never negative
    ],
)
def test_an_attempts_cap_is_the_tighter_of_call_timeout_and_time_left(
    call_timeout: float | None, after: float, cap: tuple[float, str]
) -> None:
    clock = FakeClock()
    spent = budget(clock, deadline=10.0, call_timeout=call_timeout)
    clock.advance(after)
    assert spent.attempt_cap() == cap


def test_no_attempt_starts_once_the_deadline_has_passed() -> None:
    clock = FakeClock()
    spent = budget(clock, deadline=10.0)
    clock.advance(9.999)
    assert spent.refuse_start(new_call=True) is None
    clock.advance(0.001)
    assert spent.refuse_start(new_call=True) == ("deadline", "no time left to start another attempt")


def test_the_deadline_and_the_backstop_are_scheduled_on_the_guards_clock() -> None:
    class Schedule:
        def __init__(self) -> None:
            self.times: list[float] = []

        def at(self, when: float, action: object) -> int:
            self.times.append(when)
            return len(self.times)

    clock = FakeClock(start=50.0)
    guard = Guard(Settings(deadline=2.0, timeout_grace=0.5), test_id="test_clock", clock=clock)
    schedule = Schedule()
    guard.arm(schedule)  # type: ignore[arg-type]
    assert schedule.times == [52.0, 52.5]


def test_the_guard_sleeps_on_its_clock_and_its_budget_reads_it() -> None:
    clock = FakeClock()
    guard = Guard(Settings(deadline=5.0), test_id="test_clock", clock=clock)
    guard.sleep(2.0)
    asyncio.run(guard.async_sleep(1.0))
    assert clock.slept == [2.0, 1.0]
    assert guard.remaining() == 2.0
    clock.advance(2.0)
    with pytest.raises(LLMBudgetExceeded, match="the deadline passed while the response was still arriving"):
        guard.budget.check_progress()
