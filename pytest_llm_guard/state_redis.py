"""The shared store across machines: Redis (or Valkey), for CI shards and xdist over several hosts.

Why: a breaker, a Retry-After cooldown or a session budget kept per machine makes every
machine rediscover a dead endpoint at full price, and lets every shard spend the whole
budget. With ``state_url`` set, every process of a run (each xdist worker connects
itself, no SQLite) keeps them in one Redis server.

Keys: ``<state_namespace>:<run id>:<key>``. The run id is what sessions that should share
state have in common: ``LLM_GUARD_RUN_ID``, else the CI's run id (:data:`RUN_IDS`), else the
session's own (xdist workers get the controller's). Cassette judgments (did a file exist
when the session started, its text before a re-record) are about one checkout's files, so
their keys also carry the session's own id: two sessions of one run never share them.

Atomic updates: ``change`` is Python, which a Lua script on the server cannot run, so an
update is optimistic: ``GET``, run ``change``, then a compare-and-set script writes the
new record only if the key still holds what was read; when another process wrote first,
it reads again (``change`` is pure, so running it again is safe), a bounded number of
times with a short random backoff. Two round trips, and no connection held between them
(``WATCH``/``MULTI``/``EXEC`` would take three, on a connection kept for the update). An
update that changes nothing writes nothing (one round trip), so a healthy suite costs a
``GET`` per check.

TTLs: every write gives its key a day (:data:`TTL`). Nothing a run keeps matters longer:
a breaker's cooldown is capped by ``breaker_cooldown_max`` (minutes), a Retry-After by the
server, and a CI run's budgets by its day. A session that ran on its own id (no shared run
id) deletes its keys when it ends.

Never hang on it: each call waits at most ``timeout`` (1 s) to connect or answer, with no
retries by redis-py (a test's deadline cuts a call in the main thread, as it cuts any other
wait). Unreachable at the start: a usage error naming the URL (its password
masked: :func:`masked`), or, with ``state_fallback = "local"``, a warning and this
machine's store. Lost later: one warning, and this process keeps its state in the local
store from then on (:class:`FallbackStore`); no test fails for it. A wrong password is
always an error: it is a mistake to correct, not an outage to ride out. An xdist worker
follows its controller: on Redis if the controller is, and warns (never fails) if it cannot
reach it itself.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from .clock import REAL
from .config import Settings
from .errors import LLMGuardConfigError
from .state import Record, StateStore

T = TypeVar("T")
log = logging.getLogger("pytest_llm_guard")

TTL = 24 * 3600
"""Seconds a key lives after its last write."""
TIMEOUT = 1.0
"""Seconds any Redis call may take to connect, and to answer."""
TRIES = 50
"""Optimistic attempts of one update before giving up (another process wrote first each time)."""
RUN_IDS = (("LLM_GUARD_RUN_ID",), ("GITHUB_RUN_ID", "GITHUB_RUN_ATTEMPT"), ("CI_PIPELINE_ID",),
           ("BUILDKITE_BUILD_ID",), ("CIRCLE_WORKFLOW_ID",))  # fmt: skip
"""Environment variables naming a run that several sessions share, first found wins (with its attempt)."""
SESSION_SCOPED = ("cassette",)
"""Key prefixes of one session's own records, never shared by a run: its checkout's cassettes, and its
own start they are judged by (``session.CASSETTE_CLOCK``)."""
SESSION_ID_INPUT = "llm_guard_session_id"
"""xdist ``workerinput`` key: the controller's session id, shared by its workers."""

_CHECK_AND_SET = """
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
"""Write ARGV[2] only if the key still holds ARGV[1] ('' when absent: a record is never empty JSON)."""


class StoreContention(Exception):
    """Other processes won every optimistic attempt of an update: not an outage, so not a fallback."""


def masked(url: str) -> str:
    """The URL as messages show it: its password (if any) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: shown as "?", redis-py says what is wrong with it
        port = ":?"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def run_id(environ: Mapping[str, str], own: str) -> tuple[str, str | None]:
    """The run id and the variable it came from (None: the session's own id, nothing shared)."""
    for names in RUN_IDS:
        value = environ.get(names[0], "").strip()
        if value:
            attempt = "".join(f"-{environ[n].strip()}" for n in names[1:] if environ.get(n, "").strip())
            return value + attempt, names[0]
    return own, None


class RedisStore:
    """Records as JSON strings in Redis, updated by compare-and-set (see the module's docstring)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        session_prefix: str,
        password: str | None = None,
        timeout: float = TIMEOUT,
        ttl: int = TTL,
    ) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = url
        self.prefix = prefix
        self.session_prefix = session_prefix
        self.ttl = ttl
        self.secrets = tuple(s for s in (urlsplit(url).password, password) if s)
        """Passwords no message may show (:func:`said`)."""
        self._client = redis.Redis.from_url(
            url,
            password=password,  # the URL's own password wins
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # one wait of ``timeout`` at most, never several
            decode_responses=True,
            protocol=2,  # RESP2: every Redis (and Valkey) server speaks it; redis-py 8 asks for RESP3 (Redis 6+)
        )
        self._check_and_set = self._client.register_script(_CHECK_AND_SET)

    def key(self, key: str) -> str:
        return (self.session_prefix if key.startswith(SESSION_SCOPED) else self.prefix) + key

    def ping(self) -> None:
        self._client.ping()

    def get(self, key: str) -> Record:
        return json.loads(self._client.get(self.key(key)) or "{}")

    def update(self, key: str, change: Callable[[Record], T]) -> T:
        full = self.key(key)
        for attempt in range(TRIES):
            held = self._client.get(full) or ""
            record = json.loads(held or "{}")
            result = change(record)
            if record == json.loads(held or "{}"):
                return result  # nothing changed: nothing to write
            if self._check_and_set(keys=[full], args=[held, json.dumps(record), self.ttl]):
                return result
            REAL.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise StoreContention(
            f"pytest-llm-guard: {TRIES} updates of {full} in {masked(self.url)} in a row lost to other processes' "
            "writes; more processes than this store was built for share one key: tell the plugin's maintainers how many"
        )

    def forget(self) -> None:
        """Delete every key of this run (a session on its own id, at its end)."""
        pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in self.prefix) + "*"
        keys = list(self._client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            self._client.unlink(*keys[start : start + 1000])

    def close(self) -> None:
        self._client.close()


class FallbackStore:
    """The Redis store until it fails, then the local store for the rest of the session: one warning,
    and the call that met the failure is answered by the local store, so no test fails for it."""

    def __init__(
        self,
        remote: RedisStore,
        local: Callable[[], StateStore],
        warn: Callable[[str], None],
        *,
        forget: bool = False,
    ) -> None:
        import redis

        self._remote: RedisStore | None = remote
        self._opened = remote  # closed at the end, even after a loss: other threads may have waited on it
        self._url = remote.url
        self._secrets = remote.secrets
        self._make_local = local
        self._local: StateStore | None = None
        self._warn = warn
        self._forget = forget
        self._lost = redis.RedisError
        self._lock = threading.Lock()

    @property
    def remote(self) -> bool:
        """Still on the shared store."""
        return self._remote is not None

    def _fallen(self, error: Exception) -> StateStore:
        with self._lock:
            if self._remote is not None:
                self._remote = None
                self._local = self._make_local()
                _warn_quietly(
                    self._warn,
                    f"pytest-llm-guard: lost the shared state store {masked(self._url)} "
                    f"({said(error, self._secrets)}); this process keeps breakers, cooldowns and session budgets on "
                    "this machine from now on, unseen by the run's other machines. Check that the Redis server "
                    "is up and reachable from here.",
                )
            assert self._local is not None
            return self._local

    def get(self, key: str) -> Record:
        remote = self._remote
        if remote is not None:
            try:
                return remote.get(key)
            except self._lost as error:
                return self._fallen(error).get(key)
        assert self._local is not None
        return self._local.get(key)

    def update(self, key: str, change: Callable[[Record], T]) -> T:
        remote = self._remote
        if remote is not None:
            try:
                return remote.update(key, change)
            except self._lost as error:
                return self._fallen(error).update(key, change)
        assert self._local is not None
        return self._local.update(key, change)

    def close(self) -> None:
        if self._remote is not None and self._forget:
            try:
                self._remote.forget()
            except self._lost:
                pass  # its keys expire by themselves (TTL)
        _close_quietly(self._opened)
        if self._local is not None:
            self._local.close()


def open_store(
    settings: Settings,
    local: Callable[[], StateStore],
    *,
    root_name: str,
    workerinput: Mapping[str, Any] | None,
    environ: Mapping[str, str],
    warn: Callable[[str], None],
) -> tuple[StateStore, dict[str, str]]:
    """The shared store for ``settings.state_url`` (or the local one, see the module's docstring), and what
    the xdist controller hands its workers."""
    url = settings.state_url
    assert url is not None
    where = f"state_url, set by {settings.source_of('state_url')}"
    not_redis = LLMGuardConfigError(
        f"pytest-llm-guard: {where}: {masked(url)} is not a Redis URL; write redis://host:6379/0 (or rediss:// for TLS)"
    )
    if urlsplit(url).scheme not in ("redis", "rediss"):
        raise not_redis
    try:
        import redis
    except ImportError:
        raise LLMGuardConfigError(
            f"pytest-llm-guard: {where} needs redis-py, which is not installed; pip install 'pytest-llm-guard[redis]'"
        ) from None
    if workerinput is not None and SESSION_ID_INPUT not in workerinput:
        return local(), {}  # the controller keeps its state locally (state_fallback = local): so do its workers
    own = workerinput[SESSION_ID_INPUT] if workerinput is not None else uuid.uuid4().hex[:12]
    run, shared_by = run_id(environ, own)
    namespace = settings.state_namespace or root_name or "pytest-llm-guard"
    password = environ.get("REDIS_PASSWORD") or None
    prefix = f"{namespace}:{run}:"
    try:
        remote = RedisStore(url, prefix=prefix, session_prefix=f"{prefix}{own}:", password=password)
    except ValueError:  # a port or database that is not a number
        raise not_redis from None
    try:
        remote.ping()
    except redis.AuthenticationError as error:
        _close_quietly(remote)
        given = "the URL's password" if urlsplit(url).password else "REDIS_PASSWORD" if password else None
        refused = f"refused {given}" if given else "needs a password, and neither the URL nor REDIS_PASSWORD gives one"
        raise LLMGuardConfigError(
            f"pytest-llm-guard: the Redis server {masked(url)} ({where}) {refused} "
            f"({said(error, remote.secrets)}). Put the right password in the URL or in REDIS_PASSWORD."
        ) from None
    except redis.RedisError as error:
        _close_quietly(remote)
        why = said(error, remote.secrets)
        if workerinput is None and settings.state_fallback == "fail":
            raise LLMGuardConfigError(
                f"pytest-llm-guard: cannot reach the shared state store {masked(url)} ({where}): {why}. "
                'Start the Redis server or correct the URL; or set state_fallback = "local" to keep state on '
                "this machine when it is unreachable."
            ) from None
        message = (
            f"pytest-llm-guard: cannot reach the shared state store {masked(url)} ({where}): {why}; this "
            "process keeps breakers, cooldowns and session budgets on this machine"
        )
        if workerinput is None:
            warn(message + " (state_fallback = local).")  # at the start: -W error makes it a usage error
        else:
            _warn_quietly(warn, message + ", unseen by the run's other machines.")  # a worker: never ends it
        return local(), {}
    store = FallbackStore(remote, local, warn, forget=shared_by is None and workerinput is None)
    return store, {SESSION_ID_INPUT: own}


def said(error: BaseException, secrets: tuple[str, ...]) -> str:
    """What redis-py said, without any password in it (as written in the URL, or decoded)."""
    text = str(error).rstrip(".") or type(error).__name__
    for secret in secrets:
        text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


def _warn_quietly(warn: Callable[[str], None], message: str) -> None:
    """Warn; where warnings are errors (``-W error``), log instead: losing the store fails no test."""
    try:
        warn(message)
    except Exception:
        log.warning("%s", message)


def _close_quietly(remote: RedisStore) -> None:
    try:
        remote.close()
    except Exception:
        log.debug("closing the Redis client failed", exc_info=True)
