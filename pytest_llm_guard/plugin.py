"""pytest wiring only: options, markers, fixtures and hooks, handing off to the modules that do the work."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from . import cassettes, hooks, routing, transport
from .config import MARKER_KEYS, OPTIONS, LLMGuardConfigError, Settings, apply_markers, load_settings, read_pyproject
from .endpoints import ROUTE_HEADER, load_endpoints
from .errors import LLMCassetteError, LLMGuardInterrupt, LLMNoEndpoint, failure_text
from .events import Stats
from .fault import FaultServer
from .guard import Guard
from .scrub import Scrubber
from .session import SessionBudget
from .state import MemoryStore, SqliteStore, StateStore

SETTINGS = pytest.StashKey[Settings]()
ITEM_SETTINGS = pytest.StashKey["Settings | None"]()
GUARD = pytest.StashKey[Guard]()
CASSETTE = pytest.StashKey["cassettes.CassetteLayer"]()
ENVIRONMENT = pytest.StashKey[pytest.MonkeyPatch]()
GUARD_FIXTURES = frozenset({"llm_guard", "llm_client", "async_llm_client"})
BUDGET_MARKER = "llm_budget"
REPLAY_PLACEHOLDER_KEY = "sk-llm-guard-replay-placeholder"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


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
    config.addinivalue_line(
        "markers",
        f"{cassettes.MARKER}(name=None, *, path=None): pytest-llm-guard cassette of this test: a shared cassette "
        f"name in the same folder, an explicit path, or {cassettes.MARKER}(False) for live calls without one.",
    )
    transport.check_seam()
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
    _configure_endpoints(config, config.stash[SETTINGS], pyproject)


def _settings_for(item: pytest.Item, base: Settings) -> Settings | None:
    """The test's settings, or None when the test is not guarded (and so pays nothing)."""
    marked = any(m.name.startswith("llm_") for m in item.iter_markers())
    uses_fixture = bool(GUARD_FIXTURES.intersection(getattr(item, "fixturenames", ())))
    if not (marked or uses_fixture or base.guard_all):
        return None
    try:
        settings = apply_markers(base, item.iter_markers(BUDGET_MARKER), item.nodeid)
        cassettes.Choice.from_marker(item.get_closest_marker(cassettes.MARKER))
    except LLMGuardConfigError as exc:
        raise LLMGuardConfigError(f"{item.nodeid}: {exc}") from None
    return settings


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
        if settings is not None:
            item.stash[BREAKER_POLICY] = _breaker_policy(item, settings)
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
    guard.layers.append(_router_layer(item, guard))
    transport.activate(guard)
    with pytest.MonkeyPatch.context() as environment:
        item.stash[ENVIRONMENT] = environment
        try:
            return (yield)
        finally:
            transport.deactivate(guard)
            item.config.stash[SESSION].add(guard.stats)
            layer = item.stash.get(CASSETTE, None)
            if layer is not None:
                _save(item, layer)


def _save(item: pytest.Item, layer: cassettes.CassetteLayer) -> None:
    """A cassette that cannot be written (disk full, read-only folder) warns; the session goes on."""
    try:
        layer.save()
    except OSError as exc:
        item.warn(pytest.PytestWarning(f"pytest-llm-guard: cassette of {item.nodeid} not saved: {exc}"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Open the test's cassette before its fixtures run; an unreadable file errors this test only."""
    guard = item.stash.get(GUARD, None)
    if guard is None:
        return
    _check_session_budget(item)
    mode = cassettes.record_mode(guard.settings)
    choice = cassettes.Choice.from_marker(item.get_closest_marker(cassettes.MARKER))
    if mode == "off" or not choice.enabled:
        return
    settings = guard.settings
    cassette_path = choice.path_for(item.path, item.name, settings)
    try:
        layer = cassettes.open_cassette(
            cassette_path,
            settings,
            mode=mode,
            nodeid=item.nodeid,
            matcher=lambda request, recorded: item.ihook.pytest_llm_cassette_match(request=request, recorded=recorded),
            scrubber=Scrubber(
                headers=settings.scrub_headers, body_fields=settings.scrub_body_fields, patterns=settings.scrub_patterns
            ),
        )
    except LLMCassetteError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)
    item.stash[CASSETTE] = layer
    guard.layers.insert(0, layer)
    replay_only = mode == "none" or (mode == "once" and cassette_path.exists())
    if replay_only and not os.environ.get("OPENAI_API_KEY"):
        item.stash[ENVIRONMENT].setenv("OPENAI_API_KEY", REPLAY_PLACEHOLDER_KEY)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    report = yield
    excinfo = call.excinfo
    if excinfo is not None and excinfo.errisinstance(LLMGuardInterrupt) and not excinfo.errisinstance(LLMNoEndpoint):
        report.longrepr = failure_text(excinfo, item.config.rootpath)
    _skip_when_no_endpoint(item, call, report)
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
        f"{total['retries']} retries, {total['failures']} failed attempts "
        f"({total['replayed']} replayed, {total['recorded']} recorded, {total['live']} live), "
        f"{total['network_seconds']:.2f} s on the network, {total['backoff_seconds']:.2f} s in backoff, "
        f"{total['tokens']} tokens"
    )
    _write_endpoint_status(terminalreporter, total["failovers"])


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def llm_guard(request: pytest.FixtureRequest) -> Guard:
    """The per-test guard: ``remaining()``, ``stats``, ``events`` and ``guard(client)``."""
    return request.node.stash[GUARD]


@pytest.fixture
def llm_client_options(llm_guard: Guard, pytestconfig: pytest.Config) -> dict[str, Any]:
    """Keyword arguments for the fixture clients; override it to point them elsewhere.

    Unset values fall back to the SDK's own environment variables
    (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``). With endpoints configured, every request
    is addressed to the endpoint the router picks (URL, and key from its api_key_env).
    """
    endpoints = pytestconfig.stash[ROUTER].endpoints
    if endpoints.configured:
        return {"base_url": endpoints.endpoints[0].base_url, "api_key": os.environ.get("OPENAI_API_KEY", "routed")}
    return {"base_url": llm_guard.settings.base_url} if llm_guard.settings.base_url else {}


@pytest.fixture
def llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> Iterator[openai.OpenAI]:
    """A real ``openai.OpenAI`` with the guard's deadline, budgets and retries applied."""
    client = llm_guard.guard(_build(openai.OpenAI, llm_client_options))
    yield client
    client.close()


@pytest.fixture
def async_llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> openai.AsyncOpenAI:
    """A real ``openai.AsyncOpenAI`` with the guard applied.

    A sync fixture, so it works under pytest-asyncio and anyio alike; since it cannot
    await a close at teardown, it keeps no idle connections (each closes after its
    response) and so leaves none open on the test's event loop.
    """
    options = {"http_client": openai.DefaultAsyncHttpx2Client(limits=_NO_IDLE_CONNECTIONS), **llm_client_options}
    return llm_guard.guard(_build(openai.AsyncOpenAI, options))


_NO_IDLE_CONNECTIONS = httpx2.Limits(max_connections=1000, max_keepalive_connections=0)


def _build(cls: type, options: dict[str, Any]) -> Any:
    headers = {**(options.get("default_headers") or {}), ROUTE_HEADER: "1"}  # routed: see routing.py
    try:
        return cls(**{**options, "default_headers": headers})
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


# -- endpoints, breakers, failover and session budgets ----------------------------------
# (endpoints.py, breaker.py, routing.py, state.py, session.py)

ROUTER = pytest.StashKey[routing.Router]()
SESSION = pytest.StashKey[SessionBudget]()
STATE_FOLDER = pytest.StashKey["Path | None"]()
BREAKER_POLICY = pytest.StashKey[routing.TestPolicy]()
STATE_FOLDER_INPUT = "llm_guard_state_folder"
"""``workerinput`` key: the folder of the SQLite store the xdist controller created."""


def _configure_endpoints(config: pytest.Config, settings: Settings, pyproject: Path | None) -> None:
    config.addinivalue_line(
        "markers",
        f"{routing.BREAKER_MARKER}(endpoints=[names], on_open='fail'|'skip'): pytest-llm-guard: the endpoints "
        "this test may use, and whether it fails or skips when none of them is available.",
    )
    raw = read_pyproject(pyproject).get("endpoints") if pyproject is not None else None
    endpoints = load_endpoints(raw, str(pyproject), base_url=settings.base_url, environ=os.environ)
    store, folder = _open_store(config)
    config.stash[STATE_FOLDER] = folder
    config.stash[ROUTER] = routing.Router(
        endpoints, store, routing.breaker_policy(settings), max_endpoints=settings.max_endpoints
    )
    config.stash[SESSION] = SessionBudget(settings, store)
    if not hasattr(config, "workerinput"):
        config.stash[SESSION].start()
    if folder is not None:
        config.pluginmanager.register(_XdistStateHandoff(folder), "llm_guard_xdist_state")


def _open_store(config: pytest.Config) -> tuple[StateStore, Path | None]:
    """A plugin's store; else an xdist worker opens the controller's SQLite file, the controller
    creates it (returning its folder, to hand over and remove), and a lone process stays in memory."""
    store = config.hook.pytest_llm_guard_state_store(config=config)
    if store is not None:
        return store, None
    workerinput = getattr(config, "workerinput", {})
    if STATE_FOLDER_INPUT in workerinput:
        return SqliteStore.in_folder(Path(workerinput[STATE_FOLDER_INPUT])), None
    if config.getoption("dist", "no") != "no" and config.getoption("tx", None):
        folder = Path(tempfile.mkdtemp(prefix="pytest-llm-guard-"))
        return SqliteStore.in_folder(folder), folder
    return MemoryStore(), None


class _XdistStateHandoff:
    """Registered only when xdist distributes tests (its hook does not exist otherwise)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[STATE_FOLDER_INPUT] = str(self.folder)


def pytest_unconfigure(config: pytest.Config) -> None:
    router = config.stash.get(ROUTER, None)
    if router is not None:
        router.store.close()
    folder = config.stash.get(STATE_FOLDER, None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def _breaker_policy(item: pytest.Item, settings: Settings) -> routing.TestPolicy:
    endpoints = item.config.stash[ROUTER].endpoints
    return routing.test_policy(item.iter_markers(routing.BREAKER_MARKER), settings, endpoints, item.nodeid)


def _router_layer(item: pytest.Item, guard: Guard) -> routing.RouterLayer:
    return routing.RouterLayer(item.config.stash[ROUTER], guard, item.stash[BREAKER_POLICY])


def _check_session_budget(item: pytest.Item) -> None:
    """Before a guarded test: skip or fail it once a session budget is spent."""
    session = item.config.stash[SESSION]
    reason = session.spent()
    if reason is not None and session.settings.on_session_spent == "fail":
        pytest.fail(reason, pytrace=False)
    if reason is not None:
        pytest.skip(reason)


def _skip_when_no_endpoint(item: pytest.Item, call: pytest.CallInfo[None], report: pytest.TestReport) -> None:
    """on_open="skip": report the refusal as a skip at the test's location, as skip markers are."""
    if call.excinfo is None or not call.excinfo.errisinstance(LLMNoEndpoint) or not call.excinfo.value.skip:
        return
    path, line = item.reportinfo()[:2]
    report.outcome = "skipped"
    report.longrepr = (os.fspath(path), (line or 0) + 1, str(call.excinfo.value))


def _write_endpoint_status(terminalreporter: Any, failovers: int) -> None:
    lines = terminalreporter.config.stash[ROUTER].status()
    if failovers:
        terminalreporter.write_line(f"{failovers} failover{'s' if failovers > 1 else ''} to another endpoint")
    for line in lines:
        terminalreporter.write_line(f"endpoint {line}")
