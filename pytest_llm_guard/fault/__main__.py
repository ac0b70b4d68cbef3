"""``python -m pytest_llm_guard.fault``: see ``command.py``."""

from .command import main

raise SystemExit(main())
