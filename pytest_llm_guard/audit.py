"""``pytest --llm-audit``: every cassette under the root directory, scanned for credential-shaped strings.

For pre-commit hooks and CI: it runs no test, prints ``file:line: kind`` for each finding
and exits non-zero when there is one. It reads what is stored (``stored.strings``: YAML
strings as loaded, compressed bodies decompressed, JSON cassettes), and shows no
character of a secret: its kind, length and a short hash, to tell two findings apart.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import yaml

from .scrub import find_shapes
from .stored import strings

SUFFIXES = (".yaml", ".yml", ".json")
SKIPPED = frozenset(
    {
        ".git",
        ".hg",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        "node_modules",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        "site-packages",
        "build",
        "dist",
    }
)


def cassettes(root: Path) -> Iterator[Path]:
    """Files under ``root`` that look like cassettes (YAML or JSON with ``interactions``)."""
    for folder, folders, names in os.walk(root):
        folders[:] = sorted(f for f in folders if f not in SKIPPED and not f.endswith(".egg-info"))
        for name in sorted(names):
            if name.endswith(SUFFIXES):
                path = Path(folder) / name
                try:
                    text = path.read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                if "interactions" in text:
                    yield path


def findings(path: Path, root: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    shown = path.relative_to(root) if path.is_relative_to(root) else path
    found = []
    try:
        stored: list[tuple[int | None, str]] = list(strings(text, json_file=path.suffix == ".json"))
    except (yaml.YAMLError, ValueError):  # not loadable: its text, as it is
        stored = [(1, text)]
    for first, value in stored:
        for kind, start, end in sorted(find_shapes(value), key=lambda f: f[1]):
            line = None if first is None else first + value.count("\n", 0, start)
            where = f"{shown}:{line}" if line is not None else str(shown)
            found.append(f"{where}: {kind} ({fingerprint(value[start:end])})")
    return found


def fingerprint(secret: str) -> str:
    """Length and a short hash: enough to match a finding with a key you hold, nothing to use."""
    return f"{len(secret)} characters, sha256 {hashlib.sha256(secret.encode()).hexdigest()[:8]}"


def audit(root: Path) -> tuple[int, list[str]]:
    """The number of cassettes scanned, and one line per finding."""
    scanned, lines = 0, []
    for path in cassettes(root):
        scanned += 1
        lines.extend(findings(path, root))
    return scanned, lines


def main(root: Path) -> int:
    """``--llm-audit``'s run: each finding, a verdict and what to do, printed (before pytest configures:
    there is no terminal reporter yet); 1 when a credential-shaped string was found, else 0."""
    from .report import plural

    scanned, found = audit(root)
    for line in found:
        print(line)
    verdict = plural(len(found), "credential-shaped string") if found else "no credential-shaped strings"
    print(f"pytest-llm-guard audit: {plural(scanned, 'cassette')} under {root}, {verdict} found")
    if found:
        one = len(found) == 1
        print(
            f"Re-record {'that cassette' if one else 'those cassettes'} (recording redacts such strings), "
            f"or edit the {'line' if one else 'lines'} above."
        )
    return 1 if found else 0
