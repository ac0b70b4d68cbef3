"""One measured unit: a generated pytest project, run as ``python -m pytest`` in a subprocess.

The session's own time comes from the generated conftest (``pytest_sessionstart`` to
``pytest_sessionfinish``, start-up excluded); the whole-process time is measured here,
around the subprocess. Each run gets fresh fault servers of its own, on 127.0.0.1, in
this process: the measured sessions are other processes, so the servers' threads never
compete with the code being measured for its GIL, and a unit's requests are exactly
what its servers logged.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from pytest_llm_guard.fault import FaultServer

# Plugins installed with the `bench` extra that a unit does not use stay off, so every
# contender runs with the same set of plugins loaded. (pytest-recording and cassetter
# both add --record-mode: with both loaded pytest refuses to start.)
OPTIONAL_PLUGINS = ("llm_guard", "recording", "cassetter", "asyncio")
PLUGIN_MODULES = {"recording": "pytest_recording", "cassetter": "cassetter"}  # the `bench` extra's
# Variables of the benchmark's own environment that would change a generated project's behaviour.
SCRUBBED_ENV = (
    "PYTEST_ADDOPTS",
    "PYTEST_PLUGINS",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
    "PYTEST_XDIST_AUTO_NUM_WORKERS",
)


@dataclass
class Context:
    """What a unit's files and checks are built from."""

    scale: float  # time factor: 0.01 turns a 60 s timeout into 0.6 s
    urls: dict[str, str]  # server name -> base_url (".../v1")
    folder: Path


@dataclass
class Unit:
    """One contender at one size in one scenario: a pytest project and how to read its run."""

    scenario: str
    contender: str
    size: int | None
    servers: Mapping[str, Callable[[FaultServer], None]]  # name -> plan applied to a fresh server
    files: Callable[[Context], dict[str, str]]  # relative path -> text
    plugins: tuple[str, ...] = ()  # optional plugins this unit loads (the rest are disabled)
    args: tuple[str, ...] = ()
    record: str = "off"  # LLM_GUARD_RECORD (set explicitly: under CI the plugin defaults to replay only)
    work: int = 1  # calls, requests or tests the metric is divided by
    extrapolate: int = 1  # the full suite costs this many times the measured one (stateless contenders)
    offset: float = 0.0  # seconds added to the measured value (the ideal: the least cost of detection)
    wait_bound: bool = False  # spends its time waiting on timeouts: may run beside other wait-bound units
    keep_folder: str | None = None  # a folder kept across repeats (recorded cassettes), else a fresh one
    prepare: Unit | None = None  # run once before the first repeat (recording cassettes), not measured
    same_as: Unit | None = None  # not run itself: shows that unit's samples (one healthy run, several ideals)
    check: Callable[[Context, dict[str, FaultServer], Sample], None] | None = None  # scenario-specific readings
    env: Mapping[str, str] = field(default_factory=dict)  # more environment for the unit's sessions
    sessions: int = 1  # the project runs this many times in a row against the same servers (one store, S10)
    unavailable: Callable[[], str | None] | None = None  # why the unit cannot run on this machine, or None
    note: str = ""
    timeout: float = 300.0
    bytecode: str = "cached"  # pytest's rewritten .pyc of the plugins: "cached" (an unmeasured session wrote them
    # first, as any run after a suite's first finds them), "none" (removed first, none written: a fresh or
    # read-only install). Measured sessions never write bytecode.

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.contender}" + (f"/{self.size}" if self.size is not None else "")


@dataclass
class Sample:
    """One run of a unit."""

    session_s: float | None
    process_s: float
    requests: dict[str, int]
    outcomes: dict[str, int]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None  # why the unit could not run here (a package of the `bench` extra missing)


TIMING_CONFTEST = """\
# Benchmark timing: the session's own time (start-up excluded) and the test outcomes,
# written by the controller only (under xdist, workers report to it).
import gc as _gc
import json as _json
import os as _os
import time as _time

import pytest

_started = []
_outcomes = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    # Every contender's timed part starts from a collected heap: a full collection owed by start-up
    # (tens of ms) would otherwise land in whichever session crosses CPython's threshold first.
    _gc.collect()
    _started.append(_time.perf_counter())


def pytest_runtest_logreport(report):
    if report.when == "call" and report.outcome != "skipped":
        _outcomes[report.outcome] += 1
    elif report.skipped:
        _outcomes["skipped"] += 1
    elif report.failed:
        _outcomes["errors"] += 1


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if hasattr(session.config, "workerinput"):
        return
    elapsed = _time.perf_counter() - _started[0]
    with open(_os.environ["BENCH_RESULT"], "w") as out:
        _json.dump({"session_s": elapsed, "outcomes": _outcomes, "exitstatus": int(exitstatus)}, out)
"""


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV and not k.startswith("LLM_GUARD_")}
    env["OPENAI_API_KEY"] = "sk-bench-not-a-key"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def forget_plugin_bytecode() -> None:
    """Remove every .pyc of the plugin's modules: those pytest wrote for their rewritten asserts (an installed
    plugin's package) and Python's own (an editable install, which pytest does not rewrite, uses these), so
    the next session compiles every module it imports, as a fresh or read-only install without either does."""
    import pytest_llm_guard

    for pyc in Path(pytest_llm_guard.__file__).parent.rglob("__pycache__/*.pyc"):
        pyc.unlink(missing_ok=True)


WARM_CONFTEST = """\
import importlib
import pkgutil

for _name in {packages!r}:
    _package = importlib.import_module(_name)
    for _module in pkgutil.walk_packages(getattr(_package, "__path__", []), _name + "."):
        if not _module.name.endswith(".__main__"):  # a program (the fault server's CLI), not a module: it exits
            importlib.import_module(_module.name)
"""


def cache_rewritten_plugins(plugins: tuple[str, ...], folder: Path) -> None:
    """Let pytest write the rewritten .pyc of every module of these plugins (and of this one), as a suite's
    first run does: one session in ``folder`` whose conftest imports them all, bytecode writing on."""
    packages = ["pytest_llm_guard"] + [PLUGIN_MODULES[name] for name in plugins if name in PLUGIN_MODULES]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conftest.py").write_text(WARM_CONFTEST.format(packages=packages))
    (folder / "test_warm.py").write_text("def test_warm():\n    pass\n")
    env = base_env()
    del env["PYTHONDONTWRITEBYTECODE"]
    command = [sys.executable, "-m", "pytest", "-q", *plugin_flags(plugins)]
    subprocess.run(command, cwd=folder, env=env, capture_output=True, timeout=300)


def plugin_flags(loaded: tuple[str, ...]) -> list[str]:
    flags = ["-p", "no:cacheprovider"]
    for name in OPTIONAL_PLUGINS:
        if name not in loaded:
            flags += ["-p", f"no:{name}"]
    return flags


class Runner:
    """Runs units; keeps the folders of recorded cassettes for the whole benchmark run."""

    def __init__(self, scale: float, root: Path, keep: bool = False, log: Callable[[str], None] = print) -> None:
        self.scale = scale
        self.root = root
        self.keep = keep
        self.log = log
        self._prepared: set[str] = set()
        self._cached: set[tuple[str, ...]] = set()  # plugin sets whose rewritten .pyc are known to be written

    def folder(self, unit: Unit) -> Path:
        if unit.keep_folder:
            path = self.root / unit.keep_folder
            path.mkdir(parents=True, exist_ok=True)
            return path
        return Path(tempfile.mkdtemp(prefix=unit.key.replace("/", "-") + "-", dir=self.root))

    def run(self, unit: Unit) -> Sample:
        missing = [name for name in unit.plugins if name in PLUGIN_MODULES and not find_spec(PLUGIN_MODULES[name])]
        if missing:
            wanted = ", ".join(PLUGIN_MODULES[name] for name in missing)
            return Sample(None, 0.0, {}, {}, skipped=f"not installed ({wanted}): pip install -e '.[bench]'")
        reason = unit.unavailable() if unit.unavailable is not None else None
        if reason:
            return Sample(None, 0.0, {}, {}, skipped=reason)
        if unit.prepare is not None and unit.prepare.key not in self._prepared:
            started = time.perf_counter()
            sample = self.run(unit.prepare)
            self.log(f"prepared {unit.prepare.key} in {time.perf_counter() - started:.1f} s")
            if sample.error:
                raise RuntimeError(f"preparing {unit.key} failed: {sample.error}")
            self._prepared.add(unit.prepare.key)
        folder = self.folder(unit)
        servers = {name: FaultServer().start() for name in unit.servers}
        try:
            for name, plan in unit.servers.items():
                plan(servers[name])
            context = Context(self.scale, {name: s.base_url for name, s in servers.items()}, folder)
            files = unit.files(context)
            files["conftest.py"] = TIMING_CONFTEST + files.get("conftest.py", "")
            for relative, text in files.items():
                path = folder / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            sample = self._pytest(unit, context)
            sample.requests = {name: len(s.requests) for name, s in servers.items()}
            for _ in range(1, unit.sessions if sample.error is None else 1):  # its time and tests added
                before = sample.requests
                later = self._pytest(unit, context)
                sample.requests = {name: len(s.requests) for name, s in servers.items()}
                sample.extra.setdefault("requests by session", [before]).append(
                    {name: sample.requests[name] - before[name] for name in servers}
                )
                if later.session_s is None or later.error:
                    sample.error = later.error or "a later session wrote no timing"
                    return sample
                sample.session_s = (sample.session_s or 0.0) + later.session_s
                sample.process_s += later.process_s
                sample.outcomes = {k: sample.outcomes.get(k, 0) + n for k, n in later.outcomes.items()}
            if unit.check is not None and sample.error is None:
                unit.check(context, servers, sample)
            return sample
        finally:
            for server in servers.values():
                server.stop()
            if not unit.keep_folder and not self.keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _pytest(self, unit: Unit, context: Context) -> Sample:
        result = context.folder / ".bench-result.json"
        metrics = context.folder / ".bench-metrics.jsonl"
        for path in (result, metrics):
            path.unlink(missing_ok=True)
        env = base_env()
        env.update(BENCH_RESULT=str(result), BENCH_METRICS=str(metrics), LLM_GUARD_RECORD=unit.record, **unit.env)
        command = [sys.executable, "-m", "pytest", "-q", *plugin_flags(unit.plugins), *unit.args]
        if unit.bytecode == "none":
            forget_plugin_bytecode()
            self._cached.clear()
        elif unit.plugins not in self._cached:
            cache_rewritten_plugins(unit.plugins, self.root / ("warm-" + "-".join(unit.plugins or ("none",))))
            self._cached.add(unit.plugins)
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command, cwd=context.folder, env=env, capture_output=True, text=True, timeout=unit.timeout
            )
        except subprocess.TimeoutExpired:
            return Sample(None, time.perf_counter() - started, {}, {}, error=f"timed out after {unit.timeout} s")
        process_s = time.perf_counter() - started
        (context.folder / ".bench-output.txt").write_text(done.stdout + done.stderr)  # for --keep
        if not result.exists():
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            return Sample(None, process_s, {}, {}, error="pytest wrote no timing:\n" + "\n".join(tail))
        data = json.loads(result.read_text())
        sample = Sample(data["session_s"], process_s, {}, data["outcomes"])
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                record = json.loads(line)
                sample.metrics.setdefault(record["name"], []).append(record["value"])
        if data["exitstatus"] not in (0, 1):  # 1: some tests failed, which a contender may well do
            tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
            sample.error = f"pytest exited {data['exitstatus']}:\n" + "\n".join(tail)
        return sample

    def run_side_by_side(self, units: list[Unit]) -> list[Sample]:
        """Run wait-bound units at once: they sleep on timeouts, so they barely compete."""
        with ThreadPoolExecutor(max_workers=max(1, len(units))) as pool:
            return list(pool.map(self.run, units))
