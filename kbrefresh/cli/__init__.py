"""The ``kbrefresh`` command line."""

from __future__ import annotations

from kbrefresh.cli import admin  # noqa: F401  (registers its commands on app)
from kbrefresh.cli._common import app
from kbrefresh.cli.main import main

__all__ = ["app", "main"]
