"""The fixture clients' TLS context: httpx2's default one, whose CA bundle is read at the first handshake.

Reading the bundle is most of what building httpx2's default context costs (about 20 ms, once per
process); a session that only replays cassettes, or talks plain HTTP to a local server, makes no
handshake and so never needs it. :class:`DeferredCAContext` is an ``ssl.SSLContext`` configured as
httpx2's is, that loads the same locations into itself, once, just before its first
``wrap_socket`` (httpcore2's sync backend) or ``wrap_bio`` (its anyio and trio backends, and TLS
inside an HTTPS proxy): every handshake is verified exactly as httpx2's own context verifies it.

httpx2 honours ``SSL_CERT_FILE`` (a bundle, read as ``ssl.create_default_context(cafile=...)``
reads it: deferred too, with that function's settings), then ``SSL_CERT_DIR`` (a directory OpenSSL
reads certificate by certificate during a handshake: nothing to defer), then, on Linux and the like,
OpenSSL's compiled-in locations (deferred); on Windows and macOS it asks the system's trust store
(truststore). Where nothing is deferred, and when ``SSL_CERT_FILE`` names no file (so that httpx2's
own error is raised when the client is built), the context is httpx2's own, built at once.
"""

from __future__ import annotations

import os
import platform
import re
import ssl
import threading
from collections.abc import Callable
from typing import Any

Locations = tuple[str | None, str | None] | Callable[[], tuple[str | None, str | None]]
"""A CA file and directory (either may be None), or what finds them."""

_SETTINGS = (
    "options",
    "verify_flags",
    "minimum_version",
    "maximum_version",
    "post_handshake_auth",
    "hostname_checks_common_name",
    "check_hostname",
    "verify_mode",
    "keylog_filename",
)
"""What a client context's owner may set, besides its certificates (security_level and ciphers follow
``options`` and OpenSSL's defaults)."""


class DeferredCAContext(ssl.SSLContext):
    """A client context (``PROTOCOL_TLS_CLIENT``: hostname checked, certificate required) that loads
    ``cafile``/``capath`` into itself before its first handshake, or before its CAs are first listed."""

    def __new__(cls, locations: Locations, *, like: ssl.SSLContext | None = None) -> DeferredCAContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self, locations: Locations, *, like: ssl.SSLContext | None = None) -> None:
        """``locations``: the CA file and directory, or what finds them when they are first needed;
        ``like``: a context whose settings this one takes (``ssl.create_default_context``'s, which vary
        with Python's version), its certificates aside."""
        for name in _SETTINGS if like is not None else ():
            if hasattr(like, name) and getattr(self, name) != getattr(like, name):  # some need OpenSSL 1.1.1
                setattr(self, name, getattr(like, name))
        self._locations = locations
        self._pending = True
        self._loading = threading.Lock()

    def _load(self) -> None:
        if not self._pending:
            return
        with self._loading:  # handshakes on several threads at once load it once
            if self._pending:
                cafile, capath = self._locations() if callable(self._locations) else self._locations
                if cafile or capath:
                    self.load_verify_locations(cafile, capath)
                self._pending = False

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load()
        return super().wrap_bio(*args, **kwargs)

    def get_ca_certs(self, binary_form: bool = False) -> Any:
        self._load()
        return super().get_ca_certs(binary_form)

    def cert_store_stats(self) -> dict[str, int]:
        self._load()
        return super().cert_store_stats()


def default_context() -> ssl.SSLContext:
    """What ``httpx2.create_ssl_context()`` returns now, its CA bundle read at the first handshake where
    httpx2 would read a bundle (the choice of locations follows httpcore2's ``default_ssl_context``)."""
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile and os.path.isfile(cafile):
        like = ssl.create_default_context(capath=os.path.dirname(os.path.abspath(cafile)))  # no bundle read
        return DeferredCAContext((cafile, None), like=like)
    if cafile or os.environ.get("SSL_CERT_DIR") or platform.system() in ("Windows", "Darwin"):
        import httpx2

        return httpx2.create_ssl_context()
    return DeferredCAContext(_default_locations)  # found at the first handshake: they are httpcore2's


def _default_locations() -> tuple[str | None, str | None]:
    """OpenSSL's compiled-in CA file and directory (not ``set_default_verify_paths()``, which would read
    SSL_CERT_*), a directory only if it holds hashed names, else the first usual bundle that exists."""
    from httpcore2._ssl import CA_FILE_CANDIDATES

    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if capath and not cafile and not any(re.fullmatch(r"[0-9a-fA-F]{8}\.\d", f) for f in os.listdir(capath)):
        capath = None
    if not cafile and not capath:
        cafile = next(filter(os.path.isfile, CA_FILE_CANDIDATES), None)
    return cafile, capath
