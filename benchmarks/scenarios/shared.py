"""S10: two sessions of one run (two CI shards) against a hanging endpoint, sharing a Redis store or not.

On one Redis (``state_url``, the same ``LLM_GUARD_RUN_ID``), the second session finds the
breaker the first tripped and sends the hanging endpoint nothing; on two local stores each
session pays the discovery again. The redis-server is the benchmark's own (the test suite's
helper, ``tests/redis_server.py``), started on first use and killed when the benchmark ends;
without redis-server the units are reported as not run.
"""

from __future__ import annotations

import atexit
import tempfile
import threading
from functools import partial
from pathlib import Path
from typing import Any

from ..runner import Context, Unit
from . import GUARD, Row, Scenario, Target, find
from .outages import BREAKER_FAILURES, LONG_COOLDOWN, endpoints, hang, healthy
from .suites import suite_files

ON_REDIS = GUARD + ", one Redis"
LOCAL = GUARD + ", local stores"
SESSIONS = 2
_server: list[Any] = []
_lock = threading.Lock()


def redis_url() -> str:
    """The benchmark's redis-server, started once."""
    from tests.redis_server import RedisServer

    with _lock:
        if not _server:
            _server.append(RedisServer(Path(tempfile.mkdtemp(prefix="bench-redis-"))).start())
            atexit.register(_server[0].kill)
        return _server[0].url


def redis_missing() -> str | None:
    from tests.redis_server import EXECUTABLE, MISSING

    return MISSING if EXECUTABLE is None else None


def files(tests: int, calls: int, shared: bool, context: Context) -> dict[str, str]:
    from .. import projects

    guard = projects.scaled_guard(context.scale, breaker_failures=BREAKER_FAILURES)
    # Counted, not timed: real seconds, so that no probe falls between the sessions (the second starts
    # seconds later) and no deadline cuts an import on a busy machine.
    guard["breaker_cooldown"] = guard["breaker_cooldown_max"] = LONG_COOLDOWN
    guard["deadline"] = max(guard["deadline"], 30.0)
    if shared:  # a namespace per run: a repeat never finds the breaker an earlier repeat tripped
        guard |= {"state_url": redis_url(), "state_namespace": context.folder.name}
    return suite_files(context, "llm_client", tests, calls, guard, endpoints(context))


def s10(quick: bool, scale: float) -> Scenario:
    tests, calls = (2, 2) if quick else (10, 3)
    servers = {"primary": hang, "backup": healthy}
    units = [
        Unit(
            "S10",
            contender,
            None,
            servers,
            partial(files, tests, calls, shared),
            plugins=("llm_guard",),
            env={"LLM_GUARD_RUN_ID": "s10"},
            sessions=SESSIONS,
            unavailable=redis_missing if shared else None,
            note=note,
        )
        for contender, shared, note in (
            (ON_REDIS, True, "state_url: both sessions on one redis-server, the same LLM_GUARD_RUN_ID"),
            (LOCAL, False, "no state_url: each session keeps its breaker in memory"),
        )
    ]

    def targets(rows: list[Row]) -> list[Target]:
        shared, apart = find(rows, ON_REDIS), find(rows, LOCAL)
        if shared is None:
            return []
        worst = max(sample.requests["primary"] for sample in shared.samples)
        later = max(sample.extra["requests by session"][-1]["primary"] for sample in shared.samples)
        most = BREAKER_FAILURES + 1
        out = [
            Target(
                f"on one Redis the hanging endpoint gets <= {most} requests (threshold + 1 in flight), none from "
                "the second session",
                f"{worst} in all, {later} from the second (most of any repeat)",
                worst <= most and later == 0,
            )
        ]
        if apart is not None:
            fewest = min(sample.requests["primary"] for sample in apart.samples)
            out.append(Target("fewer than on two local stores", f"{worst} vs {fewest}", worst < fewest))
        return out

    return Scenario(
        "S10",
        "Two sessions of one run: one Redis vs two local stores",
        f"{tests} tests x {calls} calls per session, {SESSIONS} sessions in a row (two CI shards of one run). "
        "The primary never answers, a backup answers at once; S1's settings but a cooldown of "
        f"{LONG_COOLDOWN:g} s, not scaled (no probe between the sessions), and a deadline that never fires. "
        "The value is the requests that reached the hanging endpoint over both sessions; session time is "
        "both sessions' added.",
        "requests to the hanging endpoint",
        units,
        targets=targets,
        value=lambda unit, sample: float(sample.requests["primary"]),
        ratios=False,
    )
