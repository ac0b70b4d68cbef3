"""The cassette as a guard layer: replay what is recorded, record what comes back, explain a miss."""

from __future__ import annotations

__tracebackhide__ = True  # pytest: a failed test shows where the LLM call was made, not our internals

import asyncio
import math
import re
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2

from ..clock import REAL, Clock
from ..config import OPTIONS, Settings
from ..dialects import BodyReader, Dialect, decoding, dialect_for, hear
from ..errors import LLMCassetteMiss
from ..report import days, plural
from ..scrub import Scrubber, find_shapes
from ..stored import as_text
from . import metadata
from .parsed import Matcher, Sent, playable
from .replaying import ReplayCassette, replay_only
from .timing import TIMING, Pacer, Stopwatch, pieces

if TYPE_CHECKING:
    from ..ledger import Attempt
    from ..pipeline import AsyncSend, AttemptContext, Send
    from .vcr_bridge import LLMCassette


def _events(body: bytes) -> list[bytes]:
    """Split an SSE body into its events so a replayed stream arrives event by event, as recorded."""
    parts = re.split(rb"(?<=\n\n)", body)
    return [part for part in parts if part] or [body]


class _Replay(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A recorded body, piece by piece; with a pacer, each piece when its recorded time comes."""

    def __init__(self, pieces: list[tuple[float, bytes]], pacer: Pacer | None) -> None:
        self._pieces = pieces
        self._pacer = pacer

    def __iter__(self) -> Iterator[bytes]:
        for number, (at, piece) in enumerate(self._pieces, 1):
            if self._pacer is not None:
                self._pacer.until(at, f"chunk {number}")
            yield piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for number, (at, piece) in enumerate(self._pieces, 1):
            if self._pacer is not None:
                await self._pacer.until_async(at, f"chunk {number}")
            yield piece


class _Tee(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """Hands each chunk on as it arrives and keeps a copy; a true answer is recorded once.

    True means read to its end, or closed at a stream's end event, and judged whole by the
    dialect's reader (JSON that parses, every event intact); a body cut short or broken is
    never recorded. A body its caller stopped reading is read on to its end, within the
    attempt's time left, and recorded whole: from the caller's close on, in a thread (or a
    task on its event loop) so the close returns at once and the deadline's signal never
    meets it; a body never closed, by :meth:`finish` when the test's call ends. When the
    rest cannot be read, ``on_abandoned`` is told why.
    """

    def __init__(
        self,
        inner: Any,
        reader: BodyReader,
        attempt: Attempt,
        clock: Callable[[], float],
        stopwatch: Stopwatch,
        on_complete: Callable[[bytes, bool], None],
        on_abandoned: Callable[[str], None],
        *,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self._inner = inner
        self._reader = reader
        self.attempt = attempt
        self._clock = clock
        self._stopwatch = stopwatch
        self._on_complete = on_complete
        self._on_abandoned = on_abandoned
        self._loop = loop
        """The event loop of an async body: the only one it can be read on."""
        self._body = bytearray()
        self._problem: str | None = None
        self._settled = False
        """Recorded, found broken, or abandoned: nothing more to do with the body."""
        self._settling = threading.Lock()
        self._closed = False
        self._chunks: Any = None
        """The one iterator over ``inner``: the caller's reading and the read-on continue the same one."""
        self._reading_on: threading.Thread | asyncio.Task[None] | None = None

    @property
    def pending(self) -> bool:
        """The caller stopped reading a healthy body before its end: the rest is still to be read."""
        return not self._settled and not self.attempt.failed

    def _keep(self, chunk: bytes) -> None:
        self._stopwatch.chunk(len(chunk))
        self._body += chunk
        self._problem = self._problem or self._reader.feed(chunk)

    def __iter__(self) -> Iterator[bytes]:
        self._chunks = self._chunks or iter(self._inner)
        for chunk in self._chunks:
            self._keep(chunk)
            yield chunk
        self._complete()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._chunks = self._chunks or self._inner.__aiter__()
        async for chunk in self._chunks:
            self._keep(chunk)
            yield chunk
        self._complete()

    def close(self) -> None:
        if self._reader.events_expected and self._reader.ended:
            self._complete()
        if not self.pending:
            self._close_inner()
        elif self._reading_on is None:
            self._reading_on = threading.Thread(target=self._read_on, name="llm-guard-read-on", daemon=True)
            self._reading_on.start()

    async def aclose(self) -> None:
        if self._reader.events_expected and self._reader.ended:
            self._complete()
        if not self.pending:
            await self._aclose_inner()
        elif self._reading_on is None:
            self._reading_on = asyncio.get_running_loop().create_task(self._read_on_async())

    def _close_inner(self) -> None:
        if not self._closed:
            self._closed = True
            self._inner.close()

    async def _aclose_inner(self) -> None:
        if not self._closed:
            self._closed = True
            await self._inner.aclose()

    def finish(self) -> None:
        """The test's call has ended: what its caller left unread is read on (or waited for), then closed."""
        reading_on = self._reading_on
        if isinstance(reading_on, threading.Thread):
            # The thread stops itself at the time left, once a chunk arrives; a read waits at most
            # the attempt's read timeout, which the guard capped.
            left = self._time_left()
            reading_on.join(None if left == math.inf else max(left, 0.0) + 1.0)
            if reading_on.is_alive():
                self._abandon(self._late())
        elif not self.pending:
            return
        elif self._loop is None:
            self._read_on()
        elif self._loop.is_closed() or self._loop.is_running():
            self._abandon(
                "the test's event loop was no longer available to read the rest of this async answer; "
                "read it to its end or close it before the test returns"
            )
        else:
            self._loop.run_until_complete(reading_on or self._read_on_async())

    def _time_left(self) -> float:
        return self.attempt.start + self.attempt.cap - self._clock()

    def _read_on(self) -> None:
        """Read the rest, checking the attempt's time left as each chunk arrives."""
        self._chunks = self._chunks or iter(self._inner)
        try:
            for chunk in self._chunks:
                self._keep(chunk)
                if self._problem is not None:
                    break
                if self._time_left() <= 0 and not self._reader.ended:
                    return self._abandon(self._late())
            self._complete(read_on=True)
        except Exception as exc:
            self._abandon(f"reading the rest failed: {type(exc).__name__}: {exc}")
        finally:
            self._close_inner()

    async def _read_on_async(self) -> None:
        """Read the rest, cut at the attempt's time left."""
        self._chunks = self._chunks or self._inner.__aiter__()
        left = self._time_left()
        try:
            await asyncio.wait_for(self._rest(), max(left, 0.0) if left != math.inf else None)
            self._complete(read_on=True)
        except asyncio.TimeoutError:
            self._abandon(self._late())
        except Exception as exc:
            self._abandon(f"reading the rest failed: {type(exc).__name__}: {exc}")
        finally:
            await self._aclose_inner()

    async def _rest(self) -> None:
        async for chunk in self._chunks:
            self._keep(chunk)
            if self._problem is not None:
                return

    def _late(self) -> str:
        cap = f"{self.attempt.cap:.2f} s cap ({self.attempt.cap_by})" if self.attempt.cap_by else "time"
        return f"the rest did not arrive within the attempt's {cap}; {len(self._body)} bytes had arrived"

    def _settle(self) -> bool:
        """Mark the body settled; True for the one caller that did (the caller's thread or the read-on)."""
        with self._settling:
            settled, self._settled = self._settled, True
        return not settled

    def _complete(self, *, read_on: bool = False) -> None:
        if not self._settle():
            return
        problem = self._problem or self._reader.finish()
        if problem is None:
            self._on_complete(bytes(self._body), read_on)
        elif read_on:  # the caller read a healthy start; what the guard read on was not
            self._on_abandoned(f"the rest was not a whole answer: {problem}")

    def _abandon(self, reason: str) -> None:
        if self._settle():
            self._on_abandoned(reason)


class CassetteLayer:
    """The guard layer that replays from, or records into, one test's cassette."""

    def __init__(
        self,
        cassette: LLMCassette | ReplayCassette,
        scrubber: Scrubber,
        *,
        nodeid: str,
        mode: str,
        record_failures: bool,
        clock: Clock = REAL,
        settings: Settings | None = None,
    ) -> None:
        self.cassette = cassette
        self.settings = settings or Settings()
        self.left_unplayed: list[str] | None = None
        """Ids of the recordings the test did not replay, once its function returned (:meth:`test_returned`)."""
        self.expiry: dict[str, Any] | None = None
        """Set when the cassette had expired: its age (seconds) and what was done (``expired``)."""
        self.scrubber = scrubber
        self.nodeid = nodeid
        self.mode = mode
        self.record_failures = record_failures
        self.existed = cassette.path.exists()
        """Whether the file existed when this test opened it."""
        self.redacted: dict[str, int] = {}
        """Secrets found in what was recorded, by where and kind: redacted, and worth a warning."""
        self.recorded: list[Attempt] = []
        """Attempts whose answer this test recorded: ``recorded`` once saved, else they were only ``live``."""
        self.saved = False
        """Whether what the test recorded reached the file (set by :meth:`save`)."""
        self.clock = clock
        """The guard's clock: an attempt's time left is read from it, a paced replay waits on it."""
        self._bodies: list[_Tee] = []
        self._abandoned: list[tuple[str, str]] = []

    def handle(self, request: httpx2.Request, ctx: AttemptContext, send: Send) -> httpx2.Response:
        attempt = ctx.attempt
        if not self.replay_only:  # a replay scrubs only to look a secret up, or to explain a miss, and refreshes then
            self.scrubber.refresh()  # a key set since the last request is a secret too
        sent = Sent(request.method, str(request.url), request.read(), request.headers)
        answer = self._replay(sent, attempt)
        if answer is None:
            return self._record(request, send(request), sent, attempt, is_async=False)
        pacer = self._pacer(attempt, answer)
        if pacer is not None:
            pacer.until(_headers_at(answer), "headers")
        return self._response(request, answer, attempt, pacer)

    async def handle_async(self, request: httpx2.Request, ctx: AttemptContext, send: AsyncSend) -> httpx2.Response:
        attempt = ctx.attempt
        if not self.replay_only:
            self.scrubber.refresh()
        sent = Sent(request.method, str(request.url), await request.aread(), request.headers)
        answer = self._replay(sent, attempt)
        if answer is None:
            return self._record(request, await send(request), sent, attempt, is_async=True)
        pacer = self._pacer(attempt, answer)
        if pacer is not None:
            await pacer.until_async(_headers_at(answer), "headers")
        return self._response(request, answer, attempt, pacer)

    def finish_bodies(self) -> None:
        """The test's call has ended: answers it stopped reading are read to their end and recorded
        (within their attempt's time left)."""
        for body in self._bodies:
            body.finish()

    def abandoned_warnings(self) -> list[str]:
        """One warning per streamed answer the test stopped reading that could not be recorded."""
        return [
            self.scrubber.text(
                f"pytest-llm-guard: {self.nodeid} stopped reading an answer before its end ({what}), and the "
                f"rest could not be read to record it: {reason}. Cassette {self.cassette.path} notes the "
                "recording as abandoned, and a replay of it will miss saying so. Read the stream to its end, "
                "or give the call more time (deadline, call_timeout), and record again."
            )
            for what, reason in self._abandoned
        ]

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
        if self.prunes and not test_failed:
            self.cassette.drop_unused_requests = True  # vcrpy's own: played and new interactions are kept
        self.cassette.save()
        self.saved = True
        if not self.redacted:
            return None
        kinds = ", ".join(f"{kind} x{count}" for kind, count in self.redacted.items())
        return (
            f"pytest-llm-guard: credential-shaped strings were redacted from cassette {self.cassette.path} "
            f"before it was written ({kinds}); a replay returns REDACTED where an answer held one. "
            "Check what the test sends and records."
        )

    @property
    def shared(self) -> bool:
        """Named or given a path (``llm_cassette``): other tests may use it, so it is judged at the session's end."""
        return self.settings.cassette_name is not None or self.settings.cassette_path is not None

    @property
    def prunes(self) -> bool:
        """Recordings this test did not play are dropped as it saves (its own cassette, ``new_episodes``)."""
        return self.settings.prune_unplayed and self.mode == "new_episodes" and not self.shared

    def unplayed(self) -> list[tuple[str, Any]]:
        """Recordings of the file this test did not replay ((id, request)); none when it was re-recorded."""
        return [] if self.mode == "all" or not self.existed else self.cassette.unplayed()

    def test_returned(self) -> str | None:
        """The test's function returned: keep what it left unplayed (for the session's end), and say
        what a passing test that left recordings of its own cassette unplayed is told, or None."""
        found = self.unplayed()
        self.left_unplayed = [iid for iid, _ in found]
        if not found or self.shared or self.prunes or self.settings.on_unplayed == "ignore":
            return None

        from .review import describe_request  # messages only: a replay that played all never loads it

        record, prune = OPTIONS["record"].flag, OPTIONS["prune_unplayed"].flag
        return self.scrubber.text(
            f"pytest-llm-guard: {self.nodeid} passed without replaying {plural(len(found), 'recording')} of its "
            f"cassette {self.cassette.path} (first: {describe_request(found[0][1])}): its prompts may have "
            f"drifted. Drop them with pytest '{self.nodeid}' {record}=new_episodes {prune} (or re-record, "
            f'{record}=all), or set on_unplayed = "ignore".'
        )

    def expired(self, recording_allowed: bool) -> tuple[str, str] | None:
        """When the oldest answer is older than ``cassette_max_age``: what to do (``warn``, ``fail`` or
        ``rerecord``, which needs ``recording_allowed``, else it warns) and the message a warning or
        failure says (a cassette recorded again is told in the session's summary)."""
        max_age = self.settings.cassette_max_age
        if max_age is None or self.mode == "all":
            return None
        dates = self.cassette.recorded_dates()
        if not dates or REAL.wall() - min(dates) <= max_age:
            return None
        age = REAL.wall() - min(dates)
        action = self.settings.on_expiry
        fallback = ""
        if action == "rerecord" and not recording_allowed:
            action = "warn"
            fallback = (
                " (on_expiry = rerecord, but recording is not allowed here: record mode 'none', the default "
                "when CI is set; it warns instead)"
            )
        self.expiry = {"age": age, "action": action}
        record = OPTIONS["record"].flag
        done = f"re-record it: pytest '{self.nodeid}' {record}=all"
        message = (
            f"pytest-llm-guard: cassette {self.cassette.path} of {self.nodeid} has expired: its oldest answer was "
            f"recorded {days(age)} ago, more than cassette_max_age = {days(max_age)}; {done}{fallback}."
        )
        return action, message

    def note(self, *, passed: bool) -> dict[str, Any]:
        """What the session's end needs to know of this test's use of its cassette (``upkeep.py``);
        it travels to the xdist controller on the test's teardown report."""
        s = self.settings
        return {
            "path": str(self.cassette.path),
            "test": self.nodeid,
            "mode": self.mode,
            "shared": self.shared,
            "passed": passed,
            "saved": self.saved,
            "unplayed": self.left_unplayed if passed else None,
            "expiry": self.expiry,
            "on_unplayed": s.on_unplayed,
            "prune": s.prune_unplayed and self.mode == "new_episodes",
            "match_on": list(s.match_on),
            "ignore": sorted({*s.ignore_body_fields, *s.match_ignore}),
        }

    def _replay(self, sent: Sent, attempt: Attempt) -> dict[str, Any] | None:
        """The recorded answer to replay (marked played), None to record it, or a miss raised."""
        answer = self.cassette.replay(sent)
        if answer is not None:
            attempt.source = "replayed"
            return answer
        if self.cassette.write_protected:
            attempt.source = "refused"
            raise self._miss(sent.vcr)
        return None

    def _pacer(self, attempt: Attempt, answer: dict[str, Any]) -> Pacer | None:
        """At a speed above 0: a replay cut before its end gives its recording back, so a retry
        replays it again, as a retry of a live call is sent again."""
        speed = self.settings.replay_speed
        if speed <= 0:
            return None
        return Pacer(self.clock, attempt, speed, on_cut=lambda: self.cassette.unplay(answer))

    def _response(
        self, request: httpx2.Request, recorded: dict[str, Any], attempt: Attempt, pacer: Pacer | None
    ) -> httpx2.Response:
        status, headers, body, message = playable(recorded)
        names = {name.lower(): value for name, value in headers}
        streamed = "text/event-stream" in names.get("content-type", "") and not names.get("content-encoding")
        split = _events if streamed else (lambda whole: [whole])
        stream = _Replay(pieces(body, recorded.get(TIMING), split), pacer)
        return hear(
            attempt,
            httpx2.Response(
                status,
                headers=headers,
                stream=stream,
                extensions={"reason_phrase": message.encode("ascii", "replace")} if message else {},
                request=request,
            ),
        )

    def _record(
        self,
        request: httpx2.Request,
        response: httpx2.Response,
        sent: Sent,
        attempt: Attempt,
        *,
        is_async: bool,
    ) -> httpx2.Response:
        """The answer handed on as it arrives; recorded (vcrpy's request built) once it is whole."""
        if response.status_code >= 400 and not self.record_failures:
            return response
        stopwatch = Stopwatch(self.clock.now, attempt.start, attempt.read_ahead)
        dialect: Dialect | None = dialect_for(request)
        content_type = response.headers.get("content-type", "")
        reader = decoding(
            dialect.reader(content_type) if dialect is not None else BodyReader(),
            response.headers.get("content-encoding", ""),
        )

        def on_complete(body: bytes, read_on: bool) -> None:
            recorded = sent.vcr
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
                    metadata.RECORDED: metadata.stamp(
                        model=attempt.model,
                        endpoint=attempt.endpoint_name,
                        dialect=dialect.name if dialect is not None else None,
                        sdk=dialect.sdk if dialect is not None else None,
                        now=REAL.wall(),  # a cassette's dates are the calendar's, whatever clock the test runs on
                    ),
                    TIMING: stopwatch.stored(),
                },
            )
            if not read_on:  # else it ends (or ended) as live, and the test's record is corrected
                attempt.source = "recorded"
            self.recorded.append(attempt)

        def on_abandoned(reason: str) -> None:
            what = f"{request.method} {request.url.path}"
            self._abandoned.append((what, reason))
            self.cassette.note_abandoned(
                sent.vcr, {"test": self.nodeid, "request": what, "reason": self.scrubber.text(reason)}
            )

        loop = asyncio.get_running_loop() if is_async else None
        body = _Tee(response.stream, reader, attempt, self.clock.now, stopwatch, on_complete, on_abandoned, loop=loop)
        self._bodies.append(body)
        response.stream = body
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
        from .review import gist  # a miss only: a replay that finds every request never loads it

        path = self.cassette.path
        shown = self.cassette.scrubbed(recorded)  # the message lands in CI logs
        model, last = gist(shown.body)
        lines = [
            f"No recorded response for this request in cassette {path} (record mode {self.mode!r}); "
            "no network request was made.",
            f"Request: {shown.method} {shown.uri} model={model or '?'}"
            + (f" last user message: {last!r}" if last else ""),
        ]
        # self.existed, not path.exists(): no blocking file I/O on an event loop's request path
        nearest = self.cassette.closest(shown) if self.existed else None
        note = self.cassette.abandoned(shown)
        if note is not None:
            lines.append(
                f"Its recording was abandoned, not missed: {note.get('test', 'a test')} stopped reading the "
                f"answer before its end, and the rest could not be read ({note.get('reason', 'no reason kept')}). "
                "Recording it needs the whole answer: read the stream to its end, or give the call more time."
            )
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
            f"(or {option.flag}=all to re-record the test from scratch), then commit the cassette: with CI set, "
            f"the record mode defaults to 'none' (replay only; {option.env} or {option.flag} overrides it)."
        )
        return LLMCassetteMiss(self.scrubber.text("\n".join(lines)))


def open_cassette(
    path: Path,
    settings: Settings,
    *,
    mode: str,
    nodeid: str,
    matcher: Matcher | None,
    scrubber: Scrubber,
    session_started: float | None = None,
    clock: Clock = REAL,
) -> CassetteLayer:
    """Load (or start) a test's cassette; raises :class:`LLMCassetteError` for an unreadable file.

    A cassette that only replays (``none``; ``once`` on a file that holds recordings) is read without
    vcrpy; one that may record is vcrpy's (``vcr_bridge``)."""
    ignore = frozenset(settings.ignore_body_fields) | frozenset(settings.match_ignore)
    replays, text = replay_only(path, mode)
    cassette: LLMCassette | ReplayCassette
    if replays:
        cassette = ReplayCassette(
            path, text, match_parts=settings.match_on, ignore=ignore, matcher=matcher, scrubber=scrubber
        )
    else:
        from . import vcr_bridge

        cassette = vcr_bridge.load(
            path,
            mode=mode,
            match_on=settings.match_on,
            ignore=ignore,
            matcher=matcher,
            scrubber=scrubber,
            session_started=session_started,
            max_age=settings.cassette_max_age,
        )
    return CassetteLayer(
        cassette,
        scrubber,
        nodeid=nodeid,
        mode=mode,
        record_failures=settings.record_failures,
        clock=clock,
        settings=settings,
    )


def _headers_at(recorded: dict[str, Any]) -> float:
    timing = recorded.get(TIMING)
    return float(timing.get("headers", 0.0)) if isinstance(timing, dict) else 0.0
