"""The HTML report: data shown as text, never markup, in one self-contained page; checked in a real browser."""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pytest_llm_guard import report_html
from pytest_llm_guard.report import attribution_text, totals_sentence
from pytest_llm_guard.report_html import SCHEMA, render

SAMPLE = Path(__file__).parent / "data" / "sample_report.json"
HOSTILE = "<script>alert(1)</script>"
TOTAL_KEYS = ("calls", "attempts", "retries", "failovers", "failures", "live", "recorded", "replayed", "refused",
              "network_seconds", "backoff_seconds", "tokens")  # fmt: skip


def sample() -> dict[str, Any]:
    return json.loads(SAMPLE.read_text())


def empty_report() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": "2026-11-28T05:55:00+00:00",
        "plugin_version": "0.1.0",
        "session": {"duration": 0.4, "tests": 0, "totals": dict.fromkeys(TOTAL_KEYS, 0), "cost": None},
        "tests": [],
        "endpoints": [],
    }


def attempt(**fields: Any) -> dict[str, Any]:
    base = {
        "call": 1, "number": 1, "kind": "first", "offset": 0.01, "duration": 0.5, "backoff": 0.0, "source": "live",
        "outcome": "ok", "category": "ok", "status": 200, "error": None, "cause": None,
        "endpoint": "http://127.0.0.1:41695", "endpoint_name": "primary", "path": "/v1/chat/completions",
        "model": "gpt-4o-mini", "tokens": 12, "first_chunk": None, "failover_to": None,
    }  # fmt: skip
    return {**base, **fields}


def report_with(*attempts: dict[str, Any], nodeid: str = "tests/test_a.py::test_one", **test: Any) -> dict[str, Any]:
    report = empty_report()
    report["session"]["tests"] = 1
    report["tests"] = [
        {
            "nodeid": nodeid,
            "outcome": "passed",
            "duration": 1.0,
            "started": 1795844790.9,
            "stats": dict.fromkeys(TOTAL_KEYS, 0),
            "cost": None,
            "attribution": [{"what": "other", "seconds": 1.0}],
            "attempts": list(attempts),
            **test,
        }
    ]
    return report


class Elements(HTMLParser):
    """Every element of a page as (tag, attributes, inside a <template>), and its text."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str], bool]] = []
        self.text: list[str] = []
        self.depth = 0
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}, self.depth > 0))
        self.depth += tag == "template"

    def handle_endtag(self, tag: str) -> None:
        self.depth -= tag == "template"

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def having(self, cls: str, tag: str | None = None) -> list[dict[str, str]]:
        return [a for t, a, _ in self.found if cls in a.get("class", "").split() and tag in (None, t)]


# -- escaping and self-containment ------------------------------------------------------


def test_a_hostile_test_id_is_shown_as_text_never_as_markup() -> None:
    report = report_with(
        attempt(
            error='<img src=x onerror="alert(2)">',
            endpoint="http://h/<b>",
            endpoint_name='"><svg onload=alert(3)>',
            failover_to="</text><script>alert(4)</script>",
            outcome="HTTP 503",
            category='"><i>',
        ),
        nodeid=HOSTILE,
        outcome="<b>failed</b>",
    )
    report["endpoints"] = [
        {
            "name": HOSTILE,
            "base_url": "javascript:alert(5)",
            "attempts_by_category": {"<u>": 1},
            "latency": {"p50": None, "p95": None},
            "first_chunk": {"p50": None, "p95": None},
            "transitions": [{"time": 1795844791.0, "model": "<i>m</i>", "from": "closed", "to": "<x>", "why": HOSTILE}],
        }
    ]
    page = render(report)
    parsed = Elements(page)
    assert page.count("<script") == 1  # the report's own script; every other one is text
    assert {tag for tag, _, _ in parsed.found} <= {
        "html", "head", "meta", "title", "style", "body", "main", "svg", "defs", "pattern", "rect", "line", "header",
        "h1", "h2", "h3", "p", "div", "section", "input", "span", "table", "thead", "tbody", "tr", "th", "td",
        "button", "i", "b", "article", "dl", "dt", "dd", "details", "summary", "ol", "li", "text", "g",
        "template", "script", "wbr",
    }  # fmt: skip
    assert not [attrs for _, attrs, _ in parsed.found if any(k.startswith("on") or k in ("src", "href") for k in attrs)]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert HOSTILE in "".join(parsed.text)  # a person reads the id as it is


def test_numbers_that_are_not_numbers_draw_as_zero() -> None:
    page = render(report_with(attempt(offset="<b>", duration=None, backoff=float("nan")), duration="<i>"))
    assert "<b>" not in page and "<i>" not in page
    assert 'data-v="0.0"' in page


def test_the_page_fetches_nothing_and_runs_only_its_own_script() -> None:
    page = render(sample())
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    script = re.search(r"<script>(.*?)</script>", page, re.S).group(1)
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)

    def digest(text: str) -> str:
        return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()

    assert "default-src 'none'" in policy
    assert f"script-src '{digest(script)}'" in policy and f"style-src '{digest(style)}'" in policy
    assert not re.search(r"\b(src|href)=|@import|url\((?!#llmg-hatch\))", page)


def test_another_schema_is_refused_with_what_this_version_reads() -> None:
    with pytest.raises(ValueError, match=f"schema {SCHEMA + 1}: this version reads schema {SCHEMA}"):
        render({**empty_report(), "schema": SCHEMA + 1})


def test_the_module_needs_only_the_standard_library() -> None:
    """It loads only when --llm-report-html is used, and then must cost nothing more."""
    modules = Path(report_html.__file__).parent.glob("*.py")
    imported = [name for m in modules for name in re.findall(r"^(?:from|import) (\w+)", m.read_text(), re.M)]
    assert [name for name in imported if name not in sys.stdlib_module_names] == []


# -- what the page says -----------------------------------------------------------------


def test_an_empty_report_says_so() -> None:
    page = render(empty_report())
    assert "No guarded tests in this session." in page
    assert "No endpoint was used." in page
    assert "0 guarded tests: 0 LLM calls, 0 attempts (none sent), 0 retries" in page


def test_the_totals_are_worded_as_the_terminal_summary_words_them() -> None:
    report = sample()
    totals, count = report["session"]["totals"], report["session"]["tests"]
    assert totals_sentence(count, totals, report["session"].get("currency", "")) in render(report)


def test_the_attribution_reads_as_a_sentence() -> None:
    parts = [
        {"what": "timeout", "seconds": 300.0, "attempts": 5},
        {"what": "backoff", "seconds": 8.1},
        {"what": "ok", "seconds": 4.3, "attempts": 2},
        {"what": "replayed", "seconds": 0.004, "attempts": 1},
        {"what": "other", "seconds": 0.0},
    ]
    assert attribution_text(parts) == (
        "300.0s in 5 timeouts + 8.1s backoff + 4.3s in 2 ok calls + 0.0s in 1 replayed call + 0.0s other"
    )


@pytest.mark.parametrize(
    ("span", "labels"),
    [
        (312.6, ["0 s", "100 s", "200 s", "300 s"]),
        (15, ["0.0 s", "2.5 s", "5.0 s", "7.5 s", "10.0 s", "12.5 s", "15.0 s"]),
        (0.3, ["0 ms", "50 ms", "100 ms", "150 ms", "200 ms", "250 ms", "300 ms"]),
    ],
)
def test_time_axis_ticks_are_round_and_labelled_to_their_step(span: float, labels: list[str]) -> None:
    ticks = report_html._ticks(span)
    assert [report_html._tick_label(t, ticks[1]) for t in ticks] == labels


def test_every_attempt_gets_a_bar_and_every_backoff_a_hatched_segment() -> None:
    report = sample()
    page = Elements(render(report))
    attempts = [a for t in report["tests"] for a in t["attempts"]]
    bars = page.having("attempt", "rect")
    assert len(bars) == len(attempts)
    assert Counter(b["data-category"] for b in bars) == Counter(
        a["source"] if a["source"] in ("replayed", "refused") else a["category"] for a in attempts
    )
    assert len(page.having("backoff", "rect")) == sum(1 for a in attempts if a["backoff"] > 0)
    assert len(page.having("failover", "g")) == sum(1 for a in attempts if a["failover_to"])


def test_refused_and_replayed_attempts_of_no_duration_stay_visible() -> None:
    report = report_with(
        attempt(source="refused", category="refused", outcome="LLMEndpointUnavailable", duration=0.0, offset=0.2),
        attempt(call=2, source="replayed", duration=0.0, offset=0.3),
        duration=300.0,
    )
    bars = Elements(render(report)).having("attempt", "rect")
    assert [b["data-category"] for b in bars] == ["refused", "replayed"]
    assert all(float(b["width"]) >= report_html.MIN_BAR for b in bars)


def test_a_failover_is_labelled_with_where_it_went() -> None:
    report = report_with(
        attempt(category="timeout", outcome="ReadTimeout", failover_to="backup", duration=0.5),
        attempt(number=2, kind="failover", offset=0.51, endpoint_name="backup"),
    )
    assert "→ backup" in "".join(Elements(render(report)).text)


def test_timelines_wait_in_templates_until_their_row_opens() -> None:
    report = sample()
    report["tests"] = [copy.deepcopy(t) for _ in range(50) for t in sample()["tests"]]  # 1,000 tests
    page = Elements(render(report))
    assert len([a for t, a, _ in page.found if t == "template"]) == len(report["tests"])
    assert all(inside for _, attrs, inside in page.found if "attempt" in attrs.get("class", "").split())
    assert not [
        t for t, attrs, inside in page.found if t == "svg" and "timeline" in attrs.get("class", "") and not inside
    ]


def breaker_states(page: Elements) -> list[str]:
    return [a["data-state"] for a in page.having("span", "rect")]


def test_an_endpoint_without_transitions_is_closed_all_session() -> None:
    report = sample()
    report["endpoints"] = [{**report["endpoints"][0], "transitions": []}]
    page = Elements(render(report))
    assert breaker_states(page) == ["closed"]
    (span,) = page.having("span", "rect")
    assert float(span["x"]) == report_html.STRIP_LABEL
    assert float(span["width"]) == pytest.approx(report_html.STRIP_WIDTH - 8 - report_html.STRIP_LABEL)
    assert "No breaker transitions: closed all session." in "".join(page.text)


def test_breaker_spans_follow_the_transitions() -> None:
    report = sample()
    report["endpoints"] = report["endpoints"][:1]  # the primary: tripped, half-open after its cooldown, closed
    # closed spans are drawn first, so the short ones on top stay visible
    assert breaker_states(Elements(render(report))) == ["closed", "closed", "open", "half_open"]


def test_a_cost_column_appears_only_when_there_is_a_cost() -> None:
    assert 'data-key="cost"' not in render(sample())
    report = sample()
    report["tests"][0]["cost"] = 0.0123
    page = render(report)
    assert 'data-key="cost"' in page and "0.0123" in page


def test_the_sample_report_keeps_the_contract() -> None:
    """The browser test and the README picture draw this file; its numbers add up as a real report's do."""
    report = sample()
    for test in report["tests"]:
        attempts, stats = test["attempts"], test["stats"]
        assert sum(p["seconds"] for p in test["attribution"]) == pytest.approx(test["duration"], abs=1e-3)
        assert stats["attempts"] == len(attempts)
        assert stats["calls"] == len({a["call"] for a in attempts})
        assert stats["retries"] == sum(a["kind"] == "retry" for a in attempts)
        assert stats["failovers"] == sum(a["kind"] == "failover" for a in attempts)
        assert stats["backoff_seconds"] == pytest.approx(sum(a["backoff"] for a in attempts))
    for key in TOTAL_KEYS:
        assert report["session"]["totals"][key] == pytest.approx(sum(t["stats"][key] for t in report["tests"]))


# -- in a real browser ------------------------------------------------------------------


class DevTools:
    """The few Chrome DevTools Protocol calls this test needs, over one websocket (standard library only)."""

    def __init__(self, url: str, timeout: float) -> None:
        host, port, path = re.fullmatch(r"ws://([^:/]+):(\d+)(/.*)", url).groups()  # type: ignore[union-attr]
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self._read(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.session: str | None = None
        self.events: list[dict[str, Any]] = []
        self.last_id = 0

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise ConnectionError("the browser closed its DevTools connection")
            data += chunk
        return data

    def _send(self, message: dict[str, Any]) -> None:
        payload, mask = json.dumps(message).encode(), os.urandom(4)
        size = len(payload)
        assert size < 65536, "this client sends only short commands"
        length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack(">H", size)
        self.sock.sendall(b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _receive(self) -> dict[str, Any]:
        message = b""
        while True:
            first, second = self._read(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            data, opcode = self._read(size), first & 0x0F
            if opcode == 8:
                raise ConnectionError("the browser closed its DevTools connection")
            if opcode in (0, 1):  # text, and its continuations
                message += data
                if first & 0x80:
                    return json.loads(message)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params}
        self._send({**message, "sessionId": self.session} if self.session else message)
        while True:
            reply = self._receive()
            if reply.get("id") != self.last_id:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            else:
                return reply.get("result", {})

    def wait_for(self, method: str) -> None:
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._receive())

    def js(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (a refused load, a CSP violation)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log: {params['entry']['text']}")
        return found

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); the HTML report is not opened")


def devtools_address(browser: subprocess.Popen[bytes], profile: Path, timeout: float) -> tuple[str, str]:
    """The port and path Chromium writes to its profile once DevTools listens (asked for on port 0)."""
    port_file, until = profile / "DevToolsActivePort", time.monotonic() + timeout
    while True:
        lines = port_file.read_text().split() if port_file.exists() else []
        if len(lines) >= 2:
            return lines[0], lines[1]
        assert browser.poll() is None, f"chromium exited with {browser.returncode} before DevTools listened"
        assert time.monotonic() < until, f"chromium did not open DevTools within {timeout} s"
        time.sleep(0.05)


@contextlib.contextmanager
def page_in_chromium(binary: str, url: str, timeout: float = 8.0) -> Iterator[DevTools]:
    """Headless Chromium with one blank page, watched from before it loads ``url`` (1400 x 1000 CSS px)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        tools = None
        try:
            port, path = devtools_address(browser, Path(profile), timeout)
            tools = DevTools(f"ws://127.0.0.1:{port}{path}", timeout)
            target = tools.send("Target.createTarget", url="about:blank")["targetId"]
            tools.session = tools.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.send(f"{domain}.enable")
            tools.send("Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False)
            tools.send("Page.navigate", url=url)
            tools.wait_for("Page.loadEventFired")
            yield tools
        finally:
            if tools is not None:
                tools.sock.close()
            browser.terminate()
            try:
                browser.wait(5)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait()


ROWS = "Array.from(document.querySelectorAll('#tests tbody tr.test'))"
FILTER = "(f => { f.value = %s; f.dispatchEvent(new Event('input')); })(document.getElementById('filter'))"


def test_the_report_opens_in_chromium_without_errors_and_sorts(tmp_path: Path) -> None:
    binary = chromium_binary()
    report = sample()
    attempts = [a for t in report["tests"] for a in t["attempts"]]
    page = tmp_path / "report.html"
    page.write_text(render(report), encoding="utf-8")
    with page_in_chromium(binary, page.as_uri()) as browser:
        assert browser.js(f"{ROWS}.length") == len(report["tests"])
        assert browser.js("document.querySelectorAll('.attempt').length") == 0  # timelines wait for their rows
        browser.js(f"{ROWS}.forEach(r => r.querySelector('button.tg').click())")
        bars = browser.js(
            "Array.from(document.querySelectorAll('#tests svg.timeline rect.attempt'))"
            ".map(b => [b.dataset.category, b.getBoundingClientRect().width])"
        )
        assert Counter(category for category, _ in bars) == Counter(
            a["source"] if a["source"] in ("replayed", "refused") else a["category"] for a in attempts
        )
        assert min(width for _, width in bars) >= 3  # a refused or replayed attempt of ~0 s is still seen
        assert browser.js("document.querySelectorAll('#tests rect.backoff').length") == sum(
            1 for a in attempts if a["backoff"] > 0
        )
        assert browser.js("document.querySelectorAll('#tests g.failover').length") == 3
        assert browser.js("document.querySelectorAll('#endpoints rect.span').length") >= len(report["endpoints"])
        assert browser.js("document.documentElement.scrollWidth <= document.documentElement.clientWidth")

        # numbers sort largest first, then smallest first; ties keep the report's order
        browser.js("document.querySelector('th[data-key=duration] button').click()")
        assert browser.js(f"{ROWS}.map(r => r.cells[0].textContent)") == [
            t["nodeid"] for t in sorted(report["tests"], key=lambda t: -t["duration"])
        ]
        assert browser.js("document.querySelector('th[data-key=duration]').getAttribute('aria-sort')") == "descending"
        browser.js("document.querySelector('th[data-key=duration] button').click()")
        assert browser.js(f"{ROWS}.map(r => r.cells[0].textContent)") == [
            t["nodeid"] for t in sorted(report["tests"], key=lambda t: t["duration"])
        ]
        # each open timeline moved with its row
        assert browser.js(f"{ROWS}.every(r => r.nextElementSibling === r.llmDetail)")

        browser.js(FILTER % json.dumps("fails_over"))
        assert browser.js(f"{ROWS}.filter(r => !r.hidden).length") == 3
        assert browser.js("document.getElementById('shown').textContent") == f"3 of {len(report['tests'])} tests"
        browser.js(FILTER % json.dumps(""))

        height = browser.js("document.documentElement.scrollHeight")
        shot = browser.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": 1400, "height": height, "scale": 1},
        )
        assert browser.problems() == []
        assert browser.requests() == [page.as_uri()]  # the page fetched nothing of its own

    screenshot = tmp_path / "report.png"
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
