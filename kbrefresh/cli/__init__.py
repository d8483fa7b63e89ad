"""The ``kbrefresh`` command line."""

from __future__ import annotations

from kbrefresh.cli import (  # noqa: F401  (register their commands)
    admin,
    demo,
    monitor,
    rebrand,
    reembed,
    rollout,
)
from kbrefresh.cli._common import app
from kbrefresh.cli.main import main

__all__ = ["app", "main"]
