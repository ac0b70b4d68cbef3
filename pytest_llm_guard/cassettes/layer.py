"""The cassette as a guard layer: replay what is recorded, record what comes back, explain a miss."""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import json
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2

from ..config import OPTIONS, Settings
from ..dialect import BodyReader, Dialect, decoding, dialect_for
from ..errors import LLMCassetteMiss
from ..scrub import Scrubber, find_shapes
from ..stored import as_text
from . import vcr_bridge

if TYPE_CHECKING:
    from ..guard import AsyncSend, Send
    from ..ledger import Attempt


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
    """Hands each chunk on as it arrives and keeps a copy; a true answer is recorded once.

    True means read to its end, or closed at a stream's end event, and judged whole by the
    dialect's reader (JSON that parses, every event intact); a body cut short, broken or
    abandoned by its caller is never recorded.
    """

    def __init__(self, inner: Any, reader: BodyReader, on_complete: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._reader = reader
        self._on_complete = on_complete
        self._body = bytearray()
        self._broken = False
        self._recorded = False

    def _keep(self, chunk: bytes) -> None:
        self._body += chunk
        self._broken = self._broken or self._reader.feed(chunk) is not None

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._keep(chunk)
            yield chunk
        self._complete()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._keep(chunk)
            yield chunk
        self._complete()

    def close(self) -> None:
        if self._reader.events_expected and self._reader.ended:
            self._complete()
        self._inner.close()

    async def aclose(self) -> None:
        if self._reader.events_expected and self._reader.ended:
            self._complete()
        await self._inner.aclose()

    def _complete(self) -> None:
        if self._recorded:
            return
        self._recorded = True
        if not self._broken and self._reader.finish() is None:
            self._on_complete(bytes(self._body))


class CassetteLayer:
    """The guard layer that replays from, or records into, one test's cassette."""

    def __init__(
        self,
        cassette: vcr_bridge.LLMCassette,
        scrubber: Scrubber,
        *,
        nodeid: str,
        mode: str,
        record_failures: bool,
    ) -> None:
        self.cassette = cassette
        self.scrubber = scrubber
        self.nodeid = nodeid
        self.mode = mode
        self.record_failures = record_failures
        self.existed = cassette.path.exists()
        """Whether the file existed when this test opened it."""
        self.redacted: dict[str, int] = {}
        """Secrets found in what was recorded, by where and kind: redacted, and worth a warning."""

    def handle(self, request: httpx2.Request, attempt: Attempt, send: Send) -> httpx2.Response:
        self.scrubber.refresh()  # a key set since the last request is a secret too
        recorded = self._vcr_request(request, request.read())
        replay = self._replay(request, recorded, attempt)
        return replay if replay is not None else self._record(request, send(request), recorded, attempt)

    async def handle_async(self, request: httpx2.Request, attempt: Attempt, send: AsyncSend) -> httpx2.Response:
        self.scrubber.refresh()
        recorded = self._vcr_request(request, await request.aread())
        replay = self._replay(request, recorded, attempt)
        return replay if replay is not None else self._record(request, await send(request), recorded, attempt)

    @property
    def replay_only(self) -> bool:
        return self.cassette.write_protected

    def save(self, *, test_failed: bool) -> str | None:
        """Write what was recorded; returns a warning when credential-shaped strings had to be redacted.

        A test that failed or was interrupted while recording keeps nothing of a cassette it
        started (the next run records afresh, rather than replaying half a conversation), nor
        overwrites one it was re-recording (``all``); in ``new_episodes`` its complete
        interactions are added.
        """
        if test_failed and (not self.existed or self.mode != "new_episodes"):
            return None
        self.cassette.save()
        if not self.redacted:
            return None
        kinds = ", ".join(f"{kind} x{count}" for kind, count in self.redacted.items())
        return (
            f"pytest-llm-guard: credential-shaped strings were redacted from cassette {self.cassette.path} "
            f"before it was written ({kinds}); a replay returns REDACTED where an answer held one. "
            "Check what the test sends and records."
        )

    @staticmethod
    def _vcr_request(request: httpx2.Request, body: bytes) -> Any:
        return vcr_bridge.vcr_request(request.method, str(request.url), body, dict(request.headers))

    def _replay(self, request: httpx2.Request, recorded: Any, attempt: Attempt) -> httpx2.Response | None:
        answer = self.cassette.replay(recorded)
        if answer is not None:
            attempt.source = "replayed"
            return self._response(request, answer)
        if self.cassette.write_protected:
            attempt.source = "refused"
            raise self._miss(recorded)
        return None

    @staticmethod
    def _response(request: httpx2.Request, recorded: dict[str, Any]) -> httpx2.Response:
        status, headers, body, message = vcr_bridge.playable(recorded)
        names = {name.lower(): value for name, value in headers}
        streamed = "text/event-stream" in names.get("content-type", "") and not names.get("content-encoding")
        return httpx2.Response(
            status,
            headers=headers,
            stream=_Replay(_events(body) if streamed else [body]),
            extensions={"reason_phrase": message.encode("ascii", "replace")} if message else {},
            request=request,
        )

    def _record(
        self, request: httpx2.Request, response: httpx2.Response, recorded: Any, attempt: Attempt
    ) -> httpx2.Response:
        if response.status_code >= 400 and not self.record_failures:
            return response
        dialect: Dialect | None = dialect_for(request)
        content_type = response.headers.get("content-type", "")
        reader = decoding(
            dialect.reader(content_type) if dialect is not None else BodyReader(),
            response.headers.get("content-encoding", ""),
        )

        def on_complete(body: bytes) -> None:
            self._note_shapes(recorded, body)
            headers: dict[str, list[str]] = defaultdict(list)
            for name, value in response.headers.multi_items():
                headers[name].append(value)
            self.cassette.append(
                recorded,
                {
                    "status": {"code": response.status_code, "message": response.reason_phrase},
                    "headers": dict(headers),
                    "body": {"string": body},
                },
            )
            attempt.source = "recorded"

        response.stream = _Tee(response.stream, reader, on_complete)
        return response

    def _note_shapes(self, recorded: Any, body: bytes) -> None:
        """Count what the scrubber will redact: credential shapes in the request, and anything in the
        answer (a known key echoed too), since there a replay returns REDACTED in its place."""
        where = f"interaction {len(self.cassette.data) + 1}"
        texts = [recorded.uri, str(recorded.body or b"")]
        texts += [f"{k}: {v}" for k, v in recorded.headers.items() if not self.scrubber.is_secret_header(k)]
        found = [f"{where} request: {kind}" for text in texts for kind, _, _ in find_shapes(text)]
        answer = as_text(body)  # a gzip answer is stored decompressed, and scrubbed so
        found += [f"{where} response body: {kind}" for kind in self.scrubber.kinds(answer[0] if answer else "")]
        for key in found:
            self.redacted[key] = self.redacted.get(key, 0) + 1

    def _miss(self, recorded: Any) -> LLMCassetteMiss:
        path = self.cassette.path
        shown = self.cassette.scrubbed(recorded)  # the message lands in CI logs
        payload: Any = None
        try:
            payload = json.loads(shown.body) if shown.body else None
        except (ValueError, TypeError, UnicodeDecodeError):
            payload = None
        model = payload.get("model") if isinstance(payload, dict) else None
        last = _last_user_message(payload)
        lines = [
            f"No recorded response for this request in cassette {path} (record mode {self.mode!r}); "
            "no network request was made.",
            f"Request: {shown.method} {shown.uri} model={model or '?'}"
            + (f" last user message: {last!r}" if last else ""),
        ]
        # self.existed, not path.exists(): no blocking file I/O on an event loop's request path
        nearest = self.cassette.closest(shown) if self.existed else None
        if not self.existed:
            lines.append("The cassette file does not exist.")
        elif nearest is None:
            lines.append("The cassette holds no interactions.")
        else:
            stored, differences = nearest
            lines.append(f"Closest recorded request: {stored.method} {stored.uri}; differs in")
            lines.extend("  " + line for line in differences)
        option = OPTIONS["record"]
        lines.append(
            f"To record it (needs a real endpoint and key): pytest '{self.nodeid}' {option.flag}=new_episodes "
            f"(or {option.flag}=all to re-record the test from scratch); CI replays only ({option.env} or CI)."
        )
        return LLMCassetteMiss(self.scrubber.text("\n".join(lines)))


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
    path: Path, settings: Settings, *, mode: str, nodeid: str, matcher: vcr_bridge.Matcher, scrubber: Scrubber
) -> CassetteLayer:
    """Load (or start) a test's cassette; raises :class:`LLMCassetteError` for an unreadable file."""
    cassette = vcr_bridge.load(
        path,
        mode=mode,
        match_on=settings.match_on,
        ignore=frozenset(settings.ignore_body_fields),
        matcher=matcher,
        scrubber=scrubber,
    )
    return CassetteLayer(cassette, scrubber, nodeid=nodeid, mode=mode, record_failures=settings.record_failures)
