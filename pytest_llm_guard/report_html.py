"""The HTML report: one self-contained page drawn from the JSON report (schema 1).

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
import html
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from .report import attribution_text, totals_sentence

SCHEMA = 1

# Bar colours by category; "replayed" and "refused" colour an attempt by its source, so a
# replay (category ok) is told apart from a live answer. Picked to stay apart for the
# common forms of colour blindness as far as ten colours can; every bar has a tooltip.
COLOURS = {
    "ok": "#2f9e5c",
    "replayed": "#3b7dd8",
    "timeout": "#e8833a",
    "http_429": "#d8b21c",
    "http_5xx": "#d23f3f",
    "http_4xx": "#8a5cc7",
    "reset": "#8a4b2d",
    "malformed": "#d264a8",
    "cut": "#a8326c",
    "refused": "#7b8794",
    "other": "#d5d9de",
}
LIGHT_TEXT = frozenset({"ok", "replayed", "http_5xx", "http_4xx", "reset", "cut", "refused", "malformed"})
"""Categories whose bars are dark enough for white labels."""
LEGEND = {
    "ok": "ok",
    "replayed": "replayed",
    "timeout": "timeout",
    "http_429": "HTTP 429",
    "http_5xx": "HTTP 5xx",
    "http_4xx": "HTTP 4xx",
    "reset": "connection reset",
    "malformed": "malformed answer",
    "cut": "stream cut",
    "refused": "refused (not sent)",
}
STATES = {"closed": "#cfe9d8", "half_open": "#f3c969", "open": "#e0605a"}
OUTCOMES = ("passed", "failed", "skipped", "error")
SOURCES = ("live", "recorded", "replayed", "refused")

# Timeline geometry, in CSS pixels (the SVG shrinks to fit a narrower window).
TL_WIDTH, TL_LEFT, TL_RIGHT = 1300, 70, 26
TL_AXIS, TL_LANE, TL_BAR_TOP, TL_BAR = 24, 32, 12, 16
MIN_BAR = 4.0
"""Refused and replayed attempts take ~0 s; they stay this wide so a person sees them."""
STRIP_WIDTH, STRIP_LABEL, STRIP_LANE = 640, 110, 20
MIN_SPAN = 3.0


# -- small helpers ----------------------------------------------------------------------


def _e(value: Any) -> str:
    """Escape anything from the report for text and attribute values alike."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, default: float = 0.0) -> float:
    """A finite number, or ``default``: the report is data, and a number field holding text stays a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return default
    return float(value)


def _opt(value: Any) -> float | None:
    number = _num(value, math.nan)
    return None if math.isnan(number) else number


def _int(value: Any) -> int:
    return int(_num(value))


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _secs(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f} s"


def _cost(value: float | None) -> str:
    return "—" if value is None else f"{value:,.4f}"


def _key(name: Any, known: Iterable[str], fallback: str = "other") -> str:
    """A CSS class suffix from report data: only known names, so data never reaches a class attribute."""
    return name if isinstance(name, str) and name in known else fallback


def _colour_key(attempt: Mapping[str, Any]) -> str:
    source = attempt.get("source")
    if source in ("replayed", "refused"):
        return source
    return _key(attempt.get("category"), COLOURS)


def _breakable(nodeid: Any) -> str:
    """A test id, escaped, that wraps after its path separators rather than mid-word."""
    text = _e(nodeid)
    for mark in ("/", "::", "["):
        text = text.replace(mark, mark + "<wbr>")
    return text


def _short(text: Any, limit: int) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clock(ts: float, tz: timezone) -> str:
    moment = datetime.fromtimestamp(ts, tz)
    return moment.strftime("%H:%M:%S") + f".{moment.microsecond // 100000}"


def _parse_created(created: Any) -> tuple[float | None, timezone]:
    """The report's writing time as epoch seconds, and the time zone clock times are shown in."""
    if not isinstance(created, str):
        return None, timezone.utc
    try:
        moment = datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return None, timezone.utc
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc).timestamp(), timezone.utc
    offset = moment.utcoffset() or timedelta(0)
    return moment.timestamp(), timezone(offset) if offset else timezone.utc


def _ticks(span: float, count: int = 6) -> list[float]:
    """Round tick values from 0 to ``span`` (1, 2, 2.5 or 5 times a power of ten apart)."""
    if span <= 0:
        return [0.0]
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(span / step + 1e-9) + 1)]


def _tick_label(value: float, step: float) -> str:
    """A tick with as many decimals as its step needs ("7.5 s" 2.5 s apart), in ms below a tenth of a second."""
    unit = "s"
    if step < 0.1:
        value, step, unit = value * 1000, step * 1000, "ms"
    digits = next((d for d in range(5) if abs(round(step, d) - step) <= step * 1e-6), 4)
    return f"{value:.{digits}f} {unit}"


# -- the page ---------------------------------------------------------------------------


def render(report: Mapping[str, Any]) -> str:
    """The whole HTML document for a schema-1 report."""
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
    style, script = _css(), _JS
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


# -- the table of tests -----------------------------------------------------------------

COLUMNS = (
    # key, heading, type, css class
    ("nodeid", "Test", "text", "c-test"),
    ("outcome", "Outcome", "text", "c-outcome"),
    ("duration", "Duration", "num", "c-num"),
    ("attribution", "Where the time went", "num", "c-attr"),
    ("calls", "Calls", "num", "c-num"),
    ("attempts", "Attempts", "num", "c-num"),
    ("retries", "Retries", "num", "c-num"),
    ("failovers", "Failovers", "num", "c-num"),
    ("tokens", "Tokens", "num", "c-num"),
    ("cost", "Cost", "num", "c-num"),
)


def _tests_section(tests: Sequence[Mapping[str, Any]], with_cost: bool) -> str:
    if not tests:
        return (
            '<section id="tests-section"><h2>Tests</h2><p class="empty">No guarded tests in this session.</p></section>'
        )
    columns = [c for c in COLUMNS if with_cost or c[0] != "cost"]
    heads = "".join(
        f'<th class="{css}" data-key="{key}" data-type="{kind}"'
        + (
            ' title="Sorts by the seconds lost: failed and refused attempts, and backoff"'
            if key == "attribution"
            else ""
        )
        + f'><button type="button">{heading}</button></th>'
        for key, heading, kind, css in columns
    )
    rows = "".join(_test_row(i, test, with_cost) for i, test in enumerate(tests))
    return (
        '<section id="tests-section"><div class="bar-head"><h2>Tests</h2>'
        f'<input id="filter" type="search" placeholder="Filter tests" aria-label="Filter tests by id or outcome">'
        f'<span id="shown" class="muted">{_plural(len(tests), "test")}</span></div>'
        f"{_legend()}"
        '<p class="hint muted">Click a column heading to sort, a row to open its timeline.</p>'
        f'<div class="table-wrap"><table id="tests"><thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table></div>'
        "</section>"
    )


def _legend() -> str:
    items = "".join(f'<span class="lg"><i class="sw c-{key}"></i>{_e(label)}</span>' for key, label in LEGEND.items())
    return (
        f'<div class="legend">{items}<span class="lg"><i class="sw hatch"></i>backoff before an attempt</span>'
        '<span class="lg"><b class="fo-mark">→ name</b>failover to that endpoint</span></div>'
    )


def _test_row(i: int, test: Mapping[str, Any], with_cost: bool) -> str:
    stats = test.get("stats") or {}
    outcome = _key(test.get("outcome"), OUTCOMES, "unknown")
    duration = _num(test.get("duration"))
    parts = [p for p in test.get("attribution") or [] if isinstance(p, Mapping)]
    lost = sum(_num(p.get("seconds")) for p in parts if p.get("what") not in ("ok", "replayed", "other"))
    cells = [
        f'<td class="c-test"><button type="button" class="tg" aria-expanded="false">'
        f'<span class="caret" aria-hidden="true"></span><span class="id">{_breakable(test.get("nodeid"))}</span>'
        "</button></td>",
        f'<td class="c-outcome"><span class="badge o-{outcome}">{_e(test.get("outcome") or "?")}</span></td>',
        f'<td class="c-num" data-v="{duration!r}">{_secs(duration)}</td>',
        f'<td class="c-attr" data-v="{lost!r}">{_attribution_bar(parts, duration)}'
        f'<div class="attr-text">{_e(_attribution_text(parts))}</div></td>',
    ]
    for key in ("calls", "attempts", "retries", "failovers", "tokens"):
        value = _int(stats.get(key))
        cells.append(f'<td class="c-num" data-v="{value}">{value:,}</td>')
    if with_cost:
        cost = _opt(test.get("cost"))
        cells.append(f'<td class="c-num" data-v="{"" if cost is None else repr(cost)}">{_cost(cost)}</td>')
    return f'<tr class="test o-{outcome}" data-i="{i}">{"".join(cells)}</tr>'


def _attribution_text(parts: Iterable[Mapping[str, Any]]) -> str:
    """The terminal summary's words for where the time went (``report.attribution_text``)."""
    clean = [
        {"what": part.get("what") if part.get("what") in _WHATS else "other", "seconds": _num(part.get("seconds")),
         "attempts": _int(part.get("attempts"))}
        for part in parts
    ]  # fmt: skip
    return attribution_text(clean) or "no time recorded"


_WHATS = frozenset(COLOURS) | {"backoff"}


def _attribution_bar(parts: Sequence[Mapping[str, Any]], duration: float) -> str:
    total = sum(_num(p.get("seconds")) for p in parts) or duration
    if total <= 0:
        return '<svg class="attr" viewBox="0 0 1000 10" preserveAspectRatio="none" aria-hidden="true"></svg>'
    x, rects = 0.0, []
    for part in parts:
        seconds = _num(part.get("seconds"))
        if seconds <= 0:
            continue
        width = 1000 * seconds / total
        what = part.get("what")
        fill = 'fill="url(#llmg-hatch)"' if what == "backoff" else f'class="c-{_key(what, COLOURS)}"'
        rects.append(
            f'<rect x="{x:.2f}" y="0" width="{width:.2f}" height="10" {fill}>'
            f"<title>{_e(_attribution_text([part]))}</title></rect>"
        )
        x += width
    return f'<svg class="attr" viewBox="0 0 1000 10" preserveAspectRatio="none">{"".join(rects)}</svg>'


# -- one test's timeline ----------------------------------------------------------------


def _timeline(i: int, test: Mapping[str, Any]) -> str:
    """The test's timeline and attempt table, in a template the script instantiates when its row opens."""
    attempts = [a for a in test.get("attempts") or [] if isinstance(a, Mapping)]
    if not attempts:
        content = '<p class="empty">No LLM attempts in this test.</p>'
    else:
        content = _timeline_svg(test, attempts) + _attempts_table(attempts)
    return f'<template id="tl-{i}"><div class="timeline-box">{content}</div></template>'


def _timeline_svg(test: Mapping[str, Any], attempts: Sequence[Mapping[str, Any]]) -> str:
    calls = sorted({_int(a.get("call")) for a in attempts})
    lane = {call: n for n, call in enumerate(calls)}
    end = max([_num(test.get("duration"))] + [_num(a.get("offset")) + _num(a.get("duration")) for a in attempts])
    end = max(end, 1e-3)
    left, right = TL_LEFT, TL_WIDTH - TL_RIGHT
    scale = (right - left) / end
    height = TL_AXIS + len(calls) * TL_LANE + 6

    def x_of(t: float) -> float:
        return left + max(0.0, min(t, end)) * scale

    ticks = _ticks(end)
    step = ticks[1] if len(ticks) > 1 else end
    grid = "".join(
        f'<line class="grid" x1="{x_of(t):.1f}" y1="{TL_AXIS - 4}" x2="{x_of(t):.1f}" y2="{height - 4}"/>'
        f'<text class="tick" x="{x_of(t):.1f}" y="{TL_AXIS - 8}">{_tick_label(t, step)}</text>'
        for t in ticks
    )
    lanes = "".join(
        f'<rect class="lane" x="{left}" y="{TL_AXIS + n * TL_LANE + TL_BAR_TOP - 2}" width="{right - left}" '
        f'height="{TL_BAR + 4}"/><text class="lane-label" x="{left - 8}" '
        f'y="{TL_AXIS + n * TL_LANE + TL_BAR_TOP + TL_BAR - 4}">call {call}</text>'
        for call, n in lane.items()
    )
    marks = []
    for attempt in attempts:
        top = TL_AXIS + lane[_int(attempt.get("call"))] * TL_LANE
        offset, duration, backoff = (_num(attempt.get(k)) for k in ("offset", "duration", "backoff"))
        x0 = x_of(offset)
        if backoff > 0:
            bx = x_of(offset - backoff)
            width = max(2.0, x0 - bx)
            marks.append(
                f'<rect class="backoff" x="{x0 - width:.2f}" y="{top + TL_BAR_TOP + 2}" width="{width:.2f}" '
                f'height="{TL_BAR - 4}" fill="url(#llmg-hatch)"><title>{_e(_backoff_title(attempt))}</title></rect>'
            )
        width = max(MIN_BAR, x_of(offset + duration) - x0)
        x0 = min(x0, right - width)
        colour = _colour_key(attempt)
        marks.append(
            f'<rect class="attempt c-{colour}" data-category="{colour}" x="{x0:.2f}" y="{top + TL_BAR_TOP}" '
            f'width="{width:.2f}" height="{TL_BAR}" rx="2"><title>{_e(_attempt_title(attempt))}</title></rect>'
        )
        label = _bar_label(attempt)
        if label and width >= 12 + 6.2 * len(label):
            text_class = "in-bar light" if colour in LIGHT_TEXT else "in-bar"
            marks.append(
                f'<text class="{text_class}" x="{x0 + 5:.2f}" y="{top + TL_BAR_TOP + TL_BAR - 4}">{_e(label)}</text>'
            )
        if attempt.get("failover_to"):
            text = "→ " + _short(attempt.get("failover_to"), 24)
            x1 = x0 + width
            anchor = 'text-anchor="end" ' if x1 + 7 * len(text) > TL_WIDTH else ""
            marks.append(
                f'<g class="failover"><line x1="{x1:.2f}" y1="{top + 2}" x2="{x1:.2f}" '
                f'y2="{top + TL_BAR_TOP + TL_BAR}"/>'
                f'<text {anchor}x="{x1 + (-3 if anchor else 3):.2f}" y="{top + 9}">{_e(text)}'
                f"<title>failover to {_e(attempt.get('failover_to'))}: the next attempt went there at once, "
                "with no backoff</title></text></g>"
            )
    return (
        f'<svg class="timeline" width="{TL_WIDTH}" height="{height}" viewBox="0 0 {TL_WIDTH} {height}" '
        f'role="img" aria-label="{_e(f"Timeline of {len(attempts)} attempts")}">'
        f"{grid}{lanes}{''.join(marks)}</svg>"
    )


def _bar_label(attempt: Mapping[str, Any]) -> str:
    outcome = _short(attempt.get("outcome"), 28)
    if attempt.get("source") == "replayed":
        return "replayed"
    name = attempt.get("endpoint_name")
    return f"{_short(name, 16)} · {outcome}" if name else outcome


def _where(attempt: Mapping[str, Any]) -> str:
    place = f"{attempt.get('endpoint') or '?'}{attempt.get('path') or ''}"
    name = attempt.get("endpoint_name")
    return f"[{name}] {place}" if name else place


def _attempt_title(attempt: Mapping[str, Any]) -> str:
    """An attempt in full, for its bar's tooltip."""
    lines = [
        f"call {_int(attempt.get('call'))}, attempt {_int(attempt.get('number'))} ({attempt.get('kind') or '?'}), "
        f"{attempt.get('source') or '?'}",
        f"{_where(attempt)} model={attempt.get('model') or '?'}",
    ]
    outcome = str(attempt.get("outcome") or "?")
    if attempt.get("error"):
        outcome += f" ({_short(attempt.get('error'), 300)})"
    if attempt.get("cause"):
        outcome += f", cut at its {attempt.get('cause')}"
    lines.append(outcome)
    timing = f"started at {_num(attempt.get('offset')):.3f} s, took {_num(attempt.get('duration')):.3f} s"
    if _num(attempt.get("backoff")) > 0:
        timing += f", after {_num(attempt.get('backoff')):.3f} s backoff"
    lines.append(timing)
    extra = []
    if _opt(attempt.get("first_chunk")) is not None:
        extra.append(f"first chunk after {_num(attempt.get('first_chunk')):.3f} s")
    if attempt.get("tokens") is not None:
        extra.append(_plural(_int(attempt.get("tokens")), "token"))
    if attempt.get("failover_to"):
        extra.append(f"failover to {attempt.get('failover_to')}")
    if extra:
        lines.append("; ".join(extra))
    return "\n".join(lines)


def _backoff_title(attempt: Mapping[str, Any]) -> str:
    return (
        f"{_num(attempt.get('backoff')):.3f} s backoff before attempt {_int(attempt.get('number'))} "
        f"of call {_int(attempt.get('call'))}"
    )


def _attempts_table(attempts: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for attempt in sorted(attempts, key=lambda a: (_num(a.get("offset")), _int(a.get("call")), _int(a.get("number")))):
        outcome = _e(attempt.get("outcome") or "?")
        if attempt.get("error"):
            outcome += f' <span class="muted">({_e(_short(attempt.get("error"), 200))})</span>'
        if attempt.get("cause"):
            outcome += f' <span class="muted">cut at its {_e(attempt.get("cause"))}</span>'
        if attempt.get("failover_to"):
            outcome += f' <b class="fo-mark">→ {_e(attempt.get("failover_to"))}</b>'
        first_chunk = _opt(attempt.get("first_chunk"))
        tokens = attempt.get("tokens")
        rows.append(
            "<tr>"
            f'<td class="c-num">{_int(attempt.get("call"))}.{_int(attempt.get("number"))}</td>'
            f"<td>{_e(attempt.get('kind'))}</td>"
            f'<td><i class="sw c-{_colour_key(attempt)}"></i>{_e(attempt.get("source"))}</td>'
            f'<td class="where">{_e(_where(attempt))}<span class="muted"> {_e(attempt.get("model") or "")}</span></td>'
            f"<td>{outcome}</td>"
            f'<td class="c-num">{_num(attempt.get("offset")):.3f}</td>'
            f'<td class="c-num">{_num(attempt.get("backoff")):.3f}</td>'
            f'<td class="c-num">{_num(attempt.get("duration")):.3f}</td>'
            f'<td class="c-num">{"—" if first_chunk is None else f"{first_chunk:.3f}"}</td>'
            f'<td class="c-num">{"—" if tokens is None else f"{_int(tokens):,}"}</td>'
            "</tr>"
        )
    return (
        '<table class="attempts"><thead><tr><th class="c-num">call.try</th><th>kind</th><th>source</th>'
        '<th>endpoint and model</th><th>outcome</th><th class="c-num">at (s)</th><th class="c-num">backoff (s)</th>'
        '<th class="c-num">took (s)</th><th class="c-num">first chunk (s)</th><th class="c-num">tokens</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


# -- endpoints and their breakers -------------------------------------------------------


def _session_span(
    session: Mapping[str, Any],
    tests: Sequence[Mapping[str, Any]],
    endpoints: Sequence[Mapping[str, Any]],
    created_ts: float | None,
) -> tuple[float, float] | None:
    """The session's wall-clock span: from its start (written time minus duration) or first test, to the last event."""
    timed = [t for t in tests if _opt(t.get("started")) is not None]
    starts = [_num(t.get("started")) for t in timed]
    ends = [_num(t.get("started")) + _num(t.get("duration")) for t in timed]
    moments = [
        _num(tr.get("time"))
        for e in endpoints
        for tr in e.get("transitions") or []
        if isinstance(tr, Mapping) and _opt(tr.get("time")) is not None
    ]
    if created_ts is not None:
        ends.append(created_ts)
        starts.append(created_ts - _num(session.get("duration")))
    if not starts and not moments:
        return None
    first = min(starts + moments)
    last = max(ends + moments + [first + 1e-3])
    return first, last


def _endpoints_section(endpoints: Sequence[Mapping[str, Any]], span: tuple[float, float] | None, tz: timezone) -> str:
    if not endpoints:
        return '<section id="endpoints"><h2>Endpoints</h2><p class="empty">No endpoint was used.</p></section>'
    panels = "".join(_endpoint_panel(e, span, tz) for e in endpoints)
    states = "".join(
        f'<span class="lg"><i class="sw st-{state}"></i>{state.replace("_", "-")}</span>' for state in STATES
    )
    return (
        '<section id="endpoints"><div class="bar-head"><h2>Endpoints</h2>'
        f'<div class="legend inline">breaker: {states}</div></div><div class="panels">{panels}</div></section>'
    )


def _endpoint_panel(endpoint: Mapping[str, Any], span: tuple[float, float] | None, tz: timezone) -> str:
    by_category = endpoint.get("attempts_by_category") or {}
    total = sum(_int(v) for v in by_category.values())
    order = list(LEGEND) + sorted(k for k in by_category if k not in LEGEND)
    chips = "".join(
        f'<span class="chip"><i class="sw c-{_key(k, COLOURS)}"></i>{_e(LEGEND.get(k, k))} '
        f"<b>{_int(by_category[k]):,}</b></span>"
        for k in order
        if k in by_category
    )
    latency, first_chunk = endpoint.get("latency") or {}, endpoint.get("first_chunk") or {}
    figures = (
        f"<dl><div><dt>attempts</dt><dd>{total:,}</dd></div>"
        f"<div><dt>latency p50</dt><dd>{_secs(_opt(latency.get('p50')))}</dd></div>"
        f"<div><dt>p95</dt><dd>{_secs(_opt(latency.get('p95')))}</dd></div>"
        f"<div><dt>first chunk p50</dt><dd>{_secs(_opt(first_chunk.get('p50')))}</dd></div>"
        f"<div><dt>p95</dt><dd>{_secs(_opt(first_chunk.get('p95')))}</dd></div></dl>"
    )
    transitions = [t for t in endpoint.get("transitions") or [] if isinstance(t, Mapping)]
    return (
        f'<article class="panel"><h3>{_e(endpoint.get("name") or "?")} '
        f'<span class="url">{_e(endpoint.get("base_url") or "")}</span></h3>'
        f'{figures}<div class="chips">{chips or "<span class=muted>no attempts</span>"}</div>'
        f"{_breaker_strips(transitions, span, tz)}{_transition_list(transitions, tz)}</article>"
    )


def _breaker_strips(transitions: Sequence[Mapping[str, Any]], span: tuple[float, float] | None, tz: timezone) -> str:
    """One strip per model with transitions (all closed when there are none), over the session's time."""
    if span is None:
        return '<p class="muted">Breaker: closed (no session times to draw).</p>'
    first, last = span
    models: dict[str, list[Mapping[str, Any]]] = {}
    for transition in transitions:
        models.setdefault(str(transition.get("model") or "any model"), []).append(transition)
    if not models:
        models = {"all models": []}
    left, right = STRIP_LABEL, STRIP_WIDTH - 8
    scale = (right - left) / (last - first)
    height = len(models) * STRIP_LANE + 22

    def x_of(ts: float) -> float:
        return left + (min(max(ts, first), last) - first) * scale

    rows = []
    for n, (model, changes) in enumerate(models.items()):
        y = n * STRIP_LANE + 2
        changes = sorted(changes, key=lambda t: _num(t.get("time")))
        state = str(changes[0].get("from") or "closed") if changes else "closed"
        since, why = first, "no transitions" if not changes else "before the first transition"
        spans = []
        for change in changes:
            spans.append((state, since, _num(change.get("time")), why))
            state, since, why = str(change.get("to") or "?"), _num(change.get("time")), str(change.get("why") or "")
        spans.append((state, since, last, why))
        rows.append(
            f'<text class="lane-label" x="{left - 8}" y="{y + 12}">{_e(_short(model, 16))}'
            f"<title>{_e(model)}</title></text>"
        )
        # closed spans first, so a short open or half-open span drawn at its minimum width stays on top
        for state, start, stop, reason in sorted(spans, key=lambda s: s[0] != "closed"):
            x0, x1 = x_of(start), x_of(stop)
            width = x1 - x0 if state == "closed" else max(MIN_SPAN, x1 - x0)
            x0 = min(x0, right - width)
            title = f"{state.replace('_', '-')} {_clock(start, tz)} – {_clock(stop, tz)} ({stop - start:.1f} s)"
            title += f": {reason}" if reason else ""
            rows.append(
                f'<rect class="span st-{_key(state, STATES, "unknown")}" data-state="{_e(state)}" x="{x0:.2f}" '
                f'y="{y}" width="{width:.2f}" height="{STRIP_LANE - 6}"><title>{_e(title)}</title></rect>'
            )
        for change in changes:
            x = x_of(_num(change.get("time")))
            title = (
                f"{_clock(_num(change.get('time')), tz)} {change.get('from') or '?'} → {change.get('to') or '?'}"
                + (f": {change.get('why')}" if change.get("why") else "")
            )
            rows.append(
                f'<line class="tr-tick" x1="{x:.2f}" y1="{y + STRIP_LANE - 6}" x2="{x:.2f}" y2="{y + STRIP_LANE - 2}">'
                f"<title>{_e(title)}</title></line>"
            )
    axis_y = len(models) * STRIP_LANE + 14
    span_s = last - first
    ticks = _ticks(span_s, 4)
    axis = "".join(
        f'<text class="tick" x="{x_of(first + t):.1f}" y="{axis_y}">{_clock(first + t, tz)[:8]}</text>' for t in ticks
    )
    return (
        f'<svg class="strip" width="{STRIP_WIDTH}" height="{height}" viewBox="0 0 {STRIP_WIDTH} {height}" '
        f'role="img" aria-label="Breaker states over the session">{"".join(rows)}{axis}</svg>'
    )


def _transition_list(transitions: Sequence[Mapping[str, Any]], tz: timezone) -> str:
    if not transitions:
        return '<p class="muted small">No breaker transitions: closed all session.</p>'
    items = "".join(
        f'<li><span class="t">{_clock(_num(t.get("time")), tz)}</span> {_e(t.get("model") or "any model")}: '
        f"{_e(str(t.get('from') or '?').replace('_', '-'))} → <b>{_e(str(t.get('to') or '?').replace('_', '-'))}</b>"
        + (f' <span class="muted">{_e(t.get("why"))}</span>' if t.get("why") else "")
        + "</li>"
        for t in sorted(transitions, key=lambda t: _num(t.get("time")))
    )
    opened = " open" if len(transitions) <= 6 else ""
    return (
        f'<details class="transitions"{opened}><summary>{_plural(len(transitions), "breaker transition")} '
        f"({tz.tzname(None)})</summary><ol>{items}</ol></details>"
    )


# -- style and script -------------------------------------------------------------------


def _css() -> str:
    colours = "".join(f".c-{k}{{fill:{v};background:{v}}}" for k, v in COLOURS.items())
    states = "".join(f".st-{k}{{fill:{v};background:{v}}}" for k, v in STATES.items())
    return _CSS + colours + states


_CSS = """
:root{--fg:#1d232b;--muted:#5f6b78;--line:#e2e6ea;--bg:#f6f7f9;--card:#fff;--accent:#2b5fab}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","Liberation Sans","DejaVu Sans",Arial,
sans-serif}
main{max-width:1480px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:0}h3{font-size:15px;margin:0 0 8px}
.muted{color:var(--muted)}.small{font-size:12px}.empty{color:var(--muted);font-style:italic}
.meta{margin:0 0 10px;color:var(--muted)}
.sentence{margin:0 0 12px;font-family:ui-monospace,"DejaVu Sans Mono","Liberation Mono",monospace;font-size:12.5px;
background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px 10px;overflow-wrap:anywhere}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(130px,1fr));gap:8px;margin-bottom:22px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:8px 10px}
.tile .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums}
.tile .k{color:var(--muted);font-size:12px}.tile .s{color:var(--muted);font-size:11px;margin-top:2px}
section{margin-bottom:26px}
.bar-head{display:flex;align-items:center;gap:14px;flex-wrap:wrap;margin-bottom:8px}
#filter{font:inherit;padding:4px 8px;border:1px solid #c5ccd3;border-radius:5px;width:260px;max-width:100%}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;font-size:12px;color:var(--muted);margin:4px 0 6px}
.legend.inline{margin:0}
.lg{display:inline-flex;align-items:center;gap:5px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;vertical-align:-1px;margin-right:4px;flex:none}
.sw.hatch{background:repeating-linear-gradient(45deg,#9aa3ad 0 2px,#f4f5f7 2px 5px)}
.fo-mark{color:#1d232b;font-weight:600;margin-right:2px}
.hint{font-size:12px;margin:0 0 6px}
.table-wrap{overflow-x:auto;background:var(--card);border:1px solid var(--line);border-radius:6px}
table{border-collapse:collapse;width:100%}
#tests{table-layout:fixed;min-width:1000px}
#tests th,#tests td{padding:6px 8px;border-bottom:1px solid var(--line);vertical-align:top;text-align:left}
#tests thead th{position:sticky;top:0;background:#eef1f4;z-index:1;font-size:12px}
#tests th button{all:unset;cursor:pointer;font-weight:600;color:var(--fg)}
#tests th button:focus-visible,.tg:focus-visible{outline:2px solid var(--accent);outline-offset:2px}
#tests th[aria-sort=ascending] button::after{content:" ▲";font-size:9px}
#tests th[aria-sort=descending] button::after{content:" ▼";font-size:9px}
.c-num{text-align:right!important;font-variant-numeric:tabular-nums;white-space:nowrap}
th.c-num{width:78px}th.c-outcome{width:84px}th.c-test{width:32%}th.c-attr{width:30%}
#tests th.c-num:nth-child(3){width:92px}
td.c-test{overflow-wrap:anywhere}
.tg{all:unset;cursor:pointer;font-family:ui-monospace,"DejaVu Sans Mono","Liberation Mono",monospace;font-size:12.5px;
display:flex;min-width:0}
.tg .id{min-width:0;overflow-wrap:anywhere}
.caret{flex:none;width:14px;color:var(--muted)}
.caret::before{content:"▸"}tr.open .caret::before{content:"▾"}
tr.test{cursor:pointer}tr.test:hover{background:#f8fafc}tr.test.open{background:#f2f6fb}
tr.test.o-failed td:first-child,tr.test.o-error td:first-child{box-shadow:inset 3px 0 #d23f3f}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600;line-height:19px}
.badge.o-passed{background:#dff3e6;color:#1f6b3d}.badge.o-failed{background:#fbe1e0;color:#9c2320}
.badge.o-error{background:#f6d0ec;color:#7c1a61}.badge.o-skipped{background:#eceff2;color:#4b5662}
.badge.o-unknown{background:#eceff2;color:#4b5662}
svg.attr{display:block;width:100%;height:10px;background:#eef0f3;border-radius:2px}
.attr-text{font-size:12px;color:var(--muted);margin-top:3px}
tr.detail>td{background:#fbfcfd;padding:10px 12px 14px}
.timeline-box{overflow-x:auto}
svg.timeline{display:block;width:100%;height:auto}
svg.strip{display:block;max-width:100%;height:auto}
.tr-tick{stroke:#1d232b;stroke-width:1.5}
svg text{font-family:system-ui,"Liberation Sans","DejaVu Sans",Arial,sans-serif}
.grid{stroke:#e6e9ed;stroke-width:1}.tick{font-size:11px;fill:#6b7682;text-anchor:middle}
.lane{fill:#f1f3f5}.lane-label{font-size:11px;fill:#4b5662;text-anchor:end}
.in-bar{font-size:10.5px;fill:#1d232b;pointer-events:none}.in-bar.light{fill:#fff}
.attempt{stroke:#fff;stroke-width:.5}.backoff{stroke:#b7bec6;stroke-width:.5}
.failover line{stroke:#1d232b;stroke-width:1.5;stroke-dasharray:2 2}
.failover text{font-size:11px;font-weight:600;fill:#1d232b}
table.attempts{margin-top:8px;font-size:12px}
table.attempts th,table.attempts td{padding:3px 8px;border-bottom:1px solid var(--line);text-align:left;
vertical-align:top}
table.attempts th{color:var(--muted);font-weight:600}
table.attempts td.where{overflow-wrap:anywhere;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:11.5px}
.panels{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(560px,100%),1fr));gap:12px}
.panel{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:12px 14px;min-width:0}
.panel .url{font-weight:400;color:var(--muted);font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;
overflow-wrap:anywhere}
.panel dl{display:flex;flex-wrap:wrap;gap:4px 18px;margin:0 0 8px}
.panel dl div{display:flex;gap:6px}.panel dt{color:var(--muted)}.panel dd{margin:0;font-variant-numeric:tabular-nums;
font-weight:600}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:10px}
.chip{border:1px solid var(--line);border-radius:11px;padding:1px 9px;font-size:12px;font-variant-numeric:tabular-nums}
.span{stroke:none}.st-unknown{fill:#c9ced4}
.transitions{font-size:12px;margin-top:6px}.transitions summary{cursor:pointer;color:var(--muted)}
.transitions ol{margin:4px 0 0;padding-left:20px}.transitions .t{font-variant-numeric:tabular-nums;color:var(--muted)}
svg.defs{position:absolute;width:0;height:0;overflow:hidden}
"""

# Sorting, opening rows (building the timeline from its template on first open), filtering.
_JS = """
"use strict";
(function () {
  var table = document.getElementById("tests");
  if (!table) return;
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  function testRows() { return Array.prototype.slice.call(body.querySelectorAll("tr.test")); }
  function toggle(row) {
    var detail = row.llmDetail;
    if (!detail) {
      detail = document.createElement("tr");
      detail.className = "detail";
      var cell = detail.insertCell(0);
      cell.colSpan = row.cells.length;
      var template = document.getElementById("tl-" + row.getAttribute("data-i"));
      if (template) cell.appendChild(template.content.cloneNode(true));
      detail.hidden = true;
      row.parentNode.insertBefore(detail, row.nextSibling);
      row.llmDetail = detail;
    }
    detail.hidden = !detail.hidden;
    row.classList.toggle("open", !detail.hidden);
    row.querySelector(".tg").setAttribute("aria-expanded", String(!detail.hidden));
  }
  body.addEventListener("click", function (event) {
    var row = event.target.closest("tr.test");
    if (!row) return;
    if (!event.target.closest("button") && String(window.getSelection()) !== "") return;
    toggle(row);
  });
  function value(row, column, type) {
    var cell = row.cells[column];
    if (type === "num") {
      var raw = cell.getAttribute("data-v");
      return raw === null || raw === "" ? null : parseFloat(raw);
    }
    return cell.textContent.trim();
  }
  function sortBy(column, type, direction) {
    var sign = direction === "ascending" ? 1 : -1;
    var rows = testRows().map(function (row) {
      return {row: row, key: value(row, column, type), i: Number(row.getAttribute("data-i"))};
    });
    rows.sort(function (a, b) {
      if (a.key === null || b.key === null) {
        return a.key === b.key ? a.i - b.i : (a.key === null ? 1 : -1);
      }
      var d = type === "num" ? a.key - b.key : collator.compare(a.key, b.key);
      return d !== 0 ? sign * d : a.i - b.i;
    });
    var fragment = document.createDocumentFragment();
    rows.forEach(function (item) {
      fragment.appendChild(item.row);
      if (item.row.llmDetail) fragment.appendChild(item.row.llmDetail);
    });
    body.appendChild(fragment);
    Array.prototype.forEach.call(heads, function (th, i) {
      if (i === column) th.setAttribute("aria-sort", direction); else th.removeAttribute("aria-sort");
    });
  }
  Array.prototype.forEach.call(heads, function (th, column) {
    var button = th.querySelector("button");
    if (!button) return;
    button.addEventListener("click", function () {
      var type = th.getAttribute("data-type");
      var now = th.getAttribute("aria-sort");
      var first = type === "num" ? "descending" : "ascending";
      var next = now === null ? first : (now === "ascending" ? "descending" : "ascending");
      sortBy(column, type, next);
    });
  });
  var filter = document.getElementById("filter");
  var shown = document.getElementById("shown");
  var total = testRows().length;
  filter.addEventListener("input", function () {
    var query = filter.value.trim().toLowerCase();
    var count = 0;
    testRows().forEach(function (row) {
      var text = (row.cells[0].textContent + " " + row.cells[1].textContent).toLowerCase();
      var hit = query === "" || text.indexOf(query) !== -1;
      row.hidden = !hit;
      if (row.llmDetail) row.llmDetail.hidden = !hit || !row.classList.contains("open");
      if (hit) count += 1;
    });
    var all = total + (total === 1 ? " test" : " tests");
    shown.textContent = count === total ? all : count + " of " + all;
  });
})();
"""
