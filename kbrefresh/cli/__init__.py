"""The ``kbrefresh`` command line."""

from __future__ import annotations

from kbrefresh.cli import admin, monitor  # noqa: F401  (register their commands on app)
from kbrefresh.cli.main import app, main

__all__ = ["app", "main"]
