"""Cassette files on disk: readable YAML, atomic writes under a folder lock, clear read errors.

No vcrpy here: ``vcr_bridge.py`` plugs these into vcrpy's persister and serializer.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ..errors import LLMCassetteError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: atomic renames still hold, concurrent merges do not
    fcntl = None  # type: ignore[assignment]


class _ReadableDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Multi-line strings (pretty JSON, SSE streams) as YAML block literals, readable in review."""


_ReadableDumper.add_representer(
    str,
    lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None),
)
_ReadableDumper.add_representer(
    list,  # a list of numbers (a replay's timing) on one line, not a line per number
    lambda dumper, data: dumper.represent_sequence(
        "tag:yaml.org,2002:seq",
        data,
        flow_style=bool(data) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data),
    ),
)


def dump_yaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_ReadableDumper, sort_keys=False, allow_unicode=True, width=120)


def read_text(path: Path) -> str | None:
    """The file's text, or None when it is missing or empty (vcrpy: "not recorded yet")."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise LLMCassetteError(f"cannot read cassette {path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise LLMCassetteError(
            f"cassette {path} is not UTF-8 text ({exc}); fix it, or record the test again (--llm-record=all)"
        ) from None
    return text if text.strip() else None


def written_before(path: Path, moment: float) -> bool:
    """Whether ``path`` exists and was last written before ``moment`` (``time.time()``)."""
    try:
        return path.stat().st_mtime < moment
    except OSError:
        return False


def unreadable(path: Path, exc: Exception) -> LLMCassetteError:
    """The error for a file that cannot be used: where the parser stopped, or what is missing, and what to do.

    Never advice to delete it: it may be a cassette another tool wrote, in a format of its own.
    """
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return LLMCassetteError(
            f"cannot parse cassette {path}{where}: {problem}. Fix the file, or record the test again "
            "(--llm-record=all)."
        )
    detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    return LLMCassetteError(
        f"cassette {path} cannot be replayed: {detail}. It may have been written by another tool or edited by "
        "hand: fix it, point this test elsewhere (@pytest.mark.llm_cassette(path=...)), or record it again "
        "(--llm-record=all)."
    )


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder: concurrent savers (xdist workers) take turns."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_stale_temporaries(path: Path) -> None:
    """Temporary files of writers killed before their rename (call holding the lock)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    """A temporary file in the same folder, renamed over ``path``: readers see the old file or the new one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
