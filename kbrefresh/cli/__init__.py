"""The ``kbrefresh`` command line."""

from __future__ import annotations

from kbrefresh.cli import admin, demo, monitor, rebrand, rollout  # noqa: F401  (register their commands)
from kbrefresh.cli._common import app
from kbrefresh.cli.main import main

__all__ = ["app", "main"]
