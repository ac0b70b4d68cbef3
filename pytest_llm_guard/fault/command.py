"""``python -m pytest_llm_guard.fault`` (or ``llm-fault-server``): the fault server as a process.

For clients the test suite does not start itself: an application run by hand, a
notebook, another language's SDK, curl. Each picks its fault by the base URL's prefix
(``prefixes.py``); the server runs until Ctrl-C (or SIGTERM) and then stops cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .dialect import registered
from .faults import CutStream, Malformed, Ok, Reset, Status, StreamError, Trickle
from .prefixes import PREFIXES
from .server import FaultServer, RecordedRequest

__all__ = ["main"]

PROG = "python -m pytest_llm_guard.fault"
SCRIPT = "llm-fault-server"  # the console script, in pyproject.toml


def _routes() -> str:
    """The epilog of --help: every fault prefix and every route, with an example."""
    width = max(len(form.syntax) for form in PREFIXES) + 2
    lines = ["fault prefixes (put one in front of any route; without one the answer is normal):"]
    lines += [f"  /{form.syntax:<{width}}{form.meaning}" for form in PREFIXES]
    lines += ["", "routes:"]
    lines += [f"  {route.method:<5}{route.path}" for dialect in registered() for route in dialect.routes]
    lines += [
        "",
        "example: openai.OpenAI(base_url='http://127.0.0.1:8765/s429-2/v1', api_key='test') meets two 429s,",
        "then normal answers; anthropic.Anthropic(base_url='http://127.0.0.1:8765/s529-1', api_key='test')",
        "meets one 529 overloaded_error. Counting prefixes (sCODE-N, flaky-N) count per prefix since the start.",
    ]
    return "\n".join(lines)


def _port(text: str) -> int:
    """A TCP port, 0 to 65535, so a wrong one is a usage error rather than a traceback from bind()."""
    port = int(text) if text.strip().isdigit() else -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: a whole number from 0 to 65535 (0: any free one)")
    return port


def parser() -> argparse.ArgumentParser:
    """The command's arguments; its epilog lists the fault prefixes and routes."""
    script = Path(sys.argv[0]).name
    parser = argparse.ArgumentParser(
        prog=script if script == SCRIPT else PROG,
        description="An OpenAI- and Anthropic-compatible HTTP server whose answers fail on purpose: a client "
        "chooses its fault by a prefix of its base URL.",
        epilog=_routes(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8765, help="port to listen on; 0 picks a free one (default: 8765)"
    )
    parser.add_argument("--quiet", action="store_true", help="print no line per request")
    return parser


_MET = {CutStream: "stream cut", StreamError: "stream error event", Malformed: "malformed 200", Reset: "reset"}
"""How a request log line names a fault whose class name would read as one word (``cutstream``)."""


def _said(request: RecordedRequest) -> None:
    """One line per request: what came in and which fault it met."""
    fault = request.fault
    if fault is None:
        met = "turned down (no such route, or a bad body)"
    elif isinstance(fault, Status):
        met = f"HTTP {fault.code}"
    elif isinstance(fault, Ok):
        met = f"ok after {fault.delay:g} s" if fault.delay else "ok"
    elif isinstance(fault, Trickle):
        met = "trickle, head included" if fault.headers else "trickle, body only"
    else:
        met = _MET.get(type(fault), type(fault).__name__.lower())
    print(f"{time.strftime('%H:%M:%S')} {request.method} {request.path}: {met}", flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; 0 after a clean stop, 2 when the port cannot be had."""
    args = parser().parse_args(argv)
    server = FaultServer(args.host, args.port, on_request=None if args.quiet else _said)
    try:
        server.start()
    except RuntimeError as exc:
        said = f"cannot listen on {args.host}:{args.port} ({exc.__cause__ or exc})"
        other_host = ", or another --host" if args.host != "127.0.0.1" else ""
        print(f"fault server: {said}; choose another --port (0: any free one){other_host}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a shell starting it with & ignores SIGINT
        signal.signal(signum, _interrupt)
    try:
        print(f"fault server listening on {server.url}", flush=True)
        print(f"  openai:     base_url={server.base_url}   a hang: {server.url}/hang/v1", flush=True)
        print(f"  anthropic:  base_url={server.url}   a hang: {server.url}/hang (the SDK adds /v1)", flush=True)
        print("  --help lists every fault prefix.", flush=True)
        print("Ctrl-C stops it.", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    print("fault server stopped", flush=True)
    return 0
