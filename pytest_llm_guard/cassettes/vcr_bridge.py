"""The one module that builds on vcrpy: its cassette, persister, serializer and request types.

Why a bridge: vcrpy gives us record modes, the file format and decompression, but our
look-up, saving and hooks reach into its internals (``Cassette._responses``,
``_old_interactions``, ``_save``, ``filter_request``...). Keeping every such touch here
means a vcrpy release that moves them breaks one file. A cassette that only replays does without
vcrpy (``replaying.py``); this module is imported when a test records (or a miss is explained).
"""

from __future__ import annotations

import copy
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vcr.cassette import Cassette
from vcr.filters import decode_response
from vcr.persisters.filesystem import CassetteNotFoundError
from vcr.record_mode import RecordMode
from vcr.request import HeadersDict
from vcr.request import Request as VcrRequest
from vcr.serialize import deserialize, serialize
from vcr.serializers import compat, yamlserializer  # noqa: F401 - the full loader, as parsed.py reads with it

from ..clock import REAL
from ..errors import LLMCassetteError
from ..scrub import Scrubber
from . import files, metadata, parsed
from .matching import closest, request_key
from .parsed import ABANDONED, Matcher, ReadableYaml, Sent, note_id, playable
from .review import ids_of_keys, same_answer

__all__ = ["AtomicPersister", "LLMCassette", "Matcher", "ReadableYaml", "Sent", "load", "parse", "playable"]

Key = Callable[[VcrRequest], tuple[str, ...]]


def loaded_key(request: VcrRequest, match_parts: tuple[str, ...], ignore: frozenset[str]) -> tuple[str, ...]:
    """The key of a request as :func:`parse` gave it (shared, never changed): computed once per match rule."""
    return parsed.loaded_key(request, match_parts, ignore, request_key)


class LLMCassette(Cassette):
    """A vcrpy cassette whose look-up is a dict access instead of a scan running every matcher."""

    def __init__(
        self,
        *args: Any,
        match_parts: tuple[str, ...],
        ignore: frozenset[str],
        matcher: Matcher | None,
        **kwargs: Any,
    ) -> None:
        self._match_parts = match_parts
        self._ignore = ignore
        self._matcher = matcher
        self._index: defaultdict[tuple[str, ...], list[int]] = defaultdict(list)
        self._keys: list[tuple[str, ...]] = []
        """The key of each interaction, in order (computed once, as it is appended)."""
        self._appending = threading.Lock()
        self._loading = False
        super().__init__(*args, **kwargs)

    @property
    def path(self) -> Path:
        return Path(self._path)

    def _key(self, request: VcrRequest) -> tuple[str, ...]:
        return request_key(request, self._match_parts, self._ignore)

    def _load(self) -> None:
        self._loading = True
        try:
            super()._load()
        finally:
            self._loading = False
        if self.record_mode == RecordMode.ALL:  # notes of the file's old recordings go with them
            self._metadata = {}

    def append(self, request: VcrRequest, response: dict[str, Any]) -> None:
        with self._appending:  # code under test may record from several threads at once
            before = len(self.data)
            if self._loading:
                # As the file has it: scrubbed when it was recorded, and again whenever it is saved.
                # vcrpy's hooks (a scrub, a deep copy, decompression) would cost a replay of a
                # thousand interactions most of a second, for nothing replay needs.
                self.data.append((request, response))
            else:
                super().append(request, response)
            if len(self.data) > before:
                stored = self.data[-1][0]
                key = loaded_key(stored, self._match_parts, self._ignore) if self._loading else self._key(stored)
                self._keys.append(key)
                self._index[key].append(before)

    def replay(self, request: Sent | VcrRequest) -> dict[str, Any] | None:
        """The first recording of ``request`` not played yet (marked played now), or None.

        Index look-ups, where vcrpy's can_play_response_for and play_response would each scrub
        and scan. Scrubbing is what is written; a look-up needs it only when the request as sent
        has no playable recording: a recording holds REDACTED where the request held a secret (a
        key in the query or the body, a configured body field), so the scrubbed request's key
        finds it. A matcher hook is handed the scrubbed request, as it always was.
        """
        if self.record_mode == RecordMode.ALL or not (self.rewound or self.allow_playback_repeats):
            return None
        sent_key = self._key(request)
        scrubbed: VcrRequest | None = None

        def scrub() -> VcrRequest:
            # a Sent's own request; by attribute, not class: pytester's in-process runs may hold two copies of it
            return self._before_record_request(getattr(request, "vcr", request))

        for attempt in range(2):
            if attempt:
                scrubbed = scrubbed or scrub()
                key = self._key(scrubbed)
                if key == sent_key:
                    return None
            else:
                key = sent_key
            for index in self._index.get(key, ()):
                stored, response = self.data[index]
                if self.play_counts[index] and not self.allow_playback_repeats:
                    continue
                if self._matcher is not None:
                    scrubbed = scrubbed or scrub()
                    if self._matcher(scrubbed, stored) is False:
                        continue
                if self.play_counts[index] == 0 and index < self._loaded_count:
                    self._played_interactions.append((stored, response))
                self.play_counts[index] += 1
                return response
        return None

    def unplay(self, response: dict[str, Any]) -> None:
        """Give back a replayed answer that was cut before its end (a paced replay ran out of time):
        a retry of the request replays it again."""
        with self._appending:
            for index, (_, played) in enumerate(self.data):
                if played is response and self.play_counts[index] > 0:
                    self.play_counts[index] -= 1
                    if self.play_counts[index] == 0:
                        self._played_interactions = [p for p in self._played_interactions if p[1] is not response]
                    return

    def _responses(self, request: VcrRequest) -> Iterator[tuple[int, dict[str, Any]]]:
        request = self._before_record_request(request)
        for index in self._index.get(self._key(request), ()):
            stored, response = self.data[index]
            if self._matcher is None or self._matcher(request, stored) is not False:
                yield index, response

    def _new_interactions(self) -> list[tuple[VcrRequest, dict[str, Any]]]:
        old = {self._key(request) for request, _ in self._old_interactions}
        return [(request, response) for request, response in self.data if self._key(request) not in old]

    def _rerecorded_interactions(self) -> list[tuple[VcrRequest, dict[str, Any]]]:
        """``all``: only what this test recorded. What the file held is the persister's to merge:
        what this session wrote is kept, what it held before the session is replaced."""
        return self.data[self._loaded_count :]

    def note_abandoned(self, request: VcrRequest, note: dict[str, str]) -> None:
        """Keep in the cassette why this request's answer could not be recorded (a miss then says so)."""
        notes = self._metadata.setdefault(ABANDONED, {})
        notes[note_id(self._key(self._before_record_request(request)))] = note
        self.dirty = True

    def abandoned(self, scrubbed: VcrRequest) -> dict[str, str] | None:
        """The note of a recording of this (scrubbed) request that was abandoned, if there is one."""
        notes = self._metadata.get(ABANDONED)
        return notes.get(note_id(self._key(scrubbed))) if isinstance(notes, dict) else None

    def save(self) -> None:
        if self.dirty or (self.drop_unused_requests and len(self._played_interactions) < self._loaded_count):
            self._save()

    def recorded_dates(self) -> list[float]:
        """When each answer the file held was recorded (``time.time()``), for those stamped with it."""
        found = (metadata.recorded_at(response) for _, response in self.data[: self._loaded_count])
        return [when for when in found if when is not None]

    def unplayed(self) -> list[tuple[str, VcrRequest]]:
        """Recordings the file held when it was loaded that were not replayed since: (id, request),
        ids as :func:`review.ids` gives them for the file, so every process names them alike."""
        loaded = [request for request, _ in self.data[: self._loaded_count]]
        found = zip(ids_of_keys(self._keys[: self._loaded_count]), loaded, strict=True)
        return [(iid, request) for index, (iid, request) in enumerate(found) if self.play_counts[index] == 0]

    def scrubbed(self, request: VcrRequest) -> VcrRequest:
        """The request as it would be written (and is matched): scrubbed, pretty-printed."""
        return self.filter_request(request)

    def closest(self, request: VcrRequest) -> tuple[VcrRequest, list[str]] | None:
        """The recorded request most like ``request``, with a readable diff of what differs (misses only)."""
        request = self._before_record_request(request)
        stored = ((r, self._key(r)) for r, _ in self.data)
        return closest(self._key(request), stored, self._match_parts)


class _Scrubbed:
    """A serializer that scrubs every value as stored (``Scrubber.tree``) before writing it."""

    def __init__(self, serializer: Any, scrubber: Scrubber) -> None:
        self._serializer = serializer
        self._scrubber = scrubber

    def serialize(self, data: dict[str, Any]) -> str:
        return self._serializer.serialize(self._scrubber.tree(data))


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

    Re-recording (``rerecord_since``, the session's start): the session's first write
    replaces what the file held before the session; later writes (any worker, any
    session started meanwhile) keep what was written since, except the requests they
    recorded again. Judged by the file's time under the lock, so every writer agrees.

    Stable files: an answer recorded again that is the same as the one the file held before
    the session (``before``, else what this cassette loaded), ids and timestamps aside, is
    written as it was recorded then; a file whose text would not change is not written.
    """

    def __init__(
        self,
        scrubber: Scrubber,
        *,
        key: Key | None = None,
        rerecord_since: float | None = None,
        before: tuple[list, list, dict[str, Any]] | None = None,
        expired_before: float | None = None,
    ) -> None:
        self._loaded: tuple[list, list] = ([], [])
        self._before = before
        self._expired_before = expired_before
        """An answer recorded before this time (``time.time()``) has expired: kept unchanged, it is dated now."""
        self._scrubber = scrubber
        self._key = key or (lambda request: (request.method, request.uri, str(request.body)))
        self._rerecord_since = rerecord_since
        self._request = readable_request(scrubber)
        self._response = _readable_response(scrubber)

    def load_cassette(self, cassette_path: str | Path, serializer: Any) -> tuple[Any, ...]:
        requests, responses, found = self._read(Path(cassette_path), serializer)
        self._loaded = (list(requests), list(responses))  # fingerprinted only if it is saved
        if self._before is None:
            self._before = (self._loaded[0], self._loaded[1], found)
        return (requests, responses, found) if found else (requests, responses)

    def save_cassette(self, cassette_path: str | Path, cassette_dict: dict[str, Any], serializer: Any) -> None:
        path = Path(cassette_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.locked(path.parent):
            # Every interaction written is scrubbed and made readable now, those loaded from the file
            # too (a cassette another tool wrote keeps its cookies until it is saved here).
            ours = [
                (self._request(q), self._response(copy.deepcopy(r)))
                for q, r in zip(cassette_dict["requests"], cassette_dict["responses"], strict=True)
            ]
            theirs, their_metadata = self._theirs(path, serializer)
            theirs = [(q, copy.deepcopy(r)) for q, r in theirs]  # parsed answers are shared; writing changes them
            if self._rerecord_since is not None:
                again = {self._key(q) for q, _ in ours}
                interactions = [(q, r) for q, r in theirs if self._key(q) not in again] + ours
            else:
                known = {_fingerprint(q, r) for q, r in ours}
                known |= {_fingerprint(q, r) for q, r in zip(*self._loaded, strict=True)}
                interactions = ours + [(q, r) for q, r in theirs if _fingerprint(q, r) not in known]
            interactions = self._as_before(interactions)
            merged = self._merged_metadata(their_metadata, cassette_dict.get("metadata") or {}, interactions)
            if self._before is not None and metadata.HEADER in self._before[2]:
                merged.setdefault(metadata.HEADER, self._before[2][metadata.HEADER])
            files.remove_stale_temporaries(path)
            data: dict[str, Any] = {"requests": [q for q, _ in interactions], "responses": [r for _, r in interactions]}
            if merged:
                data["metadata"] = merged
            # Scrubbed once more as a whole, with every secret known now (some are learned late).
            text = serialize(data, _Scrubbed(serializer, self._scrubber))
            if text != files.read_text(path):
                files.write_atomically(path, text)

    def _as_before(self, interactions: list[tuple[VcrRequest, Any]]) -> list[tuple[VcrRequest, Any]]:
        """Each answer that is the same as the one recorded for its request before the session,
        replaced by that recording: its ids, dates and stamp as they were."""
        if not self._before:
            return interactions
        earlier: defaultdict[tuple[str, ...], list[tuple[VcrRequest, Any]]] = defaultdict(list)
        for q, r in zip(self._before[0], self._before[1], strict=True):
            earlier[self._key(q)].append((q, r))
        kept = []
        for q, r in interactions:
            candidates = earlier.get(self._key(q))
            old = candidates.pop(0) if candidates else None
            if old is not None and same_answer(q, old[1], r):
                q, r = self._request(copy.deepcopy(old[0])), self._response(copy.deepcopy(old[1]))
                when = metadata.recorded_at(r)
                if self._expired_before is not None and when is not None and when < self._expired_before:
                    r = metadata.restamped(r, REAL.wall())
            kept.append((q, r))
        return kept

    def _theirs(self, path: Path, serializer: Any) -> tuple[list[tuple[VcrRequest, Any]], dict[str, Any]]:
        """What the file holds now (call holding the lock): nothing when it is being re-recorded and
        was last written before the session started."""
        if self._rerecord_since is not None and files.written_before(path, self._rerecord_since):
            return [], {}
        try:
            requests, responses, metadata = self._read(path, serializer)
        except (CassetteNotFoundError, LLMCassetteError):
            return [], {}
        return list(zip(requests, responses, strict=True)), metadata

    def _merged_metadata(
        self, theirs: dict[str, Any], ours: dict[str, Any], interactions: list[tuple[VcrRequest, Any]]
    ) -> dict[str, Any]:
        """Both sides' metadata; a note of an abandoned recording goes once the request is recorded."""
        merged = {**theirs, **ours}
        notes = {**(theirs.get(ABANDONED) or {}), **(ours.get(ABANDONED) or {})}
        recorded = {note_id(self._key(q)) for q, _ in interactions}
        notes = {nid: note for nid, note in notes.items() if nid not in recorded}
        merged.pop(ABANDONED, None)
        if notes:
            merged[ABANDONED] = notes
        return merged

    @staticmethod
    def _read(path: Path, serializer: Any) -> tuple[list, list, dict[str, Any]]:
        text = files.read_text(path)
        if text is None:
            raise CassetteNotFoundError()
        try:
            if serializer is ReadableYaml:
                return parse(text)
            requests, responses, *metadata = deserialize(text, serializer)
        except Exception as exc:  # yaml errors, or valid YAML that is not a cassette
            raise files.unreadable(path, exc) from None
        return requests, responses, (metadata[0] if metadata and isinstance(metadata[0], dict) else {})


def _pretty_json(body: Any) -> Any:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except (ValueError, TypeError, UnicodeDecodeError):
        return body


def header(headers: dict[str, Any], name: str) -> str:
    """A header of a vcrpy response dict (values are lists), case-insensitively."""
    for key, values in headers.items():
        if key.lower() == name and values:
            return values[0]
    return ""


def _readable_response(scrubber: Scrubber) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``before_record_response``: decompress, pretty-print JSON, drop a now wrong length, scrub."""

    def before_record_response(response: dict[str, Any]) -> dict[str, Any]:
        response = decode_response(response)
        headers = response["headers"]
        if "json" in header(headers, "content-type") and not header(headers, "content-encoding"):
            response["body"]["string"] = _pretty_json(response["body"]["string"])
            response["headers"] = {k: v for k, v in headers.items() if k.lower() != "content-length"}
        return scrubber.response(response)

    return before_record_response


def readable_request(scrubber: Scrubber) -> Callable[[VcrRequest], VcrRequest]:
    """``before_record_request`` (also run before matching): scrub, pretty-print a JSON body."""

    def before_record_request(request: VcrRequest) -> VcrRequest:
        request = scrubber.request(request)
        request.body = _pretty_json(request.body)
        request.headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        return request

    return before_record_request


def parse(text: str) -> tuple[list[VcrRequest], list[dict[str, Any]], dict[str, Any]]:
    """:func:`parsed.parse`, each request as vcrpy's (built once per parse, shared like it)."""
    requests, responses, found = parsed.parse(text)
    return [as_vcr(request) for request in requests], responses, found


def as_vcr(request: Any) -> VcrRequest:
    """vcrpy's request for a recorded one (``Request._from_dict``), built once and without its per-header
    and per-URL Python calls (the URL parsed once per file): some 7 ms of a 1,000-interaction load."""
    if getattr(request, "fields", None) is None:  # vcrpy's own already (by attribute: see LLMCassette.replay)
        return request
    if request.vcr is None:
        built = VcrRequest.__new__(VcrRequest)
        built.method, built._was_file, built._was_iter = request.method, False, False
        built._body, built._uri, built.parsed_uri = request.body, request.uri, request.parsed_uri
        kept = HeadersDict()
        store = kept._store  # as HeadersDict.__setitem__ sets it: a list's first value, the first spelling kept
        for name, value in request.headers.items():
            old = store.get(name.lower())
            store[name.lower()] = (old[0] if old else name, value[0] if isinstance(value, (tuple, list)) else value)
        built._headers = kept
        parsed.share_keys(request, built)
        request.vcr = built
    return request.vcr


def serialized(cassette_dict: dict[str, Any]) -> str:
    """The text of a cassette (``requests``, ``responses``, ``metadata``) as this plugin writes it."""
    responses = copy.deepcopy(cassette_dict["responses"])  # vcrpy's serialize changes answers in place
    return serialize({**cassette_dict, "responses": responses}, ReadableYaml)


def load(
    path: Path,
    *,
    mode: str,
    match_on: tuple[str, ...],
    ignore: frozenset[str],
    matcher: Matcher | None,
    scrubber: Scrubber,
    session_started: float | None = None,
    before: tuple[list, list, dict[str, Any]] | None = None,
    max_age: float | None = None,
) -> LLMCassette:
    """Load (or start) a cassette; raises :class:`LLMCassetteError` for an unreadable file.

    ``session_started`` (``time.time()``): in ``all`` mode, what the file held before it is replaced.
    ``before``: what the file held when the session started (:func:`parse`), when the session kept it.
    ``max_age`` (seconds): an answer older than this that is recorded again unchanged is dated anew.
    """
    rerecord_since = session_started if mode == "all" else None
    persister = AtomicPersister(
        scrubber,
        key=lambda request: request_key(request, match_on, ignore),
        rerecord_since=rerecord_since,
        before=before,
        expired_before=REAL.wall() - max_age if max_age is not None else None,
    )
    return LLMCassette.load(
        path=str(path),
        serializer=ReadableYaml,
        persister=persister,
        record_mode=RecordMode(mode),
        match_on=(),
        before_record_request=readable_request(scrubber),
        before_record_response=_readable_response(scrubber),
        match_parts=match_on,
        ignore=ignore,
        matcher=matcher,
    )
