"""pytest wiring only: options, markers, fixtures and hooks, handing off to the modules that do the work.

Importing this module (which pytest does for every run once the plugin is installed)
loads neither httpx2, the openai SDK, vcrpy nor tenacity: they load when the first
guarded test is collected, so a suite that never uses the plugin does not pay for them.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from . import hooks
from .config import INI_PREFIX, MARKERS, OPTIONS, Settings, apply_markers, load_settings, read_pyproject
from .endpoints import load_endpoints
from .errors import LLMCassetteError, LLMGuardConfigError, LLMGuardInterrupt, LLMNoEndpoint, LLMUnguardedRequest
from .prices import load_prices
from .session import Session

if TYPE_CHECKING:
    import openai

    from .cassettes import CassetteLayer
    from .fault import FaultServer
    from .guard import Guard

SETTINGS = pytest.StashKey[Settings]()
SESSION = pytest.StashKey[Session]()
ITEM_SETTINGS = pytest.StashKey["Settings | None"]()
GUARD = pytest.StashKey["Guard"]()
CASSETTE = pytest.StashKey["CassetteLayer"]()
ENVIRONMENT = pytest.StashKey[pytest.MonkeyPatch]()
FAILED = pytest.StashKey[bool]()
OWN_TIMEOUT = pytest.StashKey[bool]()
STARTED = pytest.StashKey[float]()
OUTCOME = pytest.StashKey["tuple[str, float]"]()
UNGUARDED = pytest.StashKey["list[str]"]()
GUARD_FIXTURES = frozenset({"llm_guard", "llm_client", "async_llm_client"})
REPLAY_PLACEHOLDER_KEY = "sk-llm-guard-replay-placeholder"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


def pytest_addoption(parser: pytest.Parser) -> None:
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


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> int | None:
    if not config.getoption("llm_audit"):
        return None
    from .audit import audit

    scanned, found = audit(config.rootpath)

    def write(line: str) -> None:
        print(line)  # before configure: no terminal reporter yet

    for line in found:
        write(line)
    verdict = f"{len(found)} credential-shaped strings found" if found else "no credential-shaped strings found"
    write(f"pytest-llm-guard audit: {scanned} cassettes under {config.rootpath}, {verdict}")
    if found:
        write("Re-record those cassettes (their scrubbing now redacts such strings), or edit the lines above.")
    return 1 if found else 0


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS.values():
        config.addinivalue_line("markers", line)
    inipath = config.inipath
    pyproject = inipath if inipath is not None and inipath.name == "pyproject.toml" else None
    if pyproject is None and (config.rootpath / "pyproject.toml").is_file():
        pyproject = config.rootpath / "pyproject.toml"
    settings, warnings = load_settings(
        pyproject=pyproject,
        ini={o.name: config.getini(o.ini) for o in OPTIONS.values()},
        ini_source=f"the pytest ini keys llm_* in {inipath or 'the ini file'}",
        cli={o.name: config.getoption(f"llm_{o.name}") for o in OPTIONS.values()} | _record_mode(config),
        overridden=_ini_overrides(config),
    )
    for warning in warnings:
        config.issue_config_time_warning(pytest.PytestConfigWarning(warning), stacklevel=2)
    config.stash[SETTINGS] = settings
    table = read_pyproject(pyproject) if pyproject is not None else {}
    endpoints = load_endpoints(table.get("endpoints"), str(pyproject), base_url=settings.base_url, environ=os.environ)
    session = Session.open(
        settings,
        endpoints,
        plugin_store=config.hook.pytest_llm_guard_state_store(config=config),
        workerinput=getattr(config, "workerinput", None),
        distributed=config.getoption("dist", "no") != "no" and bool(config.getoption("tx", None)),
        prices=load_prices(table.get("prices"), str(pyproject)),
    )
    config.stash[SESSION] = session
    config.pluginmanager.register(_Records(session), "llm_guard_records")
    if session.folder is not None:
        config.pluginmanager.register(_XdistHandoff(session), "llm_guard_xdist_state")


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


class _Records:
    """Collects guarded tests' records, from this process or (under xdist) a worker's."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        test = getattr(report, "llm_guard", None)
        if isinstance(test, dict):
            self.session.records.append(test)
        unguarded = getattr(report, "llm_unguarded", None)
        if isinstance(unguarded, dict):
            self.session.unguarded.append(unguarded)


class _XdistHandoff:
    """Registered only when xdist distributes tests (its hook does not exist otherwise)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def pytest_configure_node(self, node: Any) -> None:
        self.session.configure_node(node)


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(SESSION, None)
    if session is not None:
        session.close()


def _settings_for(item: pytest.Item, base: Settings, session: Session) -> Settings | None:
    """The test's frozen settings, or None when the test is not guarded (and so pays nothing)."""
    markers = [m for m in item.iter_markers() if m.name.startswith("llm_")]
    uses_fixture = not GUARD_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
    if not (markers or uses_fixture or base.guard_all):
        return None
    try:
        return apply_markers(
            base,
            markers,
            item.nodeid,
            endpoint_names=session.endpoints.names,
            endpoints_source=session.endpoints.source,
        )
    except LLMGuardConfigError as exc:
        raise LLMGuardConfigError(f"{item.nodeid}: {exc}") from None


def _hard_timeout(config: pytest.Config, item: pytest.Item, settings: Settings) -> float | None:
    """Without SIGALRM (Windows), pytest-timeout's timer is the backstop: at deadline + grace, unless
    the test has a timeout of its own. Elsewhere the guard's own alarm binds the deadline."""
    if hasattr(signal, "setitimer") or settings.deadline is None or item.get_closest_marker("timeout") is not None:
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
    base, session = config.stash[SETTINGS], config.stash[SESSION]
    guarded = False
    for item in items:
        settings = _settings_for(item, base, session)
        item.stash[ITEM_SETTINGS] = settings
        if settings is None:
            continue
        guarded = True
        timeout = _hard_timeout(config, item, settings)
        if timeout is not None:
            item.add_marker(pytest.mark.timeout(timeout))
    if guarded and not config.pluginmanager.has_plugin(GUARDED_TESTS):
        _load_the_guard(base)
        config.pluginmanager.register(GuardedTests(), GUARDED_TESTS)
    watched = base.unguarded != "allow" and "httpx2" in sys.modules  # without httpx2 no test can call an LLM
    if watched and not guarded_all(items) and not config.pluginmanager.has_plugin(UNGUARDED_TESTS):
        config.pluginmanager.register(UnguardedTests(base), UNGUARDED_TESTS)


def guarded_all(items: list[pytest.Item]) -> bool:
    return all(item.stash.get(ITEM_SETTINGS, None) is not None for item in items)


def _load_the_guard(settings: Settings) -> None:
    """Import what guarded tests use now, once, so no test's deadline pays for it (openai alone
    takes a third of a second); and fail with a usage error now if httpx2 lost the seam."""
    import openai  # noqa: F401

    from . import guard, routing, transport  # noqa: F401

    if settings.record != "off":
        from . import cassettes  # noqa: F401
    transport.check_seam()


GUARDED_TESTS = "llm_guard_guarded_tests"
UNGUARDED_TESTS = "llm_guard_unguarded_tests"


class UnguardedTests:
    """Watches tests that are not guarded for LLM requests (``unguarded``: warn or fail), so none
    goes live unnoticed: registered only when httpx2 is loaded and some test is not guarded."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        if item.stash.get(ITEM_SETTINGS, None) is not None:
            return (yield)
        from . import transport
        from .dialect import origin_of

        sent: list[str] = item.stash.setdefault(UNGUARDED, [])

        def noticed(request: Any) -> None:
            where = f"{request.method} {origin_of(request.url)}{request.url.path}"
            if self.settings.unguarded == "fail":
                from . import report

                raise LLMUnguardedRequest(report.unguarded_refusal(item.nodeid, where, self.settings))
            sent.append(where)

        transport.watch(noticed)
        try:
            return (yield)
        finally:
            transport.unwatch(noticed)
            if sent:
                item.warn(
                    pytest.PytestWarning(
                        f"pytest-llm-guard: {item.nodeid} is not guarded, yet sent {len(sent)} LLM request(s) "
                        f"({sent[0]}): not replayed, not recorded, not counted. Guard it with an llm_* marker or "
                        "the llm_guard fixture, or set guard_all = true"
                    )
                )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
        report_ = yield
        sent = item.stash.get(UNGUARDED, None)
        if sent and call.when == "teardown":
            report_.llm_unguarded = {"nodeid": item.nodeid, "requests": sent}  # type: ignore[attr-defined]
        return report_


class GuardedTests:
    """The per-test hooks, registered only once a guarded test is collected: a suite without
    one never runs them, and its tests pay nothing per test."""

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        """The guard and its alarm, outside everything else (pytest-timeout asks for the alarm)."""
        settings = item.stash.get(ITEM_SETTINGS, None)
        if settings is None:
            return (yield)
        from .alarm import Alarm
        from .guard import Guard

        session = item.config.stash[SESSION]
        guard = Guard(
            settings,
            test_id=item.nodeid,
            prices=session.prices,
            on_attempt=lambda attempt: item.ihook.pytest_llm_guard_attempt(record=attempt),
        )
        item.stash[GUARD] = guard
        item.stash[STARTED] = time.time()
        alarm = Alarm() if Alarm.available() else None
        if alarm is not None:
            guard.arm(alarm)
            alarm.start()
        try:
            return (yield)
        finally:
            if alarm is not None:
                alarm.stop()

    @pytest.hookimpl(wrapper=True, specname="pytest_runtest_protocol")
    def pytest_runtest_protocol_guarded(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        """The seam and the scrubbed logs while the test runs; then its cassette, saved where
        pytest still collects warnings."""
        guard = item.stash.get(GUARD, None)
        if guard is None:
            return (yield)
        from . import transport
        from .scrub import scrubbed_logs

        transport.activate(guard)
        interrupted = False
        with pytest.MonkeyPatch.context() as environment, scrubbed_logs(guard.scrubber):
            item.stash[ENVIRONMENT] = environment
            try:
                return (yield)
            except BaseException:  # Ctrl-C, pytest-timeout's thread method, an exit
                interrupted = True
                raise
            finally:
                transport.deactivate(guard)
                item.config.stash[SESSION].budget.add(guard.stats)
                layer = item.stash.get(CASSETTE, None)
                if layer is not None:
                    _save(item, layer, failed=interrupted or item.stash.get(FAILED, False))

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_setup")
    def pytest_runtest_setup_phase(self, item: pytest.Item) -> Iterator[None]:
        return (yield from _interruptible(item))

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_call")
    def pytest_runtest_call_phase(self, item: pytest.Item) -> Iterator[None]:
        return (yield from _interruptible(item))

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_teardown")
    def pytest_runtest_teardown_phase(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        return (yield from _interruptible(item))

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_set_timer(self, item: pytest.Item, settings: Any) -> bool | None:
        """A user's signal-method timeout joins the guard's alarm (one SIGALRM timer per process);
        a thread-method timeout stays pytest-timeout's."""
        guard = item.stash.get(GUARD, None)
        if guard is None or guard.alarm is None or settings.method != "signal":
            return None
        import pytest_timeout

        def timed_out() -> None:
            __tracebackhide__ = True
            pytest_timeout.timeout_sigalrm(item, settings)

        guard.alarm.at(guard.budget.clock() + settings.timeout, timed_out)
        item.stash[OWN_TIMEOUT] = True
        return True

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_timeout_cancel_timer(self, item: pytest.Item) -> bool | None:
        return True if item.stash.get(OWN_TIMEOUT, False) else None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Before the test's fixtures: session budgets, then its layers; an unreadable cassette errors it only."""
        guard = item.stash.get(GUARD, None)
        if guard is None:
            return
        session = item.config.stash[SESSION]
        reason = session.budget.spent()
        if reason is not None and session.settings.on_session_spent == "fail":
            pytest.fail(reason, pytrace=False)
        if reason is not None:
            pytest.skip(reason)
        from .routing import RouterLayer

        guard.use_layers(cassette=_open_cassette(item, guard), routing=RouterLayer(session.router, guard))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
        if call.excinfo is not None and item.stash.get(GUARD, None) is not None:
            call.excinfo = _with_line_numbers(call.excinfo)
        report_ = yield
        guard = item.stash.get(GUARD, None)
        if guard is None:
            return report_
        from . import report

        excinfo = call.excinfo
        if report_.failed:
            item.stash[FAILED] = True
        if (
            excinfo is not None
            and excinfo.errisinstance(LLMGuardInterrupt)
            and not excinfo.errisinstance(LLMNoEndpoint)
        ):
            report_.longrepr = guard.scrubber.text(report.failure_text(excinfo, item.config.rootpath))
        elif excinfo is not None and (cause := report.guard_cause(excinfo.value)) is not None:
            text = report.failure_text(excinfo, item.config.rootpath, cause=cause, attempts=guard.events)
            report_.longrepr = guard.scrubber.text(text)
        if excinfo is not None and excinfo.errisinstance(LLMNoEndpoint) and excinfo.value.skip:
            # on_open="skip": reported as a skip at the test's location, as skip markers are
            path, line = item.reportinfo()[:2]
            report_.outcome = "skipped"
            report_.longrepr = (os.fspath(path), (line or 0) + 1, str(excinfo.value))
        _note_phase(item, report_)
        if call.when == "teardown":
            from . import report_json

            outcome, duration = item.stash[OUTCOME]
            test = report_json.record(guard, item.nodeid, outcome, duration, item.stash[STARTED])
            report_.llm_guard = test  # type: ignore[attr-defined]  # travels to the xdist controller
            report_.user_properties.extend(report_json.junit_properties(test))
        return report_


def _note_phase(item: pytest.Item, report_: pytest.TestReport) -> None:
    """The test's outcome as a person reads it (its call's, or an error in setup or teardown) and its duration."""
    outcome, duration = item.stash.get(OUTCOME, ("passed", 0.0))
    if report_.failed:
        outcome = "failed" if report_.when == "call" else "error" if outcome == "passed" else outcome
    elif report_.skipped and report_.when != "teardown":
        outcome = "skipped"
    item.stash[OUTCOME] = (outcome, duration + report_.duration)


def _with_line_numbers(excinfo: pytest.ExceptionInfo[BaseException]) -> pytest.ExceptionInfo[BaseException]:
    """An exception raised by the alarm's signal handler can carry a traceback entry without a line
    number (CPython), which pytest cannot format: give such entries their frame's line."""
    import types

    entries, tb = [], excinfo.tb
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if all(entry.tb_lineno is not None for entry in entries):
        return excinfo
    rebuilt = None
    for entry in reversed(entries):
        line = entry.tb_lineno if entry.tb_lineno is not None else (entry.tb_frame.f_lineno or 1)
        rebuilt = types.TracebackType(rebuilt, entry.tb_frame, entry.tb_lasti, line)
    value = excinfo.value.with_traceback(rebuilt)
    return pytest.ExceptionInfo.from_exc_info((type(value), value, rebuilt))


def _uses_pytest_recording(item: pytest.Item) -> bool:
    """A test with pytest-recording's ``vcr`` marker keeps its own cassettes (its ``vcr`` fixture, autouse,
    installs one only then); the guard's deadlines and budgets still apply."""
    return item.get_closest_marker("vcr") is not None


def _interruptible(item: pytest.Item) -> Iterator[None]:
    """The test's own code runs (a setup, call or teardown phase): its deadline may interrupt it."""
    guard = item.stash.get(GUARD, None)
    if guard is None:
        return (yield)
    guard.interruptible = True
    try:
        return (yield)
    finally:
        guard.interruptible = False


def _save(item: pytest.Item, layer: CassetteLayer, *, failed: bool) -> None:
    """A cassette that cannot be written (disk full, read-only folder) warns; the session goes on."""
    try:
        warning = layer.save(test_failed=failed)
    except OSError as exc:
        warning = f"pytest-llm-guard: cassette of {item.nodeid} not saved: {exc}"
    if warning is not None:
        item.warn(pytest.PytestWarning(warning))


def _open_cassette(item: pytest.Item, guard: Guard) -> CassetteLayer | None:
    from . import cassettes

    settings = guard.settings
    mode = cassettes.record_mode(settings)
    if mode == "off" or not settings.cassette or _uses_pytest_recording(item):
        return None
    path = cassettes.path_for(item.path, item.name, settings)
    mode = cassettes.effective_mode(mode, item.config.stash[SESSION].existed_at_start(path))
    try:
        layer = cassettes.open_cassette(
            path,
            settings,
            mode=mode,
            nodeid=item.nodeid,
            matcher=lambda request, recorded: item.ihook.pytest_llm_cassette_match(request=request, recorded=recorded),
            scrubber=guard.scrubber,
        )
    except LLMCassetteError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}", pytrace=False)
    item.stash[CASSETTE] = layer
    if layer.replay_only:  # CI needs no secret: the SDKs only insist that a key is set
        endpoints = item.config.stash[SESSION].endpoints.endpoints
        for name in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", *(e.api_key_env for e in endpoints if e.api_key_env)):
            if not os.environ.get(name):
                item.stash[ENVIRONMENT].setenv(name, REPLAY_PLACEHOLDER_KEY)
    return layer


def pytest_terminal_summary(terminalreporter: Any) -> None:
    session = terminalreporter.config.stash[SESSION]
    if session.unguarded:
        from . import report

        terminalreporter.write_sep("-", "llm-guard: unguarded LLM requests")
        for line in report.unguarded_lines(session.unguarded):
            terminalreporter.write_line(line)
    if not any(test["stats"]["attempts"] for test in session.records):
        return
    from . import report, report_json

    settings = session.settings
    verbosity = terminalreporter.config.get_verbosity()
    terminalreporter.write_sep("-", "llm-guard")
    terminalreporter.write_line(report.totals_line([t["stats"] for t in session.records], settings.currency))
    for line in session.router.status():
        terminalreporter.write_line(f"endpoint {line}")
    if verbosity < 0:
        return
    slowest = report.slowest_lines(session.records, settings.durations)
    if slowest:
        shown = "all" if settings.durations == 0 else f"{len(slowest)} slowest"
        terminalreporter.write_line(f"where the time went ({shown} guarded tests; {OPTIONS['durations'].flag}=N):")
        for line in slowest:
            terminalreporter.write_line(f"  {line}")
    if verbosity > 0:
        for line in report.endpoint_lines(report_json.endpoints(session.records, session.router.health())):
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or the only process) writes the JSON and HTML reports, from every worker's records."""
    config = session.config
    guard_session = config.stash.get(SESSION, None)
    if guard_session is None or hasattr(config, "workerinput"):
        return
    settings = guard_session.settings
    if not (settings.report or settings.report_html):
        return
    from . import report_json

    health = guard_session.router.health() if guard_session.records else []
    data = report_json.build(
        guard_session.records, health, duration=time.monotonic() - guard_session.started, currency=settings.currency
    )
    for option, path in (("report", settings.report), ("report_html", settings.report_html)):
        if not path:
            continue
        target = config.invocation_params.dir / path  # an absolute path stays as it is
        try:
            if option == "report":
                report_json.write(target, data)
            else:
                from .cassettes.files import write_atomically
                from .report_html import render

                write_atomically(target, render(data))
            said = f"pytest-llm-guard: {OPTIONS[option].flag.removeprefix('--llm-')} written to {target}"
        except OSError as exc:
            said = f"pytest-llm-guard: the {OPTIONS[option].flag} file {target} could not be written: {exc}"
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(said)


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
    endpoints = pytestconfig.stash[SESSION].endpoints
    if endpoints.configured:
        return {"base_url": endpoints.endpoints[0].base_url, "api_key": os.environ.get("OPENAI_API_KEY", "routed")}
    return {"base_url": llm_guard.settings.base_url} if llm_guard.settings.base_url else {}


@pytest.fixture
def llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> Iterator[openai.OpenAI]:
    """A real ``openai.OpenAI`` with the guard's deadline, budgets and retries applied."""
    import openai

    client = llm_guard.fixture_client(_build(openai.OpenAI, llm_client_options))
    yield client
    client.close()


@pytest.fixture
def async_llm_client(llm_guard: Guard, llm_client_options: dict[str, Any]) -> openai.AsyncOpenAI:
    """A real ``openai.AsyncOpenAI`` with the guard applied.

    A sync fixture, so it works under pytest-asyncio and anyio alike; since it cannot
    await a close at teardown, it keeps no idle connections (each closes after its
    response) and so leaves none open on the test's event loop.
    """
    import httpx2
    import openai

    no_idle = httpx2.Limits(max_connections=1000, max_keepalive_connections=0)
    options = {"http_client": openai.DefaultAsyncHttpx2Client(limits=no_idle), **llm_client_options}
    return llm_guard.fixture_client(_build(openai.AsyncOpenAI, options))


def _build(cls: type, options: dict[str, Any]) -> Any:
    import openai

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
    from .fault import FaultServer

    with FaultServer() as server:
        yield server


@pytest.fixture
def llm_fault_server(_llm_fault_server_session: FaultServer) -> Iterator[FaultServer]:
    """An OpenAI-compatible server on 127.0.0.1 with a fault plan and a request log, fresh per test."""
    _llm_fault_server_session.reset()
    yield _llm_fault_server_session
    _llm_fault_server_session.reset()
