"""kbrefresh: keep a RAG knowledge base in PostgreSQL + pgvector fresh and safe."""

from __future__ import annotations

from kbrefresh.errors import (
    BuildLockedError,
    ConfigError,
    DatabaseError,
    DataQualityError,
    EmbeddingError,
    GateFailed,
    KBRefreshError,
    SourceError,
    VersionError,
)
from kbrefresh.settings import Settings

__all__ = [
    "BuildLockedError",
    "ConfigError",
    "DataQualityError",
    "DatabaseError",
    "EmbeddingError",
    "GateFailed",
    "KBRefreshError",
    "Settings",
    "SourceError",
    "VersionError",
]
__version__ = "0.1.0"
