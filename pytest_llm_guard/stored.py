"""What a cassette stores, read as its loaders read it: for ``--llm-audit`` and the write-time scrub.

A secret is stored in forms the file's text does not show whole: YAML folds a long
quoted string at a space (with escapes), and pytest-recording keeps most answers as
gzip ``!!binary``. Scanning the text would miss both; these helpers give the strings
as loaded and the bodies decompressed (gzip, deflate, and br when ``brotli`` is installed).
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Callable, Iterator
from typing import Any

_BINARY = "tag:yaml.org,2002:binary"


def _brotli() -> Any:
    try:
        import brotli  # type: ignore[import-not-found]
    except ImportError:
        return None
    return brotli


def _codecs() -> list[tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    """(decompress, compress) of gzip, deflate (zlib-wrapped, then raw) and br: the likeliest first.

    Asked only of a body that is not UTF-8 text, so gzip loads here: most sessions never need it."""
    import gzip

    codecs = [
        (gzip.decompress, gzip.compress),
        (zlib.decompress, zlib.compress),
        (lambda d: zlib.decompress(d, -zlib.MAX_WBITS), _raw_deflate),
    ]
    brotli = _brotli()
    if brotli is not None:
        codecs.append((brotli.decompress, brotli.compress))
    return codecs


def _raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def as_text(data: bytes) -> tuple[str, Callable[[str], bytes]] | None:
    """A body's text (decompressed if it is compressed), and how to store an edited text the same way;
    None for binary that is not text (an image, a body compressed with a codec not installed)."""
    try:
        return data.decode("utf-8"), lambda text: text.encode("utf-8")
    except UnicodeDecodeError:
        pass
    for decompress, compress in _codecs():
        try:
            text = decompress(data).decode("utf-8")
        except Exception:  # noqa: BLE001 - each codec fails its own way on data not its own
            continue
        return text, lambda edited, compress=compress: compress(edited.encode("utf-8"))  # type: ignore[misc]
    return None


def strings(text: str, *, json_file: bool = False) -> Iterator[tuple[int | None, str]]:
    """Every string a cassette stores, as loaded, with the line it starts on (None in JSON):
    folded and quoted YAML strings joined, ``!!binary`` bodies decoded and decompressed."""
    if json_file:
        yield from ((None, value) for value in _json_strings(json.loads(text)))
        return
    import yaml  # here, not at the top: a guarded test scrubs its report without it, and it costs ~10 ms

    for document in yaml.compose_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
        yield from _node_strings(document)


def _node_strings(node: Any) -> Iterator[tuple[int | None, str]]:
    import yaml

    stack = [node]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        if isinstance(node, yaml.ScalarNode):
            value = node.value
            if node.tag == _BINARY:
                try:
                    loaded = as_text(base64.b64decode("".join(value.split())))
                except (binascii.Error, ValueError):
                    loaded = None
                if loaded is None:
                    continue
                value = loaded[0]
            first = node.start_mark.line + 1
            yield first + 1 if node.style == "|" else first, value
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))
        elif isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in reversed(node.value) for item in reversed(pair))


def _json_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_strings(item)
