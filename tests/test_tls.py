"""The fixture clients' TLS context reads its CA bundle at the first handshake, and verifies as httpx2 does.

A throwaway certificate for 127.0.0.1 is made for the session with the ``openssl`` command (these
tests skip without it); nothing here is a real secret, and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from pytest_llm_guard import clients, tls

SETTINGS = [
    "protocol",
    "verify_mode",
    "check_hostname",
    "options",
    "verify_flags",
    "minimum_version",
    "maximum_version",
    "post_handshake_auth",
    "hostname_checks_common_name",
    "keylog_filename",
    "security_level",
]
DEFAULT_LOCATIONS = pytest.mark.skipif(
    platform.system() in ("Windows", "Darwin"), reason="httpx2 asks the system's trust store here: nothing to defer"
)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made now."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed: no certificate to test TLS with")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        capture_output=True,
        timeout=30,
    )
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr.decode(errors='replace')[-200:]}")
    return cert, key


@pytest.fixture(scope="module")
def https_server(certificate: tuple[Path, Path]) -> Iterator[str]:
    """An HTTPS server on 127.0.0.1 that answers every request ``200 ok``; its base URL."""
    server_side = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_side.load_cert_chain(*map(str, certificate))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                with server_side.wrap_socket(conn, server_side=True) as tls_conn:
                    received = b""
                    while b"\r\n\r\n" not in received:
                        chunk = tls_conn.recv(4096)
                        if not chunk:
                            return
                        received += chunk
                    tls_conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except (ssl.SSLError, OSError):  # the client refused our certificate: what the refusal tests expect
                pass

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{listener.getsockname()[1]}/"
    stop.set()
    thread.join(5)
    listener.close()


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every CA location a deferred context loads, as it loads it."""
    found: list[tuple[Any, ...]] = []
    real = ssl.SSLContext.load_verify_locations

    def counting(self: ssl.SSLContext, *args: Any) -> None:
        found.append(args)
        real(self, *args)

    monkeypatch.setattr(tls.DeferredCAContext, "load_verify_locations", counting)
    return found


def _handshake(context: ssl.SSLContext) -> None:
    """Start a client handshake in memory (``wrap_bio``, as the async backends do); no peer needed."""
    client = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.com")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()


def _settings(context: ssl.SSLContext) -> dict[str, Any]:
    found = {name: getattr(context, name) for name in SETTINGS}
    found["ciphers"] = [c["name"] for c in context.get_ciphers()]
    found["store"] = context.cert_store_stats()
    found["cas"] = context.get_ca_certs(binary_form=True)
    return found


def test_no_ca_is_loaded_until_the_first_handshake_then_once(
    certificate: tuple[Path, Path], loads: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    context = tls.default_context()
    assert isinstance(context, tls.DeferredCAContext)
    assert loads == []
    _handshake(context)
    _handshake(context)
    context.wrap_socket(socket.socket(), server_hostname="example.com").close()  # the sync backend's way
    assert loads == [(str(certificate[0]), None)]


@DEFAULT_LOCATIONS
def test_with_no_ssl_cert_variables_the_compiled_in_bundle_is_deferred_too(
    loads: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    context = tls.default_context()
    assert loads == []
    _handshake(context)
    locations = tls._default_locations()
    assert loads == ([locations] if any(locations) else [])


def test_handshakes_on_many_threads_at_once_load_the_cas_once(
    certificate: tuple[Path, Path], loads: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    context = tls.default_context()
    counting = tls.DeferredCAContext.load_verify_locations

    def slow(self: ssl.SSLContext, *args: Any) -> None:
        time.sleep(0.05)  # the other threads arrive while the first is loading
        counting(self, *args)

    monkeypatch.setattr(tls.DeferredCAContext, "load_verify_locations", slow)
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def handshake() -> None:
        start.wait()
        try:
            _handshake(context)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=handshake) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert loads == [(str(certificate[0]), None)]
    assert context.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize("variables", ["SSL_CERT_FILE", "none", "SSLKEYLOGFILE"])
def test_the_context_once_loaded_is_httpx2s_own_default_context(
    variables: str, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same settings, ciphers and certificates as ``httpx2.create_ssl_context()`` built in the same
    environment: verification is exactly as strict as without the plugin."""
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    if variables == "none":
        if platform.system() in ("Windows", "Darwin"):
            pytest.skip("httpx2 asks the system's trust store here: nothing to defer")
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    else:
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    if variables == "SSLKEYLOGFILE":  # ssl.create_default_context (which httpx2 uses for SSL_CERT_FILE) reads it
        monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))
    ours = tls.default_context()
    assert isinstance(ours, tls.DeferredCAContext)
    assert _settings(ours) == _settings(httpx2.create_ssl_context())


def test_a_cert_dir_or_a_missing_cert_file_get_httpx2s_own_context(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SSL_CERT_DIR is read certificate by certificate during handshakes (nothing to defer); an
    SSL_CERT_FILE that names no file raises httpx2's own error when the client is built."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(certificate[0].parent))
    assert type(tls.default_context()) is type(httpx2.create_ssl_context())
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError) as httpx2s:
        httpx2.create_ssl_context()
    with pytest.raises(FileNotFoundError) as ours:
        tls.default_context()
    assert str(ours.value) == str(httpx2s.value)


def test_a_cert_file_that_holds_no_certificate_fails_the_first_handshake(
    https_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Read at the handshake, a broken bundle refuses every connection (httpx2 would refuse to build the
    client): verification never falls back to anything looser."""
    (tmp_path / "broken.pem").write_text("not a certificate\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "broken.pem"))
    context = tls.default_context()
    for _ in range(2):  # and the next handshake tries again, failing the same way
        with pytest.raises(httpx2.ConnectError, match="NO_CERTIFICATE_OR_CRL_FOUND|no certificate"):
            _get(https_server, context, asynchronous=False)


def _get(url: str, context: ssl.SSLContext, *, asynchronous: bool) -> httpx2.Response:
    if not asynchronous:
        with httpx2.Client(verify=context, timeout=10) as client:
            return client.get(url)

    async def get() -> httpx2.Response:
        async with httpx2.AsyncClient(verify=context, timeout=10) as client:
            return await client.get(url)

    return asyncio.run(get())


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_a_server_whose_certificate_is_not_trusted_is_refused(https_server: str, asynchronous: bool) -> None:
    """The fixture clients' context, as this environment builds it, refuses a certificate nobody signed."""
    context = clients.tls(os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        _get(https_server, context, asynchronous=asynchronous)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_the_same_server_is_reached_once_its_certificate_is_trusted(
    https_server: str, certificate: tuple[Path, Path], asynchronous: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control of the test above: the server works, and a deferred context loads its CAs on either
    backend's way into a handshake (the sync one wraps a socket, the async one a BIO)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    response = _get(https_server, tls.default_context(), asynchronous=asynchronous)
    assert (response.status_code, response.text) == (200, "ok")
