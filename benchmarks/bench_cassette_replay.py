"""Replay cost per request as a cassette grows: pytest-llm-guard's indexed cassette against plain vcrpy.

Both replay the same files with the same matching (method, path, JSON body); the
numbers are medians over repeats of replaying every interaction once, in one run.

    python benchmarks/bench_cassette_replay.py [--sizes 10,100,1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from vcr import matchers
from vcr.cassette import Cassette
from vcr.record_mode import RecordMode
from vcr.request import Request

from pytest_llm_guard.cassettes import AtomicPersister, LLMCassette, ReadableYaml


def request(i: int) -> Request:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question number {i}"}]}
    return Request("POST", "http://127.0.0.1:8000/v1/chat/completions", json.dumps(body), {})


def ours(path: Path, mode: RecordMode = RecordMode.NONE) -> LLMCassette:
    return LLMCassette.load(
        path=str(path),
        serializer=ReadableYaml,
        persister=AtomicPersister(),
        record_mode=mode,
        match_on=(),
        match_parts=("method", "path", "body"),
        ignore=frozenset(),
        matcher=lambda request, recorded: None,
    )


def write_cassette(path: Path, size: int) -> None:
    cassette = ours(path, RecordMode.ALL)
    for i in range(size):
        reply = {"choices": [{"message": {"role": "assistant", "content": f"answer {i}"}}]}
        answer = {"status": {"code": 200, "message": "OK"}, "headers": {}, "body": {"string": json.dumps(reply)}}
        cassette.append(request(i), answer)
    cassette._save()


def plain_vcrpy(path: Path) -> Cassette:
    return Cassette.load(
        path=str(path), record_mode=RecordMode.NONE, match_on=(matchers.method, matchers.path, matchers.body)
    )


def per_request_ms(load, path: Path, size: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        cassette = load(path)
        started = time.perf_counter()
        for i in range(size):
            assert cassette.can_play_response_for(request(i))
            cassette.play_response(request(i))
        samples.append((time.perf_counter() - started) * 1000 / size)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{'interactions':>12} {'llm-guard ms/req':>17} {'vcrpy ms/req':>13} {'vcrpy/llm-guard':>16}")
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            path = Path(folder) / f"c{size}.yaml"
            write_cassette(path, size)
            mine = per_request_ms(ours, path, size, args.repeats)
            theirs = per_request_ms(plain_vcrpy, path, size, max(1, args.repeats if size <= 100 else 1))
            print(f"{size:>12} {mine:>17.3f} {theirs:>13.3f} {theirs / mine:>15.1f}x")


if __name__ == "__main__":
    main()
