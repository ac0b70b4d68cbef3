"""The stash keys the plugin's modules share: light to import, so the plugin's start-up loads only these."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # the keys' value types, named in strings
    from .config import Settings  # noqa: F401
    from .guard import Guard  # noqa: F401
    from .session import Session  # noqa: F401

SETTINGS = pytest.StashKey["Settings"]()
SESSION = pytest.StashKey["Session"]()
ITEM_SETTINGS = pytest.StashKey["Settings | None"]()
GUARD = pytest.StashKey["Guard"]()
