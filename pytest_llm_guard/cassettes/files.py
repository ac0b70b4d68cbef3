"""Cassette files on disk: readable YAML, atomic writes under a folder lock, clear read errors.

No vcrpy here: ``vcr_bridge.py`` plugs these into vcrpy's persister and serializer.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
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


_STR = "tag:yaml.org,2002:str"
_SCALARS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "null", "binary", "timestamp")
)
"""Tags the fast loader builds; any other (a merge key, vcrpy's ``!!python/...``) goes to the full loader."""


class _Unusual(Exception):
    """What the fast loader leaves to the full one: anchors, aliases, other tags, complex keys."""


def load_yaml(text: str, full: Callable[[str], Any]) -> Any:
    """The YAML document in ``text``, as ``full`` (a safe loader) would build it, several times faster.

    libyaml parses (the C parser every loader of ours uses when PyYAML has it); the data is built
    straight from its events, skipping the node graph and PyYAML's pure-Python constructor, which
    took most of a second for a cassette of 1,000 interactions. Plain scalars are resolved by
    PyYAML's own resolver and anything but a string built by its safe constructor, so the result is
    the same. A document using what cassettes do not (anchors, aliases, explicit tags other than
    the standard scalars, non-scalar keys), a parse error, or a PyYAML without libyaml: ``full``
    reads it, and raises its own error for a broken file.
    """
    try:
        from yaml._yaml import CParser
    except ImportError:
        return full(text)
    try:
        return _built(CParser(text))
    except Exception:  # noqa: BLE001 - unusual or broken: the full loader builds it, or says what is wrong
        return full(text)


def _built(parser: Any) -> Any:
    resolver, constructor = yaml.resolver.Resolver(), yaml.constructor.SafeConstructor()
    resolved: dict[str, str] = {}
    constants: dict[tuple[str, str], Any] = {}
    events = yaml.events
    stack: list[tuple[Any, list[Any]]] = []
    container: Any = None
    key: list[Any] = []  # the pending key of a mapping, when one has been read
    done: list[Any] = []
    while True:
        event = parser.get_event()
        kind = type(event)
        if kind is events.ScalarEvent:
            if event.anchor is not None:
                raise _Unusual
            value: Any = event.value
            tag = event.tag
            if tag is None or tag == "!":
                if event.implicit[0]:  # plain: what it looks like says its type
                    tag = resolved.get(value)
                    if tag is None:
                        tag = resolved[value] = resolver.resolve(yaml.ScalarNode, value, (True, False))
                else:  # quoted or a block: a string (the resolver has no path resolvers)
                    tag = _STR
            if tag != _STR:
                if tag not in _SCALARS:
                    raise _Unusual
                built = constants.get((tag, value), constants)
                if built is constants:  # each one built once: they are immutable (numbers, bytes, dates)
                    node = yaml.ScalarNode(tag, value, style=event.style)
                    built = constants[(tag, value)] = constructor.yaml_constructors[tag](constructor, node)
                value = built
        elif kind is events.MappingStartEvent or kind is events.SequenceStartEvent:
            if event.anchor is not None or not event.implicit:
                raise _Unusual
            stack.append((container, key))
            container, key = ({} if kind is events.MappingStartEvent else []), []
            continue
        elif kind is events.MappingEndEvent or kind is events.SequenceEndEvent:
            value = container
            container, key = stack.pop()
        elif kind is events.StreamEndEvent:
            if len(done) > 1:
                raise _Unusual  # several documents: the full loader says so
            return done[0] if done else None
        elif kind is events.AliasEvent:
            raise _Unusual
        else:
            continue  # stream and document starts and ends
        if container is None:
            done.append(value)
        elif type(container) is list:
            container.append(value)
        elif not key:
            if isinstance(value, (dict, list)):
                raise _Unusual
            key.append(value)
        else:
            container[key.pop()] = value


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
