"""Timeouts learned from history: each model's own latency, kept in a small committed file.

One ``call_timeout`` for every model is either too long for a fast one (a hang costs the
whole budget) or too short for a slow one. A run with ``--llm-learn-timeouts PATH`` keeps,
per endpoint and model, how long its successful live attempts took (whole attempt, and to
the first chunk of the body); a run with ``learned_timeouts = PATH`` gives each model
``p99 x learned_factor`` (at least ``learned_floor``) as its limits, which only ever lower
what the marker, the configuration and the time left allow.

What the file keeps, and why: the newest :data:`KEPT` samples per endpoint, model and
measure, beside their p50/p95/p99 and n. A p99 cannot be merged from other p99s, and a
fixed window of recent samples forgets how fast a model *used* to be; 200 numbers per
model keep the file small enough to commit and review. The summaries are what is read
back (edit them, and the limits follow); the samples are what the next run merges into.
Under xdist each worker's attempts reach the controller on the test reports (as for the
JSON report), and the controller alone writes the file, atomically.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import LLMGuardConfigError

if TYPE_CHECKING:
    from .config import Settings

FORMAT = 1
KEPT = 200
"""Samples kept per endpoint, model and measure: the newest, across runs."""
MIN_SAMPLES = 5
"""Fewer successful attempts than this teach nothing: that model keeps its configured limits."""
MEASURES = {"attempt": "call_timeout", "first_token": "first_token_timeout"}
"""What the file measures, and the limit each measure sets."""
LEARNED_CALL_TIMEOUT = "learned call_timeout"
"""``Attempt.cap_by`` of an attempt capped by its model's learned call_timeout."""
_ABOUT = (
    "pytest-llm-guard learned timeouts: per endpoint and model, seconds of the newest successful live attempts "
    f"(whole attempt; first chunk of the body), at most {KEPT} each. Written by --llm-learn-timeouts, read by "
    "learned_timeouts: a model's limits are p99 x learned_factor, at least learned_floor."
)


class Limits(NamedTuple):
    """One model's learned limits (None: not learned), and the samples they come from."""

    first_token: float | None
    call: float | None
    samples: int


def percentile(values: Sequence[float], share: float) -> float | None:
    """The nearest-rank percentile (``share`` in 0..1); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def summary(values: Sequence[float]) -> dict[str, Any]:
    """p50, p95, p99 and n of some latencies."""
    return {"n": len(values), **{f"p{p}": percentile(values, p / 100) for p in (50, 95, 99)}}


def samples(tests: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], dict[str, list[float]]]:
    """Latencies of successful live attempts, per (endpoint, model) and measure, oldest first.

    Replays and refusals took no time on the network; failed attempts measure their cap
    or their fault, not the model. Reads test records (``report_json.record``), so it
    serves the xdist controller: attempts are ordered by the time of day they started.
    """
    found: list[tuple[float, tuple[str, str], float, float | None]] = []
    for test in tests:
        for attempt in test["attempts"]:
            if attempt["source"] not in ("live", "recorded") or attempt["category"] != "ok" or not attempt["model"]:
                continue
            if attempt["end"] is None or attempt["error"]:  # an answer not read to its end is no latency
                continue
            key = (attempt["endpoint_name"] or attempt["endpoint"], attempt["model"])
            found.append((test["started"] + attempt["offset"], key, attempt["duration"], attempt["first_chunk"]))
    grouped: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: {m: [] for m in MEASURES})
    for _, key, duration, first_chunk in sorted(found, key=lambda f: f[0]):
        grouped[key]["attempt"].append(duration)
        if first_chunk is not None:
            grouped[key]["first_token"].append(first_chunk)
    return dict(grouped)


@dataclass(frozen=True)
class Learned:
    """The learned file as read back (``learned_timeouts``): limits per endpoint and model."""

    path: Path
    factor: float
    floor: float
    summaries: Mapping[tuple[str, str], Mapping[str, Mapping[str, Any]]]
    missing: bool = False

    def limits(self, endpoint: str, model: str | None) -> Limits | None:
        """The model's learned limits at this endpoint: ``p99 x factor``, at least ``floor``, per measure
        with at least :data:`MIN_SAMPLES` samples; None when nothing was learned for it."""
        measures = self.summaries.get((endpoint, model or ""))
        if not measures:
            return None
        found: dict[str, float | None] = {}
        for measure in MEASURES:
            known = measures.get(measure, {})
            p99, n = known.get("p99"), known.get("n", 0)
            found[measure] = None if p99 is None or n < MIN_SAMPLES else max(self.floor, p99 * self.factor)
        if found["attempt"] is None and found["first_token"] is None:
            return None
        return Limits(found["first_token"], found["attempt"], int(measures.get("attempt", {}).get("n", 0)))

    def known(self) -> list[tuple[str, str, Limits]]:
        """Every (endpoint, model) with learned limits, in the file's order."""
        found = []
        for endpoint, model in sorted(self.summaries):
            limits = self.limits(endpoint, model)
            if limits is not None:
                found.append((endpoint, model, limits))
        return found


def read(path: Path, *, factor: float, floor: float, option: str = "learned_timeouts") -> Learned:
    """The file at ``path``; a missing one learns nothing (``missing``), a broken one is a usage error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Learned(path, factor, floor, {}, missing=True)
    except OSError as exc:
        raise LLMGuardConfigError(
            f"pytest-llm-guard: the learned timeouts file {path} ({option}) cannot be read: {exc}"
        ) from None
    try:
        return Learned(path, factor, floor, _summaries(json.loads(text)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        detail = f"a measure has no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise LLMGuardConfigError(
            f"pytest-llm-guard: the learned timeouts file {path} ({option}) is not valid: {detail}. "
            f"Restore it from version control, or delete it and learn it again with --llm-learn-timeouts {path}"
        ) from None


def _summaries(data: Any) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("endpoints"), dict):
        raise ValueError(f'expected a JSON object with "format": {FORMAT} and "endpoints"')
    found: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for endpoint, models in data["endpoints"].items():
        for model, measures in models.items():
            for measure, known in measures.items():
                if measure not in MEASURES:
                    raise ValueError(f"{endpoint} {model}: unknown measure {measure!r} (known: {', '.join(MEASURES)})")
                n, p99 = known["n"], known["p99"]
                if not isinstance(n, int) or n < 0 or not (p99 is None or _seconds(p99)):
                    raise ValueError(f"{endpoint} {model} {measure}: n must be a count and p99 seconds")
                if not all(_seconds(s) for s in known.get("samples", ())):
                    raise ValueError(f"{endpoint} {model} {measure}: samples must be seconds")
            found[(endpoint, model)] = measures
    return found


def _seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def merged(old: Mapping[tuple[str, str], Mapping[str, Any]], new: Mapping[tuple[str, str], Mapping[str, Any]]) -> str:
    """The file's text: the old samples, then the new, the newest :data:`KEPT` kept, summaries taken afresh.

    Keys sorted and samples rounded to the millisecond, so a file that learned nothing new is
    written byte for byte as it was, and a review shows only what changed.
    """
    endpoints: dict[str, dict[str, dict[str, Any]]] = {}
    for key in sorted(set(old) | set(new)):
        endpoint, model = key
        measures = {}
        for measure in MEASURES:
            values = [*old.get(key, {}).get(measure, {}).get("samples", ()), *new.get(key, {}).get(measure, ())]
            kept = [round(v, 3) for v in values][-KEPT:]
            if kept:
                measures[measure] = {**summary(kept), "samples": kept}
        if measures:
            endpoints.setdefault(endpoint, {})[model] = measures
    text = json.dumps({"about": _ABOUT, "endpoints": endpoints, "format": FORMAT}, indent=2, sort_keys=True)
    return re.sub(r"\[\s*([^\[\]{}]*?)\s*\]", lambda m: "[" + re.sub(r",\s+", ", ", m[1]) + "]", text) + "\n"


def learn(path: Path, tests: Iterable[Mapping[str, Any]]) -> str:
    """Merge the run's samples into the file (created if missing), atomically; returns what to tell the user."""
    from .cassettes.files import write_atomically

    new = samples(tests)
    try:
        old = read(path, factor=1.0, floor=0.0, option="--llm-learn-timeouts").summaries
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, merged(old, new))
    except (LLMGuardConfigError, OSError) as exc:
        return f"pytest-llm-guard: learned timeouts not written: {str(exc).removeprefix('pytest-llm-guard: ')}"
    count = sum(len(measures["attempt"]) for measures in new.values())
    return (
        f"pytest-llm-guard: learned timeouts written to {path}: {count} new samples of "
        f"{len(new)} endpoint/model pairs (the newest {KEPT} of each are kept)"
    )


def for_session(settings: Settings, root: Path) -> Learned | None:
    """The file ``learned_timeouts`` names (relative to the rootdir), or None when it names none."""
    if settings.learned_timeouts is None:
        return None
    option = f"learned_timeouts, set by {settings.source_of('learned_timeouts')}"
    return read(root / settings.learned_timeouts, factor=settings.learned_factor, floor=settings.learned_floor,
                option=option)  # fmt: skip


def in_reports(found: Learned, tests: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What the reports say of the learned limits: the file, its rule, and per model its limits, the
    samples behind them and how many of this run's attempts they capped."""
    capped: dict[tuple[str, str], int] = defaultdict(int)
    for test in tests:
        for attempt in test["attempts"]:
            if attempt.get("cap_by") == LEARNED_CALL_TIMEOUT:
                capped[(attempt["endpoint_name"] or attempt["endpoint"], attempt["model"] or "")] += 1
    return {
        "file": str(found.path),
        "missing": found.missing,
        "factor": found.factor,
        "floor": found.floor,
        "limits": [
            {"endpoint": endpoint, "model": model, "call_timeout": limits.call,
             "first_token_timeout": limits.first_token, "samples": limits.samples,
             "capped": capped[(endpoint, model)]}
            for endpoint, model, limits in found.known()
        ],
    }  # fmt: skip
