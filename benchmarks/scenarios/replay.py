"""S9: a stream recorded with its timing, replayed as recorded (speed 1) and at once (speed 0).

The stream is recorded once (not measured) from the fault server, which sends each answer
in slices a scaled second apart; each replay runs against a fresh server that receives
nothing. The recorded time of each stream is read from the cassette's ``timing:`` (its
last chunk's arrival), the replayed time measured in the test from the call to the last
chunk through the openai SDK.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from pytest_llm_guard.fault import FaultServer

from ..runner import Context, Sample, Unit
from . import GUARD, Row, Scenario, Target, find
from .cassettes import project, slow_stream

PACED = """\
import time

import benchapp


def test_paced(llm_client):
    for n in range({streams} + 1):  # stream 0 warms the client up (imports, connection pool): not measured
        started = time.perf_counter()
        stream = llm_client.chat.completions.create(
            model=benchapp.MODEL, messages=benchapp.messages(f"stream {{n}}"), stream=True
        )
        assert sum(1 for _ in stream) >= 20
        if n:
            benchapp.metric("stream", time.perf_counter() - started)
"""

INTERVAL = 1.0  # seconds between the server's slices, before scaling: a model writing a chunk a second
SPEED_1, SPEED_0 = GUARD + " at speed 1", GUARD + " at speed 0"
ADDED_MS = 10.0


def recorded_ms(context: Context, servers: dict[str, FaultServer], sample: Sample) -> None:
    """Each stream's recorded time, from the cassette the replay read."""
    path = Path(context.folder) / "cassettes" / "test_paced" / "test_paced.yaml"
    interactions = yaml.safe_load(path.read_text())["interactions"]
    sample.extra["recorded_ms"] = [i["response"]["timing"]["chunks"][-1] * 1000 for i in interactions[1:]]


def s9(quick: bool, scale: float) -> Scenario:
    streams = 2 if quick else 5
    healthy = {"api": lambda server: None}

    def files(context: Context) -> dict[str, str]:
        return project(context, GUARD, "test_paced.py", PACED, streams=streams)

    def unit(contender: str, speed: int) -> Unit:
        prepare = Unit(  # a recording of its own: units may run side by side (--quick)
            "S9",
            contender + " (recording)",
            None,
            {"api": lambda server: slow_stream(scale, server, interval=INTERVAL)},
            files,
            plugins=("llm_guard",),
            record="all",
            keep_folder=f"S9-speed-{speed}",
        )
        return Unit(
            "S9",
            contender,
            None,
            healthy,
            files,
            plugins=("llm_guard",),
            args=(f"--llm-replay-speed={speed}",),
            record="none",
            work=streams,
            prepare=prepare,
            keep_folder=prepare.keep_folder,
            check=recorded_ms,
        )

    units = [unit(SPEED_1, 1), unit(SPEED_0, 0)]

    def value(unit: Unit, sample: Sample) -> float:
        times = sorted(sample.metrics.get("stream", []))
        return times[len(times) // 2] * 1000 if times else math.nan

    def targets(rows: list[Row]) -> list[Target]:
        out = []
        paced, at_once = find(rows, SPEED_1), find(rows, SPEED_0)
        if paced:
            recorded = sorted(ms for s in paced.samples for ms in s.extra.get("recorded_ms", []))
            if recorded:
                wanted = recorded[len(recorded) // 2]
                off = paced.median / wanted - 1
                out.append(
                    Target(
                        "speed 1 takes the recorded time within 10 %",
                        f"{paced.median:.0f} ms for {wanted:.0f} ms recorded ({off:+.1%})",
                        abs(off) <= 0.10,
                    )
                )
        if at_once:
            out.append(
                Target(
                    f"speed 0 adds < {ADDED_MS:g} ms (the whole replayed stream)",
                    f"{at_once.median:.1f} ms",
                    at_once.median < ADDED_MS,
                )
            )
        return out

    return Scenario(
        "S9",
        "Timed replay of a recorded stream",
        f"{streams} streamed chat completions of 20 events (after one that warms the client up), recorded by "
        "pytest-llm-guard from the fault server, "
        f"which sends each answer in 20 slices {INTERVAL * scale * 1000:g} ms apart ({INTERVAL:g} s, scaled); "
        "the cassette keeps each chunk's arrival. Replayed offline through the openai SDK with "
        "--llm-replay-speed=1 (as recorded) and 0 (at once). Value: the median time from the call to the last "
        "chunk; the recorded time is the last chunk's arrival in the cassette.",
        "ms per stream, median",
        units,
        targets=targets,
        value=value,
        ratios=False,
    )
