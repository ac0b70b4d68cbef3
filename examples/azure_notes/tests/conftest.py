from __future__ import annotations

import os

import pytest

WEST_EUROPE = "https://contoso-notes-weu.openai.azure.com"


@pytest.fixture(autouse=True)
def azure_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The application reads its resource and key from the environment, as it does when deployed.

    A replay needs neither: the cassette matches method, API route and body, not the
    host, and nothing is sent. So CI sets nothing; the resource defaults to the West
    Europe one, and the key to a placeholder (pytest-llm-guard puts one in
    OPENAI_API_KEY for replays, not in AZURE_OPENAI_API_KEY). Recording needs the real
    values in the environment.
    """
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", os.environ.get("AZURE_OPENAI_ENDPOINT", WEST_EUROPE))
    if not os.environ.get("AZURE_OPENAI_API_KEY"):
        monkeypatch.setenv("AZURE_OPENAI_API_KEY", "placeholder-for-replays")
