"""The HTML report: one self-contained page drawn from the JSON report (its current schema).

``render(report)`` returns the whole document. The page fetches nothing: its CSS, its
SVG and its one script are inline, and a Content-Security-Policy naming the hashes of
that style and script makes the browser refuse anything else — a font, an image, or a
script smuggled in through a test id. Everything taken from the report (test ids,
error texts, URLs, names) is escaped here and nowhere else; numbers are read as
numbers, so a string where a duration belongs draws as 0, never as markup.

What the page shows, in the ledger's words (``ledger.py``):

- the session's totals, worded as the terminal summary words them;
- a table of tests, sortable by any column, each with where its wall time went
  (its ``attribution``) as a stacked bar and as a sentence;
- per test, a timeline: one lane per call, one bar per attempt at its offset, coloured
  by its category (replayed and refused attempts get their own colours and a minimum
  width, however short), the backoff before an attempt hatched, a failover labelled
  with where it went, and every attempt's details in its tooltip and in a table below.
  Timelines are kept in ``<template>`` elements and built only when a row is opened,
  so a report of a thousand tests loads as fast as its table;
- a panel per endpoint: attempts by category, latency, and its breakers' states over
  the session (one strip per model that has transitions; all closed when none has).

Standard library only: this module is imported only when ``--llm-report-html`` is used.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any

from ..report import totals_sentence
from ..report_json import SCHEMA
from .common import (
    COLOURS,
    MIN_BAR,
    OUTCOMES,
    SOURCES,
    STATES,
    STRIP_LABEL,
    STRIP_WIDTH,
    _cost,
    _e,
    _int,
    _num,
    _opt,
    _parse_created,
    _plural,
    _secs,
    _tick_label,
    _ticks,
)
from .endpoints import _endpoints_section, _session_span
from .table import _tests_section, _timeline

__all__ = ["MIN_BAR", "SCHEMA", "STRIP_LABEL", "STRIP_WIDTH", "_tick_label", "_ticks", "render"]


# -- the page ---------------------------------------------------------------------------


def render(report: Mapping[str, Any]) -> str:
    """The whole HTML document for a report of the current schema."""
    if report.get("schema") != SCHEMA:
        raise ValueError(
            f"pytest-llm-guard cannot draw report schema {report.get('schema')!r}: this version reads schema {SCHEMA}."
        )
    created_ts, tz = _parse_created(report.get("created"))
    session = report.get("session") or {}
    tests = [t for t in report.get("tests") or [] if isinstance(t, Mapping)]
    endpoints = [e for e in report.get("endpoints") or [] if isinstance(e, Mapping)]
    with_cost = session.get("cost") is not None or any(t.get("cost") is not None for t in tests)

    body = "\n".join(
        [
            _defs(),
            _header(report, session, tests, created_ts, tz),
            _tests_section(tests, with_cost),
            _endpoints_section(endpoints, _session_span(session, tests, endpoints, created_ts), tz),
            "".join(_timeline(i, test) for i, test in enumerate(tests)),
        ]
    )
    bad = Counter(t.get("outcome") for t in tests if t.get("outcome") in ("failed", "error"))
    title = ", ".join(
        [f"pytest-llm-guard report: {_plural(len(tests), 'test')}"] + [f"{n} {o}" for o, n in bad.items()]
    )
    style, script = _css(), _asset("page.js")
    policy = (
        "default-src 'none'; base-uri 'none'; form-action 'none'; "
        f"style-src '{_digest(style)}'; script-src '{_digest(script)}'"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{style}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n<script>{script}</script>\n</body>\n</html>\n"
    )


def _digest(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def _defs() -> str:
    """Shared SVG definitions: the hatching of backoff gaps."""
    return (
        '<svg class="defs" width="0" height="0" aria-hidden="true" focusable="false"><defs>'
        '<pattern id="llmg-hatch" patternUnits="userSpaceOnUse" width="6" height="6" patternTransform="rotate(45)">'
        '<rect width="6" height="6" fill="#f4f5f7"/><line x1="1" y1="0" x2="1" y2="6" stroke="#9aa3ad" '
        'stroke-width="2"/></pattern></defs></svg>'
    )


# -- header: the session in the ledger's words ------------------------------------------


def _totals_sentence(tests: int, totals: Mapping[str, Any], currency: str) -> str:
    """The terminal summary's sentence (``report.totals_sentence``), from numbers read as numbers."""
    counted = {
        key: _int(totals.get(key))
        for key in (*SOURCES, "calls", "attempts", "retries", "failovers", "failures", "tokens")
    }
    seconds = {key: _num(totals.get(key)) for key in ("network_seconds", "backoff_seconds")}
    return totals_sentence(tests, {**counted, **seconds, "cost": _opt(totals.get("cost"))}, currency)


def _header(
    report: Mapping[str, Any],
    session: Mapping[str, Any],
    tests: Sequence[Mapping[str, Any]],
    created_ts: float | None,
    tz: timezone,
) -> str:
    totals = session.get("totals") or {}
    count = _int(session.get("tests")) if session.get("tests") is not None else len(tests)
    outcomes = {name: sum(1 for t in tests if t.get("outcome") == name) for name in OUTCOMES}
    written = (
        datetime.fromtimestamp(created_ts, tz).strftime("%Y-%m-%d %H:%M:%S %Z")
        if created_ts is not None
        else str(report.get("created") or "at an unknown time")
    )
    sources = " · ".join(f"{_int(totals.get(s))} {s}" for s in SOURCES if _int(totals.get(s))) or "none sent"
    tiles = [
        ("guarded tests", f"{count:,}", " · ".join(f"{n} {name}" for name, n in outcomes.items() if n)),
        ("LLM calls", f"{_int(totals.get('calls')):,}", ""),
        ("attempts", f"{_int(totals.get('attempts')):,}", sources),
        ("retries", f"{_int(totals.get('retries')):,}", "after a failure and a backoff"),
        ("failovers", f"{_int(totals.get('failovers')):,}", "moved at once to another endpoint"),
        ("failed attempts", f"{_int(totals.get('failures')):,}", ""),
        ("on the network", _secs(_num(totals.get("network_seconds"))), "live and recorded attempts"),
        ("in backoff", _secs(_num(totals.get("backoff_seconds"))), ""),
        ("tokens", f"{_int(totals.get('tokens')):,}", ""),
    ]
    currency = str(session.get("currency") or "")
    if session.get("cost") is not None:
        tiles.append(("cost", _cost(_num(session.get("cost"))), currency))
    tile_html = "".join(
        f'<div class="tile"><div class="v">{_e(value)}</div><div class="k">{_e(label)}</div>'
        + (f'<div class="s">{_e(sub)}</div>' if sub else "")
        + "</div>"
        for label, value, sub in tiles
    )
    return (
        "<header><h1>pytest-llm-guard report</h1>"
        f'<p class="meta">Session of {_num(session.get("duration")):.1f} s, written {_e(written)}'
        f" · pytest-llm-guard {_e(report.get('plugin_version') or '?')}</p>"
        f'<p class="sentence">{_e(_totals_sentence(count, totals, currency))}</p>'
        f'<div class="tiles">{tile_html}</div></header>'
    )


# -- style and script -------------------------------------------------------------------


def _asset(name: str) -> str:
    """The page's style and script: files beside this module, inlined into every page."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def _css() -> str:
    colours = "".join(f".c-{k}{{fill:{v};background:{v}}}" for k, v in COLOURS.items())
    states = "".join(f".st-{k}{{fill:{v};background:{v}}}" for k, v in STATES.items())
    return _asset("page.css") + colours + states
