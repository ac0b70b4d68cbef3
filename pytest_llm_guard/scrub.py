"""Secrets never reach a cassette, a message, a report or a log.

One scrubber per guarded test. It redacts what is known *when the text is written*:
the values of ``*_API_KEY`` variables at that moment and at every earlier moment of
the test (a fixture may set a key and unset it before the cassette is saved), every
credential a request of the test carried (bearer tokens, ``api-key``, ``x-api-key``,
key query parameters), configured headers, body fields and patterns, and anything
shaped like a credential (``SHAPES``). Applied to every request before it is matched
or written, to every response before it is written, again to the whole cassette when
it is saved, and to failure messages, reports and the log records of the HTTP and
cassette libraries.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .dialects import KEY_HEADERS
from .stored import as_text

if TYPE_CHECKING:
    from vcr.request import Request as VcrRequest

REDACTED = "REDACTED"

SECRET_HEADERS = KEY_HEADERS | {"proxy-authorization", "cookie", "set-cookie"}
"""Every dialect's credential headers, and the web's."""
SECRET_QUERY = frozenset({"api-key", "api_key", "apikey", "key", "access_token", "token", "code"})
_SECRET_HEADER_WORDS = (
    r"(?i)(api[-_]?key|authorization|secret|cookie|password|session[-_]?id|access[-_]?token|auth[-_]?token)"
)

SHAPES: tuple[tuple[str, str], ...] = (
    ("Anthropic API key", r"\bsk-ant-[A-Za-z0-9_\-]{16,}"),
    ("OpenAI API key", r"\b(?:sk|sess|rk)-(?!ant-)[A-Za-z0-9_\-]{16,}"),
    ("AWS access key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    ("Google API key", r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])"),
    ("JSON Web Token", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),
    (
        "Authorization credential",
        r"""(?ix)\b(?:proxy-)?authorization['"]?\s*[:=]\s*\[?\s*['"]?(?:bearer|basic|token)\s+
        (?!REDACTED\b)([^\s'",}\]{$<%][^\s'",}\]]{7,})  # not a template: {token}, ${KEY}, <key>""",
    ),
    ("bearer token", r"(?i)\bbearer\s+([A-Za-z0-9._~+/\-]{16,}=*)"),
    ("Azure api-key", r"(?i)api-key['\"]?(?:\s*[:=]\s*|:\s*\n\s*-\s*)['\"]?([0-9a-f]{32})\b"),
)
"""Credential shapes, for redaction and for ``--llm-audit``: (kind, pattern); a group, if any, is the secret.
Every pattern here is compiled on its first use (:func:`_compiled`): a test that scrubs no text never pays for it.
Kinds in :data:`_RANDOM_ONLY` count only where the value looks random (:func:`looks_random`)."""
_RANDOM_ONLY = frozenset({"OpenAI API key", "bearer token"})
"""Shapes that ordinary text can take: ``sk-learn-compatible``, "ring bearer responsibilities"."""
_CREDENTIAL_HEADERS = frozenset({b"authorization", b"proxy-authorization", b"api-key", b"x-api-key"})
_MIN_SECRET = 8
"""Shorter values are not treated as secrets (they would redact ordinary words)."""
_HEADER_VALUES = r"""(?ix)
    (?<![\w-])(['"]?(?:set-cookie|cookie|authorization|proxy-authorization|api-key|x-api-key)['"]?\s*[:=]\s*)
    (\[[^\]]*\]|'[^']*'|"[^"]*"|[^,}\s]+)
    """
"""Header values inside log text (``'set-cookie': ['...']``, ``authorization: Bearer ...``); a name only as a
whole word, so ``test_cookie: attempt ...`` (a test's name in our own log line) is left alone."""
_HEADER_PAIRS = r"""(?x)
    (\(\s*b?(['"])([A-Za-z0-9_\-]+)\2\s*,\s*)
    (b?)('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    (?=\s*\))
    """
"""Header pairs inside log text, str or bytes: httpcore's ``(b'Set-Cookie', b'...')``, httpx's ``('cookie', '...')``."""
_QUERY_VALUES = r"(?i)([?&](?:api[-_]?key|key|access_token|token|code)=)[^&\s'\"]+"


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str]:
    """One of this module's patterns, compiled on its first use and kept: their compilation is most of
    this module's import time, and a test whose calls all succeed with records off scrubs no text."""
    return re.compile(pattern)


def find_shapes(text: str) -> Iterator[tuple[str, int, int]]:
    """(kind, start, end) of every credential-shaped string in ``text``, each string once."""
    seen = set()
    for kind, pattern in SHAPES:
        for match in _compiled(pattern).finditer(text):
            start, end = match.span(match.lastindex or 0)
            if (start, end) not in seen and (kind not in _RANDOM_ONLY or looks_random(text[start:end])):
                seen.add((start, end))
                yield kind, start, end


def looks_random(token: str) -> bool:
    """Whether some part of ``token`` (between ``-_.~+/``) looks generated rather than written: letters
    mixed with digits, or upper and lower case mixed throughout. English words, hyphenated phrases and
    camelCase names do not; keys, hex digests, base64 and JWTs do."""
    for part in re.split(r"[-_.~+/=]+", token):
        if len(part) < 8:
            continue
        letters = sum(c.isalpha() for c in part)
        digits = sum(c.isdigit() for c in part)
        upper = sum(c.isupper() for c in part)
        if letters and digits >= 2:
            return True
        if len(part) >= 16 and min(upper, letters - upper) >= 0.3 * letters:
            return True
    return False


_TRIGGERS = r"(?i)sk-|sess-|rk-|AKIA|ASIA|AIza|eyJ|bearer|authorization|api-key"
"""What every shape contains: text without any is passed over in one scan (most header values)."""


def redact_shapes(text: str) -> str:
    if not _compiled(_TRIGGERS).search(text):
        return text
    spans: list[list[int]] = []
    for start, end in sorted((start, end) for _, start, end in find_shapes(text)):
        if spans and start <= spans[-1][1]:  # overlapping shapes (a JWT after "Bearer") redact once
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    for start, end in reversed(spans):
        text = text[:start] + REDACTED + text[end:]
    return text


class Scrubber:
    """Redacts what identifies an account; configured with extra headers, body fields and regexes."""

    def __init__(
        self,
        *,
        headers: Iterable[str] = (),
        body_fields: Iterable[str] = (),
        patterns: Iterable[str] = (),
        key_variables: Iterable[str] = (),
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._key_variables = frozenset(key_variables)
        """Variables that hold keys whatever their names (the SDKs' own, every endpoint's api_key_env)."""
        self.headers = SECRET_HEADERS | {h.lower() for h in headers}
        self.body_fields = frozenset(body_fields)
        self._patterns = [re.compile(p) for p in patterns]
        self._environ = environ
        self._secrets: set[str] = set()
        self._raw_seen: set[bytes] = set()
        self._exact: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        self._refreshed: list[str] = []
        self.refresh()

    # -- what is known --------------------------------------------------------------

    def refresh(self) -> None:
        """Take in the ``*_API_KEY`` and key variables' values set now (a fixture may have set one since the
        test began). Runs on every request: names are read first, and values only of those that hold keys."""
        environ = self._environ
        values = [environ[k] for k in environ if k in self._key_variables or k.upper().endswith("API_KEY")]
        if values != self._refreshed:
            self._refreshed = values
            self._add(values)

    def learn(self, headers: Any, url: str) -> None:
        """Take in the credentials a request carries, wherever they may show up later.

        Runs on every attempt: one pass over the headers' lowered names, and nothing more for a
        credential already known (a set look-up).
        """
        found = []
        items = getattr(headers, "_list", None)  # httpx2's (name, lowered name, value): nothing to lower
        if items is None:
            items = [(b"", k.lower().encode(), v.encode()) for k, v in headers.items()]
        for _, name, value in items:
            if name in _CREDENTIAL_HEADERS and value not in self._raw_seen:
                self._raw_seen.add(value)
                text = value.decode("latin-1")
                found.append(text.split(" ", 1)[1] if text.lower().startswith("bearer ") else text)
        query = urlsplit(url).query if url else ""
        if query:
            found.extend(v for k, v in parse_qsl(query, True) if k.lower() in SECRET_QUERY)
        if found:
            self._add(found)

    def _add(self, values: Iterable[str]) -> None:
        fresh = {v.strip() for v in values if v and len(v.strip()) >= _MIN_SECRET} - self._secrets
        if fresh:
            with self._lock:
                self._secrets |= fresh
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._exact = re.compile("|".join(re.escape(s) for s in ordered))

    # -- redaction --------------------------------------------------------------------

    def is_secret_header(self, name: str) -> bool:
        lower = name.lower()
        return lower in self.headers or bool(_compiled(_SECRET_HEADER_WORDS).search(lower))

    def text(self, value: str) -> str:
        for pattern in self._patterns:
            value = pattern.sub(REDACTED, value)
        exact = self._exact
        if exact is not None:
            value = exact.sub(REDACTED, value)
        return redact_shapes(value)

    def kinds(self, value: str) -> list[str]:
        """What :meth:`text` would redact in ``value``, by kind (for warnings: never the values)."""
        found = ["configured pattern" for pattern in self._patterns for _ in pattern.finditer(value)]
        exact = self._exact
        if exact is not None:
            found += ["key known to the test" for _ in exact.finditer(value)]
        return found + [kind for kind, _, _ in find_shapes(value)]

    def log_text(self, value: str) -> str:
        """Text of a log record: also header values and key query parameters, which logs print whole."""
        value = _compiled(_HEADER_VALUES).sub(lambda m: m.group(1) + f"'{REDACTED}'", value)
        value = _compiled(_HEADER_PAIRS).sub(
            lambda m: f"{m.group(1)}{m.group(4)}'{REDACTED}'" if self.is_secret_header(m.group(3)) else m.group(0),
            value,
        )
        value = _compiled(_QUERY_VALUES).sub(lambda m: m.group(1) + REDACTED, value)
        return self.text(value)

    def body(self, body: Any) -> Any:
        """Redact configured JSON fields and secrets in a body (bytes or str); binary passes through."""
        if body is None:
            return None
        raw = body if isinstance(body, str) else body.decode("utf-8") if _is_utf8(body) else None
        if raw is None:
            return body
        if self.body_fields:
            try:
                raw = json.dumps(_redact_fields(json.loads(raw), self.body_fields))
            except ValueError:
                pass
        scrubbed = self.text(raw)
        return scrubbed if isinstance(body, str) else scrubbed.encode("utf-8")

    def tree(self, data: Any) -> Any:
        """A copy of a cassette's data with every string scrubbed as it will be loaded, and every
        binary body scrubbed decompressed (and compressed again): the file's text may fold a
        string across lines, or hold a gzip answer, where no scan of the text can see a key."""
        if isinstance(data, str):
            return self.text(data)
        if isinstance(data, bytes):
            loaded = as_text(data)
            if loaded is None:
                return data
            text, store = loaded
            scrubbed = self.text(text)
            return data if scrubbed == text else store(scrubbed)
        if isinstance(data, dict):
            return {self.tree(key): self.tree(value) for key, value in data.items()}
        if isinstance(data, (list, tuple)):
            return [self.tree(value) for value in data]
        return data

    def uri(self, uri: str) -> str:
        parts = urlsplit(uri)
        if not parts.query:
            return self.text(uri)
        query = [(k, REDACTED if k.lower() in SECRET_QUERY else v) for k, v in parse_qsl(parts.query, True)]
        return self.text(urlunsplit(parts._replace(query=urlencode(query))))

    def request(self, request: VcrRequest) -> VcrRequest:
        """A scrubbed copy, for ``before_record_request`` (also used before matching)."""
        request = copy.copy(request)  # shallow: the fields below are replaced, never changed in place
        request.headers = dict(request.headers)
        for name in list(request.headers):
            if self.is_secret_header(name):
                del request.headers[name]
            else:
                request.headers[name] = self.text(request.headers[name])
        request.uri = self.uri(request.uri)
        request.body = self.body(request.body)
        return request

    def response(self, response: dict[str, Any]) -> dict[str, Any]:
        """Scrub a vcrpy response dict in place (vcrpy hands us a copy)."""
        response["headers"] = {
            name: [self.text(v) for v in values]
            for name, values in response["headers"].items()
            if not self.is_secret_header(name)
        }
        response["body"]["string"] = self.body(response["body"]["string"])
        return response


def scrub_report(report: Any, scrubber: Scrubber) -> None:
    """Scrub a test report's failure and captured output in place, whoever raised the failure: its
    longrepr (traceback lines, frame arguments and locals, the crash message JUnit's ``<failure>``
    shows, assertion diffs) and its sections (captured stdout, stderr and log)."""
    scrubber.refresh()
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, message)
        report.longrepr = (*report.longrepr[:2], scrubber.text(report.longrepr[2]))
    elif report.longrepr is not None:
        report.longrepr = _scrubbed(report.longrepr, scrubber)
    report.sections = [(title, scrubber.text(content)) for title, content in report.sections]


def _scrubbed(value: Any, scrubber: Scrubber) -> Any:
    """pytest's failure representation, rebuilt with every string scrubbed (its parts are dataclasses
    holding strings, lists and tuples; a plugin's own longrepr may be a plain string)."""
    if isinstance(value, str):
        return scrubber.text(value)
    if isinstance(value, list):
        return [_scrubbed(item, scrubber) for item in value]
    if isinstance(value, tuple):
        return tuple(_scrubbed(item, scrubber) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            object.__setattr__(value, field.name, _scrubbed(getattr(value, field.name), scrubber))
        return value
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return scrubber.text(str(value))  # anything else is printed as its str()


LOGGERS = ("vcr", "httpx2", "httpcore2", "httpx", "httpcore", "openai", "anthropic", "urllib3", "pytest_llm_guard")
"""Loggers whose records may carry requests, headers or URLs: scrubbed while a guarded test runs."""


_FORMATTER = logging.Formatter()


@contextlib.contextmanager
def scrubbed_logs(scrubber: Scrubber) -> Iterator[None]:
    """While it is open, log records of :data:`LOGGERS` carry scrubbed text (vcrpy's INFO records print
    whole response headers, cookies included; httpx2's DEBUG records print URLs with their query)."""
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.startswith(LOGGERS):
            try:
                message = record.getMessage()
            except Exception:  # a malformed record is the logging library's business
                return record
            record.msg, record.args = scrubber.log_text(message), None
            if record.exc_info and record.exc_info[0] is not None:  # formatters print exc_text when it is set
                record.exc_text = scrubber.log_text(_FORMATTER.formatException(record.exc_info))
            if record.stack_info:
                record.stack_info = scrubber.log_text(record.stack_info)
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _redact_fields(obj: Any, fields: frozenset[str]) -> Any:
    if isinstance(obj, dict):
        return {k: REDACTED if k in fields else _redact_fields(v, fields) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact_fields(v, fields) for v in obj]
    return obj
