"""S3: a 429 storm with Retry-After. Who waits as told, and what it costs.

A request is *early* when it reaches the server less than the Retry-After of the 429 answered
just before it: the suite's requests are sequential, so the server's arrival times tell.
"""

from __future__ import annotations

from functools import partial
from itertools import pairwise

from pytest_llm_guard.fault import Fault

from ..projects import scaled_guard
from ..runner import Context, Sample, Unit
from . import GUARD, IDEAL, NAIVE, SDK, TENACITY, Row, Scenario, Target, find
from .outages import sizes
from .suites import healthy_unit, suite_files

STORM = 8  # 429 answers before the endpoint recovers
RETRY_AFTER = 2.0  # seconds each 429 asks for (real time)
RETRIES = 10  # pytest-llm-guard's retry budget here: enough to ride out the storm


def storm(scale: float, server) -> None:
    server.plan(*[Fault.status(429, retry_after=RETRY_AFTER * scale)] * STORM)


def count_early(context: Context, servers: dict, sample: Sample) -> None:
    log = sorted(servers["api"].requests, key=lambda r: r.time)
    early = 0
    for before, after in pairwise(log):
        wait = getattr(before.fault, "retry_after", None)
        if getattr(before.fault, "code", None) == 429 and wait is not None and after.time - before.time < float(wait):
            early += 1
    sample.extra["early"] = early


def s3(quick: bool, scale: float) -> Scenario:
    tests, calls = sizes(quick)  # S1's: one healthy run serves every ideal
    servers = {"api": partial(storm, scale)}

    def unit(contender: str, how: str, **extra) -> Unit:
        def files(context: Context) -> dict[str, str]:
            if how == "llm_client":
                guard = scaled_guard(context.scale, base_url=context.urls["api"], retries=RETRIES)
                return suite_files(context, how, tests, calls, guard)
            return suite_files(context, how, tests, calls, primary="api", backup="none")

        return Unit("S3", contender, None, servers, files, check=count_early, **extra)

    ideal = Unit(
        "S3",
        IDEAL,
        None,
        {},
        lambda c: {},
        same_as=healthy_unit(tests, calls),
        offset=STORM * RETRY_AFTER * scale,
        note=f"the same suite against a healthy endpoint (raw client, plugin off) + the {STORM} waits of "
        f"{RETRY_AFTER:g} s asked for",
    )
    units = [
        unit(GUARD, "llm_client", plugins=("llm_guard",)),
        ideal,
        unit(NAIVE, "naive"),
        unit(SDK, "sdk", note="no backup here: the fallback has nowhere to go"),
        unit(TENACITY, "tenacity"),
    ]

    def targets(rows: list[Row]) -> list[Target]:
        row = find(rows, GUARD)
        if row is None:
            return []
        early = max(sample.extra.get("early", 0) for sample in row.samples)
        return [Target("0 requests before Retry-After", f"{early} (most of any repeat)", early == 0)]

    return Scenario(
        "S3",
        "429 storm with Retry-After",
        f"{tests} tests x {calls} calls against one endpoint whose next {STORM} answers are 429 with "
        f"Retry-After: {RETRY_AFTER:g} s, then healthy. pytest-llm-guard: retries={RETRIES} so the suite can "
        "ride the storm out. The requests column counts requests made, and in brackets those that came early.",
        "session s",
        units,
        targets=targets,
    )
