"""Everything written for people: failure messages, skip reasons, the terminal summary.

It only reads: the ledger (attempts and totals), the settings (limits and where they
were set), and endpoint health lines. One wording for every count, the ledger's
(``ledger.py``); plurals done right; the attempts listed before any advice that
refers to them.
"""

from __future__ import annotations

import dataclasses
import linecache
import re
import shlex
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import OPTIONS, Settings
from .dialects import DIALECTS

if TYPE_CHECKING:
    import pytest

    from .ledger import Attempt, Ledger

_PLURALS = {
    "retry": "retries",
    "LLM call": "LLM calls",
    "guarded test": "guarded tests",
    "SDK retry": "SDK retries",
    "guard retry": "guard retries",
}


def plural(count: int, word: str) -> str:
    return f"{count} {word if count == 1 else _PLURALS.get(word, word + 's')}"


def describe(attempt: Attempt) -> str:
    """One attempt: where it went, what came of it, how long it took, what followed.

    The error is shown whole: a multi-line one continues on indented lines.
    """
    line = f"{attempt.endpoint}{attempt.path} model={attempt.model or '?'}: "
    if attempt.endpoint_name:
        line = f"[{attempt.endpoint_name}] {line}"
    error = attempt.error.strip() if attempt.error else ""
    if attempt.source == "refused":
        return line + f"refused, not sent ({attempt.outcome}" + (f": {error})" if error else ")")
    line += attempt.outcome
    if error:
        line += f" ({error})"
    line += f" after {attempt.duration:.2f} s"
    if attempt.cause:
        line += f", cut at its {attempt.cause}"
    if attempt.source != "live":
        line += f", {attempt.source}"
    if attempt.retry_after is not None:
        line += f", retry-after {attempt.retry_after:g} s"
    if attempt.backoff:
        line += f", after {attempt.backoff:.2f} s backoff"
    if attempt.limit_wait:
        line += f", after waiting {attempt.limit_wait:.2f} s its turn under {attempt.limit_by}"
    if attempt.failover_to:
        line += f"; failover to {attempt.failover_to}"
    return line


def made_by(attempt: Mapping[str, Any]) -> str:
    """Which layer made an attempt (its record, ``Attempt.to_dict()``): ``retry 2 by the SDK (max_retries=2)``,
    ``a new call by the app after a failure``; empty for a call's first attempt that followed no failure."""
    kind, by, limit = attempt.get("kind"), attempt.get("by"), attempt.get("sdk_max_retries")
    if kind == "failover":
        return "failover"
    if kind == "retry":
        number = int(attempt.get("number") or 1) - 1
        if by == "sdk":
            return f"retry {number} by the SDK" + (f" (max_retries={limit})" if limit is not None else "")
        return f"retry {number} by the guard"
    if by == "app":
        return "a new call by the app after a failure"
    return ""


def _refusal(attempt: Attempt) -> str | None:
    """A refused attempt's reason without its countdown (``(in 29.1 s)``): the same refusal, read again."""
    if attempt.source != "refused" or not attempt.error:
        return None
    return re.sub(r"\(in [\d.]+ s\)", "", attempt.error)


def attempt_lines(attempts: Sequence[Attempt], title: str = "Attempts") -> list[str]:
    """The attempts, numbered; a refusal whose reason an earlier one gave in full refers to it."""
    lines = [f"{title} ({len(attempts)}):"]
    told: dict[str, int] = {}
    for i, attempt in enumerate(attempts, 1):
        by = made_by(attempt.to_dict())
        head = f"  {i}. call {attempt.call}{', ' + by if by else ''}: "
        refusal = _refusal(attempt)
        if refusal is not None and refusal in told:
            lines.append(head + describe(dataclasses.replace(attempt, error=f"the same as attempt {told[refusal]}")))
            continue
        if refusal is not None:
            told[refusal] = i
        first, *rest = describe(attempt).splitlines()
        lines.append(head + first)
        lines.extend(" " * 5 + more.strip() for more in rest)
    return lines


def probe_lines(ledger: Ledger) -> list[str]:
    """Half-open probes sent beside the test's attempts, listed apart: they are none of its attempts."""
    probes = list(ledger.probes)
    if not probes:
        return []
    return [f"Breaker probes beside them, off the test's clock ({len(probes)}):"] + [
        f"  - {probe.describe()}" for probe in probes
    ]


def sdk_retry_advice(attempts: Sequence[Attempt]) -> str | None:
    """When the SDK's own retries multiplied the attempts: how many, and how to turn them off."""
    sdk = [a for a in attempts if a.by == "sdk" and a.source != "refused"]
    if not sdk:
        return None
    limits = sorted({a.sdk_max_retries for a in sdk if a.sdk_max_retries is not None})
    limit = f" (max_retries={', '.join(map(str, limits))})" if limits else ""
    return (
        f"{plural(len(sdk), 'attempt')} of {len(attempts)} {'was' if len(sdk) == 1 else 'were'} the SDK's own "
        f"retries{limit}, inside the same create(): build the client with max_retries=0 (or wrap it with "
        "llm_guard.guard(client), whose retries stay within the budget) so that only one layer retries"
    )


def refusal_advice(attempts: Sequence[Attempt]) -> str | None:
    """When the code asked again after an open breaker's refusal (on_open=fallback): why that cannot help."""
    refused = [a for a in attempts if a.source == "refused" and a.outcome == "LLMEndpointUnavailable"]
    if len(refused) < 2:
        return None
    return (
        f"{plural(len(refused), 'attempt')} were refused at once by an open breaker, and the code kept asking: "
        "the refusal reaches it as its SDK's APIConnectionError (on_open=fallback), which its retry "
        "loop caught. Give APIConnectionError a fallback instead of a retry, or end the test at the first "
        "refusal with on_open='fail' or 'skip' (@pytest.mark.llm_breaker(on_open=...) or --llm-on-open)"
    )


def endpoints_line(attempts: Sequence[Attempt]) -> str | None:
    """Every endpoint the test's attempts went to, in order of first use."""
    seen = dict.fromkeys((f"{a.endpoint} ({a.endpoint_name})" if a.endpoint_name else a.endpoint) for a in attempts)
    models = dict.fromkeys(a.model or "?" for a in attempts)
    if not seen:
        return None
    label = "Endpoint" if len(seen) == 1 else "Endpoints"
    return f"{label} {', '.join(seen)}; model {', '.join(models)}."


_ADVICE = {
    "deadline": "raise `deadline`, or make the endpoint answer faster (see the attempts above)",
    "retries": "raise `retries`, or fix what makes the attempts fail (see the attempts above)",
    "call_timeout": "raise `call_timeout`, or make the endpoint answer faster (see the attempts above)",
    "calls": "raise `calls`, or find the loop that keeps calling",
    "tokens": "raise `tokens`, or send shorter prompts / ask for shorter answers",
    "cost": "raise `cost`, or use a cheaper model / shorter prompts",
}


def budget_message(
    budget: str, what: str, settings: Settings, ledger: Ledger, *, elapsed: float, in_call: bool = True
) -> str:
    """The text of ``LLMBudgetExceeded``: the cause, the limit and its source, every attempt, what to do."""
    limit = getattr(settings, budget)
    unit = " s" if budget in ("deadline", "call_timeout") else f" {settings.currency}" if budget == "cost" else ""
    shown = f"{limit:g}" if isinstance(limit, float) and budget != "deadline" else limit
    attempts = ledger.snapshot()
    lines = [
        f"LLM {budget} budget spent in {ledger.test}: {what} "
        f"(limit {budget}={shown}{unit}, set by {settings.source_of(budget)}; {elapsed:.2f} s elapsed).",
    ]
    where = endpoints_line(attempts)
    if where:
        lines.append(where)
    if attempts:
        lines.extend(attempt_lines(attempts))
        lines.extend(probe_lines(ledger))
    option = OPTIONS[budget]
    advice = (
        _ADVICE[budget] if in_call else "raise `deadline`, or cut the test's own waiting (its sleeps, backoffs, loops)"
    )
    last = attempts[-1] if attempts else None
    if budget == "retries" and last is not None and last.status in (401, 403):
        advice = f"fix the credentials ({last.error}); retrying cannot help, and `retries` only bounds it"
    sdk = sdk_retry_advice(attempts)
    if sdk is not None and budget in ("deadline", "retries", "call_timeout"):
        advice = f"{sdk}; or {advice}"
    refusals = refusal_advice(attempts)
    if refusals is not None and budget in ("deadline", "calls"):
        advice = f"{refusals}; or {advice}"
    lines.append(
        f"What to do: {advice}; the limit is set with "
        f"@pytest.mark.llm_budget({budget}=...), {option.flag} or {option.env}."
    )
    return "\n".join(lines)


def no_endpoint(
    test: str,
    model: str | None,
    refusals: Iterable[tuple[str, str, str]],
    ledger: Ledger,
    refused: Attempt,
    *,
    fixture: bool,
    on_open: str,
    on_open_source: str,
    breaker_marker: str,
) -> str:
    """Why no endpoint could take the ``refused`` attempt, endpoint by endpoint (name, base URL, reason: the
    breaker's story), and what the on-open policy in force does about it."""
    earlier = [a for a in ledger.snapshot() if a is not refused]
    sent = any(a.source in ("live", "recorded") for a in earlier)
    headline = f"pytest-llm-guard: no endpoint can take this request (model {model or '?'}) of {test} now; " + (
        "this attempt was not sent." if sent else "nothing was sent."
    )
    lines = [headline] + [f"  - {name} ({url}): {reason}" for name, url, reason in refusals]
    if on_open != "fallback" and earlier:
        lines.extend(attempt_lines(earlier, "Earlier attempts"))
        lines.extend(probe_lines(ledger))
    source = (
        on_open_source
        if on_open_source != "default"
        else ("default for llm_client" if fixture else "default for clients the code under test builds")
    )
    does = {
        "fallback": "the refusal reaches the code as its SDK's APIConnectionError (LLMEndpointUnavailable) at once, "
        "which the SDK does not retry, so the code's own fallback runs",
        "fail": "the test fails at once",
        "skip": "the test is skipped at once",
    }[on_open]
    others = " or ".join(f"'{p}'" for p in ("fallback", "fail", "skip") if p != on_open)
    option = OPTIONS["on_open"]
    lines.append(
        f"on_open={on_open} (set by {source}): {does}; a refusal is not charged to `retries`. "
        f"on_open={others} (@pytest.mark.{breaker_marker}(on_open=...), {option.flag} or {option.env}) changes that. "
        "What to do: fix or wait for the endpoint, or add a healthy one to [[tool.pytest_llm_guard.endpoints]]."
    )
    return "\n".join(lines)


def session_spent(settings: Settings, name: str, used: float, limit: float) -> str:
    unit = {"session_deadline": " s", "max_calls": " LLM calls", "max_tokens": " tokens"}.get(
        name, f" {settings.currency}"
    )
    shown = f"{used:.1f}" if name == "session_deadline" else f"{used:.4f}" if name == "max_cost" else str(int(used))
    option = OPTIONS[name]
    action = "fail" if settings.on_session_spent == "fail" else "are skipped"
    if name == "session_deadline":
        over = "since the session started"
    elif settings.state_url:
        over = "summed over every session of this run (shared through state_url)"
    else:
        over = "summed over the session's tests, on every worker"
    return (
        f"pytest-llm-guard: session budget spent: {shown}{unit} of {name}={limit:g}{unit} "
        f"(set by {settings.source_of(name)}), {over}; the remaining LLM tests {action} "
        f"(on_session_spent={settings.on_session_spent}). Raise {option.flag} / {option.env} to run more."
    )


# -- failure reports ------------------------------------------------------------------

_HIDDEN_MODULES = (
    *(dialect.sdk for dialect in DIALECTS),
    "httpx2",
    "httpcore2",
    "tenacity",
    "pytest_llm_guard",
    "_pytest",
    "pluggy",
    "pytest_asyncio",
    "anyio",
    "asyncio",
    "concurrent",
    "threading",
    "contextlib",
    "selectors",
    "vcr",
    "wrapt",
)


def _hidden_prefixes() -> tuple[str, ...]:
    prefixes = []
    for name in _HIDDEN_MODULES:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file:
            path = Path(file)
            prefixes.append(str(path.parent) if path.name == "__init__.py" else str(path))
    return tuple(prefixes)


def failure_text(
    excinfo: pytest.ExceptionInfo[BaseException],
    root: Path,
    *,
    cause: BaseException | None = None,
    attempts: Sequence[Attempt] = (),
) -> str:
    """How a test the guard ended is reported: the message, then the test's and the application's frames.

    The message comes first, so pytest's one-line summary shows it. No frames of the
    SDK, httpx2, asyncio, pytest or the guard: pytest would print their arguments, and a
    request's URL may carry a key in its query string; the message already lists every attempt.
    ``cause``: the guard's error under an exception the SDK raised (a malformed answer, a
    cut stream), shown in a line, with the test's ``attempts``.
    """
    hidden = _hidden_prefixes()
    own = [_frame_line(e, root) for e in excinfo.traceback if not str(e.path).startswith(hidden)]
    # The deadline raised inside an event loop: the loop's traceback, and the test's coroutines apart
    awaiting = [_code_line(*at, root) for at in getattr(excinfo.value, "awaiting", ()) if not at[0].startswith(hidden)]
    title = "Where the LLM call was made:" if getattr(excinfo.value, "in_call", True) else "Where the test was:"
    lines = [f"{excinfo.typename}: {excinfo.value}"]
    if cause is not None:
        first, *rest = f"caused by {type(cause).__name__}: {cause}".splitlines() or [""]
        lines.extend([f"  {first}", *(f"    {more}" for more in rest)])
        lines.extend(attempt_lines(attempts))
    return "\n".join([*lines, "", title, *(own or awaiting or [_frame_line(excinfo.traceback[-1], root)])])


def guard_cause(error: BaseException) -> BaseException | None:
    """The guard's own error (a malformed answer, a cut stream) in ``error``'s chain, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if type(error).__name__ in ("LLMMalformedResponse", "LLMStreamCut", "LLMStreamError"):
            return error
        error = error.__cause__ or error.__context__
    return None


def _frame_line(entry: Any, root: Path) -> str:
    """``path:line: in name`` and its statement; a frame without source (generated code) shows no statement."""
    path = Path(entry.path)
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    try:
        line = f"{entry.lineno + 1}"
        statement = "\n    " + str(entry.statement).strip()
    except (AssertionError, TypeError, IndexError):
        line, statement = "?", ""
    return f"{shown}:{line}: in {entry.name}{statement}"


def _code_line(file: str, line: int, name: str, root: Path) -> str:
    """``path:line: in name`` and its statement, for a frame known by file and line only."""
    path = Path(file)
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    statement = linecache.getline(file, line).strip()
    return f"{shown}:{line}: in {name}" + (f"\n    {statement}" if statement else "")


# -- the terminal summary ---------------------------------------------------------------

SUMMED = (
    "calls",
    "attempts",
    "retries",
    "failovers",
    "failures",
    "live",
    "recorded",
    "replayed",
    "refused",
    "network_seconds",
    "backoff_seconds",
    "tokens",
)


def totals(per_test: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The session's stats: each test's summed; cost None when no test had a price."""
    total: dict[str, Any] = {key: sum(t[key] for t in per_test) for key in SUMMED}
    costs = [t["cost"] for t in per_test if t.get("cost") is not None]
    total["cost"] = sum(costs) if costs else None
    return total


def totals_line(per_test: Sequence[Mapping[str, Any]], currency: str) -> str:
    """The session's totals in the ledger's words."""
    return totals_sentence(len(per_test), totals(per_test), currency)


def totals_sentence(tests: int, total: Mapping[str, Any], currency: str = "") -> str:
    """Totals (``totals()``) as one sentence: the terminal summary's, and the HTML report's header."""
    sources = ", ".join(f"{total[s]} {s}" for s in ("live", "recorded", "replayed", "refused") if total[s])
    line = (
        f"{plural(tests, 'guarded test')}: {plural(total['calls'], 'LLM call')}, "
        f"{plural(total['attempts'], 'attempt')} ({sources or 'none sent'}), {plural(total['retries'], 'retry')}, "
        f"{plural(total['failovers'], 'failover')}, {plural(total['failures'], 'failed attempt')}; "
        f"{total['network_seconds']:.2f} s on the network, {total['backoff_seconds']:.2f} s in backoff, "
        f"{plural(total['tokens'], 'token')}"
    )
    if total.get("cost") is not None:
        line += f", {total['cost']:.4f} {currency}".rstrip()
    return line


_LABELS = {
    "ok": "ok call",
    "timeout": "timeout",
    "http_4xx": "HTTP 4xx answer",
    "http_429": "429 answer",
    "http_5xx": "HTTP 5xx answer",
    "reset": "dropped connection",
    "malformed": "malformed answer",
    "cut": "cut answer",
    "refused": "refused attempt",
    "replayed": "replayed call",
}


def attribution_text(parts: Sequence[Mapping[str, Any]]) -> str:
    """``300.0s in 5 timeouts + 8.1s backoff + 4.3s in 2 ok calls + 0.0s other``"""
    words = []
    for part in parts:
        if part["what"] in ("backoff", "rate-limit wait", "other"):
            words.append(f"{part['seconds']:.1f}s {part['what']}")
        else:
            words.append(f"{part['seconds']:.1f}s in {plural(part['attempts'], _LABELS[part['what']])}")
    return " + ".join(words)


def slowest_lines(records: Sequence[Mapping[str, Any]], count: int) -> list[str]:
    """The ``count`` slowest guarded tests (0: all), one line each: where their time went."""
    ranked = sorted(records, key=lambda r: r["duration"], reverse=True)
    shown = ranked if count == 0 else ranked[:count]
    return [f"{r['nodeid']} {r['duration']:.1f}s = {attribution_text(r['attribution'])}" for r in shown]


def endpoint_lines(endpoints: Sequence[Mapping[str, Any]]) -> list[str]:
    """Per endpoint: attempts by category, latency, breaker transitions (with -v)."""
    lines = []
    for e in endpoints:
        counts = ", ".join(f"{n} {category}" for category, n in e["attempts_by_category"].items())
        latency = e["latency"]
        lines.append(
            f"endpoint {e['name']}: {counts}; latency p50 {_seconds(latency['p50'])}, p95 {_seconds(latency['p95'])}"
        )
        lines.extend(
            f"  {clock(t['time'])} {t['model']}: breaker {t['from']} -> {t['to']} {t['why']}" for t in e["transitions"]
        )
    return lines


def limit_waits(tests: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per endpoint: the seconds its attempts waited for their turns under shared rate limits, and how many
    waited (test records, ``report_json.record``: every xdist worker's)."""
    found: dict[str, dict[str, Any]] = {}
    for test in tests:
        for attempt in test["attempts"]:
            if attempt.get("limit_wait"):
                name = attempt["endpoint_name"] or attempt["endpoint"]
                entry = found.setdefault(name, {"seconds": 0.0, "attempts": 0})
                entry["seconds"] += attempt["limit_wait"]
                entry["attempts"] += 1
    return found


def limit_wait_lines(tests: Iterable[Mapping[str, Any]]) -> list[str]:
    """``endpoint fast: waited 3.2 s on shared rate limits (12 attempts)``, one line per endpoint that waited."""
    return [
        f"endpoint {name}: waited {e['seconds']:.1f} s on shared rate limits ({plural(e['attempts'], 'attempt')})"
        for name, e in limit_waits(tests).items()
    ]


def learned_lines(section: Mapping[str, Any], flag: str, call_timeout: float | None) -> list[str]:
    """Which limits were learned (``learned.in_reports``), from how many samples, and how many attempts they capped;
    a learned call_timeout above the configured one (``call_timeout``) is said not to apply."""
    file = section["file"]
    if section["missing"]:
        return [f"learned timeouts: {file} not found, so no limits were learned; write it with {flag} {file}"]
    limits = section["limits"]
    head = f"learned timeouts from {file} (p99 x {section['factor']:g}, at least {section['floor']:g} s): "
    if not limits:
        return [head + "no model has enough samples yet"]
    capped = sum(entry["capped"] for entry in limits)
    lines = [head + f"{plural(len(limits), 'model')}, {plural(capped, 'attempt')} capped by them this run"]
    for entry in limits:
        first, call = entry["first_token_timeout"], entry["call_timeout"]
        above = call_timeout is not None and call is not None and call >= call_timeout
        lines.append(
            f"  {entry['endpoint']} {entry['model']}: "
            + (f"call_timeout {call:.2f} s" if call is not None else "call_timeout not learned")
            + (f" (above call_timeout={call_timeout:g} s, which applies)" if above else "")
            + (f", first_token_timeout {first:.2f} s" if first is not None else "")
            + f" ({plural(entry['samples'], 'sample')}; capped {plural(entry['capped'], 'attempt')})"
        )
    return lines


_SWITCH_OFF = {
    "sdk": "set max_retries=0 on the client (or wrap it with llm_guard.guard(client), whose retries stay within "
    "the budget) or drop the loop",
    "app": "drop the loop: the guard already retries each call",
}


def amplification_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Tests whose calls were retried by more than one layer (``ledger.amplification``): by how much, and the
    layer to switch off. One line per test, for its most amplified call."""
    lines = []
    for record in records:
        found = record.get("amplification") or []
        if not found:
            continue
        worst = max(found, key=lambda a: a["attempts"])
        by, limit = worst["retries_by"], worst["sdk_max_retries"]
        layers = []
        if by["sdk"]:
            layers.append(f"SDK max_retries={limit}" if limit is not None else plural(by["sdk"], "SDK retry"))
        if by["guard"]:
            layers.append(f"{plural(by['guard'], 'guard retry')}")
        if by["app"]:
            layers.append(f"your loop of {worst['calls']}")
        more = f" (and {plural(len(found) - 1, 'more such call')})" if len(found) > 1 else ""
        lines.append(
            f"{record['nodeid']}: {plural(worst['attempts'], 'attempt')} for 1 logical call ({' x '.join(layers)})"
            f"{more}: {_SWITCH_OFF[worst['switch_off']]}"
        )
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def clock(when: float) -> str:
    import time

    return time.strftime("%H:%M:%S", time.localtime(when))


_GUARD_WAYS = (
    "with an llm_* marker (@pytest.mark.llm_budget()) or the llm_guard fixture, "
    "or guard every test: guard_all = true in [tool.pytest_llm_guard] (--llm-guard-all)"
)
_GUARD_IT = f"guard it {_GUARD_WAYS}"


def unguarded_refusal(test: str, request: str, settings: Settings) -> str:
    return (
        f"pytest-llm-guard: {test} is not guarded, yet sent an LLM request ({request}); refused, nothing was sent "
        f"(unguarded = fail, set by {settings.source_of('unguarded')}). To let it through, {_GUARD_IT}."
    )


def unguarded_warning(test: str, count: int, first: str, *, fault_server: bool = False) -> str:
    """``fault_server``: the test uses ``llm_fault_server``, whose faults a cassette would hide on replay."""
    fix = (
        "guard it with @pytest.mark.llm_cassette(False) (a cassette would record the fault server's last "
        "answer, and a replay would never meet its faults)"
        if fault_server
        else _GUARD_IT
    )
    return (
        f"pytest-llm-guard: {test} is not guarded, yet sent {plural(count, 'LLM request')} ({first}) to the "
        "network: no deadline or budget of ours bound it, no cassette of ours replayed or recorded it, and it is "
        f"not counted. To fix: {fix}. To silence: unguarded = allow, or "
        "filterwarnings = ignore::pytest_llm_guard.LLMUnguardedWarning"
    )


def unguarded_lines(tests: Sequence[Mapping[str, Any]]) -> list[str]:
    """Tests that went live without a guard: nothing of theirs was replayed, recorded, bounded or counted."""
    lines = [
        f"{plural(len(tests), 'test')} sent LLM requests without a guard: no deadline or budget, no "
        f'cassette of ours, not counted (unguarded = warn; "fail" refuses them):'
    ]
    lines.extend(f"  {t['nodeid']}: {plural(len(t['requests']), 'request')}, first {t['requests'][0]}" for t in tests)
    lines.append(f"To fix: guard {'it' if len(tests) == 1 else 'each'} {_GUARD_WAYS}.")
    return lines


def _shown(path: str, root: Path) -> str:
    found = Path(path)
    return str(found.relative_to(root)) if found.is_relative_to(root) else path


def cassette_lines(upkeep: Mapping[str, Any], root: Path) -> list[str]:
    """The session's word on its cassettes (``cassettes/upkeep.py``): what a re-record changed, per
    cassette, and recordings no test played; the commands that act on them."""
    lines: list[str] = []
    reviews = upkeep.get("rerecorded") or []
    if reviews:
        changed = sum(len(r["changed"]) for r in reviews)
        added, removed = sum(r["added"] for r in reviews), sum(r["removed"] for r in reviews)
        unchanged = sum(r["unchanged"] for r in reviews)
        touched = [r for r in reviews if r["changed"] or r["added"] or r["removed"]]
        lines.append(
            f"recorded into {plural(len(reviews), 'cassette')}: {changed} changed, {added} added, {removed} removed, "
            f"{unchanged} unchanged" + (" (unchanged answers are kept as they were recorded)" if unchanged else "")
        )
        for r in touched:
            counts = [f"{n} {what}" for n, what in ((len(r["changed"]), "changed"), (r["added"], "added"),
                      (r["removed"], "removed"), (r["unchanged"], "unchanged")) if n]  # fmt: skip
            lines.append(f"  {_shown(r['path'], root)}: {', '.join(counts)}")
            for change in r["changed"]:
                said = "; ".join(part for part in (change["note"], change["diff"]) if part)
                lines.append(f"    {change['request']}: {said}")
        if touched:
            lines.append("  Review them with git diff, then commit the cassettes.")
    unplayed = upkeep.get("unplayed") or []
    if unplayed:
        total = sum(u["count"] for u in unplayed)
        lines.append(
            f"{plural(total, 'recording')} in {plural(len(unplayed), 'cassette')} not played by any passing test "
            "(prompt drift?):"
        )
        record, prune = OPTIONS["record"].flag, OPTIONS["prune_unplayed"].flag
        for u in unplayed:
            fate = "dropped" if u["pruned"] else f"drop: pytest {shlex.join(u['tests'])} {record}=new_episodes {prune}"
            lines.append(f"  {_shown(u['path'], root)}: {u['count']} unplayed, first {u['first']}; {fate}")
    unused = upkeep.get("unused") or []
    if unused:
        lines.append(
            f"{plural(len(unused), 'cassette')} beside these that no test of this run used (an orphan, if the run "
            "was the whole suite; pytest --llm-cassettes lists them against every collected test):"
        )
        lines.extend(f"  {_shown(path, root)}" for path in unused)
    expired = upkeep.get("expired") or []
    if expired:
        lines.append(f"{plural(len(expired), 'cassette')} older than cassette_max_age:")
        record = OPTIONS["record"].flag
        for e in expired:
            fate = "recorded again" if e["rerecorded"] else f"re-record: pytest {shlex.join(e['tests'])} {record}=all"
            lines.append(f"  {_shown(e['path'], root)}: {days(e['age'])} old; {fate}")
    return lines


def days(seconds: float) -> str:
    """An age as people say it: ``120 days``, ``5 hours``, ``12 minutes``."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            return plural(int(seconds // size), unit)
    return plural(int(seconds), "second")
