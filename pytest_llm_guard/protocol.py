"""The per-test protocol: what runs around each test, once collection has said which tests are guarded.

Around a guarded test: its guard and the deadline's alarm (outermost, so pytest-timeout
can hand its own timer to the alarm), then the seam, scrubbed logs and its cassette
(saved at the end of its teardown phase, so a cassette's warning is the test's), its
phases marked interruptible, and its record on the teardown report. Around a test that
is not guarded, where httpx2 is loaded: a watch for LLM requests that go live (``unguarded``).
Neither is registered when no test needs it, so a plain suite pays nothing per test.

No wrapper warns or raises after its ``yield``: under ``-W error`` that would end the session.
"""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .alarm import with_line_numbers
from .config import Settings
from .dialects import key_variables
from .errors import LLMCassetteError, LLMGuardInterrupt, LLMNoEndpoint, LLMUnguardedRequest, LLMUnguardedWarning
from .fixtures import FIXTURE_KINDS
from .keys import GUARD, ITEM_SETTINGS, SESSION

if TYPE_CHECKING:
    from .cassettes import CassetteLayer
    from .guard import Guard

CASSETTE = pytest.StashKey["CassetteLayer"]()
CASSETTE_NOTE = pytest.StashKey["dict[str, Any]"]()
ENVIRONMENT = pytest.StashKey[pytest.MonkeyPatch]()
FAILED = pytest.StashKey[bool]()
OWN_TIMEOUT = pytest.StashKey[bool]()
STARTED = pytest.StashKey[float]()
OUTCOME = pytest.StashKey["tuple[str, float]"]()
WHY = pytest.StashKey["dict[str, Any]"]()
UNGUARDED = pytest.StashKey["list[str]"]()
WARNED = pytest.StashKey[int]()
REPLAY_PLACEHOLDER_KEY = "sk-llm-guard-replay-placeholder"


def prepare(config: pytest.Config, items: list[pytest.Item], base: Settings, *, watched: bool) -> None:
    """After collection: the backstop marker where there is no SIGALRM, and the hooks the tests need
    (``watched``: tests that are not guarded are watched for LLM requests)."""
    guarded = [item for item in items if item.stash.get(ITEM_SETTINGS, None) is not None]
    for item in guarded:
        timeout = _hard_timeout(config, item, item.stash[ITEM_SETTINGS])
        if timeout is not None:
            item.add_marker(pytest.mark.timeout(timeout))
    if guarded and not config.pluginmanager.has_plugin(GUARDED_TESTS):
        fixtures = set().union(*(getattr(item, "fixturenames", ()) for item in guarded))
        _load_the_guard(base, {FIXTURE_KINDS[name] for name in fixtures & FIXTURE_KINDS.keys()})
        config.pluginmanager.register(GuardedTests(), GUARDED_TESTS)
    if watched and len(guarded) < len(items) and not config.pluginmanager.has_plugin(UNGUARDED_TESTS):
        config.pluginmanager.register(UnguardedTests(base), UNGUARDED_TESTS)


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


def _load_the_guard(settings: Settings, kinds: set[str]) -> None:
    """Import what guarded tests use now, once, so no test's deadline pays for it (an SDK alone
    takes a third of a second: those of the client fixtures in use, ``kinds``); and fail with a
    usage error now if httpx2 lost the seam."""
    from . import dialects, guard, routing, transport  # noqa: F401

    dialects.load_sdks(kinds)

    if settings.record != "off":
        from . import cassettes  # noqa: F401
    transport.check_seam()


GUARDED_TESTS = "llm_guard_guarded_tests"
UNGUARDED_TESTS = "llm_guard_unguarded_tests"


class UnguardedTests:
    """Watches tests that are not guarded for LLM requests that leave the process (``unguarded``: warn
    or fail), so none goes live unnoticed: registered only when httpx2 is loaded and some test is not
    guarded. The warning is issued from the test's own phases (never from a wrapper's teardown, where
    ``-W error`` would end the session): pytest shows it as the test's, and ``-W error`` fails that test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        if item.stash.get(ITEM_SETTINGS, None) is not None:
            return (yield)
        from . import transport
        from .dialects import origin_of

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

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        _warn_unguarded(item)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        _warn_unguarded(item)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        _warn_unguarded(item)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
        report_ = yield
        sent = item.stash.get(UNGUARDED, None)
        if sent and call.when == "teardown":
            report_.llm_unguarded = {"nodeid": item.nodeid, "requests": sent}  # type: ignore[attr-defined]
        return report_


def _warn_unguarded(item: pytest.Item) -> None:
    """One warning for the live requests a phase sent (a phase whose code raised tells at the next one)."""
    sent = item.stash.get(UNGUARDED, None)
    told = item.stash.get(WARNED, 0)
    if not sent or len(sent) == told:
        return
    item.stash[WARNED] = len(sent)
    from .report import unguarded_warning

    fault_server = "llm_fault_server" in getattr(item, "fixturenames", ())
    text = unguarded_warning(item.nodeid, len(sent) - told, sent[told], fault_server=fault_server)
    try:
        item.warn(LLMUnguardedWarning(text))
    except LLMUnguardedWarning as error:  # -W error made it an exception: its text, not this plugin's frames
        raise pytest.fail.Exception(f"{type(error).__name__}: {error}", pytrace=False) from None


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
            clock=item.ihook.pytest_llm_guard_clock(item=item) or session.clock,
            prices=session.prices,
            on_attempt=_attempt_hook(item),
            endpoints=session.endpoints,
            learned=session.learned,
        )
        item.stash[GUARD] = guard
        item.stash[STARTED] = guard.clock.wall()
        alarm = Alarm(guard.clock.now) if Alarm.available() else None
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
        with pytest.MonkeyPatch.context() as environment, scrubbed_logs(guard.scrubber):
            item.stash[ENVIRONMENT] = environment
            try:
                return (yield)
            finally:
                transport.deactivate(guard)
                item.config.stash[SESSION].budget.add(guard.stats)
                layer = _unsaved(item)  # still here: teardown raised, or Ctrl-C, an exit
                if layer is not None:
                    _save(item, layer, failed=True, in_wrapper=True)

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_setup")
    def pytest_runtest_setup_phase(self, item: pytest.Item) -> Iterator[None]:
        return (yield from _interruptible(item))

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_call")
    def pytest_runtest_call_phase(self, item: pytest.Item) -> Iterator[None]:
        return (yield from _interruptible(item))

    @pytest.hookimpl(wrapper=True, tryfirst=True, specname="pytest_runtest_teardown")
    def pytest_runtest_teardown_phase(self, item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
        return (yield from _interruptible(item))

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Iterator[Any]:
        """A deadline during a fixture's setup: the test's failure names the fixture, and the fixture
        holds a clear failure for its later users (pytest caches only ``Exception``s, and a
        shared fixture left half set up breaks every later test with an internal assertion)."""
        try:
            return (yield)
        except LLMGuardInterrupt as exc:
            if not isinstance(exc, pytest.fail.Exception):  # pytest caches those itself
                _fail_fixture(fixturedef, request, exc)
            raise

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item, nextitem: pytest.Item | None) -> None:
        """The cassette is saved once the test's fixtures are finalised, in its teardown phase, where
        a warning is the test's (``-W error`` fails its teardown, nothing more)."""
        layer = _unsaved(item)
        if layer is not None:
            _save(item, layer, failed=item.stash.get(FAILED, False))
            item.stash[CASSETTE_NOTE] = layer.note(passed=not item.stash.get(FAILED, False))
            guard = item.stash[GUARD]
            for attempt in layer.recorded:
                # counts tell what reached the file (an answer read on after its close ended as live)
                guard.ledger.change_source(attempt, "recorded" if layer.saved else "live")
            for warning in layer.abandoned_warnings():
                item.warn(pytest.PytestWarning(warning))

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

        guard.alarm.at(guard.clock.now() + settings.timeout, timed_out)
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
        from . import pipeline
        from .routing import RouterLayer

        guard.pipeline = pipeline.build(
            cassette=_open_cassette(item, guard), routing=RouterLayer(session.router, guard.settings)
        )

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_call(self, item: pytest.Item) -> None:
        """The test returned: answers it stopped reading are read on and recorded, while its client
        and event loop are still there (fixtures end later), and count as answered. Its deadline no
        longer interrupts."""
        guard = item.stash.get(GUARD, None)
        if guard is None:
            return
        guard.interruptible = False
        layer = item.stash.get(CASSETTE, None)
        if layer is not None:
            layer.finish_bodies()
        for attempt in guard.events:
            if attempt.end is None and attempt.status is not None:  # answered, its body left unread
                guard.closed_early(attempt)
        unplayed = layer.test_returned() if layer is not None else None
        if unplayed is None:
            return
        if layer.settings.on_unplayed == "fail":
            pytest.fail(unplayed, pytrace=False)
        try:
            item.warn(pytest.PytestWarning(unplayed))
        except pytest.PytestWarning as error:  # -W error made it an exception: its text, not this plugin's frames
            raise pytest.fail.Exception(f"{type(error).__name__}: {error}", pytrace=False) from None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
        if call.excinfo is not None and item.stash.get(GUARD, None) is not None:
            call.excinfo = with_line_numbers(call.excinfo)
        report_ = yield
        guard = item.stash.get(GUARD, None)
        if guard is None:
            return report_
        from . import report, report_json
        from .scrub import scrub_report

        excinfo = call.excinfo
        outlived = guard.outlived() if call.when == "call" and report_.passed else None
        if outlived is not None:
            report_.outcome, report_.longrepr = "failed", guard.scrubber.text(outlived)
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
        if report_.longrepr is not None or report_.sections:
            scrub_report(report_, guard.scrubber)
        if excinfo is not None and (report_.failed or report_.skipped) and WHY not in item.stash:
            item.stash[WHY] = report_json.why(excinfo.value, guard.scrubber.text)
        item.stash[OUTCOME] = report_json.note_phase(
            item.stash.get(OUTCOME, ("passed", 0.0)), report_.when, report_.failed, report_.skipped, report_.duration
        )
        if call.when == "teardown":
            outcome, duration = item.stash[OUTCOME]
            test = report_json.record(
                guard, item.nodeid, outcome, duration, item.stash[STARTED], item.stash.get(WHY, None)
            )
            report_.llm_guard = test  # type: ignore[attr-defined]  # travels to the xdist controller
            report_.llm_cassette = item.stash.get(CASSETTE_NOTE, None)  # type: ignore[attr-defined]
            report_.user_properties.extend(report_json.junit_properties(test))
        return report_


def _uses_pytest_recording(item: pytest.Item) -> bool:
    """A test with pytest-recording's ``vcr`` marker keeps its own cassettes (its ``vcr`` fixture, autouse,
    installs one only then); the guard's deadlines and budgets still apply."""
    return item.get_closest_marker("vcr") is not None


def _attempt_hook(item: pytest.Item) -> Any:
    """``pytest_llm_guard_attempt``, called per attempt only where some plugin implements it."""
    hook = item.ihook.pytest_llm_guard_attempt
    if not hook.get_hookimpls():
        return None
    return lambda attempt: hook(record=attempt)


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


def _fail_fixture(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest, exc: LLMGuardInterrupt) -> None:
    """Finalise what the interrupted setup registered, and cache a failure that says what happened."""
    from . import transport

    name, scope = fixturedef.argname, fixturedef.scope
    finalizers, fixturedef._finalizers = fixturedef._finalizers, []
    for finalizer in reversed(finalizers):
        try:
            finalizer()
        except Exception:  # noqa: BLE001, S112 - a half set-up fixture's finalizer may fail; the test has its error
            continue
    guard = transport.current()
    test = guard.test_id if guard is not None else "a guarded test"
    budget = getattr(exc, "budget", None)
    cause = f"the {budget} of {test}" if budget else f"{type(exc).__name__} in {test}"
    what = "The deadline passed" if budget == "deadline" else f"{type(exc).__name__} was raised"
    exc.args = (
        f"{exc}\n{what} during the setup of fixture {name!r} ({scope} scope): "
        "a fixture's setup counts against the test that first uses it.",
    )
    if scope == "function":
        return
    first_line = str(exc).splitlines()[0]
    later = pytest.fail.Exception(
        f"pytest-llm-guard: the setup of fixture {name!r} ({scope} scope) was interrupted by {cause}, "
        "so it has no value and every test using it fails. Give the test that first uses it a deadline "
        "that covers the setup, or set the fixture up outside guarded tests. "
        f"The interruption: {first_line}",
        pytrace=False,
    )
    fixturedef.cached_result = (None, fixturedef.cache_key(request), (later, None))  # type: ignore[arg-type]


def _unsaved(item: pytest.Item) -> CassetteLayer | None:
    """The test's cassette, if not saved yet: it is saved once."""
    layer = item.stash.get(CASSETTE, None)
    if layer is not None:
        del item.stash[CASSETTE]
    return layer


def _save(item: pytest.Item, layer: CassetteLayer, *, failed: bool, in_wrapper: bool = False) -> None:
    """A cassette that cannot be written (disk full, read-only folder) warns; the session goes on.

    ``in_wrapper``: the save runs in a wrapper's teardown (the teardown phase raised, or the session
    is ending), where a warning that ``-W error`` raises would end the whole session: it is shown,
    never raised.
    """
    try:
        warning = layer.save(test_failed=failed)
    except OSError as exc:
        warning = f"pytest-llm-guard: cassette of {item.nodeid} not saved: {exc}"
    except Exception as exc:
        if not in_wrapper:
            raise
        warning = f"pytest-llm-guard: cassette of {item.nodeid} not saved: {type(exc).__name__}: {exc}"
    if warning is None:
        return
    with warnings.catch_warnings():
        if in_wrapper:
            warnings.simplefilter("always")
        item.warn(pytest.PytestWarning(warning))


def _may_rerecord(settings: Settings, configured: str, layer: CassetteLayer) -> bool:
    """Expiry may make this test record its cassette again (``on_expiry = "rerecord"``, recording allowed)."""
    expires = settings.cassette_max_age is not None and settings.on_expiry == "rerecord"
    return expires and configured != "none" and layer.mode != "all"


def _open_cassette(item: pytest.Item, guard: Guard) -> CassetteLayer | None:
    settings = guard.settings
    if settings.record == "off" or not settings.cassette:  # no cassette: vcrpy is not even imported
        return None
    from . import cassettes

    mode = cassettes.record_mode(settings)
    if mode == "off" or _uses_pytest_recording(item):
        return None
    path = cassettes.path_for(item.path, item.name, settings)
    session = item.config.stash[SESSION]
    if mode in ("all", "new_episodes"):
        session.keep_before(path)
    configured, mode = mode, cassettes.effective_mode(mode, session.existed_at_start(path))

    hook = item.ihook.pytest_llm_cassette_match
    matcher = (lambda request, recorded: hook(request=request, recorded=recorded)) if hook.get_hookimpls() else None

    def open_as(mode: str) -> CassetteLayer:
        try:
            return cassettes.open_cassette(
                path,
                settings,
                mode=mode,
                nodeid=item.nodeid,
                matcher=matcher,
                scrubber=guard.scrubber,
                session_started=session.started_at,
                clock=guard.clock,
            )
        except LLMCassetteError as exc:  # from None: its message once, without a "During handling" copy
            raise pytest.fail.Exception(f"{type(exc).__name__}: {exc}", pytrace=False) from None

    layer = open_as(mode)
    expired = layer.expired(recording_allowed=configured != "none")
    if expired is not None and expired[0] == "fail":
        pytest.fail(expired[1], pytrace=False)
    elif _may_rerecord(settings, configured, layer) and session.rerecorded(path, now=expired is not None):
        session.keep_before(path)
        expiry = layer.expiry
        layer = open_as("all")
        layer.expiry = expiry
    elif expired is not None:
        item.warn(pytest.PytestWarning(expired[1]))
    item.stash[CASSETTE] = layer
    if layer.replay_only:  # CI needs no secret: the SDKs only insist that a key is set
        endpoints = item.config.stash[SESSION].endpoints.endpoints
        for name in (*key_variables(), *(e.api_key_env for e in endpoints if e.api_key_env)):
            if not os.environ.get(name):
                item.stash[ENVIRONMENT].setenv(name, REPLAY_PLACEHOLDER_KEY)
    return layer
