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
    "Retriever",
    "Settings",
    "SourceError",
    "VersionError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The Retriever pulls in numpy, psycopg and the embedders: import it on first use.
    if name == "Retriever":
        from kbrefresh.serving.retriever import Retriever

        return Retriever
    raise AttributeError(f"module 'kbrefresh' has no attribute {name!r}")
