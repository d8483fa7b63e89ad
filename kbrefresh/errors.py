"""One exception tree for kbrefresh.

    KBRefreshError
    ├── ConfigError (also ValueError)      bad settings, parameters, names, policy files
    ├── SourceError                         a source cannot be read (missing, undecodable, bad table)
    ├── DataQualityError                    prepared data failed its checks; carries the report
    ├── EmbeddingError                      the embedder failed or returned unusable vectors
    ├── DatabaseError                       Postgres unreachable, pgvector missing, migration refused
    │   └── MigrationError
    ├── BuildLockedError                    another refresh of the same KB holds the lock
    ├── BudgetExceeded                      the next embedding batch would pass a build's token/time budget
    ├── VersionError                        unknown version, nothing to roll back to, bad state
    └── GateFailed                          a candidate failed validation; carries the verdict
"""

from __future__ import annotations

from typing import Any


class KBRefreshError(Exception):
    """Base of every error kbrefresh raises on purpose."""


class ConfigError(KBRefreshError, ValueError):
    """A setting, parameter, name or policy value is invalid."""


class SourceError(KBRefreshError):
    """A document source cannot be read."""


class DataQualityError(KBRefreshError):
    """Prepared data failed quality checks; nothing was built or published."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class EmbeddingError(KBRefreshError):
    """The embedder failed or returned vectors that cannot be stored."""


class DatabaseError(KBRefreshError):
    """The database is unreachable, lacks pgvector, or refused an operation."""


class MigrationError(DatabaseError):
    """A schema migration is missing, edited after it was applied, or failed."""


class BuildLockedError(KBRefreshError):
    """Another refresh of the same knowledge base is running."""


class BudgetExceeded(KBRefreshError):
    """A build stopped before its next embedding batch would pass its token or time budget."""


class VersionError(KBRefreshError):
    """A knowledge-base version does not exist or is in the wrong state."""


class GateFailed(KBRefreshError):
    """A candidate version failed validation; the live version keeps serving."""

    def __init__(self, message: str, verdict: Any = None) -> None:
        super().__init__(message)
        self.verdict = verdict
