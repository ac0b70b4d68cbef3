"""The scenarios S0-S10: what each sets up, who competes, and the targets it is judged by.

A scenario is a list of units (contender x size) plus a function that turns the rows of
its results into target verdicts. Sizes come in two sets: the full run's and ``--quick``'s
tiny ones, which only prove that every unit still runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..runner import Sample, Unit

GUARD = "pytest-llm-guard"
NAIVE = "naive loop"
SDK = "SDK defaults + fallback"
TENACITY = "tenacity"
IDEAL = "ideal"
VCRPY = "pytest-recording (vcrpy)"
CASSETTER = "cassetter"
LIVE = "live call, no cassette"


@dataclass
class Row:
    """A unit's samples reduced to what the table shows."""

    unit: Unit
    values: list[float]  # the metric, one per repeat
    samples: list[Sample]

    @property
    def median(self) -> float:
        ordered = sorted(self.values)
        middle = len(ordered) // 2
        return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclass
class Target:
    goal: str
    measured: str
    met: bool | None  # None: could not be judged (a unit failed or did not run)
    note: str = ""


@dataclass
class Scenario:
    id: str
    title: str
    setup: str  # one paragraph for the report
    metric: str  # what the value column holds, with its unit
    units: list[Unit]
    targets: Callable[[list[Row]], list[Target]] = lambda rows: []
    value: Callable[[Unit, Sample], float] | None = None  # default: session seconds x extrapolation / work
    ratios: bool = True  # show each contender's ratio to pytest-llm-guard
    floor: str | None = None  # the contender that is the physical floor: every row is also read against it
    notes: list[str] = field(default_factory=list)


def default_value(unit: Unit, sample: Sample) -> float:
    assert sample.session_s is not None
    return sample.session_s * unit.extrapolate / unit.work + unit.offset


def find(rows: list[Row], contender: str, size: int | None = None) -> Row | None:
    for row in rows:
        if row.unit.contender == contender and (size is None or row.unit.size == size):
            return row if row.values else None
    return None


def build(quick: bool, scale: float) -> list[Scenario]:
    from . import baseline, cassettes, outages, overhead, ratelimits, replay, shared

    return [
        baseline.s0(quick, scale),
        outages.s1(quick, scale),
        outages.s2(quick, scale),
        ratelimits.s3(quick, scale),
        overhead.s4(quick, scale),
        cassettes.s5(quick, scale),
        outages.s6(quick, scale),
        cassettes.s7(quick, scale),
        overhead.s8(quick, scale),
        replay.s9(quick, scale),
        shared.s10(quick, scale),
        ratelimits.s10b(quick, scale),
    ]
