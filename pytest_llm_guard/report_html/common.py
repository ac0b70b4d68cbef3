"""What every part of the page shares: colours, names, and helpers that read report values safely."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

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
