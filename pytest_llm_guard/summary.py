"""The session's end: the llm-guard sections of pytest's terminal summary, and what the controller
writes at sessionfinish (the cassettes' upkeep verdict, learned timeouts, the JSON and HTML reports).

Loaded only for a session that was opened (something configured, or a guarded test collected):
a suite that never uses the plugin never imports, nor compiles, any of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from .config import OPTIONS

if TYPE_CHECKING:
    from .session import Session


def terminal_summary(terminalreporter: Any, session: Session) -> None:
    """The unguarded requests, the totals, endpoints and slowest tests, then the cassettes' upkeep."""
    _guard_summary(terminalreporter, session)
    if session.upkeep:
        from . import report

        terminalreporter.write_sep("-", "llm-guard: cassettes")
        for line in report.cassette_lines(session.upkeep, terminalreporter.config.rootpath):
            terminalreporter.write_line(line)


def _guard_summary(terminalreporter: Any, session: Session) -> None:
    attempted = any(test["stats"]["attempts"] for test in session.records)
    if not (session.unguarded or attempted):
        return  # nothing to say: report.py is not even imported
    from . import report

    if session.unguarded:
        terminalreporter.write_sep("-", "llm-guard: unguarded LLM requests")
        for line in report.unguarded_lines(session.unguarded):
            terminalreporter.write_line(line)
    if not attempted:
        return
    settings = session.settings
    verbosity = terminalreporter.config.get_verbosity()
    terminalreporter.write_sep("-", "llm-guard")
    terminalreporter.write_line(report.totals_line([t["stats"] for t in session.records], settings.currency))
    if verbosity < 0:
        return
    for line in session.router.status():
        terminalreporter.write_line(f"endpoint {line}")
    for line in report.limit_wait_lines(session.records):
        terminalreporter.write_line(line)
    slowest = report.slowest_lines(session.records, settings.durations)
    if slowest:
        shown = "all guarded tests" if settings.durations == 0 else report.plural(len(slowest), "slowest guarded test")
        terminalreporter.write_line(f"where the time went ({shown}; {OPTIONS['durations'].flag}=N):")
        for line in slowest:
            terminalreporter.write_line(f"  {line}")
    amplified = report.amplification_lines(session.records)
    if amplified:
        terminalreporter.write_line("retry amplification (calls retried by more than one layer):")
        for line in amplified:
            terminalreporter.write_line(f"  {line}")
    if session.learned is not None:
        from . import learned

        for line in report.learned_lines(
            learned.in_reports(session.learned, session.records), OPTIONS["learn_timeouts"].flag, settings.call_timeout
        ):
            terminalreporter.write_line(line)
    if verbosity > 0:
        from . import report_json

        for line in report.endpoint_lines(report_json.endpoints(session.records, session.router.health())):
            terminalreporter.write_line(line)


def finish(guard_session: Session, session: pytest.Session) -> list[str]:
    """Judge the cassettes' upkeep (a failing verdict fails the run), write the learned timeouts and the
    reports, from every worker's records; what was written, as lines for the terminal summary."""
    config = session.config
    if guard_session.cassette_notes:
        from .cassettes import nothing_to_judge

        if not all(map(nothing_to_judge, guard_session.cassette_notes)):
            from .cassettes import upkeep

            judged = upkeep.judge(guard_session.cassette_notes, guard_session.before)
            guard_session.upkeep = judged.as_dict() if judged.unplayed or judged.reviews or judged.expired else None
            if judged.fails and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
    settings = guard_session.settings
    said = []
    if settings.learn_timeouts:
        from . import learned

        said.append(learned.learn(config.rootpath / settings.learn_timeouts, guard_session.records))
    if not (settings.report or settings.report_html):
        return said
    from . import report_json

    here = config.invocation_params.dir  # an absolute path stays as it is
    said += report_json.write_reports(
        guard_session.records,
        guard_session.router.health() if guard_session.records else [],
        duration=guard_session.clock.now() - guard_session.started,
        currency=settings.currency,
        json_path=here / settings.report if settings.report else None,
        html_path=here / settings.report_html if settings.report_html else None,
        unguarded=guard_session.unguarded,
        cassettes=guard_session.upkeep,
        learned_limits=guard_session.learned,
    )
    return said
