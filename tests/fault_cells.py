"""The fault matrix's rows, shared by the OpenAI and the Anthropic matrices: each API adds its own."""

from __future__ import annotations

from dataclasses import dataclass

from pytest_llm_guard.fault import Fault


@dataclass(frozen=True)
class Cell:
    fault: Fault
    stream: bool = False


FAULTS = {
    "hang": Cell(Fault.hang()),
    "trickled headers": Cell(Fault.trickle(interval=0.05, headers=True)),
    "trickled body": Cell(Fault.trickle(interval=0.05)),
    "reset": Cell(Fault.reset()),
    "401": Cell(Fault.status(401)),
    "429, short Retry-After": Cell(Fault.status(429, retry_after=0.05)),
    "429, Retry-After beyond the deadline": Cell(Fault.status(429, retry_after=10)),
    "503": Cell(Fault.status(503)),
    "malformed 200": Cell(Fault.malformed()),
    "stream cut": Cell(Fault.cut_stream(after_chunks=2), stream=True),
    # The API's error event (Anthropic's overloaded_error) after the answer began, and before it.
    "mid-stream error": Cell(Fault.stream_error(after_chunks=2), stream=True),
    "error before content": Cell(Fault.stream_error(after_chunks=1), stream=True),
}
