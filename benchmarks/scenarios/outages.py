"""S1, S2, S6: an endpoint that hangs, with a healthy backup or with everything down.

The naive loop, the SDK's defaults and tenacity keep no state between calls: against an
endpoint that hangs every call of theirs costs the same, so their suites are measured on
one call and multiplied (by the tests when a call raises and so ends its test, by every
call when the test goes on: a fallback answered, or the naive loop gave up with None).
Those single calls spend their time asleep on timeouts, so they run side by side.
"""

from __future__ import annotations

from functools import partial

from pytest_llm_guard.fault import Fault

from ..projects import ATTEMPT_TIMEOUT, scaled_guard
from ..runner import Context, Unit
from . import GUARD, IDEAL, NAIVE, SDK, TENACITY, Row, Scenario, Target, find
from .suites import healthy_unit, suite_files

BREAKER_FAILURES = 3


def hang(server) -> None:
    server.plan(then=Fault.hang())


def healthy(server) -> None:
    pass


def unavailable(server) -> None:
    server.plan(then=Fault.status(503))


def endpoints(context: Context) -> list[dict]:
    return [
        {"name": "primary", "base_url": context.urls["primary"], "api_key_env": "OPENAI_API_KEY", "priority": 0},
        {"name": "backup", "base_url": context.urls["backup"], "api_key_env": "OPENAI_API_KEY", "priority": 1},
    ]


def guard_files(tests: int, calls: int, context: Context) -> dict[str, str]:
    guard = scaled_guard(context.scale, breaker_failures=BREAKER_FAILURES)
    return suite_files(context, "llm_client", tests, calls, guard, endpoints(context))


def detect_cost(scale: float) -> float:
    """The least a suite can pay to learn that an endpoint hangs: threshold x attempt timeout."""
    return BREAKER_FAILURES * ATTEMPT_TIMEOUT * scale


def outage_units(scenario: str, backup_plan, tests: int, calls: int, scale: float, fallback_passes: bool) -> list[Unit]:
    servers = {"primary": hang, "backup": backup_plan}
    guard = Unit(scenario, GUARD, None, servers, partial(guard_files, tests, calls), plugins=("llm_guard",))
    ideal = Unit(
        scenario,
        IDEAL,
        None,
        {},
        lambda c: {},
        same_as=healthy_unit(tests, calls),
        note=f"the same suite against a healthy endpoint (raw client, plugin off) + {BREAKER_FAILURES} x "
        f"the {ATTEMPT_TIMEOUT:g} s attempt timeout ({detect_cost(scale):.2f} s)",
        offset=detect_cost(scale),
    )
    per_test = f"1 call measured, x {tests} tests (a call that raises ends its test)"
    per_call = f"1 call measured, x {tests * calls} calls (the fallback answers, the test goes on)"
    gives_up = f"1 call measured, x {tests * calls} calls (it returns None, the test goes on)"
    naive = Unit(
        scenario,
        NAIVE,
        None,
        {"primary": hang},
        lambda c: suite_files(c, "naive", 1, 1),
        extrapolate=tests * calls,
        wait_bound=True,
        note=gives_up,
    )
    sdk = Unit(
        scenario,
        SDK,
        None,
        servers,
        lambda c: suite_files(c, "sdk", 1, 1),
        extrapolate=tests * calls if fallback_passes else tests,
        wait_bound=True,
        note=per_call if fallback_passes else per_test,
    )
    tenacity = Unit(
        scenario,
        TENACITY,
        None,
        {"primary": hang},
        lambda c: suite_files(c, "tenacity", 1, 1),
        extrapolate=tests,
        wait_bound=True,
        note=per_test,
    )
    return [guard, ideal, naive, sdk, tenacity]


def outage_targets(min_speedup: float, max_over_ideal: float | None):
    def targets(rows: list[Row]) -> list[Target]:
        guard, naive, ideal = find(rows, GUARD), find(rows, NAIVE), find(rows, IDEAL)
        out = []
        if guard and naive:
            speedup = naive.median / guard.median
            out.append(
                Target(f">= {min_speedup:g}x faster than the naive loop", f"{speedup:.0f}x", speedup >= min_speedup)
            )
        if max_over_ideal is not None and guard and ideal:
            over = guard.median / ideal.median
            out.append(Target(f"<= {max_over_ideal:g}x the ideal", f"{over:.2f}x", over <= max_over_ideal))
        return out

    return targets


def sizes(quick: bool) -> tuple[int, int]:
    return (2, 2) if quick else (20, 3)


def s1(quick: bool, scale: float) -> Scenario:
    tests, calls = sizes(quick)
    return Scenario(
        "S1",
        "Primary hangs, backup healthy",
        f"{tests} tests x {calls} calls. The primary endpoint never answers; a backup answers at once. "
        f"Attempt timeout {ATTEMPT_TIMEOUT:g} s for everyone (the SDK defaults contender: the SDK's 600 s); "
        f"pytest-llm-guard: both endpoints configured, breaker_failures={BREAKER_FAILURES}, its other "
        "defaults (time scaled), a per-test deadline that does not fire. The ideal counts no half-open "
        "probe: the breaker's probe after its cooldown (30 s, scaled) goes beside a test's request to the "
        "backup, in the background, so it should cost no test its attempt timeout.",
        "session s",
        outage_units("S1", healthy, tests, calls, scale, fallback_passes=True),
        targets=outage_targets(100, 1.05),
    )


def s2(quick: bool, scale: float) -> Scenario:
    tests, calls = sizes(quick)
    return Scenario(
        "S2",
        "Every endpoint down (hang + 503)",
        f"{tests} tests x {calls} calls. The primary never answers, the backup answers 503 to everything. "
        "Same contenders and settings as S1; every test fails, the question is how soon.",
        "session s",
        outage_units("S2", unavailable, tests, calls, scale, fallback_passes=False),
        targets=outage_targets(100, None),
    )


NO_PROBE = GUARD + ", no probe"
LONG_COOLDOWN = 600.0  # real s: longer than the scaled session, so the breaker never half-opens in it


def guard_files_no_probe(tests: int, calls: int, context: Context) -> dict[str, str]:
    guard = scaled_guard(context.scale, breaker_failures=BREAKER_FAILURES)
    guard["breaker_cooldown"] = guard["breaker_cooldown_max"] = LONG_COOLDOWN * context.scale
    return suite_files(context, "llm_client", tests, calls, guard, endpoints(context))


def s6(quick: bool, scale: float) -> Scenario:
    tests, calls = sizes(quick)
    servers = {"primary": hang, "backup": healthy}
    units = [
        Unit(
            "S6",
            contender,
            None,
            servers,
            partial(files, tests, calls),
            plugins=("llm_guard",),
            args=("-n", "2"),
            note=note,
        )
        for contender, files, note in (
            (GUARD, guard_files, "S1's settings: the breaker half-opens after its cooldown (30 s, scaled)"),
            (NO_PROBE, guard_files_no_probe, f"breaker_cooldown {LONG_COOLDOWN:g} s: no probe within the session"),
        )
    ]
    limit = BREAKER_FAILURES + 1

    def targets(rows: list[Row]) -> list[Target]:
        out = []
        for contender in (NO_PROBE, GUARD):
            row = find(rows, contender)
            if row is None:
                continue
            worst = max(sample.requests["primary"] for sample in row.samples)
            goal = f"hanging endpoint gets <= {limit} requests (threshold + 1 in flight)"
            if contender == GUARD:
                goal = f"the same, half-open probes included ({contender})"
            out.append(Target(goal, f"{worst} (most of any repeat)", worst <= limit))
        return out

    return Scenario(
        "S6",
        "S1 under pytest -n 2",
        "S1's suite and settings under pytest-xdist with 2 workers: the breaker is shared through the "
        "plugin's session store, so the trip should be paid once, not once per worker. The requests column "
        "shows what reached the hanging endpoint. A second run keeps the breaker open for the whole session, "
        "separating the trip from the half-open probes that S1 (one process) makes too. Session time includes "
        "starting the workers.",
        "session s",
        units,
        targets=targets,
        ratios=False,
    )
