"""The one module that touches vcrpy: its cassette, persister, serializer and request types.

Why a bridge: vcrpy gives us record modes, the file format and decompression, but our
look-up, saving and hooks reach into its internals (``Cassette._responses``,
``_old_interactions``, ``_save``, ``filter_request``...). Keeping every such touch here
means a vcrpy release that moves them breaks one file.
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
from vcr.request import Request as VcrRequest
from vcr.serialize import deserialize, serialize
from vcr.serializers import compat, yamlserializer

from ..errors import LLMCassetteError
from ..scrub import Scrubber
from . import files
from .matching import closest, request_key

Matcher = Callable[[VcrRequest, VcrRequest], "bool | None"]


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
                self._index[self._key(self.data[-1][0])].append(before)

    def replay(self, request: VcrRequest) -> dict[str, Any] | None:
        """The first recording of ``request`` not played yet (marked played now), or None.

        One scrub and one index look-up, where vcrpy's can_play_response_for and
        play_response would each scrub and scan.
        """
        if self.record_mode == RecordMode.ALL or not (self.rewound or self.allow_playback_repeats):
            return None
        request = self._before_record_request(request)
        for index in self._index.get(self._key(request), ()):
            stored, response = self.data[index]
            if (self.play_counts[index] == 0 or self.allow_playback_repeats) and self._matcher(
                request, stored
            ) is not False:
                if self.play_counts[index] == 0 and index < self._loaded_count:
                    self._played_interactions.append((stored, response))
                self.play_counts[index] += 1
                return response
        return None

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

    def save(self) -> None:
        if self.dirty:
            self._save()

    def scrubbed(self, request: VcrRequest) -> VcrRequest:
        """The request as it would be written (and is matched): scrubbed, pretty-printed."""
        return self.filter_request(request)

    def closest(self, request: VcrRequest) -> tuple[VcrRequest, list[str]] | None:
        """The recorded request most like ``request``, with a readable diff of what differs (misses only)."""
        request = self._before_record_request(request)
        stored = ((r, self._key(r)) for r, _ in self.data)
        return closest(self._key(request), stored, self._match_parts)


class ReadableYaml:
    """vcrpy's YAML format: read by vcrpy's safe loader, written with readable strings."""

    @staticmethod
    def serialize(cassette_dict: dict[str, Any]) -> str:
        return files.dump_yaml(cassette_dict)

    @staticmethod
    def deserialize(text: str) -> Any:
        data = yamlserializer.deserialize(text)
        problem = _missing_field(data)
        if problem:
            raise ValueError(problem)
        return data


class _Scrubbed:
    """A serializer that scrubs every value as stored (``Scrubber.tree``) before writing it."""

    def __init__(self, serializer: Any, scrubber: Scrubber) -> None:
        self._serializer = serializer
        self._scrubber = scrubber

    def serialize(self, data: dict[str, Any]) -> str:
        return self._serializer.serialize(self._scrubber.tree(data))


_REQUIRED = {
    "request": ("method", "uri", "body", "headers"),
    "response": ("status", "headers", "body"),
}


def _missing_field(data: Any) -> str | None:
    """What a cassette lacks that replay needs, named by interaction number and field."""
    if not isinstance(data, dict) or not isinstance(data.get("interactions"), list):
        return "it has no 'interactions' list"
    for number, interaction in enumerate(data["interactions"], 1):
        if not isinstance(interaction, dict):
            return f"interaction {number} is not a mapping"
        for part, fields in _REQUIRED.items():
            value = interaction.get(part)
            if not isinstance(value, dict):
                return f"interaction {number} has no {part}"
            missing = [f for f in fields if f not in value]
            if missing:
                return f"interaction {number} has no {part}.{missing[0]}"
        response = interaction["response"]
        if not isinstance(response["status"], dict) or "code" not in response["status"]:
            return f"interaction {number} has no response.status.code"
        if not isinstance(response["body"], dict) or "string" not in response["body"]:
            return f"interaction {number} has no response.body.string"
    return None


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

    def __init__(self, scrubber: Scrubber) -> None:
        self._loaded: tuple[list, list] = ([], [])
        self._scrubber = scrubber
        self._request = _readable_request(scrubber)
        self._response = _readable_response(scrubber)

    def load_cassette(self, cassette_path: str | Path, serializer: Any) -> tuple[list, list]:
        requests, responses = self._read(Path(cassette_path), serializer)
        self._loaded = (list(requests), copy.deepcopy(responses))  # fingerprinted only if it is saved
        return requests, responses

    def save_cassette(self, cassette_path: str | Path, cassette_dict: dict[str, Any], serializer: Any) -> None:
        path = Path(cassette_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with files.locked(path.parent):
            # Every interaction written is scrubbed and made readable now, those loaded from the file
            # too (a cassette another tool wrote keeps its cookies until it is saved here).
            requests = [self._request(q) for q in cassette_dict["requests"]]
            responses = [self._response(copy.deepcopy(r)) for r in cassette_dict["responses"]]
            ours = {_fingerprint(q, r) for q, r in zip(requests, responses, strict=True)}
            loaded = {_fingerprint(q, r) for q, r in zip(*self._loaded, strict=True)}
            try:
                theirs = zip(*self._read(path, serializer), strict=True)
            except (CassetteNotFoundError, LLMCassetteError):
                theirs = zip((), (), strict=True)
            for q, r in theirs:
                fingerprint = _fingerprint(q, r)
                if fingerprint not in ours and fingerprint not in loaded:
                    requests.append(q)
                    responses.append(r)
            files.remove_stale_temporaries(path)
            # Scrubbed once more as a whole, with every secret known now (some are learned late).
            text = serialize({"requests": requests, "responses": responses}, _Scrubbed(serializer, self._scrubber))
            files.write_atomically(path, text)

    @staticmethod
    def _read(path: Path, serializer: Any) -> tuple[list, list]:
        text = files.read_text(path)
        if text is None:
            raise CassetteNotFoundError()
        try:
            requests, responses, *_ = deserialize(text, serializer)
        except Exception as exc:  # yaml errors, or valid YAML that is not a cassette
            raise files.unreadable(path, exc) from None
        return requests, responses


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


def _readable_request(scrubber: Scrubber) -> Callable[[VcrRequest], VcrRequest]:
    """``before_record_request`` (also run before matching): scrub, pretty-print a JSON body."""

    def before_record_request(request: VcrRequest) -> VcrRequest:
        request = scrubber.request(request)
        request.body = _pretty_json(request.body)
        request.headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        return request

    return before_record_request


def vcr_request(method: str, url: str, body: bytes, headers: dict[str, str]) -> VcrRequest:
    return VcrRequest(method, url, body, headers)


def playable(recorded: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes, str | None]:
    """A recorded response as status, header pairs, body bytes and reason phrase."""
    recorded = compat.convert_to_bytes(copy.deepcopy(recorded))
    headers = [(name, value) for name, values in recorded["headers"].items() for value in values]
    return recorded["status"]["code"], headers, recorded["body"]["string"] or b"", recorded["status"].get("message")


def load(
    path: Path, *, mode: str, match_on: tuple[str, ...], ignore: frozenset[str], matcher: Matcher, scrubber: Scrubber
) -> LLMCassette:
    """Load (or start) a cassette; raises :class:`LLMCassetteError` for an unreadable file."""
    return LLMCassette.load(
        path=str(path),
        serializer=ReadableYaml,
        persister=AtomicPersister(scrubber),
        record_mode=RecordMode(mode),
        match_on=(),
        before_record_request=_readable_request(scrubber),
        before_record_response=_readable_response(scrubber),
        match_parts=match_on,
        ignore=ignore,
        matcher=matcher,
    )
