"""pytest wiring only: options, markers, fixtures and hooks, handing off to the modules that do the work."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
import tenacity

from . import transport
from .config import MARKER_KEYS, OPTIONS, LLMGuardConfigError, Settings, apply_markers, load_settings
from .errors import LLMGuardInterrupt
from .events import Stats
from .fault import FaultServer
from .guard import Guard

SETTINGS = pytest.StashKey[Settings]()
ITEM_SETTINGS = pytest.StashKey["Settings | None"]()
GUARD = pytest.StashKey[Guard]()
GUARD_FIXTURES = frozenset({"llm_guard", "llm_client", "async_llm_client"})
BUDGET_MARKER = "llm_budget"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llm-guard", "pytest-llm-guard: deadlines and budgets for LLM calls")
    for option in OPTIONS.values():
        group.addoption(option.flag, dest=f"llm_{option.name}", default=None, help=option.help)
        parser.addini(option.ini, f"pytest-llm-guard: {option.help} (default {option.default})", default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{BUDGET_MARKER}({', '.join(f'{k}=...' for k in MARKER_KEYS)}): pytest-llm-guard per-test limits: "
        "deadline seconds from the test's start, retries (failed LLM attempts absorbed in total), "
        "call_timeout seconds per attempt, calls (LLM requests) and tokens (from usage).",
    )
    inipath = config.inipath
    pyproject = inipath if inipath is not None and inipath.name == "pyproject.toml" else None
    if pyproject is None and (config.rootpath / "pyproject.toml").is_file():
        pyproject = config.rootpath / "pyproject.toml"
    config.stash[SETTINGS] = load_settings(
        pyproject=pyproject,
        ini={o.name: config.getini(o.ini) for o in OPTIONS.values()},
        ini_source=f"the pytest ini keys llm_* in {inipath or 'the ini file'}",
        cli={o.name: config.getoption(f"llm_{o.name}") for o in OPTIONS.values()},
    )


def _settings_for(item: pytest.Item, base: Settings) -> Settings | None:
    """The test's settings, or None when the test is not guarded (and so pays nothing)."""
    marked = any(m.name.startswith("llm_") for m in item.iter_markers())
    uses_fixture = bool(GUARD_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if not (marked or uses_fixture or base.guard_all):
        return None
    try:
        return apply_markers(base, item.iter_markers(BUDGET_MARKER), item.nodeid)
    except LLMGuardConfigError as exc:
        raise LLMGuardConfigError(f"{item.nodeid}: {exc}") from None


def _hard_timeout(config: pytest.Config, item: pytest.Item, settings: Settings) -> float | None:
    """pytest-timeout backstop at deadline + grace, unless the test has a timeout of its own."""
    if settings.deadline is None or item.get_closest_marker("timeout") is not None:
        return None
    if not config.pluginmanager.hasplugin("timeout"):
        return None
    import pytest_timeout

    backstop = settings.deadline + settings.timeout_grace
    session_timeout = pytest_timeout.get_env_settings(config).timeout
    if session_timeout and session_timeout <= backstop:
        return None
    return backstop


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    base = config.stash[SETTINGS]
    for item in items:
        settings = _settings_for(item, base)
        item.stash[ITEM_SETTINGS] = settings
        timeout = _hard_timeout(config, item, settings) if settings is not None else None
        if timeout is not None:
            item.add_marker(pytest.mark.timeout(timeout))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    settings = item.stash.get(ITEM_SETTINGS, None)
    if settings is None:
        return (yield)
    guard = Guard(settings, test_id=item.nodeid)
    item.stash[GUARD] = guard
    transport.activate(guard)
    try:
        return (yield)
    finally:
        transport.deactivate()


_LIBRARY_DIRS = tuple(str(Path(m.__file__).parent) for m in (openai, httpx2, tenacity, transport))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    if call.excinfo is not None and call.excinfo.errisinstance(LLMGuardInterrupt):
        # Show the test's and the application's frames, not the SDK's, httpx2's or ours.
        call.excinfo.traceback = call.excinfo.traceback.filter(
            lambda entry: not str(entry.path).startswith(_LIBRARY_DIRS)
        )
    report = yield
    guard = item.stash.get(GUARD, None)
    if guard is not None and call.when == "teardown":
        events = guard.snapshot()
        report.llm_guard = {  # type: ignore[attr-defined]
            "stats": dataclasses.asdict(Stats.of(events)),
            "events": [e.to_dict() for e in events],
        }
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    totals = [
        report.llm_guard["stats"]
        for reports in terminalreporter.stats.values()
        for report in reports
        if isinstance(getattr(report, "llm_guard", None), dict)
    ]
    if not any(t["attempts"] for t in totals):
        return
    total = {key: sum(t[key] for t in totals) for key in totals[0]}
    terminalreporter.write_sep("-", "llm-guard")
    terminalreporter.write_line(
        f"{len(totals)} guarded tests: {total['calls']} LLM calls, {total['attempts']} attempts, "
        f"{total['retries']} retries, {total['failures']} failed attempts, "
        f"{total['network_seconds']:.2f} s on the network, {total['backoff_seconds']:.2f} s in backoff, "
        f"{total['tokens']} tokens"
    )


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def llm_guard(request: pytest.FixtureRequest) -> Guard:
    """The per-test guard: ``remaining()``, ``stats``, ``events`` and ``guard(client)``."""
    return request.node.stash[GUARD]


@pytest.fixture
def llm_client_options(llm_guard: Guard) -> dict[str, Any]:
    """Keyword arguments for the fixture clients; override it to point them elsewhere.

    Unset values fall back to the SDK's own environment variables
    (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``).
    """
    return {"base_url": llm_guard.settings.base_url} if llm_guard.settings.base_url else {}


@pytest.fixture
def llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> Iterator[openai.OpenAI]:
    """A real ``openai.OpenAI`` with the guard's deadline, budgets and retries applied."""
    client = llm_guard.guard(_build(openai.OpenAI, llm_client_options))
    yield client
    client.close()


@pytest.fixture
def async_llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> openai.AsyncOpenAI:
    """A real ``openai.AsyncOpenAI`` with the guard applied (its connections close with it)."""
    return llm_guard.guard(_build(openai.AsyncOpenAI, llm_client_options))


def _build(cls: type, options: dict[str, Any]) -> Any:
    try:
        return cls(**options)
    except openai.OpenAIError as exc:
        pytest.fail(
            f"pytest-llm-guard: cannot build the {cls.__name__} fixture client: {exc} "
            "Set OPENAI_API_KEY, or override the llm_client_options fixture.",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def _llm_fault_server_session() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def llm_fault_server(_llm_fault_server_session: FaultServer) -> Iterator[FaultServer]:
    """An OpenAI-compatible server on 127.0.0.1 with a fault plan and a request log, fresh per test."""
    _llm_fault_server_session.reset()
    yield _llm_fault_server_session
    _llm_fault_server_session.reset()
