"""The default endpoint kind's names that configuration shows before any dialect loads: the default
model and the help of ``--llm-base-url``. Kept apart from ``dialects/`` so the plugin's start-up
imports no dialect; the OpenAI dialect reads its own names from here."""

KIND = "openai"
"""The kind of the endpoint a session has when it configures none, and of the default model."""
MODEL = "gpt-4o-mini"
BASE_URL_VARIABLE = "OPENAI_BASE_URL"
