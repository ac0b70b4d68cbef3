"""The benchmark harness still runs: `python -m benchmarks --quick` on tiny sizes.

Timings are never asserted (a busy machine makes any of them miss); what is checked is
that every scenario ran, every contender has its row, and the JSON and the markdown
are well formed. Rows of contenders whose package (the `bench` extra) is not installed
say so instead of holding numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GUARD = "pytest-llm-guard"
FAULTS = [GUARD, "ideal", "naive loop", "SDK defaults + fallback", "tenacity"]
S4_FLOOR = "SDK over an in-memory transport, plugin off (the floor)"
CASSETTE_LIBRARIES = [GUARD, "pytest-recording (vcrpy)", "cassetter", "live call, no cassette"]
EXPECTED = {
    "S0": ["fault server alone (http.client)"],
    "S1": FAULTS,
    "S2": FAULTS,
    "S3": FAULTS,
    "S4": [GUARD, "raw client in a guarded test", "raw client, plugin off", S4_FLOOR],
    "S5": [*CASSETTE_LIBRARIES, S4_FLOOR],  # the same floor: the SDK answered in memory
    "S6": [GUARD, GUARD + ", no probe"],
    "S7": CASSETTE_LIBRARIES,
    "S8": [
        f"{contender}{way}"
        for contender in (GUARD + " installed", "plugin disabled (-p no:llm_guard)")
        for way in ("", ", rewritten .pyc cached", ", no .pyc cached")
    ],
    "S9": [GUARD + " at speed 1", GUARD + " at speed 0"],
    "S10": [GUARD + ", one Redis", GUARD + ", local stores"],
    "S10b": [GUARD + ", rpm limiter", GUARD + ", no limiter"],
}
pytestmark = pytest.mark.benchmarks  # its own command, `pytest -m benchmarks`: see pyproject.toml

BENCH_EXTRA = {"pytest-recording (vcrpy)": "pytest_recording", "cassetter": "cassetter"}
NEEDS_REDIS_SERVER = GUARD + ", one Redis"  # not run where redis-server is not installed


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_GUARD_", "PYTEST_"))}
    env["CI"] = "true"  # generated projects must set their record mode, not inherit replay-only
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    return done, out


def test_the_quick_run_succeeds_and_prints_the_table(quick_run) -> None:
    done, _ = quick_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "## Targets" in done.stdout and "## Results" in done.stdout


def test_every_scenario_has_a_row_for_every_contender(quick_run) -> None:
    _, out = quick_run
    results = json.loads((out / "latest.json").read_text())
    scenarios = {s["id"]: s for s in results["scenarios"]}
    assert sorted(scenarios) == sorted(EXPECTED)
    for sid, contenders in EXPECTED.items():
        assert {row["contender"] for row in scenarios[sid]["rows"]} == set(contenders), sid


def test_rows_hold_measurements_or_say_why_not(quick_run) -> None:
    _, out = quick_run
    results = json.loads((out / "latest.json").read_text())
    for scenario in results["scenarios"]:
        run = scenario["run"]
        assert run["quick"] and run["machine"]["cores"] and run["versions"]["pytest-llm-guard"]
        for row in scenario["rows"]:
            where = f"{scenario['id']} {row['contender']} {row['size']}"
            assert not row["errors"], where
            if row["skipped"]:
                assert row["contender"] in BENCH_EXTRA or row["contender"] == NEEDS_REDIS_SERVER, where
                continue
            assert row["values"] and row["min"] <= row["median"] <= row["max"], where
            assert all(s is not None and s > 0 for s in row["session_s"]), where
        for target in scenario["targets"]:
            assert set(target) == {"goal", "measured", "met", "note"}


def test_replays_reach_no_server(quick_run) -> None:
    _, out = quick_run
    s5 = next(s for s in json.loads((out / "latest.json").read_text())["scenarios"] if s["id"] == "S5")
    for row in s5["rows"]:
        if row["contender"] != "live call, no cassette" and not row["skipped"]:
            assert all(sum(r.values()) == 0 for r in row["requests"]), row["contender"]


def test_the_markdown_names_every_scenario_and_contender(quick_run) -> None:
    _, out = quick_run
    table = (out / "latest.md").read_text()
    for sid, contenders in EXPECTED.items():
        assert f"| **{sid}** |" in table
        for contender in contenders:
            assert f"| {sid} | {contender} |" in table
    header = next(line for line in table.splitlines() if line.startswith("| | contender |"))
    width = header.count("|")
    results = table[table.index("## Results") :].splitlines()
    rows = [line for line in results if line.startswith("| S")]
    assert rows and all(line.count("|") == width for line in rows)


def test_s4_reads_every_contender_against_its_floor_with_cpu_time(quick_run) -> None:
    _, out = quick_run
    s4 = next(s for s in json.loads((out / "latest.json").read_text())["scenarios"] if s["id"] == "S4")
    for row in s4["rows"]:
        assert row["metrics"]["cpu_ms"]["median"] > 0, row["contender"]
        if row["contender"] == S4_FLOOR:
            assert "ratio_to_floor" not in row and all(not r for r in row["requests"]), "the floor sends nothing"
        else:
            assert row["ratio_to_floor"] == pytest.approx(row["median"] / floor_median(s4, row["size"]))
            assert row["above_floor"] == pytest.approx(row["median"] - floor_median(s4, row["size"]))
    assert "the floor, " in (out / "latest.md").read_text()


def floor_median(scenario: dict, size: int) -> float:
    return next(r["median"] for r in scenario["rows"] if r["contender"] == S4_FLOOR and r["size"] == size)
