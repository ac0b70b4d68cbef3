"""The machine-readable reports: per-test records, the JSON report (``--llm-report``) and JUnit properties.

A record is built on the process that ran the test (an xdist worker included) and
travels to the controller on the test's teardown report; the controller builds one
report from all of them. The JSON format is versioned (``"schema": 2``) and documented in
``docs/report-schema.json``; ``report_html.py`` draws the same dictionary.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import report
from .ledger import amplification, attribution

if TYPE_CHECKING:
    from .breaker import EndpointHealth
    from .endpoints import Endpoint
    from .guard import Guard
    from .learned import Learned

SCHEMA = 2
"""2: a test's ``why`` (failed and skipped tests); an attempt's ``by`` and ``sdk_max_retries``."""
_ATTEMPT_FIELDS = (
    "call", "number", "kind", "by", "sdk_max_retries", "source", "outcome", "category", "status", "error", "cause",
    "endpoint", "endpoint_name", "path", "model", "tokens", "input_tokens", "output_tokens", "cost", "first_chunk",
    "backoff", "retry_after", "failover_to", "dialect", "cache_tokens", "cap", "cap_by", "limit_wait", "limit_by",
)  # fmt: skip


def why(error: BaseException, scrub: Callable[[str], str]) -> dict[str, Any]:
    """Why a test failed or was skipped, for reports: the exception's type, the budget or the breaker
    that ended it (found along its chain: an SDK error raised from ours counts), its message's first line."""
    budget = breaker = None
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        budget = budget or getattr(link, "budget", None)
        endpoints = getattr(link, "endpoints", None)
        if breaker is None and endpoints:
            breaker = endpoints[0]
        link = link.__cause__ or link.__context__
    text = str(error).strip()
    return {
        "exception": type(error).__name__,
        "budget": budget if isinstance(budget, str) else None,
        "breaker": breaker if isinstance(breaker, str) else None,
        "message": scrub(text.splitlines()[0]) if text else "",
    }


_REFUSED_BY_A_BREAKER = frozenset({"LLMEndpointUnavailable", "LLMNoEndpoint"})


def _with_breaker(why: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A test whose code caught a breaker's refusal and then failed otherwise ("gave up") still names it."""
    found = dict(why)
    if found.get("breaker") is None:
        refused = [a["endpoint_name"] for a in attempts if a["outcome"] in _REFUSED_BY_A_BREAKER and a["endpoint_name"]]
        found["breaker"] = refused[-1] if refused else None
    return found


def record(
    guard: Guard, nodeid: str, outcome: str, duration: float, started: float, why: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """One guarded test: its totals, where its time went, every attempt (times from its start), and why it
    failed or was skipped."""
    attempts = []
    for attempt in guard.events:
        entry = {name: getattr(attempt, name) if name != "category" else attempt.category for name in _ATTEMPT_FIELDS}
        if entry["error"]:
            entry["error"] = guard.scrubber.text(entry["error"])
        entry["cap"] = None if math.isinf(attempt.cap) else attempt.cap
        entry["offset"] = attempt.start - guard.budget.started
        entry["duration"] = attempt.duration
        entry["start"], entry["end"] = attempt.start, attempt.end
        attempts.append(entry)
    stats = dataclasses.asdict(guard.stats)
    probes = [
        {**probe.to_dict(), "offset": probe.start - guard.budget.started, "text": guard.scrubber.text(probe.describe())}
        for probe in guard.ledger.probes
    ]
    return {
        "nodeid": nodeid,
        "outcome": outcome,
        "why": _with_breaker(why, attempts) if why is not None and outcome != "passed" else None,
        "duration": duration,
        "started": started,
        "stats": stats,
        "cost": stats["cost"],
        "attribution": attribution(attempts, duration),
        "amplification": amplification(attempts),
        "attempts": attempts,
        **({"probes": probes} if probes else {}),
    }


def junit_properties(test: Mapping[str, Any]) -> list[tuple[str, object]]:
    """Per-test ``<property>`` elements, so CI dashboards can chart them."""
    stats = test["stats"]
    properties: list[tuple[str, object]] = [
        ("llm_calls", stats["calls"]),
        ("llm_attempts", stats["attempts"]),
        ("llm_retries", stats["retries"]),
        ("llm_failovers", stats["failovers"]),
        ("llm_seconds", round(stats["network_seconds"], 3)),
        ("llm_backoff_seconds", round(stats["backoff_seconds"], 3)),
        ("llm_tokens", stats["tokens"]),
        ("llm_replayed", stats["replayed"]),
        ("llm_live", stats["live"]),
    ]
    if stats["cost"] is not None:
        properties.append(("llm_cost", round(stats["cost"], 6)))
    for key, value in (test.get("why") or {}).items():
        if value:
            properties.append((f"llm_why_{key}", value))
    return properties


def endpoints(
    tests: Iterable[Mapping[str, Any]], health: Iterable[tuple[Endpoint, EndpointHealth]]
) -> list[dict[str, Any]]:
    """Per endpoint: attempts by category, latency p50/p95 of whole attempts and of first chunks, per model
    p50/p95/p99/n of successful live attempts (what ``--llm-learn-timeouts`` keeps), transitions."""
    from . import learned  # its statistics; here, not with the per-test records every guarded test builds

    grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for test in tests:
        for attempt in test["attempts"]:
            if attempt["source"] != "replayed":
                grouped[attempt["endpoint_name"] or attempt["endpoint"]].append(attempt)
    per_model: dict[str, dict[str, Any]] = defaultdict(dict)
    for (name, model), measures in learned.samples(tests).items():
        per_model[name][model] = {measure: learned.summary(values) for measure, values in measures.items()}
    waits = report.limit_waits(tests)
    configured = {endpoint.name: (endpoint, state) for endpoint, state in health}
    names = list(grouped) + [name for name in configured if name not in grouped]
    found = []
    for name in names:
        attempts = grouped.get(name, [])
        counts: dict[str, int] = defaultdict(int)
        for attempt in attempts:
            counts[attempt["category"]] += 1
        sent = [a for a in attempts if a["source"] in ("live", "recorded") and a["end"] is not None]
        chunks = [a["first_chunk"] for a in sent if a["first_chunk"] is not None]
        endpoint, state = configured.get(name, (None, None))
        transitions = []
        if state is not None:
            for model, breaker in state.breakers.items():
                transitions.extend({**t, "model": model} for t in breaker.transitions)
        found.append(
            {
                "name": name,
                "base_url": endpoint.base_url if endpoint is not None else name,
                "attempts_by_category": dict(counts),
                "latency": {"p50": learned.percentile([a["duration"] for a in sent], 0.5),
                            "p95": learned.percentile([a["duration"] for a in sent], 0.95)},
                "first_chunk": {"p50": learned.percentile(chunks, 0.5), "p95": learned.percentile(chunks, 0.95)},
                "models": per_model.get(name, {}),
                "transitions": sorted(transitions, key=lambda t: t["time"]),
                "rate_limit_wait": waits.get(name, {"seconds": 0.0, "attempts": 0}),
            }
        )  # fmt: skip
    return found


def build(
    tests: Sequence[Mapping[str, Any]],
    health: Iterable[tuple[Endpoint, EndpointHealth]],
    *,
    duration: float,
    currency: str = "USD",
    unguarded: Sequence[Mapping[str, Any]] = (),
    cassettes: Mapping[str, Any] | None = None,
    learned_limits: Learned | None = None,
) -> dict[str, Any]:
    """The whole report (``SCHEMA``; ``unguarded`` only when some test went live without a guard,
    ``cassettes`` when the session re-recorded a cassette or left recordings unplayed,
    ``learned_timeouts`` only when limits were read from a learned file)."""
    try:
        plugin_version = version("pytest-llm-guard")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        plugin_version = "unknown"
    totals = report.totals([t["stats"] for t in tests]) if tests else report.totals([])
    learned_section = {}
    if learned_limits is not None:
        from . import learned

        learned_section = {"learned_timeouts": learned.in_reports(learned_limits, tests)}
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "plugin_version": plugin_version,
        "session": {
            "duration": duration,
            "tests": len(tests),
            "totals": totals,
            "cost": totals["cost"],
            "currency": currency,
        },
        "tests": list(tests),
        "endpoints": endpoints(tests, health),
        **({"unguarded": list(unguarded)} if unguarded else {}),
        **({"cassettes": dict(cassettes)} if cassettes else {}),
        **learned_section,
    }


def write(path: Path, data: Mapping[str, Any]) -> None:
    """Atomically: a report is whole or absent, never half written."""
    from .cassettes.files import write_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(data, indent=1, default=str) + "\n")


def note_phase(
    previous: tuple[str, float], when: str, failed: bool, skipped: bool, seconds: float
) -> tuple[str, float]:
    """A test's outcome as a person reads it (its call's, or an error in setup or teardown) and its duration,
    after one more phase."""
    outcome, duration = previous
    if failed:
        outcome = "failed" if when == "call" else "error" if outcome == "passed" else outcome
    elif skipped and when != "teardown":
        outcome = "skipped"
    return outcome, duration + seconds


def write_reports(
    tests: Sequence[Mapping[str, Any]],
    health: Iterable[tuple[Endpoint, EndpointHealth]],
    *,
    duration: float,
    currency: str,
    json_path: Path | None,
    html_path: Path | None,
    unguarded: Sequence[Mapping[str, Any]] = (),
    cassettes: Mapping[str, Any] | None = None,
    learned_limits: Learned | None = None,
) -> list[str]:
    """Write the JSON and HTML reports asked for; returns what to tell the user about each."""
    from .cassettes.files import write_atomically

    data = build(
        tests,
        health,
        duration=duration,
        currency=currency,
        unguarded=unguarded,
        cassettes=cassettes,
        learned_limits=learned_limits,
    )
    said = []
    for name, path in (("report", json_path), ("report-html", html_path)):
        if path is None:
            continue
        kind = "JSON" if name == "report" else "HTML"
        try:
            if name == "report":
                write(path, data)
            else:
                from .report_html import render

                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(path, render(data))
            said.append(f"pytest-llm-guard: {kind} report written to {path}")
        except OSError as exc:
            said.append(f"pytest-llm-guard: the --llm-{name} file {path} could not be written: {exc}")
    return said
