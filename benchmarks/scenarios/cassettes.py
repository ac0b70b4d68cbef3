"""S5 and S7: cassettes, replayed through the SDK end to end, and recording a stream.

Each cassette library records its own cassette once (not measured), then replays it with
its record mode set to replay only, matching on method, path and JSON body. The replays
run against a fresh fault server, whose log proves that nothing went out. cassetter
matches whole URIs, so it is given a normaliser that keeps the path: the same rule as
vcrpy's `path` matcher and pytest-llm-guard's, which ignore host and port.
"""

from __future__ import annotations

import json
import math
import socket
from itertools import pairwise
from urllib.parse import urlsplit

from pytest_llm_guard.fault import Fault
from pytest_llm_guard.fault.dialect import Call
from pytest_llm_guard.fault.openai_api import chat

from ..projects import MODEL, app, pyproject, sdk_conftest
from ..runner import Context, Sample, Unit
from . import CASSETTER, GUARD, LIVE, VCRPY, Row, Scenario, Target, find
from .overhead import FLOOR

REPLAYED = 100  # at most this many requests replayed per session (see s5)

VCR_CONFIG = {
    VCRPY: """
@pytest.fixture(scope="module")
def vcr_config():
    return {"match_on": ["method", "path", "body"]}
""",
    # Recording only: vcrpy looks every new request up before recording it, a scan of the whole
    # cassette with the replay matchers; matching on method alone ends each scan at the first
    # interaction. The cassette written is the same (matchers are not stored).
    VCRPY + " (recording)": """
@pytest.fixture(scope="module")
def vcr_config():
    return {"match_on": ["method"]}
""",
    CASSETTER: """
from urllib.parse import urlsplit


@pytest.fixture(scope="module")
def vcr_config():
    return {"match_on": ["method", "uri", "json_body"], "uri_normalizer": lambda uri: urlsplit(uri).path}
""",
}
PLUGINS = {GUARD: ("llm_guard",), VCRPY: ("recording",), CASSETTER: ("cassetter",), LIVE: ()}

REPLAY = """\
import time

import pytest

import benchapp

URL = {url!r}
INDICES = {indices!r}


{marker}def test_replay({fixtures}):
    chat_client = {client}
    started = time.perf_counter()
    for i in INDICES:
        text = f"question {{i}}"
        reply = chat_client.chat.completions.create(model=benchapp.MODEL, messages=benchapp.messages(text))
        assert reply.choices[0].message.content == "echo: " + text
    benchapp.metric("loop", (time.perf_counter() - started) / len(INDICES))
"""

STREAM = """\
import time

import pytest

import benchapp

URL = {url!r}


{marker}def test_stream({fixtures}):
    chat_client = {client}
    for n in range({streams}):
        started = time.perf_counter()
        stream = chat_client.chat.completions.create(
            model=benchapp.MODEL, messages=benchapp.messages(f"stream {{n}}"), stream=True
        )
        count, first_chunk, first_token = 0, None, None
        for chunk in stream:
            count += 1
            now = time.perf_counter()
            first_chunk = first_chunk or now
            if first_token is None and chunk.choices and chunk.choices[0].delta.content:
                first_token = now
        benchapp.metric("ttfc", first_chunk - started)
        benchapp.metric("ttft", first_token - started)
        assert count >= 20
"""

RAW_CLIENT = "benchapp.client(URL, benchapp.SDK_DEFAULT_TIMEOUT)"
FLOOR_CLIENT = """\
\"\"\"The floor: the openai SDK on an in-memory transport that hands back the answers the fault server gives.\"\"\"

import httpx2
import openai

ANSWERS = {answers!r}


def client(url, timeout):
    answers = iter(ANSWERS)

    def answer(request):
        request.read()
        status, headers, body = next(answers)
        return httpx2.Response(status, headers=headers, content=body)

    transport = httpx2.MockTransport(answer)
    http_client = openai.DefaultHttpx2Client(transport=transport)
    return openai.OpenAI(base_url=url, api_key="sk-bench", timeout=timeout, http_client=http_client)
"""


def answers(indices: list[int]) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    """The fault server's answers to the replayed questions, in order, as it builds them."""
    out = []
    for seq, i in enumerate(indices, 1):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}]}
        call = Call("POST", "/v1/chat/completions", {}, {}, {}, body, ())
        response = chat(call, seq)
        out.append((response.status, response.headers, b"".join(response.pieces)))
    return out


def floor_project(context: Context, indices: list[int]) -> dict[str, str]:
    """S5's floor: the same test and SDK calls, plugin off, answered in memory (no socket, no cassette)."""
    files = project(context, LIVE, "test_replay.py", REPLAY, indices=indices)
    client = "floor.client(URL, benchapp.SDK_DEFAULT_TIMEOUT)"
    files["test_replay.py"] = (
        files["test_replay.py"].replace(RAW_CLIENT, client).replace("import benchapp", "import benchapp\nimport floor")
    )
    files["floor.py"] = FLOOR_CLIENT.format(answers=answers(indices))
    return files


def project(
    context: Context, contender: str, test_name: str, template: str, recording: bool = False, **fields
) -> dict[str, str]:
    url = context.urls["api"]
    guard = contender == GUARD
    config = VCR_CONFIG.get(contender + (" (recording)" if recording else ""), VCR_CONFIG.get(contender, ""))
    conftest = sdk_conftest(context.scale) + "\nimport pytest\n" + config
    marker = "@pytest.mark.vcr\n" if contender in (VCRPY, CASSETTER) else ""
    test = template.format(
        url=url,
        marker=marker,
        fixtures="llm_client" if guard else "",
        client="llm_client" if guard else RAW_CLIENT,
        **fields,
    )
    return {
        "pyproject.toml": pyproject({"base_url": url, "model": MODEL} if guard else None),
        "conftest.py": conftest,
        "benchapp.py": app(context.scale),
        test_name: test,
    }


def record_args(contender: str, mode: str) -> tuple[str, ...]:
    return (f"--record-mode={mode}",) if contender in (VCRPY, CASSETTER) else ()


def sampled(size: int) -> list[int]:
    return list(range(0, size, max(1, size // REPLAYED)))


def s5(quick: bool, scale: float) -> Scenario:
    sizes = (10,) if quick else (10, 100, 1000)

    def unit(contender: str, size: int) -> Unit:
        indices = sampled(size)

        def files(which: list[int], recording: bool = False):
            if contender == FLOOR:
                return lambda context: floor_project(context, which)
            return lambda context: project(context, contender, "test_replay.py", REPLAY, recording, indices=which)

        healthy = {"api": lambda server: None}
        prepare = None
        if contender not in (LIVE, FLOOR):
            prepare = Unit(
                "S5",
                contender + " (recording)",
                size,
                healthy,
                files(list(range(size)), recording=True),
                plugins=PLUGINS[contender],
                args=record_args(contender, "all"),
                record="all",
                keep_folder=f"S5-{contender.split()[0]}-{size}",
            )
        return Unit(
            "S5",
            contender,
            size,
            healthy,
            files(indices),
            plugins=PLUGINS.get(contender, ()),
            args=record_args(contender, "none"),
            record="none" if contender == GUARD else "off",
            work=len(indices),
            prepare=prepare,
            keep_folder=prepare.keep_folder if prepare else None,
            note="" if len(indices) == size else f"{len(indices)} of the {size:,} interactions replayed",
        )

    units = [unit(contender, size) for size in sizes for contender in (GUARD, VCRPY, CASSETTER, LIVE, FLOOR)]

    def value(unit: Unit, sample: Sample) -> float:
        """ms per request of a full replay: the in-test look-ups as measured, plus the session's other
        costs (cassette load, fixtures) spread over every interaction, as a full replay spreads them."""
        assert sample.session_s is not None and unit.size is not None
        loop = sample.metrics["loop"][0]
        return ((sample.session_s - loop * unit.work) / unit.size + loop) * 1000

    def targets(rows: list[Row]) -> list[Target]:
        out = []
        big = sizes[-1]
        guard, vcrpy = find(rows, GUARD, big), find(rows, VCRPY, big)
        if guard and vcrpy:
            speedup = vcrpy.median / guard.median
            out.append(Target(f">= 100x plain vcrpy at {big} interactions", f"{speedup:.0f}x", speedup >= 100))
        for other, goal in ((CASSETTER, "at least as fast as cassetter"), (LIVE, "no slower than a live call")):
            pairs = [(find(rows, GUARD, s), find(rows, other, s)) for s in sizes]
            if all(a and b for a, b in pairs):
                ratios = [a.median / b.median for a, b in pairs]  # type: ignore[union-attr]
                shown = ", ".join(f"{r:.2f}x at {s}" for r, s in zip(ratios, sizes, strict=True))
                out.append(Target(goal + " (pytest-llm-guard / it)", shown, all(r <= 1.0 for r in ratios)))
        pairs = [(find(rows, GUARD, s), find(rows, CASSETTER, s)) for s in sizes]
        if all(a and b for a, b in pairs):
            ratios = [median(a.samples, "loop") / median(b.samples, "loop") for a, b in pairs]  # type: ignore[union-attr]
            shown = ", ".join(f"{r:.2f}x at {s}" for r, s in zip(ratios, sizes, strict=True))
            goal = "at least as fast as cassetter in-test (pytest-llm-guard / it)"
            out.append(Target(goal, shown, all(r <= 1.0 for r in ratios)))
        out += floor_targets(rows, sizes)
        loops = [find(rows, GUARD, s) for s in sizes]
        if len(sizes) > 1 and all(loops):
            per = [median(row.samples, "loop") * 1000 for row in loops]  # type: ignore[union-attr]
            shown = ", ".join(f"{p:.2f} ms at {s}" for p, s in zip(per, sizes, strict=True))
            grows = any(after > 1.25 * before for before, after in pairwise(per))
            out.append(
                Target(
                    f"flat from {sizes[0]} to {big} (in-test ms per request grows < 25% from one size to the next)",
                    shown,
                    not grows,
                )
            )
        return out

    return Scenario(
        "S5",
        "Replay through the SDK, end to end",
        f"Cassettes of {', '.join(str(s) for s in sizes)} distinct chat completions, recorded by each library "
        f"itself, replayed by one test through the openai SDK; matching on method, path and JSON body. At most "
        f"{REPLAYED} requests are replayed per session (every 10th at 1,000, the same for every contender): "
        "plain vcrpy scans every recorded interaction at each look-up whatever is asked, so a full replay "
        "of 1,000 takes minutes. The value is the in-test time per request plus the session's other costs "
        "(cassette load, fixtures) spread over all the interactions, as a full replay spreads them; below "
        "1,000 that is simply session time / requests. The live row sends the same requests to the fault "
        f"server, no cassette, plugin off. The floor row ({FLOOR}) is the same test and SDK calls, plugin off, "
        "answered in memory (httpx2.MockTransport) with the bytes the fault server sends: what any cassette "
        "library must at least cost.",
        "ms per request (session time / requests; see the setup at 1,000)",
        units,
        targets=targets,
        value=value,
        floor=FLOOR,
    )


FLOOR_GOAL = 1.10  # pytest-llm-guard's replay, per request, over the SDK alone (at 100 interactions and more)


def floor_targets(rows: list[Row], sizes: tuple[int, ...]) -> list[Target]:
    """Each cassette library against the floor, per request: in-test, and with the session's other costs
    (cassette load) spread as the value spreads them; ratios and ms above it. Only ours has a goal."""
    out = []
    for contender in (GUARD, VCRPY, CASSETTER):
        parts, within = [], True
        for size in sizes:
            mine, floor = find(rows, contender, size), find(rows, FLOOR, size)
            if not (mine and floor):
                break
            loop, floor_loop = median(mine.samples, "loop") * 1000, median(floor.samples, "loop") * 1000
            parts.append(
                f"{size:,}: in-test {loop / floor_loop:.2f}x ({loop - floor_loop:+.2f} ms), with load "
                f"{mine.median / floor.median:.2f}x ({mine.median - floor.median:+.2f} ms)"
            )
            if size >= 100:
                within &= max(loop / floor_loop, mine.median / floor.median) <= FLOOR_GOAL
        else:
            if contender == GUARD:
                goal = f"within {FLOOR_GOAL:.2f}x of the floor per request at 100 and more (in-test, with load)"
                judged = within if any(size >= 100 for size in sizes) else None
                out.append(Target(goal, "; ".join(parts), judged))
            else:
                out.append(Target(f"{contender} against the floor", "; ".join(parts), None, "for reading"))
    return out


def median(samples: list[Sample], metric: str) -> float:
    values = sorted(v for sample in samples for v in sample.metrics.get(metric, []))
    return values[len(values) // 2] if values else math.nan


REPLY = " ".join(f"word{n}" for n in range(18))  # 18 content events: 20 events with the first and the last
SLICES = 20


def stream_length(server) -> int:
    """Bytes of the streamed answer's body (chunked framing included), as the trickle slices it."""
    address = urlsplit(server.url)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "stream 0"}], "stream": True})
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    data = b""
    with socket.create_connection((address.hostname, address.port), timeout=5) as connection:
        connection.sendall(head.encode() + body.encode())
        while chunk := connection.recv(65536):
            data += chunk
    return len(data.split(b"\r\n\r\n", 1)[1])


def slow_stream(scale: float, server, interval: float = 0.1) -> None:
    """Answers streamed in SLICES slices, ``interval`` seconds (scaled) apart."""
    server.reply(text=REPLY)
    length = stream_length(server)
    server.reset()
    server.reply(text=REPLY)
    server.plan(then=Fault.trickle(interval=interval * scale, chunk_size=math.ceil(length / SLICES)))


def s7(quick: bool, scale: float) -> Scenario:
    streams = 3 if quick else 10

    def unit(contender: str) -> Unit:
        return Unit(
            "S7",
            contender,
            None,
            {"api": lambda server: slow_stream(scale, server)},
            lambda context: project(context, contender, "test_stream.py", STREAM, streams=streams),
            plugins=PLUGINS[contender],
            args=record_args(contender, "all"),
            record="all" if contender == GUARD else "off",
            work=streams,
        )

    units = [unit(contender) for contender in (GUARD, VCRPY, CASSETTER, LIVE)]

    def value(unit: Unit, sample: Sample) -> float:
        return median([sample], "ttft") * 1000

    def targets(rows: list[Row]) -> list[Target]:
        guard, live = find(rows, GUARD), find(rows, LIVE)
        if not (guard and live):
            return []
        ratio = guard.median / live.median
        # pytest-llm-guard holds a stream until its first content, so that an error before it is retried
        # (issue 17): the role-only first chunk reaches the caller with the first token, not before it.
        chunk = median(guard.samples, "ttfc") / median(live.samples, "ttfc")
        shown = f"{ratio:.2f}x (first chunk of any kind, role-only included: {chunk:.2f}x)"
        return [Target("first token while recording <= 1.02x live", shown, ratio <= 1.02)]

    return Scenario(
        "S7",
        "Time to first token while recording a stream",
        f"{streams} streamed chat completions of 20 events; the server sends each answer in {SLICES} slices "
        f"{0.1 * scale * 1000:g} ms apart (100 ms, scaled). Each library records a new cassette; the live row "
        "has none. Value: the median time from the call to its first token (the first chunk with content; "
        "the role-only chunk before it carries none).",
        "ms to first token, median",
        units,
        targets=targets,
        value=value,
    )
