"""A cassette that only replays: loaded, indexed and answered without vcrpy.

Record mode ``none`` (the default on CI), and ``once`` on a file that holds recordings, never
write: look-up is all they do, and it needs no vcrpy, so they do without it (with wrapt, some 40
modules and 10 ms of a replaying session). They look up as ``vcr_bridge.LLMCassette`` does (the
key as sent; the scrubbed key when a recording holds REDACTED where the request held a secret; a
matcher hook handed vcrpy's requests, scrubbed as before) and explain a miss alike: those rare
paths build vcrpy's requests through ``vcr_bridge``, and import it then.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..scrub import Scrubber
from . import files, metadata
from .matching import closest, request_key
from .parsed import ABANDONED, Matcher, Sent, loaded_key, note_id, parse


class ReplayCassette:
    """The recordings of one file, for replay only (write-protected): vcrpy's cassette's interface as the
    cassette layer uses it."""

    write_protected = True
    drop_unused_requests = False

    def __init__(
        self,
        path: Path,
        text: str | None,
        *,
        match_parts: tuple[str, ...],
        ignore: frozenset[str],
        matcher: Matcher | None,
        scrubber: Scrubber,
    ) -> None:
        """``text``: the file's, None when it is missing or empty (every request misses)."""
        self.path = path
        self._match_parts, self._ignore, self._matcher, self._scrubber = match_parts, ignore, matcher, scrubber
        requests: list[Any] = []
        responses: list[dict[str, Any]] = []
        self._metadata: dict[str, Any] = {}
        if text is not None:
            try:
                requests, responses, self._metadata = parse(text)
            except Exception as exc:  # yaml errors, or valid YAML that is not a cassette
                raise files.unreadable(path, exc) from None
        self.data = list(zip(requests, responses, strict=True))
        self._keys = [loaded_key(request, match_parts, ignore) for request in requests]
        self._index: defaultdict[tuple[str, ...], list[int]] = defaultdict(list)
        for number, key in enumerate(self._keys):
            self._index[key].append(number)
        self.play_counts = [0] * len(self.data)
        self._played = threading.Lock()

    def replay(self, request: Sent) -> dict[str, Any] | None:
        """The first recording of ``request`` not played yet (marked played now), or None
        (``LLMCassette.replay``'s look-up: the key as sent, then the scrubbed one)."""
        sent_key = request_key(request, self._match_parts, self._ignore)
        scrubbed: Any = None
        for attempt in range(2):
            if attempt:
                scrubbed = scrubbed or self.scrubbed(request.vcr)
                key = request_key(scrubbed, self._match_parts, self._ignore)
                if key == sent_key:
                    return None
            else:
                key = sent_key
            for index in self._index.get(key, ()):
                if self.play_counts[index]:
                    continue
                stored, response = self.data[index]
                if self._matcher is not None:
                    from .vcr_bridge import as_vcr

                    scrubbed = scrubbed or self.scrubbed(request.vcr)
                    if self._matcher(scrubbed, as_vcr(stored)) is False:
                        continue
                with self._played:  # code under test may replay from several threads at once
                    if self.play_counts[index]:
                        continue
                    self.play_counts[index] = 1
                return response
        return None

    def unplay(self, response: dict[str, Any]) -> None:
        """Give back a replayed answer that was cut before its end: a retry of the request replays it again."""
        with self._played:
            for index, (_, played) in enumerate(self.data):
                if played is response and self.play_counts[index] > 0:
                    self.play_counts[index] -= 1
                    return

    def save(self) -> None:
        """Nothing to write: a replay changes no file."""

    def recorded_dates(self) -> list[float]:
        """When each answer the file held was recorded (``time.time()``), for those stamped with it."""
        found = (metadata.recorded_at(response) for _, response in self.data)
        return [when for when in found if when is not None]

    def unplayed(self) -> list[tuple[str, Any]]:
        """Recordings not replayed: (id, request), ids as :func:`review.ids` gives them for the file."""
        if all(self.play_counts):  # every one played: nothing to name (nor review.py to import)
            return []
        from .review import ids_of_keys

        found = zip(ids_of_keys(self._keys), (request for request, _ in self.data), strict=True)
        return [(iid, request) for index, (iid, request) in enumerate(found) if self.play_counts[index] == 0]

    def scrubbed(self, request: Any) -> Any:
        """vcrpy's request as it would be written (and is matched): scrubbed, pretty-printed."""
        from .vcr_bridge import readable_request

        self._scrubber.refresh()  # a key set since the test began is a secret too
        return readable_request(self._scrubber)(request)

    def closest(self, request: Any) -> tuple[Any, list[str]] | None:
        """The recorded request most like ``request``, with a readable diff of what differs (misses only)."""
        sent = request_key(self.scrubbed(request), self._match_parts, self._ignore)
        stored = ((r, request_key(r, self._match_parts, self._ignore)) for r, _ in self.data)
        return closest(sent, stored, self._match_parts)

    def abandoned(self, scrubbed: Any) -> dict[str, str] | None:
        """The note of a recording of this (scrubbed) request that was abandoned, if there is one."""
        notes = self._metadata.get(ABANDONED)
        key = request_key(scrubbed, self._match_parts, self._ignore)
        return notes.get(note_id(key)) if isinstance(notes, dict) else None


def replay_only(path: Path, mode: str) -> tuple[bool, str | None]:
    """Whether a cassette opened in ``mode`` only replays, and then the file's text: always in ``none``;
    in ``once`` when the file holds something (vcrpy's rule: a cassette it could load is write-protected).
    Raises :class:`LLMCassetteError` for a file that cannot be read."""
    if mode not in ("none", "once"):
        return False, None
    text = files.read_text(path)
    return mode == "none" or text is not None, text
