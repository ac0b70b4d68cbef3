"""The shared state store: the same behaviour in memory, in SQLite and in Redis, and no lost writes across
processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llm_guard.state import MemoryStore, SqliteStore, StateStore


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    made: StateStore
    if request.param == "redis":  # a real server (tests/redis_server.py); state_redis.py's own tests are beside
        from pytest_llm_guard.state_redis import RedisStore

        made = RedisStore(request.getfixturevalue("redis_server").url, prefix="test:run:", session_prefix="test:me:")
    else:
        made = MemoryStore() if request.param == "memory" else SqliteStore.in_folder(tmp_path)
    yield made
    made.close()


def test_missing_record_is_empty(store: StateStore) -> None:
    assert store.get("nothing") == {}


def test_update_edits_in_place_and_returns_what_change_returns(store: StateStore) -> None:
    def bump(record: dict) -> int:
        record["n"] = record.get("n", 0) + 1
        return record["n"]

    assert store.update("counter", bump) == 1
    assert store.update("counter", bump) == 2
    assert store.get("counter") == {"n": 2}
    assert store.get("other") == {}


def test_records_are_copies(store: StateStore) -> None:
    store.update("k", lambda record: record.update(items=[1]))
    store.get("k")["items"].append(2)
    assert store.get("k") == {"items": [1]}


def test_a_failing_change_writes_nothing(store: StateStore) -> None:
    store.update("k", lambda record: record.update(n=1))

    def broken(record: dict) -> None:
        record["n"] = 99
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.update("k", broken)
    assert store.get("k") == {"n": 1}


def test_two_connections_see_each_other(tmp_path: Path) -> None:
    first, second = SqliteStore.in_folder(tmp_path), SqliteStore.in_folder(tmp_path)
    first.update("k", lambda record: record.update(by="first"))
    assert second.get("k") == {"by": "first"}
    first.close()
    second.close()


_INCREMENTS = """
import sys, time
from pathlib import Path
from pytest_llm_guard.state import SqliteStore

folder, me, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
store = SqliteStore.in_folder(folder)
(folder / f"ready-{me}").touch()
deadline = time.monotonic() + 30
while len(list(folder.glob("ready-*"))) < 2:  # start together, so the updates really interleave
    assert time.monotonic() < deadline, "the other process never started"
    time.sleep(0.005)
def bump(record):
    record["n"] = record.get("n", 0) + 1
    record.setdefault("order", []).append(me)
for _ in range(count):
    store.update("counter", bump)
    time.sleep(0.001)  # a worker does other things between updates; without it one process takes all turns
store.close()
"""


def test_concurrent_updates_from_two_processes_lose_nothing(tmp_path: Path) -> None:
    SqliteStore.in_folder(tmp_path).close()  # create the table before both start
    workers = [
        subprocess.Popen([sys.executable, "-c", _INCREMENTS, str(tmp_path), name, "200"], stderr=subprocess.PIPE)
        for name in "ab"
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err.decode()
    store = SqliteStore.in_folder(tmp_path)
    record = store.get("counter")
    store.close()
    assert record["n"] == 400 and len(record["order"]) == 400
    switches = sum(a != b for a, b in zip(record["order"], record["order"][1:], strict=False))
    assert switches > 1, "the two processes did not interleave, so this proved nothing"
