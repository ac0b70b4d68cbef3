"""Rate limits: what 429s cost, and who keeps clear of them.

S3: a 429 storm with Retry-After. Who waits as told, and what it costs. A request is *early* when it
reaches the server less than the Retry-After of the 429 answered just before it: the suite's requests
are sequential, so the server's arrival times tell.

S10b: xdist workers recording against an API that answers 429 beyond N requests a second, with and
without the shared limiter (``rpm``): how many 429s, and how far the session is from the limit's bound.
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


# -- S10b: xdist workers recording against a rate-limited API, with and without the shared limiter ----------

PER_SECOND = 20  # the server's limit: a 429 beyond this many requests in one second
LIMITER = GUARD + ", rpm limiter"
UNLIMITED = GUARD + ", no limiter"
HEADROOM = 0.75  # the limiter's rpm is this share of the server's limit: room for a request's way to it


def count_429(context: Context, servers: dict, sample: Sample) -> None:
    sample.extra["429s"] = sum(1 for r in servers["api"].requests if getattr(r.fault, "code", None) == 429)


def s10b(quick: bool, scale: float) -> Scenario:
    tests, calls, workers = (8, 1, 2) if quick else (40, 3, 8)  # --quick only proves the units run
    requests = tests * calls
    rpm = PER_SECOND * 60 * HEADROOM
    bound = requests / PER_SECOND

    def unit(contender: str, limited: bool, note: str) -> Unit:
        def files(context: Context) -> dict[str, str]:
            # The server's limit is per real second, so are the turns: real-time limits that never cut a wait
            # or an answer on a busy machine; the backoff after a 429 stays scaled.
            guard = scaled_guard(context.scale, retries=RETRIES) | {"deadline": 60.0, "call_timeout": 10.0}
            base_url = context.urls["api"].removesuffix("/v1") + f"/limit-{PER_SECOND}/v1"
            endpoint = {"name": "api", "base_url": base_url, "api_key_env": "OPENAI_API_KEY"}
            if limited:
                endpoint["rpm"] = rpm
            return suite_files(context, "llm_client", tests, calls, guard, [endpoint])

        return Unit(
            "S10b",
            contender,
            None,
            {"api": lambda server: None},
            files,
            plugins=("llm_guard",),
            args=("-n", str(workers)),
            record="once",
            check=count_429,
            note=note,
        )

    units = [
        unit(LIMITER, True, f"rpm = {rpm:g} ({HEADROOM:.0%} of the server's limit), shared by the {workers} workers"),
        unit(UNLIMITED, False, f"no rpm: each worker sends at once; a 429 is retried (retries={RETRIES})"),
    ]

    def targets(rows: list[Row]) -> list[Target]:
        out = []
        limited, unlimited = find(rows, LIMITER), find(rows, UNLIMITED)
        if limited is not None:
            worst = max(sample.extra.get("429s", 0) for sample in limited.samples)
            out.append(Target("0 429s with the limiter", f"{worst} (most of any repeat)", worst == 0))
            out.append(
                Target(
                    f"session time near the limit's lower bound ({requests} requests at {PER_SECOND}/s: "
                    f"{bound:.1f} s; at the limiter's rpm: {bound / HEADROOM:.1f} s)",
                    f"{limited.median:.1f} s (median), workers' start-up included",
                    None,
                )
            )
        if unlimited is not None:
            fewest = min(sample.extra.get("429s", 0) for sample in unlimited.samples)
            out.append(Target("the same suite without it meets 429s", f"{fewest} (fewest of any repeat)", fewest > 0))
        return out

    return Scenario(
        "S10b",
        f"{workers} workers recording against a rate-limited API",
        f"{tests} tests x {calls} calls under pytest -n {workers}, recording cassettes, against one endpoint that "
        f"answers 429 beyond {PER_SECOND} requests in one second (real time, not scaled). With the limiter the "
        f"workers take turns through the session's shared store (rpm = {rpm:g}); without it each sends at once and "
        f"retries its 429s. The lower bound is the limit's: {requests} requests at {PER_SECOND}/s, {bound:.1f} s. "
        "Session time includes starting the workers.",
        "session s",
        units,
        targets=targets,
        ratios=False,
    )
