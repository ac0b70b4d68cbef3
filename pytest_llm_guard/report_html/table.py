"""The table of tests, each row with where its time went, and each test's timeline of attempts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..report import attribution_text, made_by
from .common import (
    COLOURS,
    LEGEND,
    LIGHT_TEXT,
    MIN_BAR,
    OUTCOMES,
    TL_AXIS,
    TL_BAR,
    TL_BAR_TOP,
    TL_LANE,
    TL_LEFT,
    TL_RIGHT,
    TL_WIDTH,
    _breakable,
    _colour_key,
    _cost,
    _e,
    _int,
    _key,
    _num,
    _opt,
    _plural,
    _secs,
    _short,
    _tick_label,
    _ticks,
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
        f'<td class="c-outcome"><span class="badge o-{outcome}">{_e(test.get("outcome") or "?")}</span>'
        f"{_why(test.get('why'))}</td>",
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


def _why(why: Any) -> str:
    """Why a test failed or was skipped: the exception, the budget or breaker, the message's first line."""
    if not isinstance(why, Mapping):
        return ""
    named = (
        f"{why.get('budget')} budget" if why.get("budget") else "",
        f"breaker of {why.get('breaker')}" if why.get("breaker") else "",
    )
    head = " · ".join(part for part in (str(why.get("exception") or ""), *named) if part)
    return f'<div class="why"><b>{_e(head)}</b> {_e(why.get("message") or "")}</div>'


def _attribution_text(parts: Iterable[Mapping[str, Any]]) -> str:
    """The terminal summary's words for where the time went (``report.attribution_text``)."""
    clean = [
        {"what": part.get("what") if part.get("what") in _WHATS else "other", "seconds": _num(part.get("seconds")),
         "attempts": _int(part.get("attempts"))}
        for part in parts
    ]  # fmt: skip
    return attribution_text(clean) or "no time recorded"


_WAITS = frozenset({"backoff", "rate-limit wait"})
"""Time spent waiting before an attempt: hatched, as a gap."""
_WHATS = frozenset(COLOURS) | _WAITS


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
        fill = 'fill="url(#llmg-hatch)"' if what in _WAITS else f'class="c-{_key(what, COLOURS)}"'
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
    content += _probes(test.get("probes") or [])
    return f'<template id="tl-{i}"><div class="timeline-box">{content}</div></template>'


def _probes(probes: Sequence[Any]) -> str:
    """Half-open probes sent beside the test's attempts: listed apart, they are no attempt of the test."""
    items = "".join(f"<li>{_e(p.get('text') or '')}</li>" for p in probes if isinstance(p, Mapping))
    if not items:
        return ""
    return f'<p class="muted">Breaker probes, off the test\'s clock:</p><ul class="probes">{items}</ul>'


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
    made = made_by(attempt) or attempt.get("kind") or "?"
    lines = [
        f"call {_int(attempt.get('call'))}, attempt {_int(attempt.get('number'))} ({made}), "
        f"{attempt.get('source') or '?'}",
        f"{_where(attempt)} model={attempt.get('model') or '?'}"
        + (f" ({attempt['dialect']} API)" if attempt.get("dialect") else ""),
    ]
    outcome = str(attempt.get("outcome") or "?")
    if attempt.get("error"):
        outcome += f" ({attempt.get('error')})"
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
    if attempt.get("cache_tokens"):
        extra.append(f"{_int(attempt.get('cache_tokens'))} prompt-cache tokens apart")
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
            outcome += f' <span class="muted err">({_e(attempt.get("error"))})</span>'
        if attempt.get("cause"):
            outcome += f' <span class="muted">cut at its {_e(attempt.get("cause"))}</span>'
        if attempt.get("failover_to"):
            outcome += f' <b class="fo-mark">→ {_e(attempt.get("failover_to"))}</b>'
        first_chunk = _opt(attempt.get("first_chunk"))
        tokens = attempt.get("tokens")
        rows.append(
            "<tr>"
            f'<td class="c-num">{_int(attempt.get("call"))}.{_int(attempt.get("number"))}</td>'
            f"<td>{_e(made_by(attempt) or attempt.get('kind'))}</td>"
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
