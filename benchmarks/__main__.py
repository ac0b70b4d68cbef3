"""python -m benchmarks [S1 S4 ...] [--quick] [--repeats N] [--scale F] [--out DIR] [--keep]

Runs the scenarios (all by default) as real pytest sessions against the fault server on
127.0.0.1, repeats interleaved (every unit once, then every unit again), prints the
markdown table and writes it with its JSON to DIR (default benchmarks/results;
benchmarks/results/quick for --quick).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from .report import markdown, merge, run_info, scenario_json
from .runner import Runner, Sample, Unit
from .scenarios import build

HERE = Path(__file__).resolve().parent


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="S", help="scenario ids to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: proves every unit runs")
    parser.add_argument("--repeats", type=int, help="interleaved repeats (default 3; --quick 1)")
    parser.add_argument(
        "--scale", type=float, help="time factor (default 0.01: a 60 s timeout takes 0.6 s; --quick 0.001)"
    )
    parser.add_argument("--out", type=Path, help="folder for latest.md and latest.json")
    parser.add_argument(
        "--jobs",
        type=int,
        help="units run at once besides the wait-bound ones (default 1; --quick 3: its timings prove nothing anyway)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated projects (their folder is printed)")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.jobs = args.jobs or (3 if args.quick else 1)
    args.scale = args.scale or (0.001 if args.quick else 0.01)
    args.out = args.out or (HERE / "results" / ("quick" if args.quick else ""))
    return args


def names(scenario_id: str) -> set[str]:
    """What selects a scenario on the command line: its id, and the number of a part (S10 runs S10b too)."""
    return {scenario_id.upper(), scenario_id.upper().rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


def describe(unit: Unit, sample: Sample) -> str:
    if sample.error:
        return f"ERROR {sample.error}"
    if sample.skipped:
        return f"skipped: {sample.skipped}"
    return f"session {sample.session_s:.3f} s, process {sample.process_s:.2f} s, requests {sample.requests}"


def run_repeat(runner: Runner, units: list[Unit], jobs: int, done: Callable[[Unit, Sample], None]) -> None:
    """Every unit once. The wait-bound ones (asleep on timeouts) run side by side first; the rest
    one at a time (``jobs`` at a time when asked), so they never compete with each other for CPU."""
    waiting = [unit for unit in units if unit.wait_bound]
    others = [unit for unit in units if not unit.wait_bound]
    if jobs <= 1:
        for unit, sample in zip(waiting, runner.run_side_by_side(waiting), strict=True):
            done(unit, sample)
        for unit in others:
            done(unit, runner.run(unit))
        return
    with ThreadPoolExecutor(max_workers=max(1, len(waiting))) as side, ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {side.submit(runner.run, unit): unit for unit in waiting}
        futures.update({pool.submit(runner.run, unit): unit for unit in others})
        for future in as_completed(futures):
            done(futures[future], future.result())


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    scenarios = build(args.quick, args.scale)
    wanted = {s.upper() for s in args.scenarios}
    unknown = wanted - {name for s in scenarios for name in names(s.id)}
    if unknown:
        print(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(s.id for s in scenarios)}")
        return 2
    scenarios = [s for s in scenarios if not wanted or names(s.id) & wanted]
    units = [unit for scenario in scenarios for unit in scenario.units]
    measured = list({u.key: u for u in [*units, *(u.same_as for u in units if u.same_as)] if not u.same_as}.values())
    samples: dict[str, list[Sample]] = {unit.key: [] for unit in [*units, *measured]}
    run = run_info(args.scale, args.repeats, args.quick)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="llm-guard-bench-"))
    runner = Runner(args.scale, root, keep=args.keep)
    try:
        for repeat in range(1, args.repeats + 1):

            def done(unit: Unit, sample: Sample, repeat: int = repeat) -> None:
                samples[unit.key].append(sample)
                print(f"[{repeat}/{args.repeats}] {unit.key}: {describe(unit, sample)}", flush=True)

            run_repeat(runner, measured, args.jobs, done)
            for unit in units:
                if unit.same_as:
                    samples[unit.key].append(samples[unit.same_as.key][-1])
    finally:
        if args.keep:
            print(f"generated projects kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    run["duration_s"] = round(time.perf_counter() - started, 1)
    fresh = [scenario_json(scenario, samples, run) for scenario in scenarios]
    args.out.mkdir(parents=True, exist_ok=True)
    results = merge(args.out / "latest.json", fresh, run)
    (args.out / "latest.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (args.out / "latest.md").write_text(table)
    print()
    print(table)
    print(
        f"{len(measured)} units x {args.repeats} repeat(s) in {run['duration_s']} s; "
        f"written to {args.out / 'latest.md'} and latest.json"
    )
    failed = [key for key, got in samples.items() if any(s.error for s in got)]
    if failed:
        print("units with failed runs: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
