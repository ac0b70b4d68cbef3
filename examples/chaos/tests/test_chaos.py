"""The chaos demo as a test: run.py must show the guarded run answering, far sooner, and saying why."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[1] / "run.py"


def test_the_guarded_run_answers_far_sooner_and_explains_itself() -> None:
    # Scaled so a 60 s timeout takes 0.3 s: unguarded, two questions take at least
    # 2 x 5 x 0.3 s of timeouts, however fast the machine.
    demo = subprocess.run(
        [sys.executable, str(RUN), "--questions", "2", "--scale", "0.005"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = demo.stdout + demo.stderr
    assert demo.returncode == 0, output
    times = re.search(r"unguarded: 0/2 answered in ([\d.]+) s; guarded: 2/2 answered in ([\d.]+) s", output)
    assert times, output
    unguarded, guarded = map(float, times.groups())
    assert unguarded >= 3.0  # the timeouts alone
    assert guarded < unguarded / 2, output  # a generous bound: it is ten times faster on an idle machine
    # The guard explains itself: the failover, the breaker, and the refusal that stopped the own client
    # (refused at once, never charged as retries).
    assert "failover to backup" in output
    assert "endpoint primary" in output and "breaker open" in output
    assert "the harness's own client: " in output and "LLMNoEndpoint (refused, nothing sent)" in output
    assert "- primary (" in output and "What to do: fix or wait for the endpoint" in output
    assert "retries budget spent" not in output
