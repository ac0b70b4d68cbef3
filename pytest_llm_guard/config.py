"""Layered configuration: one table of options, one resolver, one error style.

Precedence, lowest to highest: built-in defaults, ``[tool.pytest_llm_guard]`` in
pyproject.toml, pytest ini keys ``llm_<name>``, environment ``LLM_GUARD_<NAME>``,
command line ``--llm-<name>``, then ``llm_budget`` markers (module ``pytestmark``,
then class, then function). Every value remembers where it came from, so an
error can say which key, where it was set and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from . import default_dialect
from .errors import LLMGuardConfigError
from .values import (
    age,
    boolean,
    choice,
    count,
    dotted_paths,
    fraction,
    names,
    number,
    optional,
    patterns,
    seconds,
    subset,
    text,
)

ENV_PREFIX = "LLM_GUARD_"
NOT_OPTIONS = frozenset({"LLM_GUARD_RUN_ID"})
"""``LLM_GUARD_*`` variables that are no option: the run id sessions share a store under (``state_redis.py``)."""
INI_PREFIX = "llm_"
PYPROJECT_TABLE = "tool.pytest_llm_guard"


class Option(NamedTuple):
    """One option as its flag, ini key and environment variable show it (a tuple: cheaper to define
    than a dataclass, and the plugin's start-up defines it)."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    in_marker: bool = False
    shown: str | None = None

    @property
    def boolean(self) -> bool:
        return self.parse is boolean

    @property
    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default is None:
            return "off"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        if isinstance(self.default, tuple):
            return ", ".join(self.default) or "none"
        return f"{self.default:g}" if isinstance(self.default, float) else str(self.default)

    @property
    def described(self) -> str:
        """The help text: what it does, what it accepts, its default, once each."""
        accepts = "" if self.boolean else f"; {self.parse.description}"  # type: ignore[attr-defined]
        return f"{self.help}{accepts} (default: {self.shown_default})"

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def ini(self) -> str:
        return INI_PREFIX + self.name

    @property
    def flag(self) -> str:
        return "--llm-" + self.name.replace("_", "-")


def _option(
    default: Any, parse: Callable[[Any], Any], help: str, *, marker: bool = False, shown: str | None = None
) -> Any:
    """A settings field that is also an option: its parser, help and marker use live beside its default.

    ``shown``: the default as ``--help`` words it, when the value alone would mislead (None).
    """
    return field(default=default, metadata={"parse": parse, "help": help, "in_marker": marker, "shown": shown})


@dataclass(frozen=True)
class Settings:
    """Resolved options for the session or for one test, with where each came from.

    Each field below is one option: the flag, the ini key and the environment variable
    are derived from its name (:data:`OPTIONS`), so an option is declared here only.
    """

    deadline: float | None = _option(120.0, seconds, "wall-clock seconds a test may spend, from its start", marker=True)
    call_timeout: float | None = _option(30.0, seconds, "seconds one LLM attempt may take, body included", marker=True)
    first_token_timeout: float | None = _option(
        None,
        seconds,
        "seconds from sending a request to its answer's first content (a stream's first token, else the headers)",
        marker=True,
    )
    idle_timeout: float | None = _option(
        None, seconds, "the longest gap, in seconds, between two chunks of an answer", marker=True
    )
    retries: int | None = _option(
        2, optional(number(int, 0, positive=False)), "failed LLM attempts a test may absorb in total", marker=True
    )
    calls: int | None = _option(None, count, "LLM requests a test may send (runaway agent loops)", marker=True)
    tokens: int | None = _option(None, count, "total tokens (from `usage`) a test may spend", marker=True)
    cost: float | None = _option(
        None, seconds, "money a test may spend, from its tokens and the configured prices", marker=True
    )
    guard_all: bool = _option(False, boolean, "guard every test, not only those using the fixtures or markers")
    unguarded: str = _option(
        "warn",
        choice("allow", "warn", "fail"),
        "a test that is not guarded sends an LLM request to the network: allow it, warn (and list the test), "
        "or fail (refuse it)",
    )
    timeout_grace: float = _option(
        5.0,
        number(float, 0, positive=False),
        "seconds after the deadline at which the backstop ends a test that swallowed it",
    )
    backoff_initial: float = _option(0.5, number(float, 0, positive=False), "first retry backoff of guarded clients")
    backoff_max: float = _option(8.0, number(float, 0, positive=False), "largest retry backoff of guarded clients")
    base_url: str | None = _option(
        None, text, "endpoint of the llm_client fixtures", shown=default_dialect.BASE_URL_VARIABLE
    )
    model: str | None = _option(default_dialect.MODEL, text, "model name tests read from llm_guard.model")
    record: str | None = _option(
        None,
        choice("none", "once", "new_episodes", "all", "off"),
        "cassette record mode (off: live calls, no cassettes)",
        shown="none when CI is set, else once",
    )
    cassette_dir: str | None = _option("cassettes", text, "cassette folder, relative to each test file's folder")
    replay_speed: float = _option(
        0.0,
        number(float, 0, positive=False),
        "pace of cassette replays: 0 at once, 1 as recorded, N times faster (llm_cassette(speed=...))",
    )
    match_on: tuple[str, ...] = _option(
        ("method", "path", "body"),
        subset("method", "scheme", "host", "port", "path", "query", "body"),
        "request parts a replay must match",
    )
    ignore_body_fields: tuple[str, ...] = _option(
        (), names, "JSON body fields left out of matching (e.g. user, metadata)"
    )
    scrub_headers: tuple[str, ...] = _option((), names, "more headers never written to cassettes")
    scrub_body_fields: tuple[str, ...] = _option((), names, "JSON body fields redacted in cassettes")
    scrub_patterns: tuple[str, ...] = _option((), patterns, "regular expressions redacted everywhere in cassettes")
    record_failures: bool = _option(False, boolean, "also record 429/5xx responses (replays would replay the outage)")
    # keeping cassettes true (cassettes/upkeep.py); also keys of the llm_cassette marker
    on_unplayed: str = _option(
        "warn",
        choice("ignore", "warn", "fail"),
        "a passing test that leaves recordings of its cassette unplayed (prompt drift): ignore, warn or fail; "
        "a shared cassette is judged at the session's end, over every test and worker",
    )
    prune_unplayed: bool = _option(
        False, boolean, "with --llm-record=new_episodes, drop the recordings the run did not play"
    )
    cassette_max_age: float | None = _option(None, age, "age after which a recorded answer has expired")
    on_expiry: str = _option(
        "warn",
        choice("warn", "fail", "rerecord"),
        "an expired cassette: warn, fail its test, or record it again (only where recording is allowed, else warn)",
    )
    match_ignore: tuple[str, ...] = _option(
        (), dotted_paths, "JSON body paths left out of matching (metadata, stream_options, messages[*].name)"
    )
    # endpoints, breakers, failover (breaker.py, routing.py) and session budgets (session.py)
    on_open: str | None = _option(
        None,
        choice("fail", "skip", "fallback"),
        "a call finding no endpoint available: fail the test, skip it, or raise APIConnectionError to the code's "
        "own fallback",
        shown="fail for llm_client, fallback for other clients",
    )
    breaker_failures: int | None = _option(3, count, "consecutive failed attempts that open an endpoint's breaker")
    breaker_failure_rate: float | None = _option(
        0.5, optional(fraction), "failure share over breaker_window that opens it"
    )
    breaker_window: int = _option(20, number(int, 1, positive=True), "recent attempts the failure rate is taken over")
    breaker_min_calls: int = _option(10, number(int, 1, positive=True), "attempts in the window before the rate counts")
    breaker_cooldown: float = _option(
        30.0, number(float, 0, positive=True), "seconds a breaker stays open before a probe"
    )
    breaker_cooldown_max: float = _option(300.0, number(float, 0, positive=True), "cap of the doubling cooldown")
    retry_tokens: float = _option(
        10.0, number(float, 0, positive=True), "retry token bucket of each endpoint (gRPC-style)"
    )
    retry_token_ratio: float = _option(
        0.1, number(float, 0, positive=False), "tokens a success puts back in the bucket"
    )
    max_endpoints: int = _option(3, number(int, 1, positive=True), "endpoints one llm_client call may try (failovers)")
    session_deadline: float | None = _option(
        None, seconds, "seconds from the session's start after which no guarded test starts"
    )
    max_calls: int | None = _option(None, count, "LLM calls the whole session may send, over all xdist workers")
    max_tokens: int | None = _option(None, count, "tokens the whole session may spend, over all xdist workers")
    max_cost: float | None = _option(None, seconds, "money the whole session may spend, over all xdist workers")
    on_session_spent: str = _option("skip", choice("skip", "fail"), "guarded tests once a session budget is spent")
    # the shared store across machines (state_redis.py)
    state_url: str | None = _option(
        None,
        text,
        "a Redis (or Valkey) server holding breakers, cooldowns and session budgets for every machine of a run: "
        "redis://host:6379/0 or rediss://...; the password in the URL or in REDIS_PASSWORD",
    )
    state_namespace: str | None = _option(
        None, text, "prefix of every key in the shared store", shown="the root folder's name"
    )
    state_fallback: str = _option(
        "fail",
        choice("fail", "local"),
        "the shared store is unreachable at the start: fail (a usage error), or warn and keep state on this machine",
    )
    # reports (report.py, report_json.py, report_html.py)
    durations: int = _option(
        5, number(int, 0, positive=False), "guarded tests listed by where their time went (0: all)"
    )
    report: str | None = _option(None, text, "write the JSON report (every attempt, per test and endpoint) here")
    report_html: str | None = _option(None, text, "write the HTML report (tests, timelines, endpoints) here")
    currency: str = _option("USD", text, "what the configured prices are in, for reports")
    # timeouts learned from history (learned.py)
    learn_timeouts: str | None = _option(
        None, text, "merge this run's latencies per endpoint and model into this file (JSON, relative to the rootdir)"
    )
    learned_timeouts: str | None = _option(
        None, text, "read per-model limits from this file: call_timeout and first_token_timeout of p99 x learned_factor"
    )
    learned_factor: float = _option(3.0, number(float, 0, positive=True), "learned limits are p99 times this")
    learned_floor: float = _option(1.0, number(float, 0, positive=True), "seconds no learned limit goes below")
    # shared rate limits (ratelimit.py)
    rpm: float | None = _option(
        None,
        optional(number(float, 0, positive=True)),
        "requests per minute each endpoint and model may receive from the whole session, every xdist worker "
        "and machine sharing the state store (an endpoint's own rpm wins)",
    )
    tpm: float | None = _option(
        None,
        optional(number(float, 0, positive=True)),
        "tokens per minute each endpoint and model may receive from the whole session (estimated from the "
        "request, corrected by the answer's usage; an endpoint's own tpm wins)",
    )
    rpm_burst: float = _option(
        1.0,
        number(float, 1, positive=True),
        "requests that may go at once under rpm; the rest are spaced 60/rpm seconds apart",
    )
    # per test only, from the llm_breaker and llm_cassette markers
    endpoints: tuple[str, ...] | None = None
    """Endpoints the test may use (``llm_breaker(endpoints=...)``); None: all."""
    cassette: bool = True
    """False: ``llm_cassette(False)``, live calls without a cassette."""
    cassette_name: str | None = None
    cassette_path: str | Path | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def source_of(self, name: str) -> str:
        return self.sources.get(name, "default")

    def merged(self, values: Mapping[str, Any], source: str, *, allowed: Iterable[str] | None = None) -> Settings:
        """Apply raw values from one source on top of these settings, validating each."""
        allowed = tuple(allowed if allowed is not None else OPTIONS)
        parsed: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in allowed:
                raise LLMGuardConfigError(f"pytest-llm-guard: unknown key {key!r} in {source}; {suggest(key, allowed)}")
            option = OPTIONS[key]
            try:
                parsed[key] = option.parse(raw)
            except ValueError as exc:
                description = option.parse.description  # type: ignore[attr-defined]
                said = str(exc)
                detail = f" ({said})" if " " in said and said not in description else ""  # no phrase twice
                raise LLMGuardConfigError(
                    f"pytest-llm-guard: {key} = {raw!r} in {source} is not valid; {key} must be {description}{detail}"
                ) from None
        if not parsed:
            return self
        sources = {**self.sources, **{key: source for key in parsed}}
        return dataclasses.replace(self, **parsed, sources=sources)

    def checked(self) -> Settings:
        """Options that must agree with each other, checked once every layer is applied."""
        for low, high in (
            ("breaker_min_calls", "breaker_window"),
            ("breaker_cooldown", "breaker_cooldown_max"),
            ("backoff_initial", "backoff_max"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise LLMGuardConfigError(
                    f"pytest-llm-guard: {low} = {getattr(self, low):g} (set by {self.source_of(low)}) cannot exceed "
                    f"{high} = {getattr(self, high):g} (set by {self.source_of(high)}); "
                    "lower the first or raise the second"
                )
        return self


OPTIONS: dict[str, Option] = {
    f.name: Option(
        f.name, f.metadata["parse"], f.default, f.metadata["help"], f.metadata["in_marker"], f.metadata["shown"]
    )
    for f in dataclasses.fields(Settings)
    if "parse" in f.metadata
}

MARKER_KEYS = tuple(name for name, option in OPTIONS.items() if option.in_marker)


def suggest(key: str, allowed: Sequence[str]) -> str:
    """What to say after an unknown key: the key meant, if one is close; a short list; else where to look."""
    import difflib

    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean {close[0]!r}?" if close else ""
    if len(allowed) <= 10:  # a marker's keys: short enough to list
        return f"{hint} allowed keys: {', '.join(allowed)}".lstrip()
    return hint or (
        "the keys are the options of pytest --help's pytest-llm-guard section (--llm-call-timeout: call_timeout)"
    )


class ConfigWarning(NamedTuple):
    """A warning about the configuration, and where the setting that caused it is (a file and line)."""

    message: str
    where: str  # a file, or a description such as "LLM_GUARD_X (environment)"
    line: int = 1


SECTIONS = ("endpoints", "prices")
"""Keys of ``[tool.pytest_llm_guard]`` that are tables, not options: read by ``endpoints.py`` and ``prices.py``."""


def read_pyproject(path: Path) -> dict[str, Any]:
    """The ``[tool.pytest_llm_guard]`` table, or {} when the file or table is absent.

    The TOML parser loads here, on a pyproject's first read, not with the plugin: a suite
    configured elsewhere never pays for it."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10 only
        import tomli as tomllib
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


def read_environment(environ: Mapping[str, str]) -> tuple[dict[str, str], list[ConfigWarning]]:
    """``LLM_GUARD_*`` variables by option name, and warnings for the unknown ones (a typo says what was meant)."""
    import difflib

    values: dict[str, str] = {}
    warnings: list[ConfigWarning] = []
    known = [o.env for o in OPTIONS.values()]
    for var, value in environ.items():
        if not var.startswith(ENV_PREFIX) or var in NOT_OPTIONS:
            continue
        name = var[len(ENV_PREFIX) :].lower()
        if name not in OPTIONS:
            close = difflib.get_close_matches(var, known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the variables are {', '.join(known)}"
            message = f"pytest-llm-guard: unknown environment variable {var} is ignored; {hint}"
            warnings.append(ConfigWarning(message, f"{var} (environment)"))
            continue
        if not value.strip():
            raise LLMGuardConfigError(
                f"pytest-llm-guard: {var} is set but empty in the environment; unset it, or give a value "
                "(none or off switches a limit off)"
            )
        values[name] = value
    return values, warnings


def unknown_ini_keys(keys: Iterable[str], inipath: Path | None) -> list[ConfigWarning]:
    """Warnings for ``llm_*`` ini keys that name no option (pytest only says "Unknown config option"):
    the key meant, at the key's line (or the command line, for ``-o``)."""
    known = [option.ini for option in OPTIONS.values()]
    lines = inipath.read_text().splitlines() if inipath is not None else []
    warnings = []
    for key in sorted(k for k in keys if k.startswith(INI_PREFIX) and k not in known):
        at = next((n for n, text in enumerate(lines, 1) if text.lstrip().startswith(key)), None)
        message = f"pytest-llm-guard: unknown ini key {key} is ignored; {suggest(key, known)}"
        warnings.append(ConfigWarning(message, str(inipath), at) if at else ConfigWarning(message, f"-o {key}"))
    return warnings


def load_settings(
    *,
    pyproject: Path | None,
    ini: Mapping[str, Any],
    ini_source: str,
    cli: Mapping[str, Any],
    overridden: Mapping[str, str] = {},
    environ: Mapping[str, str] = os.environ,
    table: Mapping[str, Any] | None = None,
) -> tuple[Settings, list[ConfigWarning]]:
    """Session settings from every layer below the markers, and warnings to show.

    ``overridden``: ini keys given on the command line with ``-o``, by option name: they
    are attributed to the command line, not to the ini file. ``table``: the pyproject's
    ``[tool.pytest_llm_guard]`` when the caller has read it already (read here otherwise).
    """
    settings = Settings()
    if pyproject is not None:
        table = read_pyproject(pyproject) if table is None else table
        options = {k: v for k, v in table.items() if k not in SECTIONS}
        settings = settings.merged(options, f"[{PYPROJECT_TABLE}] in {pyproject}")
    from_ini = {k: v for k, v in ini.items() if v not in (None, "") and k not in overridden}
    settings = settings.merged(from_ini, ini_source)
    for name, raw in overridden.items():
        settings = settings.merged({name: raw}, f"the command line (-o {INI_PREFIX}{name}={raw})")
    from_environment, warnings = read_environment(environ)
    settings = settings.merged(from_environment, "the environment (LLM_GUARD_*)")
    settings = settings.merged({k: v for k, v in cli.items() if v is not None}, "the command line")
    return settings.checked(), warnings


BUDGET_MARKER = "llm_budget"
BREAKER_MARKER = "llm_breaker"
CASSETTE_MARKER = "llm_cassette"
MARKERS = {
    BUDGET_MARKER: f"{BUDGET_MARKER}({', '.join(f'{k}=...' for k in MARKER_KEYS)}): pytest-llm-guard per-test limits: "
    "deadline seconds from the test's start, retries (failed LLM attempts absorbed in total), "
    "call_timeout seconds per attempt, first_token_timeout and idle_timeout seconds of a stream, calls (LLM "
    "requests) and tokens (from usage).",
    BREAKER_MARKER: f"{BREAKER_MARKER}(endpoints=[names], on_open='fail'|'skip'|'fallback'): pytest-llm-guard: the "
    "endpoints this test may use, and whether it fails, skips or falls back when none of them is available.",
    CASSETTE_MARKER: f"{CASSETTE_MARKER}(name=None, *, path=None, speed=None, on_unplayed=..., cassette_max_age=..., "
    "on_expiry=..., match_ignore=[...]): pytest-llm-guard cassette of this test: a shared cassette name in the same "
    f"folder, an explicit path, or {CASSETTE_MARKER}(False) for live calls without one; the pace of its replay "
    "(speed: 0 at once, 1 as recorded, N times faster); and how it is kept true.",
}
