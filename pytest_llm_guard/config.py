"""Layered configuration: one table of options, one resolver, one error style.

Precedence, lowest to highest: built-in defaults, ``[tool.pytest_llm_guard]`` in
pyproject.toml, pytest ini keys ``llm_<name>``, environment ``LLM_GUARD_<NAME>``,
command line ``--llm-<name>``, then ``llm_budget`` markers (module ``pytestmark``,
then class, then function). Every value remembers where it came from, so an
error can say which key, where it was set and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import LLMGuardConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

ENV_PREFIX = "LLM_GUARD_"
INI_PREFIX = "llm_"
PYPROJECT_TABLE = "tool.pytest_llm_guard"


def _number(kind: type, minimum: float, *, positive: bool) -> Callable[[Any], Any]:
    """A parser for a non-negative (or positive) int/float that also reads strings."""
    what = ("a positive " if positive else "a non-negative ") + ("whole number" if kind is int else "number")

    def parse(value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(what)
        if isinstance(value, str):
            value = value.strip()
            try:
                value = int(value) if kind is int else float(value)
            except ValueError:
                raise ValueError(what) from None
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ValueError(what)
        if math.isnan(value) or math.isinf(value) or value < minimum or (positive and value == 0):
            raise ValueError(what)
        return kind(value)

    parse.description = what  # type: ignore[attr-defined]
    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Allow "off"/"none" (or ``None`` in a marker) to switch a limit off."""

    def parse_optional(value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off", "")):
            return None
        return parse(value)

    parse_optional.description = f"{parse.description}, or none/off"  # type: ignore[attr-defined]
    return parse_optional


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


_boolean.description = "true or false"  # type: ignore[attr-defined]


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("a string")
    return value.strip() or None


_text.description = "a string"  # type: ignore[attr-defined]


def _choice(*allowed: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or value.strip().lower() not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
        return value.strip().lower()

    parse.description = f"one of {', '.join(allowed)}"  # type: ignore[attr-defined]
    return parse


def _names(value: Any) -> tuple[str, ...]:
    """A list of names or patterns: a TOML array, or a comma-separated string elsewhere."""
    if isinstance(value, str):
        value = [part for part in value.split(",")]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("a list of strings")
    return tuple(v.strip() for v in value if v.strip())


_names.description = "a list of strings (comma-separated outside pyproject.toml)"  # type: ignore[attr-defined]


def _subset(*allowed: str) -> Callable[[Any], Any]:
    def parse(value: Any) -> tuple[str, ...]:
        names = _names(value)
        if not names or not set(names) <= set(allowed):
            raise ValueError("subset")
        return names

    parse.description = f"a non-empty list drawn from {', '.join(allowed)}"  # type: ignore[attr-defined]
    return parse


def _fraction(value: Any) -> float:
    parsed = _number(float, 0, positive=True)(value)
    if parsed > 1:
        raise ValueError("a fraction")
    return parsed


_fraction.description = "a number above 0 and at most 1"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    in_marker: bool = False

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def ini(self) -> str:
        return INI_PREFIX + self.name

    @property
    def flag(self) -> str:
        return "--llm-" + self.name.replace("_", "-")


_seconds = _optional(_number(float, 0, positive=True))
_count = _optional(_number(int, 1, positive=True))

OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("deadline", _seconds, 120.0, "wall-clock seconds a test may spend, from its start", True),
        Option("call_timeout", _seconds, 30.0, "seconds one LLM attempt may take, body included", True),
        Option("retries", _number(int, 0, positive=False), 2, "failed LLM attempts a test may absorb in total", True),
        Option("calls", _count, None, "LLM requests a test may send (runaway agent loops)", True),
        Option("tokens", _count, None, "total tokens (from `usage`) a test may spend", True),
        Option("guard_all", _boolean, False, "guard every test, not only those using the fixtures or markers"),
        Option("timeout_grace", _number(float, 0, positive=False), 5.0, "pytest-timeout backstop: deadline + this"),
        Option("backoff_initial", _number(float, 0, positive=False), 0.5, "first retry backoff of guarded clients"),
        Option("backoff_max", _number(float, 0, positive=False), 8.0, "largest retry backoff of guarded clients"),
        Option("base_url", _text, None, "endpoint of the llm_client fixtures (default: OPENAI_BASE_URL)"),
        Option("model", _text, "gpt-4o-mini", "model name tests read from llm_guard.model"),
        Option(
            "record",
            _choice("none", "once", "new_episodes", "all", "off"),
            None,
            "cassette record mode: none, once, new_episodes, all, or off (live, no cassettes); "
            "default none when CI is set, else once",
        ),
        Option("cassette_dir", _text, "cassettes", "cassette folder, relative to each test file's folder"),
        Option(
            "match_on",
            _subset("method", "scheme", "host", "port", "path", "query", "body"),
            ("method", "path", "body"),
            "request parts a replay must match",
        ),
        Option("ignore_body_fields", _names, (), "JSON body fields left out of matching (e.g. user, metadata)"),
        Option("scrub_headers", _names, (), "more headers never written to cassettes"),
        Option("scrub_body_fields", _names, (), "JSON body fields redacted in cassettes"),
        Option("scrub_patterns", _names, (), "regular expressions redacted everywhere in cassettes"),
        Option("record_failures", _boolean, False, "also record 429/5xx responses (replays would replay the outage)"),
        # endpoints, breakers, failover (breaker.py, routing.py) and session budgets (session.py)
        Option(
            "on_open", _choice("fail", "skip"), "fail", "an llm_client test finding no endpoint available: fail or skip"
        ),
        Option("breaker_failures", _count, 3, "consecutive failed attempts that open an endpoint's breaker"),
        Option("breaker_failure_rate", _optional(_fraction), 0.5, "failure share over breaker_window that opens it"),
        Option("breaker_window", _number(int, 1, positive=True), 20, "recent attempts the failure rate is taken over"),
        Option(
            "breaker_min_calls", _number(int, 1, positive=True), 10, "attempts in the window before the rate counts"
        ),
        Option(
            "breaker_cooldown", _number(float, 0, positive=True), 30.0, "seconds a breaker stays open before a probe"
        ),
        Option("breaker_cooldown_max", _number(float, 0, positive=True), 300.0, "cap of the doubling cooldown"),
        Option(
            "retry_tokens", _number(float, 0, positive=True), 10.0, "retry token bucket of each endpoint (gRPC-style)"
        ),
        Option("retry_token_ratio", _number(float, 0, positive=False), 0.1, "tokens a success puts back in the bucket"),
        Option("max_endpoints", _number(int, 1, positive=True), 3, "endpoints one llm_client call may try (failovers)"),
        Option("session_deadline", _seconds, None, "seconds the whole session may spend on guarded tests"),
        Option("max_calls", _count, None, "LLM calls the whole session may send, over all xdist workers"),
        Option("max_tokens", _count, None, "tokens the whole session may spend, over all xdist workers"),
        Option("on_session_spent", _choice("skip", "fail"), "skip", "guarded tests once a session budget is spent"),
    )
}

MARKER_KEYS = tuple(name for name, option in OPTIONS.items() if option.in_marker)


@dataclass(frozen=True)
class Settings:
    """Resolved options for the session or for one test, with where each came from."""

    deadline: float | None = OPTIONS["deadline"].default
    call_timeout: float | None = OPTIONS["call_timeout"].default
    retries: int = OPTIONS["retries"].default
    calls: int | None = OPTIONS["calls"].default
    tokens: int | None = OPTIONS["tokens"].default
    guard_all: bool = OPTIONS["guard_all"].default
    timeout_grace: float = OPTIONS["timeout_grace"].default
    backoff_initial: float = OPTIONS["backoff_initial"].default
    backoff_max: float = OPTIONS["backoff_max"].default
    base_url: str | None = OPTIONS["base_url"].default
    model: str | None = OPTIONS["model"].default
    record: str | None = OPTIONS["record"].default
    cassette_dir: str | None = OPTIONS["cassette_dir"].default
    match_on: tuple[str, ...] = OPTIONS["match_on"].default
    ignore_body_fields: tuple[str, ...] = OPTIONS["ignore_body_fields"].default
    scrub_headers: tuple[str, ...] = OPTIONS["scrub_headers"].default
    scrub_body_fields: tuple[str, ...] = OPTIONS["scrub_body_fields"].default
    scrub_patterns: tuple[str, ...] = OPTIONS["scrub_patterns"].default
    record_failures: bool = OPTIONS["record_failures"].default
    on_open: str = OPTIONS["on_open"].default
    breaker_failures: int | None = OPTIONS["breaker_failures"].default
    breaker_failure_rate: float | None = OPTIONS["breaker_failure_rate"].default
    breaker_window: int = OPTIONS["breaker_window"].default
    breaker_min_calls: int = OPTIONS["breaker_min_calls"].default
    breaker_cooldown: float = OPTIONS["breaker_cooldown"].default
    breaker_cooldown_max: float = OPTIONS["breaker_cooldown_max"].default
    retry_tokens: float = OPTIONS["retry_tokens"].default
    retry_token_ratio: float = OPTIONS["retry_token_ratio"].default
    max_endpoints: int = OPTIONS["max_endpoints"].default
    session_deadline: float | None = OPTIONS["session_deadline"].default
    max_calls: int | None = OPTIONS["max_calls"].default
    max_tokens: int | None = OPTIONS["max_tokens"].default
    on_session_spent: str = OPTIONS["on_session_spent"].default
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def source_of(self, name: str) -> str:
        return self.sources.get(name, "default")

    def merged(self, values: Mapping[str, Any], source: str, *, allowed: Iterable[str] | None = None) -> Settings:
        """Apply raw values from one source on top of these settings, validating each."""
        allowed = tuple(allowed if allowed is not None else OPTIONS)
        parsed: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in allowed:
                raise LLMGuardConfigError(
                    f"pytest-llm-guard: unknown key {key!r} in {source}; allowed keys: {', '.join(allowed)}"
                )
            option = OPTIONS[key]
            try:
                parsed[key] = option.parse(raw)
            except ValueError:
                raise LLMGuardConfigError(
                    f"pytest-llm-guard: {key} = {raw!r} in {source} is not valid; "
                    f"{key} must be {option.parse.description}"  # type: ignore[attr-defined]
                ) from None
        if not parsed:
            return self
        sources = {**self.sources, **{key: source for key in parsed}}
        return dataclasses.replace(self, **parsed, sources=sources)


SECTIONS = ("endpoints",)
"""Keys of ``[tool.pytest_llm_guard]`` that are not options: read by their own module (``endpoints.py``)."""


def read_pyproject(path: Path) -> dict[str, Any]:
    """The ``[tool.pytest_llm_guard]`` table, or {} when the file or table is absent."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise LLMGuardConfigError(f"pytest-llm-guard: cannot parse {path}: {exc}") from None
    table = data.get("tool", {}).get("pytest_llm_guard", {})
    if not isinstance(table, dict):
        raise LLMGuardConfigError(f"pytest-llm-guard: [{PYPROJECT_TABLE}] in {path} must be a table")
    return table


def read_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``LLM_GUARD_*`` variables by option name; an unknown one is an error, not a silent typo."""
    values: dict[str, str] = {}
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name not in OPTIONS:
            known = ", ".join(o.env for o in OPTIONS.values())
            raise LLMGuardConfigError(f"pytest-llm-guard: unknown environment variable {var}; known: {known}")
        values[name] = value
    return values


def load_settings(
    *,
    pyproject: Path | None,
    ini: Mapping[str, Any],
    ini_source: str,
    cli: Mapping[str, Any],
    environ: Mapping[str, str] = os.environ,
) -> Settings:
    """Session settings from every layer below the markers."""
    settings = Settings()
    if pyproject is not None:
        options = {k: v for k, v in read_pyproject(pyproject).items() if k not in SECTIONS}
        settings = settings.merged(options, f"[{PYPROJECT_TABLE}] in {pyproject}")
    settings = settings.merged({k: v for k, v in ini.items() if v not in (None, "")}, ini_source)
    settings = settings.merged(read_environment(environ), "the environment (LLM_GUARD_*)")
    return settings.merged({k: v for k, v in cli.items() if v is not None}, "the command line")


def apply_markers(settings: Settings, markers: Iterable[Any], where: str) -> Settings:
    """Merge ``llm_budget`` markers given closest first (as ``iter_markers`` yields them)."""
    for marker in reversed(list(markers)):
        source = f"@pytest.mark.{marker.name} on {where}"
        if marker.args:
            raise LLMGuardConfigError(
                f"pytest-llm-guard: {source} takes keyword arguments only "
                f"({', '.join(MARKER_KEYS)}), got positional {marker.args!r}"
            )
        settings = settings.merged(marker.kwargs, source, allowed=MARKER_KEYS)
    return settings
