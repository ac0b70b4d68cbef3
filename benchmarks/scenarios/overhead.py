"""S4 and S8: what the plugin costs when all is well.

S4: per call, on a healthy zero-latency endpoint (the fault server answers at once), read
against its floor: the same SDK call answered in memory (``httpx2.MockTransport``) with the
bytes the fault server sends, the plugin off. Each call's CPU time (process time) is kept too.
S8: to a suite that never calls an LLM, per test (2,000 plain tests) and fixed (one test).
"""

from __future__ import annotations

from pytest_llm_guard.fault import FaultServer

from ..projects import MODEL, app, pyproject, sdk_conftest
from ..runner import Context, Sample, Unit
from . import GUARD, Row, Scenario, Target, find

RAW_OFF = "raw client, plugin off"
RAW_GUARDED = "raw client in a guarded test"
FLOOR = "SDK over an in-memory transport, plugin off (the floor)"

LOOP = """\
import time

import pytest

import benchapp

URL = {url!r}
{prelude}

{marker}def test_calls({fixtures}):
    chat_client = {client}
    started = time.process_time()
    for i in range({calls}):
        reply = chat_client.chat.completions.create(model=benchapp.MODEL, messages=benchapp.messages(f"q{{i}}"))
        assert reply.choices[0].message.content
    benchapp.metric("cpu_ms", (time.process_time() - started) * 1000 / {calls})
"""
FLOOR_CLIENT = """
import httpx2
import openai

ANSWER = {answer!r}  # status, headers, body: what the fault server sends for the first question


def answer(request):
    status, headers, body = ANSWER
    return httpx2.Response(status, headers=headers, content=body)


def floor_client():
    timeout = httpx2.Timeout(benchapp.SDK_DEFAULT_TIMEOUT[0], connect=benchapp.SDK_DEFAULT_TIMEOUT[1])
    http_client = openai.DefaultHttpx2Client(transport=httpx2.MockTransport(answer))
    return openai.OpenAI(base_url=URL, api_key="sk-bench", timeout=timeout, http_client=http_client)
"""
# A deadline no healthy call comes near: S4 measures the guard's bookkeeping, not a limit firing.
BUDGET = "@pytest.mark.llm_budget(deadline=600)\n"


def fault_answer() -> tuple[int, list[tuple[str, str]], bytes]:
    """What a fault server of its own answers the loop's first question, byte for byte."""
    import httpx2

    with FaultServer() as server:
        body = {"messages": [{"role": "user", "content": "q0"}], "model": MODEL}
        response = httpx2.post(f"{server.base_url}/chat/completions", json=body)
    return response.status_code, list(response.headers.items()), response.content


def s4(quick: bool, scale: float) -> Scenario:
    sizes = (20,) if quick else (200, 2000)
    raw = "benchapp.client(URL, benchapp.SDK_DEFAULT_TIMEOUT)"
    shapes = {  # fixtures, client, marker
        GUARD: ("llm_client", "llm_client", BUDGET),
        RAW_GUARDED: ("", raw, BUDGET),
        RAW_OFF: ("", raw, ""),
        FLOOR: ("", "floor_client()", ""),
    }

    def unit(contender: str, calls: int) -> Unit:
        fixtures, client, marker = shapes[contender]

        def files(context: Context) -> dict[str, str]:
            url = context.urls.get("api", "http://127.0.0.1:9/v1")  # the floor sends nothing
            prelude = FLOOR_CLIENT.format(answer=fault_answer()) if contender == FLOOR else ""
            test = LOOP.format(url=url, prelude=prelude, marker=marker, fixtures=fixtures, client=client, calls=calls)
            return {
                "pyproject.toml": pyproject({"base_url": url, "model": MODEL}),
                "conftest.py": sdk_conftest(context.scale),
                "benchapp.py": app(context.scale),
                "test_calls.py": test,
            }

        plugins = () if contender in (RAW_OFF, FLOOR) else ("llm_guard",)
        servers = {} if contender == FLOOR else {"api": lambda server: None}
        return Unit("S4", contender, calls, servers, files, plugins=plugins, work=calls)

    units = [unit(contender, calls) for calls in sizes for contender in shapes]

    def value(unit: Unit, sample: Sample) -> float:
        assert sample.session_s is not None
        return sample.session_s * 1000 / unit.work

    def targets(rows: list[Row]) -> list[Target]:
        out = []
        for contender in (GUARD, RAW_GUARDED):
            ratios, cpu = {}, {}
            for calls in sizes:
                mine, base = find(rows, contender, calls), find(rows, RAW_OFF, calls)
                if mine and base:
                    ratios[calls] = mine.median / base.median
                    cpu[calls] = cpu_ms(mine) - cpu_ms(base)
            if len(ratios) == len(sizes):
                shown = ", ".join(f"{ratio:.2f}x at {calls}" for calls, ratio in ratios.items())
                flat = max(ratios.values()) - min(ratios.values()) <= 0.05
                goal = f"{contender}: <= 1.05x a raw call with the plugin off, flat from {sizes[0]} to {sizes[-1]}"
                out.append(Target(goal, shown, all(r <= 1.05 for r in ratios.values()) and flat))
                goal = f"{contender}: <= +0.1 ms CPU per call over a raw call with the plugin off"
                if all(extra == extra for extra in cpu.values()):  # NaN: a run kept no CPU time
                    shown = ", ".join(f"{extra:+.3f} ms at {calls}" for calls, extra in cpu.items())
                    out.append(Target(goal, shown, all(extra <= 0.1 for extra in cpu.values())))
                else:
                    out.append(Target(goal, "no CPU time kept", None))
        return out

    return Scenario(
        "S4",
        "Per-call overhead, healthy zero-latency endpoint",
        f"One test making {' or '.join(str(s) for s in sizes)} calls in a row to an endpoint that answers at once; "
        "the SDK's client with its defaults. Records off: live calls. The floor is the same SDK call answered "
        "in memory (httpx2.MockTransport) with the bytes the fault server sends, the plugin off: what the SDK "
        "alone costs. CPU: the test process's CPU time per call, in the loop.",
        "ms per call (session time / calls)",
        units,
        targets=targets,
        value=value,
        floor=FLOOR,
    )


def cpu_ms(row: Row) -> float:
    """The median CPU time per call of a row's repeats, in ms."""
    values = sorted(v for sample in row.samples for v in sample.metrics.get("cpu_ms", []))
    return values[len(values) // 2] if values else float("nan")


PLAIN = """\
def test_{i}():
    assert {i} + 1 > {i}
"""


def s8(quick: bool, scale: float) -> Scenario:
    files_count, per_file = (2, 10) if quick else (20, 100)
    many = files_count * per_file
    installed, disabled = GUARD + " installed", "plugin disabled (-p no:llm_guard)"
    # The fixed cost, both ways pytest may find the plugin's modules: its rewritten .pyc cached beside them
    # (written by an earlier run), or none (a fresh or read-only install, PYTHONDONTWRITEBYTECODE=1).
    ways = {"cached": "rewritten .pyc cached", "none": "no .pyc cached"}

    def unit(contender: str, tests: int, bytecode: str | None = None) -> Unit:
        def files(context: Context) -> dict[str, str]:
            out = {"pyproject.toml": pyproject()}
            count = files_count if tests > 1 else 1
            for f in range(count):
                body = "".join(PLAIN.format(i=f * per_file + i) for i in range(per_file if tests > 1 else 1))
                out[f"test_plain_{f}.py"] = body
            return out

        plugins = ("llm_guard",) if contender == installed else ()
        shown = f"{contender}, {ways[bytecode]}" if bytecode else contender
        return Unit("S8", shown, tests, {}, files, plugins=plugins, work=tests, bytecode=bytecode or "cached")

    units = [unit(contender, many) for contender in (installed, disabled)]
    units += [unit(contender, 1, way) for way in ways for contender in (installed, disabled)]

    def value(unit: Unit, sample: Sample) -> float:
        if unit.size == 1:  # the fixed cost is paid at start-up: whole-process time
            return sample.process_s * 1000
        assert sample.session_s is not None
        return sample.session_s * 1000 / unit.work

    def targets(rows: list[Row]) -> list[Target]:
        out = []
        for words in ways.values():
            on, off = find(rows, f"{installed}, {words}", 1), find(rows, f"{disabled}, {words}", 1)
            if on and off:
                fixed = on.median - off.median
                goal = f"<= 15 ms fixed, {words} (one test, whole process)"
                out.append(Target(goal, f"{fixed:+.0f} ms", fixed <= 15))
        on, off = find(rows, installed, many), find(rows, disabled, many)
        if on and off:
            share = on.median / off.median - 1
            out.append(Target(f"<= 2% per test ({many} plain tests, session)", f"{share:+.1%}", share <= 0.02))
        return out

    return Scenario(
        "S8",
        "Cost to a suite that does not use the plugin",
        f"{many} plain tests in {files_count} files, then a single test; the plugin installed against the "
        "plugin disabled (which pytest then never imports). The single test runs both ways pytest may find "
        "the plugin's modules: with the .pyc of their rewritten asserts cached beside them by an earlier run, "
        "and with none (removed first, PYTHONDONTWRITEBYTECODE=1: a fresh or read-only install, as in CI).",
        "ms per test (session) for the suite; whole-process ms for one test",
        units,
        targets=targets,
        value=value,
        ratios=False,
    )
