"""Record the examples' cassettes against the fault server: no API key, no network.

    python examples/record.py                 # every example
    python examples/record.py trip_agent      # some of them

For each example: start a ``FaultServer``, script the answers a model would give
(text, JSON, tool calls), point the example at it (``OPENAI_BASE_URL``,
``AZURE_OPENAI_ENDPOINT``, ``ANTHROPIC_BASE_URL``, and its configured endpoints in a copy of its
pyproject.toml), delete its cassettes and run its suite with ``--llm-record=all``. Then
replay the suite as CI does (``CI=true``, no key, server stopped) and check that no
cassette holds a key.

The fault server's embeddings are hashes of the text, which rank passages at random;
docs_search needs vectors that mean something, so while recording this script answers
embeddings with a small keyword model (``topic_vector`` below), in the server's 8
dimensions.

To record against a real endpoint instead, no script is needed: see README.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pytest_llm_guard.fault import FaultServer
from pytest_llm_guard.fault import openai_api as fault_openai_api

HERE = Path(__file__).resolve().parent
KEY = "key-for-the-fault-server"
"""Sent while recording; a real key would be scrubbed the same way. Never in a cassette."""
KEY_VARIABLES = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_EUS_API_KEY", "ANTHROPIC_API_KEY")
KEY_LIKE = ("s" + "k-", KEY, "bearer", "authorization:", "api-key:")  # api-key: covers x-api-key: too
"""Nothing a cassette may hold (the first is OpenAI's key prefix, spelled apart so that
``grep -r`` for it finds keys, not this line)."""


# -- what the model answers, per example ---------------------------------------------


def _system(body: dict) -> str:
    return body["messages"][0]["content"]


def _user(body: dict) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def support_bot(server: FaultServer) -> None:
    def classify(*words: str) -> Callable[[dict], bool]:
        return lambda body: _system(body).startswith("Classify") and any(w in _user(body) for w in words)

    server.reply(json={"category": "other"}, when=classify(""))
    server.reply(json={"category": "billing"}, when=classify("charged", "invoice", "refund"))
    server.reply(json={"category": "bug"}, when=classify("crash", "error"))
    server.reply(
        "Sorry about the double charge! We have started a refund for the second payment; "
        "it will reach your card in 3-5 business days.",
        when=lambda body: "reply" in _system(body),
    )


def trip_agent(server: FaultServer) -> None:
    def turn(city: str, *, tools_answered: bool) -> Callable[[dict], bool]:
        def matches(body: dict) -> bool:
            answered = any(m.get("role") == "tool" for m in body["messages"])
            return city in _user(body) and answered == tools_answered

        return matches

    server.reply(
        tool_calls=[{"name": "get_weather", "arguments": {"city": "Lisbon", "date": "2026-12-05"}}],
        when=turn("Lisbon", tools_answered=False),
    )
    server.reply(
        "Saturday looks like a good beach day in Lisbon: sunny, with a high of 17 °C, a low of 10 °C "
        "and no rain. The sea will be cold, so take a towel and a warm layer for the evening.",
        when=turn("Lisbon", tools_answered=True),
    )
    server.reply(
        tool_calls=[
            {"name": "convert_currency", "arguments": {"amount": 150, "from_currency": "EUR", "to_currency": "JPY"}},
            {"name": "get_weather", "arguments": {"city": "Tokyo", "date": "2026-12-06"}},
        ],
        when=turn("Tokyo", tools_answered=False),
    )
    server.reply(
        "150 EUR is about 24,300 JPY, plenty for a day of trains, temples and ramen. Light rain is "
        "forecast in Tokyo on 6 December (high 12 °C, low 6 °C), so take an umbrella.",
        when=turn("Tokyo", tools_answered=True),
    )


TOPICS = (
    ("refund", "money back", "pro rata"),
    ("password", "reset", "log in", "link"),
    ("export", "download", "csv", "spreadsheet", "zip", "data"),
    ("single sign-on", "sso", "saml", "identity provider"),
    ("invoice", "pdf", "bill"),
    ("plan", "annual", "yearly", "monthly"),
    ("settings", "admin"),
)


def topic_vector(text: str) -> list[float]:
    """A keyword stand-in for an embedding model: one dimension per topic, plus a constant."""
    lower = text.lower()
    return [float(sum(lower.count(word) for word in words)) for words in TOPICS] + [0.5]


def docs_search(server: FaultServer) -> None:
    def about(text: str) -> Callable[[dict], bool]:
        return lambda body: text in _user(body)

    server.reply(
        json={
            "answer": "The password reset link is valid for 1 hour; if it has expired, ask for a new one "
            "from Settings > Security > Reset password.",
            "sources": ["password-reset"],
        },
        when=about("password reset link"),
    )
    server.reply(json={"answer": "I don't know.", "sources": []}, when=about("Bitcoin"))


def azure_notes(server: FaultServer) -> None:
    def task(prompt_start: str, text: str = "") -> Callable[[dict], bool]:
        return lambda body: _system(body).startswith(prompt_start) and text in _user(body)

    server.reply(
        json={
            "summary": "The export bug is fixed and the team agreed to retire the old CSV importer.",
            "decisions": ["Drop the old CSV importer."],
            "action_items": [
                {"owner": "Ana", "task": "Ship the export bug patch", "due": "2026-12-03"},
                {"owner": "Ben", "task": "Update the release notes", "due": "2026-12-04"},
                {
                    "owner": "Chloé",
                    "task": "Email the three customers still using the CSV importer",
                    "due": "2026-12-11",
                },
            ],
        },
        when=task("Summarise", "export bug"),
    )
    server.reply(
        json={
            "summary": "The offsite moves to March at the same venue.",
            "decisions": ["Move the offsite to March, same venue."],
            "action_items": [],
        },
        when=task("Summarise", "offsite"),
    )
    server.reply(
        "Subject: Follow-up: export fix and CSV importer\n\n"
        "Hi all, the export bug is fixed and we are dropping the old CSV importer.\n"
        "- Ana: ship the export patch by 2026-12-03\n"
        "- Ben: update the release notes by 2026-12-04\n"
        "- Chloé: email the customers still using the CSV importer by 2026-12-11\n"
        "Thanks!",
        when=task("Write a short follow-up email"),
    )


def _claude_turn(question: str, *, tools_answered: bool) -> Callable[[dict], bool]:
    """An Anthropic request: its first user message asks ``question``; tool results follow as user blocks."""

    def matches(body: dict) -> bool:
        first = body["messages"][0]["content"]
        answered = any(
            isinstance(m["content"], list) and any(b.get("type") == "tool_result" for b in m["content"])
            for m in body["messages"]
        )
        return question in first and answered == tools_answered

    return matches


def pantry_chef(server: FaultServer) -> None:
    server.reply(
        tool_calls=[{"name": "check_pantry", "arguments": {"ingredient": "flour"}}],
        when=_claude_turn("flour", tools_answered=False),
    )
    server.reply(
        "Yes: your pantry holds 1.5 kg of flour, three times the 500 g the cake needs. "
        "You will have 1 kg of flour left for the next bake.",
        when=_claude_turn("flour", tools_answered=True),
    )
    server.reply(
        tool_calls=[
            {"name": "convert_units", "arguments": {"amount": 8, "from_unit": "oz", "to_unit": "g"}},
            {"name": "check_pantry", "arguments": {"ingredient": "butter"}},
        ],
        when=_claude_turn("butter", tools_answered=False),
    )
    server.reply(
        "8 oz of butter is about 226.8 g. Your pantry holds 250 g, so you have enough, "
        "with a little over 20 g to spare.",
        when=_claude_turn("butter", tools_answered=True),
    )


SCRIPTS: dict[str, Callable[[FaultServer], None]] = {
    "support_bot": support_bot,
    "trip_agent": trip_agent,
    "docs_search": docs_search,
    "azure_notes": azure_notes,
    "pantry_chef": pantry_chef,
}


# -- recording and checking ----------------------------------------------------------


def _environment(**values: str) -> dict[str, str]:
    """This environment without CI, keys, endpoints or llm-guard settings, plus ``values``."""
    dropped = {"CI", "OPENAI_BASE_URL", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION", "ANTHROPIC_BASE_URL"}
    dropped |= {*KEY_VARIABLES, "ANTHROPIC_AUTH_TOKEN"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("LLM_GUARD_")}
    return {**env, **values}


def _pytest(folder: Path, *args: str, env: dict[str, str]) -> None:
    command = [sys.executable, "-m", "pytest", str(folder), "-q", "-p", "no:cacheprovider", *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, env=env, check=True)


def _recording_config(folder: Path, url: str, scratch: Path) -> list[str]:
    """A copy of the example's pyproject.toml whose endpoints are the fault server, as pytest options."""
    text = (folder / "pyproject.toml").read_text()
    if "[[tool.pytest_llm_guard.endpoints]]" not in text:
        return []
    text = re.sub(r'(?m)^base_url = ".*"$', f'base_url = "{url}"', text)
    text = text.replace('pythonpath = ["."]', f"pythonpath = [{str(folder)!r}]")
    (scratch / "pyproject.toml").write_text(text)
    return ["-c", str(scratch / "pyproject.toml"), "--rootdir", str(folder)]


def record(name: str) -> None:
    folder = HERE / name
    shutil.rmtree(folder / "tests" / "cassettes", ignore_errors=True)
    hashed_embedding = fault_openai_api.fake_embedding
    fault_openai_api.fake_embedding = topic_vector  # what the server answers embeddings with, read per request
    try:
        with FaultServer() as server, tempfile.TemporaryDirectory() as scratch:
            SCRIPTS[name](server)
            env = _environment(
                OPENAI_BASE_URL=server.base_url,
                AZURE_OPENAI_ENDPOINT=server.url,
                ANTHROPIC_BASE_URL=server.url,
                **dict.fromkeys(KEY_VARIABLES, KEY),
            )
            _pytest(folder, "--llm-record=all", *_recording_config(folder, server.url, Path(scratch)), env=env)
    finally:
        fault_openai_api.fake_embedding = hashed_embedding


def check(name: str) -> None:
    """Replay as CI does, then look for anything key-like in the cassettes."""
    folder = HERE / name
    _pytest(folder, env=_environment(CI="true"))
    for cassette in sorted((folder / "tests" / "cassettes").rglob("*.yaml")):
        text = cassette.read_text()
        found = [word for word in KEY_LIKE if word in text.lower()]
        if found:
            sys.exit(f"{cassette}: holds {', '.join(found)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("examples", nargs="*", help=f"some of {', '.join(SCRIPTS)} (default: all)")
    names = parser.parse_args().examples or list(SCRIPTS)
    unknown = sorted(set(names) - set(SCRIPTS))
    if unknown:
        parser.error(f"no recording script for {', '.join(unknown)}; known: {', '.join(SCRIPTS)}")
    if not hasattr(fault_openai_api, "fake_embedding"):
        sys.exit("pytest_llm_guard.fault.openai_api.fake_embedding is gone: update record() where topic_vector is set")
    for name in names:
        record(name)
    for name in names:
        check(name)
    print(f"recorded and replayed offline: {', '.join(names)}")


if __name__ == "__main__":
    main()
