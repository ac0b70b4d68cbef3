"""Results: from samples to rows and target verdicts, to JSON, and from JSON to markdown.

The markdown is rendered from the JSON alone, so a run of some scenarios
(``python -m benchmarks S4 S8``) can update theirs in the file and leave the others as
they were, each scenario keeping the machine and versions it was measured with.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .runner import Sample, Unit
from .scenarios import GUARD, IDEAL, Row, Scenario, default_value

PACKAGES = (
    "pytest-llm-guard",
    "openai",
    "httpx2",
    "pytest",
    "pytest-xdist",
    "pytest-timeout",
    "tenacity",
    "vcrpy",
    "pytest-recording",
    "cassetter",
)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_at_start": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    root = Path(__file__).resolve().parent.parent
    try:
        git = ["git", "-C", str(root)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        # Only changes to the code measured count: not the README, not the results being written.
        code = ["pytest_llm_guard", "benchmarks", "pyproject.toml", ":!benchmarks/results"]
        changed = subprocess.run([*git, "status", "--porcelain", "--", *code], capture_output=True, text=True).stdout
        commit += " with uncommitted changes" if commit and changed.strip() else ""
    except OSError:
        commit = ""
    found["commit"] = commit or None
    return found


def rows_of(scenario: Scenario, samples: dict[str, list[Sample]]) -> list[Row]:
    value = scenario.value or default_value
    rows = []
    for unit in scenario.units:
        good = [s for s in samples.get(unit.key, []) if s.error is None and s.skipped is None]
        rows.append(Row(unit, [value(unit, s) for s in good], good))
    return rows


def spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "min": None, "max": None}
    ordered = sorted(values)
    middle = len(ordered) // 2
    median = ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2
    return {"median": median, "min": ordered[0], "max": ordered[-1]}


def scenario_json(scenario: Scenario, samples: dict[str, list[Sample]], run: dict[str, Any]) -> dict[str, Any]:
    rows = rows_of(scenario, samples)
    guard_by_size = {row.unit.size: row for row in rows if row.unit.contender == GUARD and row.values}
    ideal = next((row for row in rows if row.unit.contender == IDEAL and row.values), None)
    floor_by_size = {row.unit.size: row for row in rows if row.unit.contender == scenario.floor and row.values}
    out_rows = []
    for row in rows:
        unit: Unit = row.unit
        every = samples.get(unit.key, [])
        guard = guard_by_size.get(unit.size)
        ratio = row.median / guard.median if scenario.ratios and guard and row.values and guard.median else None
        entry: dict[str, Any] = {
            "contender": unit.contender,
            "size": unit.size,
            "values": row.values,
            **spread(row.values),
            "session_s": [s.session_s for s in every if not s.skipped],
            "process_s": [s.process_s for s in every if not s.skipped],
            "requests": [s.requests for s in every],
            "outcomes": every[-1].outcomes if every else {},
            "extra": [s.extra for s in every if s.extra],
            "metrics": {
                k: spread([v for s in every for v in s.metrics.get(k, [])])
                for k in sorted({k for s in every for k in s.metrics})
            },
            "extrapolate": unit.extrapolate,
            "note": unit.note,
            "ratio_to_guard": ratio,
            "errors": [s.error for s in every if s.error],
            "skipped": next((s.skipped for s in every if s.skipped), None),
        }
        if unit.contender == GUARD and ideal and row.values:
            entry["ratio_to_ideal"] = row.median / ideal.median
        floor = floor_by_size.get(unit.size)
        if floor is not None and row.values and unit.contender != scenario.floor:
            entry["ratio_to_floor"] = row.median / floor.median
            entry["above_floor"] = row.median - floor.median
        out_rows.append(entry)
    targets = [t.__dict__ for t in scenario.targets(rows)]
    return {
        "id": scenario.id,
        "title": scenario.title,
        "setup": scenario.setup,
        "metric": scenario.metric,
        "run": run,
        "rows": out_rows,
        "targets": targets,
    }


def merge(path: Path, fresh: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
    """The results file with these scenarios replaced; others stay as they were measured."""
    old: dict[str, Any] = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    by_id = {s["id"]: s for s in old.get("scenarios", [])}
    by_id.update({s["id"]: s for s in fresh})
    return {"latest_run": run, "scenarios": [by_id[k] for k in sorted(by_id)]}


def number(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def ratio_text(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}×" if value >= 10 else f"{value:.2f}×"


def requests_text(row: dict[str, Any]) -> str:
    counts = [r for r in row["requests"] if r]
    if not counts:
        return "—"
    last = counts[len(counts) // 2]
    if len(last) > 1:
        text = " · ".join(f"{name} {n}" for name, n in last.items())
    else:
        text = str(sum(last.values()))
    early = [e["early"] for e in row["extra"] if "early" in e]
    if early:
        text += f" ({max(early)} early)"
    if row["extrapolate"] > 1:
        text += f", ×{row['extrapolate']}"
    return text


def outcome_text(row: dict[str, Any]) -> str:
    o = row["outcomes"]
    if not o:
        return "—"
    parts = [f"{o[k]} {k}" for k in ("passed", "failed", "skipped", "errors") if o.get(k)]
    return ", ".join(parts) or "none"


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Benchmark results", ""]
    runs = {json.dumps(s["run"], sort_keys=True): s["run"] for s in results["scenarios"]}
    for run in runs.values():
        ids = [s["id"] for s in results["scenarios"] if s["run"] == run]
        m, v = run["machine"], run["versions"]
        lines.append(
            f"{', '.join(ids)}: {run['date']}, {'quick run, ' if run['quick'] else ''}time scale "
            f"1/{round(1 / run['scale'])}, {run['repeats']} interleaved repeat(s); {m['cpu']}, {m['cores']} cores, "
            f"{m['system']}, Python {m['python']}, load {m['load_at_start']} at start; "
            + ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "commit")
            + (f"; commit {v['commit']}" if v.get("commit") else "")
            + "."
        )
        lines.append("")
    lines += ["## Targets", "", "| | target | measured | |", "| --- | --- | --- | --- |"]
    for s in results["scenarios"]:
        for t in s["targets"]:
            verdict = {True: "met", False: "**missed**", None: "not judged"}[t["met"]]
            note = f" — {t['note']}" if t["note"] else ""
            lines.append(f"| {s['id']} | {t['goal']} | {t['measured']} | {verdict}{note} |")
    lines += [
        "",
        "## Results",
        "",
        "Median (min–max) of the repeats. Ratios are the contender's median over pytest-llm-guard's, on the "
        "pytest session's own time (start-up excluded); whole-process times beside them. A row marked ×N was "
        "measured on a part of the suite and multiplied (see its note).",
        "",
        "| | contender | size | value | whole process s | requests | tests (last repeat) | ratio | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in results["scenarios"]:
        lines.append(f"| **{s['id']}** | *{s['title']}* | | *{s['metric']}* | | | | | |")
        for row in s["rows"]:
            value = f"{number(row['median'])} ({number(row['min'])}–{number(row['max'])})"
            if row["errors"]:
                value += f" ⚠ {len(row['errors'])} failed run(s)"
            if row["skipped"]:
                value = "not run: " + row["skipped"]
            process = [p for p in row["process_s"] if p is not None]
            process_text = number(sorted(process)[len(process) // 2]) if process else "—"
            if row["contender"] == GUARD and row.get("ratio_to_ideal"):
                ratio = f"{row['ratio_to_ideal']:.2f}× the ideal"
            else:
                ratio = ratio_text(row["ratio_to_guard"]) if row["contender"] != GUARD else ""
            if row.get("ratio_to_floor"):
                unit = s["metric"].split()[0]
                above = f"{ratio_text(row['ratio_to_floor'])} the floor, {row['above_floor']:+.3f} {unit} above it"
                ratio = f"{ratio}; {above}" if ratio else above
            cpu = row["metrics"].get("cpu_ms", {}).get("median")
            if cpu is not None:
                ratio += f"{'; ' if ratio else ''}CPU {number(cpu)} ms per call"
            size = "" if row["size"] is None else f"{row['size']:,}"
            lines.append(
                f"| {s['id']} | {row['contender']} | {size} | {value} | {process_text} | {requests_text(row)} | "
                f"{outcome_text(row)} | {ratio} | {row['note']} |"
            )
    lines += ["", "## Scenarios", ""]
    for s in results["scenarios"]:
        lines.append(f"- **{s['id']} {s['title']}.** {s['setup']}")
    return "\n".join(lines) + "\n"


def run_info(scale: float, repeats: int, quick: bool) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "scale": scale,
        "repeats": repeats,
        "quick": quick,
        "machine": machine(),
        "versions": versions(),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
    }
