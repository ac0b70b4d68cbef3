"""``pytest --llm-audit``: every cassette under the root directory, scanned for credential-shaped strings.

For pre-commit hooks and CI: it runs no test, prints ``file:line: kind`` for each finding
(never the secret itself) and exits non-zero when there is one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .scrub import find_shapes

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
    for kind, start, end in sorted(find_shapes(text), key=lambda f: f[1]):
        line = text.count("\n", 0, start) + 1
        secret = text[start:end]
        found.append(f"{shown}:{line}: {kind} ({secret[:4]}… {len(secret)} characters)")
    return found


def audit(root: Path) -> tuple[int, list[str]]:
    """The number of cassettes scanned, and one line per finding."""
    scanned, lines = 0, []
    for path in cassettes(root):
        scanned += 1
        lines.extend(findings(path, root))
    return scanned, lines
