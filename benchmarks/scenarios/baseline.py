"""S0: the fault server's own latency, the floor under every live number in S4 and S5."""

from __future__ import annotations

from ..runner import Context, Sample, Unit
from . import Scenario

TEST = """\
import http.client
import json
import time
from urllib.parse import urlsplit

import benchapp

URL = {url!r}
REQUESTS = {requests!r}


def test_server_latency():
    address = urlsplit(URL)
    connection = http.client.HTTPConnection(address.hostname, address.port)
    body = json.dumps({{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "ping"}}]}})
    headers = {{"Content-Type": "application/json"}}
    try:
        for _ in range(REQUESTS):
            started = time.perf_counter()
            connection.request("POST", "/v1/chat/completions", body, headers)
            answer = connection.getresponse()
            assert answer.status == 200 and answer.read()
            benchapp.metric("latency", time.perf_counter() - started)
    finally:
        connection.close()
"""


def s0(quick: bool, scale: float) -> Scenario:
    requests = 20 if quick else 1000

    def files(context: Context) -> dict[str, str]:
        from ..projects import app, pyproject

        return {
            "pyproject.toml": pyproject(),
            "benchapp.py": app(context.scale),
            "test_latency.py": TEST.format(url=context.urls["api"], requests=requests),
        }

    unit = Unit("S0", "fault server alone (http.client)", None, {"api": lambda server: None}, files, work=requests)

    def value(unit: Unit, sample: Sample) -> float:
        times = sorted(sample.metrics["latency"])
        return times[len(times) // 2] * 1000

    return Scenario(
        "S0",
        "Fault server latency (baseline)",
        f"One keep-alive connection, {requests} chat completions with the standard library's http.client: "
        "the server's own share of every live call below (target: well under 2 ms).",
        "ms per request, median",
        [unit],
        targets=lambda rows: [],
        value=value,
        ratios=False,
    )
