"""The five-minute story, in seconds: one evaluation harness (harness.py) against a
hanging primary endpoint and a healthy backup, first as it runs today, then under
pytest-llm-guard.

    python examples/chaos/run.py                          # times / 100: a 60 s timeout takes 0.6 s
    python examples/chaos/run.py --scale 0.005 --questions 2

Both endpoints are fault servers on 127.0.0.1: the primary takes every request and
never answers; the backup answers every question correctly. Nothing leaves the
machine and no API key is needed. Exits non-zero if the guarded run does not pass.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from pytest_llm_guard.fault import Fault, FaultServer  # noqa: E402

CONFIG = """\
[tool.pytest.ini_options]
addopts = "-p no:asyncio -p no:cacheprovider"

[tool.pytest_llm_guard]
record = "off"              # live calls: these endpoints are the demo's own local servers
breaker_failures = 2        # consecutive failures that open an endpoint's breaker

[[tool.pytest_llm_guard.endpoints]]
name = "primary"
base_url = "{primary}"
call_timeout = {call_timeout:g}  # 20 s, scaled
priority = 0

[[tool.pytest_llm_guard.endpoints]]
name = "backup"
base_url = "{backup}"
priority = 1
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.01, help="time scale (default 0.01: 60 s -> 0.6 s)")
    parser.add_argument("--questions", type=int, default=3, help="how many questions the harness asks (default 3)")
    args = parser.parse_args()
    if not (0 < args.scale <= 1 and 1 <= args.questions <= 4):
        parser.error("--scale must be in (0, 1] and --questions from 1 to 4")
    os.environ["HARNESS_TIME_SCALE"] = str(args.scale)  # before harness reads it
    import harness

    questions = list(harness.QUESTIONS)[: args.questions]
    with FaultServer() as primary, FaultServer() as backup, tempfile.TemporaryDirectory() as scratch:
        primary.plan(then=Fault.hang())
        for question, fact in harness.QUESTIONS.items():
            backup.reply(f"{fact[0].upper()}{fact[1:]}.", when=question)
        environment = {
            **os.environ,
            "OPENAI_BASE_URL": primary.base_url,
            "OPENAI_API_KEY": "not-needed-by-the-fault-servers",
        }
        os.environ.update(environment)
        real = 1 / args.scale
        print(f"primary {primary.base_url}: accepts requests, never answers")
        print(f"backup  {backup.base_url}: answers")
        scaled = f"every timeout and sleep x {args.scale:g} (a 60 s timeout takes {60 * args.scale:g} s)"
        print(f"{len(questions)} questions; {scaled}")

        print("\n1) Unguarded: the harness as it runs today, with its own client on the primary (OPENAI_BASE_URL)")
        unguarded_start = time.monotonic()
        answered = 0
        for question in questions:
            started = time.monotonic()
            try:
                answer = harness.ask(question)
                answered += 1
                outcome = repr(answer)
            except RuntimeError as exc:
                outcome = f"RuntimeError: {exc}"
            print(f"  {question}: {time.monotonic() - started:.2f} s -> {outcome}")
        unguarded = time.monotonic() - unguarded_start
        at_real_scale = f"at real scale {unguarded * real / 60:.1f} min"
        print(f"  {answered}/{len(questions)} answered in {unguarded:.2f} s ({at_real_scale})")

        print("\n2) Guarded: the same harness in a pytest session with pytest-llm-guard, configured as:\n")
        config = Path(scratch, "pyproject.toml")
        config.write_text(CONFIG.format(primary=primary.base_url, backup=backup.base_url, call_timeout=20 * args.scale))
        print("  " + config.read_text().replace("\n", "\n  "))
        results = Path(scratch, "results.jsonl")
        command = [
            sys.executable, "-m", "pytest", str(HERE / "guarded_scenarios.py"),
            "-c", str(config), "--rootdir", str(HERE), "-q", "--no-header",
        ]  # fmt: skip
        guarded_env = {**environment, "CHAOS_QUESTIONS": str(args.questions), "CHAOS_RESULTS": str(results)}
        session_start = time.monotonic()
        session = subprocess.run(command, env=guarded_env, capture_output=True, text=True)
        session_seconds = time.monotonic() - session_start
        tests = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
        for test in tests:
            print(f"  {test['line']}")
            if test["explanation"]:
                print("\n  pytest-llm-guard's explanation:\n    " + test["explanation"].replace("\n", "\n    ") + "\n")
        print("  pytest's report:\n    " + (session.stdout + session.stderr).strip().replace("\n", "\n    "))
        guarded = sum(t["seconds"] for t in tests if t["answered"])
        guarded_answered = sum(t["answered"] for t in tests)
        print(
            f"\n  {guarded_answered}/{len(questions)} answered in {guarded:.2f} s in the tests "
            f"(the whole pytest session, start-up included: {session_seconds:.2f} s)"
        )

    print(
        f"\nunguarded: {answered}/{len(questions)} answered in {unguarded:.2f} s; "
        f"guarded: {guarded_answered}/{len(questions)} answered in {guarded:.2f} s"
    )
    return session.returncode


if __name__ == "__main__":
    sys.exit(main())
