"""Read documents from a directory, a CSV/Parquet file or a SQL query.

``load_source`` picks the reader from the spec; every reader returns a ``LoadResult``
whose per-file or per-row failures are ``LoadProblem`` values rather than exceptions,
so the quality checks can report all of them at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from kbrefresh.errors import ConfigError, SourceError
from kbrefresh.models import Document, sha256_text

__all__ = [
    "ACCEPTED_SOURCES",
    "LoadProblem",
    "LoadResult",
    "as_utc_datetime",
    "document_content_hash",
    "json_safe",
    "load_source",
]

ACCEPTED_SOURCES = (
    "a directory of .md/.markdown/.html/.htm/.txt files, a .csv or .parquet file, "
    "or a SQLAlchemy URL such as 'sqlite:///kb.db' together with a query"
)
TABULAR_SUFFIXES = frozenset({".csv", ".parquet"})


@dataclass(frozen=True)
class LoadProblem:
    """One file or row that could not be turned into a document."""

    path: str
    reason: str


@dataclass(frozen=True)
class LoadResult:
    """Documents read from one source, sorted by ``doc_id``, plus what went wrong."""

    documents: tuple[Document, ...]
    problems: tuple[LoadProblem, ...]
    source: str
    skipped_files: int = 0


def document_content_hash(title: str, category: str, content: str) -> str:
    """Return the change-detection hash of a document (title and category count)."""
    return sha256_text(f"{title}\n{category}\n{content}")


def as_utc_datetime(value: object) -> datetime:
    """Return ``value`` (date, datetime or ISO 8601 string) as an aware UTC datetime.

    Naive datetimes are taken to be UTC. Raises ``ValueError`` for anything else.
    """
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ValueError(f"expected a date, a datetime or an ISO 8601 string, got {value!r}")


def json_safe(value: Any) -> Any:
    """Return ``value`` converted to plain JSON types (dates as ISO strings, NaN as None)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [json_safe(item) for item in items]
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        # numpy scalars and arrays (e.g. Parquet list columns) -> Python values.
        return json_safe(tolist())
    return str(value)


def is_url(spec: str) -> bool:
    """Return whether ``spec`` looks like a SQLAlchemy URL rather than a path."""
    return "://" in spec


def load_source(
    spec: str | os.PathLike[str],
    *,
    query: str | None = None,
    id_column: str = "id",
    text_column: str = "text",
    title_column: str = "title",
    category_column: str = "category",
    updated_column: str = "updated",
    format_column: str = "format",
) -> LoadResult:
    """Load every document from ``spec``.

    Args:
        spec: a directory, a ``.csv``/``.parquet`` file, or a SQLAlchemy URL.
        query: the SQL to run; required with a URL, refused otherwise.
        *_column: column names for tabular sources (ignored for directories).

    Raises:
        ConfigError: a URL without a query, or a query without a URL.
        SourceError: the source does not exist, has an unsupported type, cannot be
            read, or lacks the id/text columns.
    """
    # Imported here because the readers import LoadResult/LoadProblem from this module;
    # the tabular reader also pulls in pandas and SQLAlchemy (~0.5 s), so only for tables.
    from kbrefresh.build.sources.directory import load_directory

    spec = os.fspath(spec)
    path = Path(spec)
    if not is_url(spec) and path.is_dir():
        if query is not None:
            raise ConfigError(f"query is only used with a SQLAlchemy URL source, not with {spec!r}")
        return load_directory(path, source=spec)
    from kbrefresh.build.sources.tabular import Columns, load_sql, load_table

    columns = Columns(
        id=id_column,
        text=text_column,
        title=title_column,
        category=category_column,
        updated=updated_column,
        format=format_column,
    )
    if is_url(spec):
        if query is None or not query.strip():
            raise ConfigError("a SQL source needs a query; pass query='SELECT id, text FROM ...'")
        return load_sql(spec, query, columns)
    if query is not None:
        raise ConfigError(f"query is only used with a SQLAlchemy URL source, not with {spec!r}")
    if path.is_file():
        if path.suffix.lower() in TABULAR_SUFFIXES:
            return load_table(path, columns, source=spec)
        raise SourceError(
            f"source {spec!r} has an unsupported file type {path.suffix!r}; "
            f"expected {ACCEPTED_SOURCES}"
        )
    raise SourceError(f"source {spec!r} does not exist; expected {ACCEPTED_SOURCES}")
