"""Only for `pytest examples`, which collects every example at once (each example's own
conftest.py files are still loaded for its tests).

pyproject.toml here sets pytest-asyncio's loop scope, which pytest-asyncio needs to be
quiet. Without pytest-asyncio installed the key would be reported as an unknown config
option; the async tests of trip_agent skip then, with the install command as the reason.
"""

from __future__ import annotations

import importlib.util

import pytest

if importlib.util.find_spec("pytest_asyncio") is None:

    def pytest_addoption(parser: pytest.Parser) -> None:
        parser.addini(
            "asyncio_default_fixture_loop_scope", "pytest-asyncio's setting (pytest-asyncio is not installed)"
        )
