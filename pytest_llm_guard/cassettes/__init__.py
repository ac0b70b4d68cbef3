"""LLM cassettes on vcrpy: recorded once, committed, replayed with no key, no network and no secrets.

vcrpy provides the cassette model, the record modes, the file format and
decompression; this package makes them right for LLM traffic:

- ``matching.py``: look-up is indexed by a canonical request key (method, API route,
  JSON body with keys sorted), so replay cost stays flat however large a cassette
  grows; a miss is explained by the closest recording and a diff;
- ``files.py``: files are written atomically under a folder lock, readable (block
  strings), and a file that cannot be read fails its test with the parser's line and column;
- ``vcr_bridge.py``: the one module that builds on vcrpy (its cassette, persister, serializer and
  request types), keeping what another pytest-xdist worker wrote, and
  replacing what a file held before the session when it is re-recorded (``all``);
- ``parsed.py`` and ``replaying.py``: a file's text as recorded requests and answers, and the
  cassette that only replays (``none``, ``once`` on a recorded file), both without vcrpy: a
  replaying session never imports it;
- ``metadata.py``: when each interaction was recorded, of which model and endpoint, and a
  header naming the plugin, SDK and dialect that wrote it (vcrpy reads the file as before);
- ``review.py``: what a re-record changed (an answer the same but for ids and timestamps is
  kept as it was recorded, so ``git diff`` shows only what truly changed);
- ``upkeep.py``: the session's end on its cassettes: recordings no test played (shared cassettes
  judged over every test and worker), one review per re-recorded cassette, expired cassettes;
- ``layer.py``: the cassette as a guard layer at the transport boundary, so a streamed
  response reaches the caller chunk by chunk while it is recorded and replays as the
  same events in order; an answer its caller stopped reading is read on and recorded
  whole; only successful answers are written; secrets are scrubbed (``scrub.py``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import Settings
from .layer import CassetteLayer, open_cassette
from .matching import canonical_body, request_key
from .parsed import ReadableYaml

__all__ = [
    "AtomicPersister",
    "CassetteLayer",
    "LLMCassette",
    "ReadableYaml",
    "canonical_body",
    "effective_mode",
    "file_safe",
    "open_cassette",
    "path_for",
    "record_mode",
    "request_key",
]


def __getattr__(name: str) -> Any:
    """vcrpy's cassette and persister, imported when asked for (a replay never needs them)."""
    if name in ("AtomicPersister", "LLMCassette"):
        from . import vcr_bridge

        return getattr(vcr_bridge, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


RECORDING_MODES = ("all", "new_episodes")
"""The modes in which a test writes into its cassette (``once`` on a new file runs as ``new_episodes``)."""


def nothing_to_judge(note: Mapping[str, Any]) -> bool:
    """Whether a test's note of its cassette (``CassetteLayer.note``) leaves the session's end nothing to
    say (``upkeep.judge`` finds nothing in a cassette all of whose notes are so): the test replayed every
    recording, wrote nothing, and the cassette had not expired. A replaying session then never loads
    ``upkeep.py``."""
    return not note["unplayed"] and not note.get("expiry") and note["mode"] not in RECORDING_MODES


def record_mode(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """The configured mode, else ``none`` on CI (CI must never reach a real endpoint) and ``once`` elsewhere."""
    if settings.record is not None:
        return settings.record
    ci = environ.get("CI", "").strip().lower()
    return "none" if ci not in ("", "0", "false", "no") else "once"


def effective_mode(mode: str, existed_at_start: bool) -> str:
    """``once`` on a cassette this session created records what it is missing (a cassette shared by
    several tests, or xdist workers); one that existed when the session started only replays."""
    return "new_episodes" if mode == "once" and not existed_at_start else mode


def _sanitised(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "test"


def file_safe(name: str, limit: int = 100) -> str:
    """A file name for a test id, one per id: a name that had to change (parametrize ids, long
    names) gets a short hash of the raw id, so ``q[2+2]`` and ``q[2*2]`` get files of their own."""
    safe = _sanitised(name)
    if safe == name and len(safe) <= limit:
        return safe
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return f"{safe[: limit - 13]}-{digest}"


def path_for(test_file: Path, test_name: str, settings: Settings) -> Path:
    """The marker's path (relative to the test file), else ``<cassette_dir>/<module>/<name>.yaml``.

    The name is made file-safe (``test_x_gpt-4o-<hash>``). When that file is not there, an
    existing cassette under an earlier name is used: ours before the hash was added
    (``test_x_gpt-4o.yaml``), or pytest-recording's raw name (``test_x[gpt-4o].yaml``).
    """
    if settings.cassette_path is not None:
        return test_file.parent / settings.cassette_path
    folder = test_file.parent / (settings.cassette_dir or "cassettes") / test_file.stem
    name = settings.cassette_name or test_name
    ours = folder / f"{file_safe(name)}.yaml"
    if ours.exists():
        return ours
    earlier = [folder / f"{_sanitised(name)}.yaml"] + ([folder / f"{name}.yaml"] if "/" not in name else [])
    return next((path for path in earlier if path.exists()), ours)
