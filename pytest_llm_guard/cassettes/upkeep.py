"""What the session's end says about its cassettes: recordings no test played, and what a re-record changed.

Each guarded test's note of its cassette (``CassetteLayer.note``) reaches the controller on
its teardown report, from every xdist worker. A cassette several tests share is judged here,
once every test that used it has run: a recording is unplayed when no passing test played
it. A re-record (``all``, ``new_episodes``) is reviewed against what the file held when the
session started (the session keeps that text: ``Session.keep_before``), so a shared cassette
written by several tests and workers gets one review.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import RECORDING_MODES, files, parsed
from .review import Review, describe_request, ids, review


@dataclass
class Unplayed:
    """Recordings of one cassette that no passing test played."""

    path: str
    count: int
    first: str
    tests: list[str]
    shared: bool
    pruned: bool
    fails: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("path", "count", "first", "tests", "shared", "pruned", "fails")}


@dataclass
class Upkeep:
    """The session's word on its cassettes, for the terminal summary and the JSON report."""

    unplayed: list[Unplayed] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)
    expired: list[dict[str, Any]] = field(default_factory=list)
    """Cassettes older than ``cassette_max_age``: path, age (seconds), tests, and whether they were re-recorded."""
    unused: list[str] = field(default_factory=list)
    """After a recording run: cassettes beside those the run used that no test of the run used (orphans,
    when the run was the whole suite; ``pytest --llm-cassettes`` judges against every collected test)."""

    @property
    def fails(self) -> bool:
        """A shared cassette left recordings unplayed under ``on_unplayed = "fail"`` (its tests passed)."""
        return any(u.fails and u.shared for u in self.unplayed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "unplayed": [u.as_dict() for u in self.unplayed],
            "rerecorded": [r.as_dict() for r in self.reviews],
            "expired": self.expired,
            "unused": self.unused,
        }


def _interactions(text: str | None) -> list[tuple[Any, dict[str, Any]]]:
    if text is None:
        return []
    try:
        requests, responses, _ = parsed.parse(text)
    except Exception:  # noqa: BLE001 - a file no longer a cassette: its tests said why
        return []
    return list(zip(requests, responses, strict=True))


def judge(notes: Iterable[Mapping[str, Any]], before: Callable[[str], str | None]) -> Upkeep:
    """Every cassette the session's tests used, judged once. ``before(path)``: the file's text when
    the session started, when the session kept it (it records into the file), else None."""
    by_path: defaultdict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for note in notes:
        by_path[note["path"]].append(note)
    upkeep = Upkeep()
    for path, group in sorted(by_path.items()):
        first = group[0]
        match_on, ignore = tuple(first["match_on"]), frozenset(first["ignore"])

        def key(request: Any, match_on: tuple[str, ...] = match_on, ignore: frozenset[str] = ignore) -> tuple:
            return parsed.loaded_key(request, match_on, ignore)  # keyed at load already, in this process

        expired = [n for n in group if n.get("expiry")]
        if expired:
            upkeep.expired.append(
                {
                    "path": path,
                    "age": max(n["expiry"]["age"] for n in expired),
                    "tests": sorted({n["test"] for n in expired}),
                    "rerecorded": any(n["expiry"]["action"] == "rerecord" for n in expired),
                }
            )
        passed = [n for n in group if n["passed"] and n["unplayed"] is not None]
        unplayed = set.intersection(*(set(n["unplayed"]) for n in passed)) if passed else set()
        recording = any(n["mode"] in RECORDING_MODES for n in group)
        if not recording and (not unplayed or first["on_unplayed"] == "ignore"):
            continue  # replayed, every recording played: nothing to read (a CI run pays nothing here)
        kept = before(path) if recording else None
        now = _interactions(files.read_text(Path(path)))
        if unplayed and first["on_unplayed"] != "ignore":
            upkeep.unplayed.append(_unplayed(path, group, unplayed, _interactions(kept) if kept else now, key))
            if first["shared"] and first["prune"]:
                _prune(Path(path), unplayed, key)
                now = _interactions(files.read_text(Path(path)))
        if recording:
            found = review(path, _interactions(kept), now, key, unplayed)
            if found.touched or found.unchanged:  # a cassette nothing was recorded into has nothing to review
                upkeep.reviews.append(found)
    if upkeep.reviews:
        used = {Path(path).resolve() for path in by_path}
        folders = {path.parent for path in used}
        upkeep.unused = sorted(
            str(found) for folder in folders for found in folder.glob("*.yaml") if found.resolve() not in used
        )
    return upkeep


def _unplayed(
    path: str, group: list[Mapping[str, Any]], unplayed: set[str], source: list[tuple[Any, Any]], key: Any
) -> Unplayed:
    requests = [q for q, _ in source]
    firsts = [q for iid, q in zip(ids(requests, key), requests, strict=True) if iid in unplayed]
    first = group[0]
    return Unplayed(
        path,
        len(unplayed),
        describe_request(firsts[0]) if firsts else "",
        sorted({n["test"] for n in group}),
        bool(first["shared"]),
        bool(first["prune"]),
        first["on_unplayed"] == "fail",
    )


def _prune(path: Path, unplayed: set[str], key: Any) -> None:
    """Drop a shared cassette's unplayed recordings (``--llm-prune-unplayed``), atomically under its lock."""
    from . import vcr_bridge  # writes vcrpy's requests

    with files.locked(path.parent):
        text = files.read_text(path)
        if text is None:
            return
        requests, responses, found = vcr_bridge.parse(text)
        keep = [i for i, iid in enumerate(ids(requests, key)) if iid not in unplayed]
        data = {"requests": [requests[i] for i in keep], "responses": [responses[i] for i in keep]}
        files.write_atomically(path, vcr_bridge.serialized({**data, **({"metadata": found} if found else {})}))
