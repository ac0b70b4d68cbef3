"""pytest wiring only: options, markers, fixtures and hooks, handing off to the modules that do the work.

Importing this module (which pytest does for every run once the plugin is installed)
loads neither httpx2, the openai SDK, vcrpy nor tenacity: they load when the first
guarded test is collected, so a suite that never uses the plugin does not pay for them.
Nor is the session (its store, endpoints and prices) opened, or a per-test hook registered,
before a setting or a collected test needs one.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import hooks
from .config import (
    INI_PREFIX,
    MARKER_KEYS,
    MARKERS,
    OPTIONS,
    SECTIONS,
    ConfigWarning,
    Settings,
    load_settings,
    read_pyproject,
    unknown_ini_keys,
)
from .errors import LLMGuardConfigError
from .fixtures import (  # noqa: F401  (pytest finds the fixtures in the plugin's namespace)
    FIXTURES,
    anthropic_client,
    anthropic_client_options,
    async_anthropic_client,
    async_llm_client,
    llm_client,
    llm_client_options,
)
from .keys import GUARD, ITEM_SETTINGS, SESSION, SETTINGS

if TYPE_CHECKING:
    from pathlib import Path  # noqa: F401  (named in a stash key's type)

    from .fault import FaultServer
    from .guard import Guard
    from .session import Session

GUARD_FIXTURES = frozenset({"llm_guard"}) | FIXTURES
REPORTS_WRITTEN = pytest.StashKey["list[str]"]()  # what pytest_sessionfinish says of the reports it wrote
PER_TEST = frozenset(MARKER_KEYS) | {"record", "unguarded"}
"""Options that only shape tests: set alone, the session still opens when the first guarded test is collected."""
LISTING = pytest.StashKey["list[Any]"]()  # --llm-cassettes: listing.Entry per cassette
PYPROJECT = pytest.StashKey["tuple[Path | None, dict[str, Any]]"]()  # its file, its [tool.pytest_llm_guard] table


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.register(_ListingStartsNoWorkers(), "llm_guard_listing_starts_no_workers")
    group = parser.getgroup("llm-guard", "pytest-llm-guard: deadlines and budgets for LLM calls")
    for option in OPTIONS.values():
        if option.boolean:  # a flag (--llm-guard-all, or --llm-guard-all=false), and --no-llm-guard-all
            group.addoption(option.flag, dest=f"llm_{option.name}", nargs="?", const="true", default=None,
                            metavar="true|false", help=option.described)  # fmt: skip
            group.addoption("--no-" + option.flag.removeprefix("--"), dest=f"llm_{option.name}",
                            action="store_const", const="false", help=f"the opposite of {option.flag}")  # fmt: skip
        else:
            group.addoption(option.flag, dest=f"llm_{option.name}", default=None, metavar=option.name.upper(),
                            help=option.described)  # fmt: skip
        parser.addini(option.ini, f"pytest-llm-guard: {option.described}", default=None)
    if importlib.util.find_spec("pytest_recording") is None:  # installed, it owns the option
        group.addoption(
            "--record-mode",
            dest="llm_record_mode",
            choices=("once", "new_episodes", "none", "all", "rewrite"),
            default=None,
            help="pytest-recording's name for --llm-record (rewrite: all)",
        )
    group.addoption(
        "--llm-audit",
        action="store_true",
        default=False,
        help="scan every cassette under the root directory for credential-shaped strings and exit "
        "(non-zero when one is found), running no test: for pre-commit hooks and CI",
    )
    group.addoption(
        "--llm-cassettes",
        action="store_true",
        default=False,
        help="list every cassette under the root directory with the tests that use it, its size, age, "
        "interactions and models, and mark orphans (no collected test uses them); runs no test",
    )
    group.addoption(
        "--llm-strict", action="store_true", default=False, help="with --llm-cassettes: exit 1 when there are orphans"
    )


class _ListingStartsNoWorkers:
    """--llm-cassettes collects here and runs nowhere, so no xdist workers are started: set before
    xdist's own cmdline_main reads ``-n`` (a wrapper runs first, whatever order plugins loaded in)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> Generator[None, int | None, int | None]:
        if config.getoption("llm_cassettes") and hasattr(config.option, "numprocesses"):
            config.option.numprocesses = 0
        return (yield)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("llm_audit"):
        return None
    from .audit import main

    return main(config.rootpath)


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)
    inipath = config.inipath
    pyproject = inipath if inipath is not None and inipath.name == "pyproject.toml" else None
    if pyproject is None and (config.rootpath / "pyproject.toml").is_file():
        pyproject = config.rootpath / "pyproject.toml"
    table = read_pyproject(pyproject) if pyproject is not None else {}  # read once: settings, endpoints, prices
    settings, warned = load_settings(
        pyproject=pyproject,
        table=table,
        ini={o.name: config.getini(o.ini) for o in OPTIONS.values()},
        ini_source=f"the pytest ini keys llm_* in {inipath or 'the ini file'}",
        cli={o.name: config.getoption(f"llm_{o.name}") for o in OPTIONS.values()} | _record_mode(config),
        overridden=_ini_overrides(config),
    )
    if not hasattr(config, "workerinput"):  # warned once, by the controller: xdist workers read the same
        unknown = getattr(config, "_get_unknown_ini_keys", set)()  # pytest's own list, which it warns of
        for warning in warned + (unknown_ini_keys(unknown, config.inipath) if unknown else []):
            _warn(config, warning)
    config.stash[SETTINGS] = settings
    config.stash[PYPROJECT] = (pyproject, table)
    distributed = hasattr(config, "workerinput") or _distributed(config)
    session_wide = settings.sources.keys() - PER_TEST or table.keys() & SECTIONS
    if distributed or session_wide or config.hook.pytest_llm_guard_state_store.get_hookimpls():
        _session(config)  # opened (and its configuration checked) now; else when a guarded test is collected
    if distributed and not hasattr(config, "workerinput"):  # the controller collects nothing: it cannot wait
        _collect_records(config)


def _distributed(config: pytest.Config) -> bool:
    return config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None))


def _session(config: pytest.Config) -> Session:
    """The session, opened on first need: at configure when anything is configured, else when collection
    finds a guarded test. A suite that configures and guards nothing never opens one (nor imports it)."""
    session = config.stash.get(SESSION, None)
    if session is not None:
        return session
    from .endpoints import load_endpoints
    from .prices import load_prices
    from .session import Session, XdistHandoff

    settings = config.stash[SETTINGS]
    pyproject, table = config.stash[PYPROJECT]
    endpoints = load_endpoints(table.get("endpoints"), str(pyproject), base_url=settings.base_url, environ=os.environ)
    session = Session.open(
        settings,
        endpoints,
        plugin_store=config.hook.pytest_llm_guard_state_store(config=config),
        workerinput=getattr(config, "workerinput", None),
        distributed=_distributed(config),
        prices=load_prices(table.get("prices"), str(pyproject)),
        root_name=config.rootpath.name,
        warn=lambda message: _warn(config, ConfigWarning(message, "state_url")),
    )
    if settings.learned_timeouts is not None:  # learned.py loads only for a session that reads limits
        from . import learned

        session.learned = learned.for_session(settings, config.rootpath)
    config.stash[SESSION] = session
    if session.handoff:
        config.pluginmanager.register(XdistHandoff(session), "llm_guard_xdist_state")
    return session


RECORDS = "llm_guard_records"


def _collect_records(config: pytest.Config) -> None:
    """Registered only where records can come: a guarded or watched test here, or any test's under xdist."""
    if not config.pluginmanager.has_plugin(RECORDS):
        from .session import Records

        config.pluginmanager.register(Records(_session(config)), RECORDS)


def _warn(config: pytest.Config, warning: ConfigWarning) -> None:
    """A configuration warning shown at the setting that caused it (``issue_config_time_warning``
    would point at this file), under ``-W`` and ``filterwarnings`` like any other warning."""
    from _pytest.config import apply_warning_filters

    if config.pluginmanager.is_blocked("warnings"):
        return
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always", pytest.PytestConfigWarning)
        apply_warning_filters(config.getini("filterwarnings"), config.known_args_namespace.pythonwarnings or [])
        warnings.warn_explicit(warning.message, pytest.PytestConfigWarning, warning.where, warning.line)
    if records:
        location = (warning.where, warning.line, "")
        config.hook.pytest_warning_recorded.call_historic(
            kwargs={"warning_message": records[0], "when": "config", "nodeid": "", "location": location}
        )


def _record_mode(config: pytest.Config) -> dict[str, str]:
    """pytest-recording's ``--record-mode``, when it is ours to read (--llm-record wins)."""
    mode = config.getoption("llm_record_mode", None)
    if not mode or config.getoption("llm_record", None):
        return {}
    return {"record": "all" if mode == "rewrite" else mode}


def _ini_overrides(config: pytest.Config) -> dict[str, str]:
    """``-o llm_<name>=value`` options, by option name."""
    found = {}
    for override in config.getoption("override_ini", None) or ():
        key, _, value = override.partition("=")
        name = key.strip().removeprefix(INI_PREFIX)
        if key.strip().startswith(INI_PREFIX) and name in OPTIONS:
            found[name] = value
    return found


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.close()


def _settings_for(item: pytest.Item, base: Settings, config: pytest.Config) -> Settings | None:
    """The test's frozen settings, or None when the test is not guarded (and so pays nothing)."""
    markers = [m for m in item.iter_markers() if m.name.startswith("llm_")]
    uses_fixture = not GUARD_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
    if not (markers or uses_fixture or base.guard_all):
        return None
    endpoints = _session(config).endpoints
    if not markers:  # the session's settings as they are: markers.py is not even imported
        return base
    from .markers import apply_markers

    return apply_markers(base, markers, item.nodeid, endpoint_names=endpoints.names, endpoints_source=endpoints.source)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Which tests are guarded; the per-test hooks are registered only for what was found (a suite that
    guards nothing, with httpx2 never loaded, gets none: not even the records' collector)."""
    base = config.stash[SETTINGS]
    wrong: dict[str, str] = {}
    guarded = False
    for item in items:
        try:
            settings = _settings_for(item, base, config)
        except LLMGuardConfigError as exc:
            settings, wrong[item.nodeid] = None, str(exc)
        if settings is not None:
            item.stash[ITEM_SETTINGS], guarded = settings, True
    if wrong:
        from .markers import WrongMarkers

        config.pluginmanager.register(WrongMarkers(wrong), "llm_guard_wrong_markers")
    if config.getoption("llm_cassettes"):
        from .listing import listing, used_by

        config.stash[LISTING] = listing(config.rootpath, used_by(items, base))
        config.hook.pytest_deselected(items=list(items))
        items[:] = []
        return
    watched = base.unguarded != "allow" and "httpx2" in sys.modules  # without httpx2 no test can call an LLM
    if guarded or watched:
        from .protocol import prepare

        _collect_records(config)
        prepare(config, items, base, watched=watched)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    config = terminalreporter.config
    if LISTING in config.stash:
        from .clock import REAL
        from .listing import lines

        terminalreporter.write_sep("-", "llm-guard: cassettes")
        for line in lines(config.stash[LISTING], config.rootpath, REAL.wall(), strict=config.getoption("llm_strict")):
            terminalreporter.write_line(line)
        return
    session = config.stash.get(SESSION, None)
    if session is not None:
        from .summary import terminal_summary

        terminal_summary(terminalreporter, session)
    for line in config.stash.get(REPORTS_WRITTEN, ()):  # here, on lines of their own
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or the only process) writes the learned timeouts, the JSON and HTML reports, from
    every worker's records."""
    config = session.config
    if hasattr(config, "workerinput"):
        return
    if LISTING in config.stash:
        orphans = any(entry.orphan for entry in config.stash[LISTING])
        strict = config.getoption("llm_strict") and orphans
        session.exitstatus = pytest.ExitCode.TESTS_FAILED if strict else pytest.ExitCode.OK
        return
    guard_session = config.stash.get(SESSION, None)
    if guard_session is None:  # nothing configured for the session, no test guarded
        return
    from .summary import finish

    config.stash[REPORTS_WRITTEN] = finish(guard_session, session)


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def llm_guard(request: pytest.FixtureRequest) -> Guard:
    """The per-test guard: ``remaining()``, ``stats``, ``events`` and ``guard(client)``."""
    guard = request.node.stash.get(GUARD, None)
    if guard is None:  # which tests are guarded is settled at collection, from markers and arguments
        pytest.fail(
            f"pytest-llm-guard: {request.node.nodeid} asks for llm_guard (or a client fixture, which uses it) "
            "through request.getfixturevalue, so it was not guarded when collected. Name the fixture among "
            "the test's arguments, or mark the test with @pytest.mark.llm_budget.",
            pytrace=False,
        )
    return guard


@pytest.fixture(scope="session")
def _llm_fault_server_session() -> Iterator[FaultServer]:
    from .fault import FaultServer

    with FaultServer() as server:
        yield server


@pytest.fixture
def llm_fault_server(_llm_fault_server_session: FaultServer) -> Iterator[FaultServer]:
    """A server speaking the OpenAI and Anthropic APIs on 127.0.0.1, with a fault plan and a request log,
    fresh per test."""
    _llm_fault_server_session.reset()
    yield _llm_fault_server_session
    _llm_fault_server_session.reset()
