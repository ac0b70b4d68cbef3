"""A panel per endpoint: its attempts, latency, and its breakers' states over the session."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timezone
from typing import Any

from .common import (
    COLOURS,
    LEGEND,
    MIN_SPAN,
    STATES,
    STRIP_LABEL,
    STRIP_LANE,
    STRIP_WIDTH,
    _clock,
    _e,
    _int,
    _key,
    _num,
    _opt,
    _plural,
    _secs,
    _short,
    _ticks,
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
