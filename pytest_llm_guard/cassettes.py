"""LLM cassettes on vcrpy: recorded once, committed, replayed with no key, no network and no secrets.

vcrpy provides the cassette model, the record modes, the file format and
decompression; this module makes them right for LLM traffic:

- look-up is indexed by a canonical request key (method, API route, JSON body with
  keys sorted), so replay cost stays flat however large a cassette grows;
- the cassette runs as a guard layer at the transport boundary, so a streamed
  response reaches the caller chunk by chunk while it is recorded, and replays
  as the same events in order;
- only successful answers are written (a replay never replays an outage);
- secrets are scrubbed (``scrub.py``), bodies are stored decompressed and JSON
  pretty-printed, so a cassette is reviewable;
- files are written atomically under a folder lock, keeping what another
  pytest-xdist worker wrote meanwhile; a file that cannot be read fails its
  test with the parser's line and column.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import hashlib
import json
import os
import re
import tempfile
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import yaml
from vcr.cassette import Cassette
from vcr.filters import decode_response
from vcr.persisters.filesystem import CassetteNotFoundError
from vcr.record_mode import RecordMode
from vcr.request import Request as VcrRequest
from vcr.serialize import deserialize, serialize
from vcr.serializers import compat, yamlserializer

from . import wire
from .config import OPTIONS, Settings
from .errors import LLMCassetteError, LLMCassetteMiss, LLMGuardConfigError
from .events import AttemptEvent
from .scrub import Scrubber
from .transport import AsyncSend, Send

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: atomic renames still hold, concurrent merges do not
    fcntl = None  # type: ignore[assignment]

Matcher = Callable[[VcrRequest, VcrRequest], "bool | None"]


def record_mode(settings: Settings, environ: Mapping[str, str] = os.environ) -> str:
    """The configured mode, else ``none`` on CI (CI must never reach a real endpoint) and ``once`` elsewhere."""
    if settings.record is not None:
        return settings.record
    ci = environ.get("CI", "").strip().lower()
    return "none" if ci not in ("", "0", "false", "no") else "once"


def file_safe(name: str, limit: int = 100) -> str:
    """A file name for a test id: parametrize ids made safe, long names shortened with a hash."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "test"
    if len(safe) <= limit:
        return safe
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return f"{safe[: limit - 13]}-{digest}"


MARKER = "llm_cassette"


@dataclass(frozen=True)
class Choice:
    """What ``@pytest.mark.llm_cassette`` asks for: no cassette, a shared name, or a path."""

    enabled: bool = True
    name: str | None = None
    path: str | Path | None = None

    @classmethod
    def from_marker(cls, marker: Any | None) -> Choice:
        if marker is None:
            return cls()
        args, kwargs = marker.args, dict(marker.kwargs)
        path = kwargs.pop("path", None)
        name = kwargs.pop("name", args[0] if args else None)
        if kwargs or len(args) > 1 or not (name is None or name is False or isinstance(name, str)):
            raise LLMGuardConfigError(
                f"@pytest.mark.{MARKER} takes a cassette name (str), False, or path=...; "
                f"got args={args!r} kwargs={marker.kwargs!r}"
            )
        if path is not None and not isinstance(path, (str, Path)):
            raise LLMGuardConfigError(f"@pytest.mark.{MARKER}(path=...) must be a str or Path, got {path!r}")
        return cls(enabled=name is not False, name=name or None, path=path)

    def path_for(self, test_file: Path, test_name: str, settings: Settings) -> Path:
        """The explicit path (relative to the test file), else ``<cassette_dir>/<module>/<name>.yaml``."""
        if self.path is not None:
            return test_file.parent / self.path
        folder = test_file.parent / (settings.cassette_dir or "cassettes")
        return folder / test_file.stem / f"{file_safe(self.name or test_name)}.yaml"


# -- matching ------------------------------------------------------------------------


def canonical_body(body: Any, ignore: frozenset[str] = frozenset()) -> str:
    """JSON compared canonically (key order ignored, ignored fields dropped); other bodies as text."""
    if body in (None, b"", ""):
        return ""
    raw = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        obj = json.loads(raw)
    except ValueError:
        return raw
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in ignore}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(request: VcrRequest, match_on: tuple[str, ...], ignore: frozenset[str]) -> tuple[str, ...]:
    """The index key: one string per matched part, so equal requests share a bucket."""
    parsed = request.parsed_uri
    parts = {
        "method": lambda: request.method.upper(),
        "scheme": lambda: parsed.scheme,
        "host": lambda: parsed.hostname or "",
        "port": lambda: str(request.port),
        "path": lambda: wire.route_of(parsed.path),
        "query": lambda: "&".join(sorted(parsed.query.split("&"))) if parsed.query else "",
        "body": lambda: canonical_body(request.body, ignore),
    }
    return tuple(parts[name]() for name in match_on)


class LLMCassette(Cassette):
    """A vcrpy cassette whose look-up is a dict access instead of a scan running every matcher."""

    def __init__(
        self, *args: Any, match_parts: tuple[str, ...], ignore: frozenset[str], matcher: Matcher, **kwargs: Any
    ) -> None:
        self._match_parts = match_parts
        self._ignore = ignore
        self._matcher = matcher
        self._index: defaultdict[tuple[str, ...], list[int]] = defaultdict(list)
        self._appending = threading.Lock()
        super().__init__(*args, **kwargs)

    def _key(self, request: VcrRequest) -> tuple[str, ...]:
        return request_key(request, self._match_parts, self._ignore)

    def append(self, request: VcrRequest, response: dict[str, Any]) -> None:
        with self._appending:  # code under test may record from several threads at once
            before = len(self.data)
            super().append(request, response)
            if len(self.data) > before:
                self._index[self._key(self.data[-1][0])].append(before)

    def _responses(self, request: VcrRequest) -> Iterator[tuple[int, dict[str, Any]]]:
        request = self._before_record_request(request)
        for index in self._index.get(self._key(request), ()):
            stored, response = self.data[index]
            if self._matcher(request, stored) is not False:
                yield index, response

    def _new_interactions(self) -> list[tuple[VcrRequest, dict[str, Any]]]:
        old = {self._key(request) for request, _ in self._old_interactions}
        return [(request, response) for request, response in self.data if self._key(request) not in old]

    def _rerecorded_interactions(self) -> list[tuple[VcrRequest, dict[str, Any]]]:
        loaded, recorded = self.data[: self._loaded_count], self.data[self._loaded_count :]
        if self.drop_unused_requests:
            return recorded
        fresh = {self._key(request) for request, _ in recorded}
        return [(r, response) for r, response in loaded if self._key(r) not in fresh] + recorded

    def closest(self, request: VcrRequest) -> tuple[VcrRequest, list[str]] | None:
        """The recorded request most like ``request``, with a readable diff of what differs (misses only)."""
        request = self._before_record_request(request)
        sent = dict(zip(self._match_parts, self._key(request), strict=True))
        best: tuple[float, VcrRequest, list[str]] | None = None
        for stored, _ in self.data:
            recorded = dict(zip(self._match_parts, self._key(stored), strict=True))
            differs = [name for name in self._match_parts if recorded[name] != sent[name]]
            body_ratio = difflib.SequenceMatcher(None, recorded.get("body", ""), sent.get("body", "")).ratio()
            score = -len(differs) + body_ratio
            if best is None or score > best[0]:
                best = (score, stored, _describe_differences(differs, recorded, sent))
        return None if best is None else (best[1], best[2])


def _describe_differences(differs: list[str], recorded: dict[str, str], sent: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for name in differs:
        if name != "body":
            lines.append(f"{name}: recorded {recorded[name]!r}, sent {sent[name]!r}")
            continue
        lines.append("body (recorded -> sent):")
        lines.extend(
            "  " + line
            for line in difflib.unified_diff(
                _pretty(recorded[name]), _pretty(sent[name]), "recorded", "sent", n=1, lineterm=""
            )
        )
    return lines or ["nothing in the matched parts: every recording of it was already replayed in this test"]


def _pretty(canonical: str) -> list[str]:
    try:
        return json.dumps(json.loads(canonical), indent=2, sort_keys=True, ensure_ascii=False).splitlines()
    except ValueError:
        return canonical.splitlines()


# -- files ----------------------------------------------------------------------------


class _ReadableDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Multi-line strings (pretty JSON, SSE streams) as YAML block literals, readable in review."""


_ReadableDumper.add_representer(
    str,
    lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None),
)


class ReadableYaml:
    """vcrpy's YAML format: read by vcrpy's safe loader, written with readable strings."""

    @staticmethod
    def serialize(cassette_dict: dict[str, Any]) -> str:
        return yaml.dump(cassette_dict, Dumper=_ReadableDumper, sort_keys=False, allow_unicode=True, width=120)

    @staticmethod
    def deserialize(text: str) -> Any:
        return yamlserializer.deserialize(text)


def _fingerprint(request: VcrRequest, response: dict[str, Any]) -> str:
    return json.dumps(
        [compat.convert_to_unicode(request._to_dict()), compat.convert_to_unicode(copy.deepcopy(response))],
        sort_keys=True,
        default=repr,
    )


class AtomicPersister:
    """vcrpy persister: clear errors on load; atomic, merging saves.

    A save writes a temporary file in the cassette's folder and renames it over
    the cassette, so an interrupted run (Ctrl-C, pytest-timeout, SIGKILL) leaves
    the old file or the new one, never half of one. Saves hold an exclusive lock
    on the folder and re-read the file first: interactions another worker wrote
    since this cassette was loaded are kept. Holding the lock, a save also removes
    the temporary files of writers killed before their rename.
    """

    def __init__(self) -> None:
        self._loaded: set[str] = set()

    def load_cassette(self, cassette_path: str | Path, serializer: Any) -> tuple[list, list]:
        requests, responses = self._read(Path(cassette_path), serializer)
        self._loaded = {_fingerprint(q, r) for q, r in zip(requests, responses, strict=True)}
        return requests, responses

    def save_cassette(self, cassette_path: str | Path, cassette_dict: dict[str, Any], serializer: Any) -> None:
        path = Path(cassette_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.parent):
            requests, responses = list(cassette_dict["requests"]), list(cassette_dict["responses"])
            ours = {_fingerprint(q, r) for q, r in zip(requests, responses, strict=True)}
            with contextlib.suppress(CassetteNotFoundError, LLMCassetteError):
                for q, r in zip(*self._read(path, serializer), strict=True):
                    fingerprint = _fingerprint(q, r)
                    if fingerprint not in ours and fingerprint not in self._loaded:
                        requests.append(q)
                        responses.append(r)
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write
                stale.unlink(missing_ok=True)
            _write_atomically(path, serialize({"requests": requests, "responses": responses}, serializer))

    @staticmethod
    def _read(path: Path, serializer: Any) -> tuple[list, list]:
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            raise CassetteNotFoundError() from None
        except OSError as exc:
            raise LLMCassetteError(f"cannot read cassette {path}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise LLMCassetteError(f"cassette {path} is not UTF-8 text ({exc}); delete it and re-record") from None
        if not text.strip():
            raise CassetteNotFoundError()
        try:
            requests, responses, *_ = deserialize(text, serializer)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise LLMCassetteError(
                f"cannot parse cassette {path}{where}: {problem}. Fix the file, or delete it and record again."
            ) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LLMCassetteError(
                f"{path} is not a vcrpy cassette ({type(exc).__name__}: {exc}); delete it and record again."
            ) from None
        return requests, responses


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
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


# -- the layer ------------------------------------------------------------------------


def _header(headers: Mapping[str, list[str]], name: str) -> str:
    for key, values in headers.items():
        if key.lower() == name and values:
            return values[0]
    return ""


def _pretty_json(body: Any) -> Any:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, TypeError, UnicodeDecodeError):
        return body


def readable_response(scrubber: Scrubber) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``before_record_response``: decompress, pretty-print JSON, drop a now wrong length, scrub."""

    def before_record_response(response: dict[str, Any]) -> dict[str, Any]:
        response = decode_response(response)
        headers = response["headers"]
        if "json" in _header(headers, "content-type") and not _header(headers, "content-encoding"):
            response["body"]["string"] = _pretty_json(response["body"]["string"])
            response["headers"] = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        return scrubber.response(response)

    return before_record_response


def readable_request(scrubber: Scrubber) -> Callable[[VcrRequest], VcrRequest]:
    """``before_record_request`` (also run before matching): scrub, pretty-print a JSON body."""

    def before_record_request(request: VcrRequest) -> VcrRequest:
        request = scrubber.request(request)
        request.body = _pretty_json(request.body)
        request.headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() != "content-length" and not k.lower().startswith("x-llm-guard-")  # ours, not the app's
        }
        return request

    return before_record_request


def _events(body: bytes) -> list[bytes]:
    """Split an SSE body into its events so a replayed stream arrives event by event, as recorded."""
    parts = re.split(rb"(?<=\n\n)", body)
    return [part for part in parts if part] or [body]


class _Replay(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class _Tee(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """Hands each chunk on as it arrives and keeps a copy; a complete body is recorded once.

    Complete means read to its end, or closed at an SSE stream's ``[DONE]``; a body
    cut short (an error, a caller that stopped reading) is not recorded.
    """

    def __init__(self, inner: Any, content_type: str, on_complete: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._content_type = content_type
        self._on_complete = on_complete
        self._body = bytearray()
        self._recorded = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._body += chunk
            yield chunk
        self._complete()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._body += chunk
            yield chunk
        self._complete()

    def close(self) -> None:
        if wire.stream_finished(self._content_type, bytes(self._body)):
            self._complete()
        self._inner.close()

    async def aclose(self) -> None:
        if wire.stream_finished(self._content_type, bytes(self._body)):
            self._complete()
        await self._inner.aclose()

    def _complete(self) -> None:
        if not self._recorded:
            self._recorded = True
            self._on_complete(bytes(self._body))


class CassetteLayer:
    """The guard layer that replays from, or records into, one test's cassette."""

    def __init__(self, cassette: LLMCassette, *, nodeid: str, mode: str, record_failures: bool) -> None:
        self.cassette = cassette
        self.nodeid = nodeid
        self.mode = mode
        self.record_failures = record_failures

    def handle(self, request: httpx2.Request, event: AttemptEvent, send: Send) -> httpx2.Response:
        vcr_request = self._vcr_request(request, request.read())
        replay = self._replay(request, vcr_request, event)
        return replay if replay is not None else self._record(send(request), vcr_request, event)

    async def handle_async(self, request: httpx2.Request, event: AttemptEvent, send: AsyncSend) -> httpx2.Response:
        vcr_request = self._vcr_request(request, await request.aread())
        replay = self._replay(request, vcr_request, event)
        return replay if replay is not None else self._record(await send(request), vcr_request, event)

    def save(self) -> None:
        if self.cassette.dirty:
            self.cassette._save()

    @staticmethod
    def _vcr_request(request: httpx2.Request, body: bytes) -> VcrRequest:
        return VcrRequest(request.method, str(request.url), body, dict(request.headers))

    def _replay(self, request: httpx2.Request, vcr_request: VcrRequest, event: AttemptEvent) -> httpx2.Response | None:
        if self.cassette.can_play_response_for(vcr_request):
            recorded = self.cassette.play_response(vcr_request)
            event.source = "replayed"
            return self._response(request, recorded)
        if self.cassette.write_protected:
            raise self._miss(vcr_request)
        return None

    @staticmethod
    def _response(request: httpx2.Request, recorded: dict[str, Any]) -> httpx2.Response:
        recorded = compat.convert_to_bytes(copy.deepcopy(recorded))
        body = recorded["body"]["string"] or b""
        headers = recorded["headers"]
        streamed = "text/event-stream" in _header(headers, "content-type") and not _header(headers, "content-encoding")
        message = recorded["status"].get("message")
        return httpx2.Response(
            recorded["status"]["code"],
            headers=[(name, value) for name, values in headers.items() for value in values],
            stream=_Replay(_events(body) if streamed else [body]),
            extensions={"reason_phrase": message.encode("ascii", "replace")} if message else {},
            request=request,
        )

    def _record(self, response: httpx2.Response, vcr_request: VcrRequest, event: AttemptEvent) -> httpx2.Response:
        if response.status_code >= 400 and not self.record_failures:
            return response

        def on_complete(body: bytes) -> None:
            headers: dict[str, list[str]] = defaultdict(list)
            for name, value in response.headers.multi_items():
                headers[name].append(value)
            self.cassette.append(
                vcr_request,
                {
                    "status": {"code": response.status_code, "message": response.reason_phrase},
                    "headers": dict(headers),
                    "body": {"string": body},
                },
            )
            event.source = "recorded"

        response.stream = _Tee(response.stream, response.headers.get("content-type", ""), on_complete)
        return response

    def _miss(self, vcr_request: VcrRequest) -> LLMCassetteMiss:
        path = Path(self.cassette._path)
        vcr_request = self.cassette.filter_request(vcr_request)  # scrubbed: the message lands in CI logs
        body = vcr_request.body
        payload: Any = None
        with contextlib.suppress(ValueError, TypeError, UnicodeDecodeError):
            payload = json.loads(body) if body else None
        model = payload.get("model") if isinstance(payload, dict) else None
        lines = [
            f"No recorded response for this request in cassette {path} (record mode {self.mode!r}); "
            "no network request was made.",
            f"Request: {vcr_request.method} {vcr_request.uri} model={model or '?'}"
            + (f" last user message: {_last_user_message(payload)!r}" if _last_user_message(payload) else ""),
        ]
        closest = self.cassette.closest(vcr_request) if path.exists() else None
        if not path.exists():
            lines.append("The cassette file does not exist.")
        elif closest is None:
            lines.append("The cassette holds no interactions.")
        else:
            stored, differences = closest
            lines.append(f"Closest recorded request: {stored.method} {stored.uri}; differs in")
            lines.extend("  " + line for line in differences)
        option = OPTIONS["record"]
        lines.append(
            f"To record it (needs a real endpoint and key): pytest '{self.nodeid}' {option.flag}=new_episodes "
            f"(or {option.flag}=all to re-record the test from scratch); CI replays only ({option.env} or CI)."
        )
        return LLMCassetteMiss("\n".join(lines))


def _last_user_message(payload: Any, limit: int = 80) -> str:
    if not isinstance(payload, dict):
        return ""
    messages = payload.get("messages") or payload.get("input")
    if isinstance(messages, str):
        text = messages
    elif isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        content = users[-1].get("content") if users else ""
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        text = content if isinstance(content, str) else ""
    else:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def open_cassette(
    path: Path, settings: Settings, *, mode: str, nodeid: str, matcher: Matcher, scrubber: Scrubber
) -> CassetteLayer:
    """Load (or start) a test's cassette; raises :class:`LLMCassetteError` for an unreadable file."""
    cassette = LLMCassette.load(
        path=str(path),
        serializer=ReadableYaml,
        persister=AtomicPersister(),
        record_mode=RecordMode(mode),
        match_on=(),
        before_record_request=readable_request(scrubber),
        before_record_response=readable_response(scrubber),
        match_parts=settings.match_on,
        ignore=frozenset(settings.ignore_body_fields),
        matcher=matcher,
    )
    return CassetteLayer(cassette, nodeid=nodeid, mode=mode, record_failures=settings.record_failures)
