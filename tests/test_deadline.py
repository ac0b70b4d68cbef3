"""The deadline against hostile ground: the application's own signals, code that swallows the
deadline, fixtures, worker threads, sleeps outside any LLM call.

Part of the end-to-end set that measures wall-clock time (see ``test_end_to_end.py``): the
alarm is a real SIGALRM timer, so these tests run in real, scaled-down time, with bounds
generous for loaded machines."""

from __future__ import annotations

import signal
import time
import xml.etree.ElementTree as ET

import pytest

pytest_plugins = ["pytester"]


def _durations(junit) -> dict[str, float]:
    return {case.get("name"): float(case.get("time")) for case in ET.parse(junit).iter("testcase")}


def test_the_applications_timer_and_handler_share_the_alarm_and_are_handed_back() -> None:
    from pytest_llm_guard.alarm import Alarm

    if signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0):
        pytest.skip("a timer of the outer session is armed")
    fired: list[str] = []

    def watchdog(signum: int, frame: object) -> None:
        fired.append("watchdog")

    before = signal.signal(signal.SIGALRM, watchdog)
    signal.setitimer(signal.ITIMER_REAL, 30)  # armed before the test, like a conftest watchdog
    alarm = Alarm()
    alarm.at(time.monotonic() + 0.1, lambda: fired.append("ours"))
    alarm.start()
    try:
        assert signal.getsignal(signal.SIGALRM) is watchdog
        assert 29 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30
        assert signal.signal(signal.SIGALRM, lambda signum, frame: fired.append("app")) is watchdog
        assert signal.alarm(1) in (29, 30)  # replaces the watchdog's timer, as the real alarm() would
        assert signal.alarm(0) == 1
        assert signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2) == (0.0, 0.0)
        deadline = time.monotonic() + 10
        while fired.count("app") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fired[:3] == ["ours", "app", "app"]  # ours at 0.1 s; the app's interval timer at 0.2 s, 0.4 s
        signal.signal(signal.SIGALRM, watchdog)
        signal.setitimer(signal.ITIMER_REAL, 20)
    finally:
        alarm.stop()
    try:
        assert signal.getsignal(signal.SIGALRM) is watchdog
        assert 19 < signal.getitimer(signal.ITIMER_REAL)[0] <= 20  # handed back with the time it has left
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_an_application_alarm_does_not_disarm_the_deadline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import signal
        import time
        import pytest

        def with_its_own_timeout(work):
            '''An application helper that bounds its work with SIGALRM, as many do.'''
            def too_slow(signum, frame):
                raise TimeoutError("helper too slow")
            previous = signal.signal(signal.SIGALRM, too_slow)
            signal.alarm(10)
            try:
                return work()
            finally:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, previous)

        @pytest.mark.llm_budget(deadline=0.5)
        def test_helper_then_slow_code():
            assert with_its_own_timeout(lambda: 42) == 42
            time.sleep(30)

        @pytest.mark.llm_budget(deadline=30)
        def test_the_applications_timer_fires_at_its_time():
            fired = []
            previous = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(time.monotonic()))
            assert signal.getsignal(signal.SIGALRM) is not previous
            started = time.monotonic()
            assert signal.setitimer(signal.ITIMER_REAL, 0.2) == (0.0, 0.0)
            assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.2
            while not fired and time.monotonic() - started < 10:
                time.sleep(0.01)
            assert fired and fired[0] - started >= 0.19
            assert signal.alarm(0) == 0  # its timer is spent
            signal.signal(signal.SIGALRM, previous)
        """
    )
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(f"--junitxml={junit}")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*LLMBudgetExceeded: LLM deadline budget spent in *::test_helper_then_slow_code*"])
    assert _durations(junit)["test_helper_then_slow_code"] < 2.5  # the deadline + 2 s, not the sleep's 30


@pytest.mark.parametrize("fires", ["after", "during"])
def test_a_session_watchdog_survives_guarded_tests(pytester: pytest.Pytester, fires: str) -> None:
    pytester.makeconftest(
        """
        import signal

        def pytest_collection_finish(session):
            # the tests must end within 4 s (default action: the process ends); armed once they are
            # collected, so a slow start on a loaded machine does not spend it before the guarded tests
            signal.alarm(4)

        def pytest_runtest_logfinish(nodeid):
            with open("finished.txt", "a") as progress:
                progress.write(nodeid.split("::")[-1] + "\\n")
        """
    )
    pytester.makepyfile(
        f"""
        import time
        import pytest

        @pytest.mark.llm_budget(deadline=30)
        def test_guarded_and_quick():
            pass

        @pytest.mark.llm_budget(deadline=30)
        def test_guarded_and_slow():
            time.sleep({"30" if fires == "during" else "0"})

        def test_unguarded_and_slow():
            time.sleep(30)
        """
    )
    started = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:timeout", timeout=60)
    assert result.ret == -signal.SIGALRM
    assert time.monotonic() - started < 20  # 4 s and start-up, not 30
    finished = (pytester.path / "finished.txt").read_text().split()
    guarded = ["test_guarded_and_quick", "test_guarded_and_slow"]
    assert finished == (guarded[:1] if fires == "during" else guarded)  # it fired in, or after, the guarded tests


def test_a_test_that_swallows_the_deadline_and_the_backstop_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.llm_budget(deadline=0.3)
        def test_swallows_everything():
            started = time.monotonic()
            while time.monotonic() - started < 1.5:  # escapes only after the backstop at 0.6 s
                try:
                    time.sleep(0.05)
                except BaseException:
                    pass

        @pytest.mark.llm_budget(deadline=0.3)
        def test_catches_the_deadline_on_purpose():
            from pytest_llm_guard import LLMBudgetExceeded

            with pytest.raises(LLMBudgetExceeded):
                time.sleep(30)
        """
    )
    result = pytester.runpytest_subprocess("--llm-timeout-grace=0.3", "-p", "no:timeout")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*LLMBudgetExceeded: LLM deadline budget spent in *::test_swallows_everything: the test ran on * s "
            "past its deadline, beyond the backstop at timeout_grace=0.3 s after it (limit deadline=0.3 s*",
            "Its code swallowed LLMBudgetExceeded (an `except BaseException:`*",
            "FAILED *::test_swallows_everything*",
        ]
    )


def test_a_deadline_during_a_shared_fixtures_setup_names_it_and_does_not_poison_the_session(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.fixture(scope="session")
        def slow_resource():
            time.sleep(30)
            yield "ready"

        @pytest.mark.llm_budget(deadline=0.3)
        def test_first_user(slow_resource):
            pass

        @pytest.mark.llm_budget(deadline=30)
        def test_later_guarded_user(slow_resource):
            pass

        def test_later_unguarded_user(slow_resource):
            pass

        def test_unguarded_without_it():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:timeout")
    result.assert_outcomes(passed=1, errors=3)
    result.stdout.no_fnmatch_line("*AssertionError*")
    result.stdout.fnmatch_lines_random(
        [
            "*LLMBudgetExceeded: LLM deadline budget spent in *::test_first_user: the deadline passed while*",
            "*The deadline passed during the setup of fixture 'slow_resource' (session scope)*",
            "*pytest-llm-guard: the setup of fixture 'slow_resource' (session scope) was interrupted by "
            "the deadline of *::test_first_user*",
        ]
    )
    assert result.stdout.str().count("was interrupted by the deadline of") == 2


WORKER_PROJECT = """
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from pytest_llm_guard.fault import Fault

def ask_or_fall_back(base_url):
    '''The application's worker: an LLM call that falls back on a timeout.'''
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    except openai.APITimeoutError:
        return "fallback"
    return "answer"

@pytest.mark.llm_budget(deadline=30, call_timeout=0.5)
def test_worker_falls_back(llm_fault_server):
    llm_fault_server.plan(then=Fault.trickle(interval=0.05, headers=True))
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(ask_or_fall_back, llm_fault_server.base_url).result() == "fallback"
    assert time.monotonic() - started < 3

@pytest.mark.llm_budget(deadline=0.5)
def test_worker_trickled_past_the_deadline(llm_fault_server):
    llm_fault_server.plan(then=Fault.trickle(interval=0.05, headers=True))
    with ThreadPoolExecutor(1) as pool:
        pool.submit(ask_or_fall_back, llm_fault_server.base_url).result()
"""


def test_a_worker_threads_attempt_is_cut_in_that_thread(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(WORKER_PROJECT)
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(f"--junitxml={junit}", "--llm-timeout-grace=5", "-p", "no:timeout")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*LLMBudgetExceeded: LLM deadline budget spent in *::test_worker_trickled_past*"])
    result.stdout.no_fnmatch_line("*the code under test caught the deadline's*")
    assert _durations(junit)["test_worker_trickled_past_the_deadline"] < 2.5  # the deadline + 2 s, not + grace


def test_the_backstop_says_the_test_is_waiting_for_its_worker_thread(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time
        from concurrent.futures import ThreadPoolExecutor
        import pytest

        @pytest.mark.llm_budget(deadline=0.3)
        def test_waits_for_its_worker():
            with ThreadPoolExecutor(1, thread_name_prefix="slow-worker") as pool:
                pool.submit(time.sleep, 3).result()
        """
    )
    result = pytester.runpytest_subprocess("--llm-timeout-grace=0.3", "-p", "no:timeout")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*Timeout: *::test_waits_for_its_worker is still running 0.3 s after its LLM deadline (deadline=0.3 s): "
            "1 thread it started still runs (slow-worker_0), and its main thread is most likely waiting for it*"
        ]
    )
    result.stdout.no_fnmatch_line("*the code under test caught the deadline's*")


def test_an_async_tests_deadline_points_at_the_tests_own_lines(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import pytest

        async def backoff():
            await asyncio.sleep(30)

        @pytest.mark.llm_budget(deadline=0.3)
        async def test_waits_in_asyncio():
            await backoff()
        """
    )
    result = pytester.runpytest_subprocess("-o", "asyncio_mode=auto", "-p", "no:timeout")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "Where the test was:",
            "test_*.py:9: in test_waits_in_asyncio",
            "    await backoff()",
            "test_*.py:5: in backoff",
            "    await asyncio.sleep(30)",
        ]
    )
    result.stdout.no_fnmatch_line("*in _deadline_passed*")


def test_the_deadline_binds_code_outside_llm_calls_and_the_backstop_binds_code_that_swallows_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import asyncio
        import time
        import pytest

        @pytest.mark.llm_budget(deadline=0.3)
        def test_sleeps_in_its_own_backoff():
            time.sleep(30)

        @pytest.mark.llm_budget(deadline=0.3)
        async def test_sleeps_in_asyncio():
            await asyncio.sleep(30)

        @pytest.mark.llm_budget(deadline=0.3)
        def test_swallows_the_deadline():
            try:
                time.sleep(30)
            except BaseException:
                pass
            time.sleep(30)

        @pytest.mark.llm_budget(deadline=30)
        @pytest.mark.timeout(0.3, method="signal")  # joins the guard's alarm: one SIGALRM timer per process
        def test_own_timeout_is_kept():
            time.sleep(30)

        def test_later_tests_still_run():
            pass
        """
    )
    junit = pytester.path / "junit.xml"
    # The user's thread method would end the process; the guard's alarm does not.
    result = pytester.runpytest_subprocess(
        "--timeout-method=thread",
        "--timeout=20",
        "--llm-timeout-grace=0.3",
        f"--junitxml={junit}",
        "-o",
        "asyncio_mode=auto",
    )
    result.assert_outcomes(failed=4, passed=1)
    result.stdout.fnmatch_lines_random(
        [
            "LLMBudgetExceeded: LLM deadline budget spent in *::test_sleeps_in_its_own_backoff: "
            "the deadline passed while the test was running its own code, outside any LLM call*",
            "LLMBudgetExceeded: LLM deadline budget spent in *::test_sleeps_in_asyncio: *outside any LLM call*",
            "*Timeout: *::test_swallows_the_deadline is still running 0.3 s after its LLM deadline*",
            "*Timeout (>0.3s) from pytest-timeout.*",
        ]
    )
    assert junit.is_file()
    durations = _durations(junit)
    assert durations["test_sleeps_in_its_own_backoff"] < 1.3  # the deadline + 1 s
    assert durations["test_swallows_the_deadline"] < 1.6  # the deadline + grace + 1 s
    result.stdout.fnmatch_lines(["Where the test was:", "test_*.py:*: in test_sleeps_in_its_own_backoff"])
