"""Read documents from a CSV/Parquet file or a SQL query, one row per document."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from kbrefresh._text import scrub
from kbrefresh.build.sources import (
    LoadProblem,
    LoadResult,
    as_utc_datetime,
    document_content_hash,
    json_safe,
)
from kbrefresh.build.sources.guards import doc_id_reason, nul_column
from kbrefresh.errors import SourceError
from kbrefresh.models import Document

logger = logging.getLogger(__name__)

FORMATS = ("text", "markdown", "html")
DEFAULT_FORMAT = "text"
DEFAULT_CATEGORY = "general"


@dataclass(frozen=True)
class Columns:
    """Which columns hold what; every other column becomes metadata."""

    id: str = "id"
    text: str = "text"
    title: str = "title"
    category: str = "category"
    updated: str = "updated"
    format: str = "format"


class _RowProblem(Exception):
    """Internal: one row cannot become a document; becomes a LoadProblem."""


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        return sqlalchemy.make_url(url).render_as_string(hide_password=True)
    except ArgumentError as exc:
        # The raw value is not echoed: it may carry a password.
        raise SourceError(
            "source looks like a URL but is not a valid SQLAlchemy URL (value not shown "
            "because it may contain a password); expected e.g. "
            "'postgresql+psycopg://user@host/db' or 'sqlite:///kb.db'"
        ) from exc


def load_table(path: Path, columns: Columns, *, source: str) -> LoadResult:
    """Load documents from a ``.csv`` or ``.parquet`` file."""
    try:
        if path.suffix.lower() == ".csv":
            # ids and texts stay strings: "007" must not become 7.
            frame = pd.read_csv(path, dtype={columns.id: str, columns.text: str})
        else:
            frame = pd.read_parquet(path)
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(f"cannot read source {source!r}: {exc}") from exc
    return frame_to_result(frame, columns, source=source)


def load_sql(url: str, query: str, columns: Columns) -> LoadResult:
    """Load documents from the rows ``query`` returns on the database at ``url``."""
    masked = mask_url(url)
    password = sqlalchemy.make_url(url).password
    try:
        engine = sqlalchemy.create_engine(url)
    except (SQLAlchemyError, ImportError) as exc:
        message = f"cannot open source {masked!r}: {_first_line(exc)}"
        raise SourceError(scrub(message, password)) from exc
    try:
        with engine.connect() as connection:
            frame = pd.read_sql(sqlalchemy.text(query), connection)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        message = f"cannot read source {masked!r} with the given query: {_first_line(exc)}"
        raise SourceError(scrub(message, password)) from exc
    finally:
        engine.dispose()
    return frame_to_result(frame, columns, source=masked)


def _first_line(exc: BaseException) -> str:
    """Return the driver's own message: SQLAlchemy appends the SQL and a link on more lines."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def frame_to_result(frame: pd.DataFrame, columns: Columns, *, source: str) -> LoadResult:
    """Turn a data frame (one row per document) into a ``LoadResult``."""
    found = [str(name) for name in frame.columns]
    missing = [name for name in (columns.id, columns.text) if name not in found]
    if missing:
        raise SourceError(
            f"source {source!r} is missing required column(s) {_quoted(missing)}; "
            f"found columns: {_quoted(found) or 'none'}"
        )
    documents: list[Document] = []
    problems: list[LoadProblem] = []
    for position, row in enumerate(frame.to_dict("records"), start=1):
        try:
            documents.append(_row_to_document(row, columns, source))
        except _RowProblem as exc:
            label = _row_label(row, columns, position)
            problems.append(LoadProblem(path=f"{source}#{label}", reason=str(exc)))
    documents.sort(key=lambda doc: doc.doc_id)
    logger.info("loaded %d documents from %s (%d problems)", len(documents), source, len(problems))
    return LoadResult(documents=tuple(documents), problems=tuple(problems), source=source)


def _quoted(names: list[str]) -> str:
    return ", ".join(repr(name) for name in names)


def _row_label(row: dict[Any, Any], columns: Columns, position: int) -> str:
    value = row.get(columns.id)
    return f"row-{position}" if _is_null(value) else _id_str(value)


def _row_to_document(row: dict[Any, Any], columns: Columns, source: str) -> Document:
    raw_id = row.get(columns.id)
    if _is_null(raw_id):
        raise _RowProblem(f"has no id in column {columns.id!r}")
    doc_id = _id_str(raw_id)
    _guard_row(doc_id, row)
    text = row.get(columns.text)
    if _is_null(text):
        raise _RowProblem(f"has no text in column {columns.text!r}")
    fmt = _optional_str(row.get(columns.format)) or DEFAULT_FORMAT
    if fmt.lower() not in FORMATS:
        raise _RowProblem(f"has format {fmt!r}; expected one of {_quoted(list(FORMATS))}")
    title = _optional_str(row.get(columns.title)) or ""
    category = _optional_str(row.get(columns.category)) or DEFAULT_CATEGORY
    content = str(text)
    known = {columns.id, columns.text, columns.title, columns.category}
    known |= {columns.updated, columns.format}
    metadata = {
        str(key): None if _is_null(value) else json_safe(value)
        for key, value in row.items()
        if key not in known
    }
    return Document(
        doc_id=doc_id,
        uri=f"{source}#{doc_id}",
        title=title,
        category=category,
        content=content,
        format=fmt.lower(),
        content_hash=document_content_hash(title, category, content),
        modified_at=_modified_at(row.get(columns.updated)),
        metadata=metadata,
    )


def _guard_row(doc_id: str, row: dict[Any, Any]) -> None:
    """Refuse an unsafe id or a NUL character: see :mod:`kbrefresh.build.sources.guards`."""
    reason = doc_id_reason(doc_id)
    if reason is not None:
        raise _RowProblem(reason)
    column = nul_column(row)
    if column is not None:
        raise _RowProblem(f"has a NUL character in column {column!r}; PostgreSQL text cannot "
                          "hold it")


def _modified_at(value: object) -> datetime | None:
    if _is_null(value):
        return None
    try:
        moment = as_utc_datetime(value)
    except ValueError as exc:
        raise _RowProblem(
            f"has an 'updated' value {value!r} that is not a date; "
            "expected YYYY-MM-DD or an ISO 8601 datetime"
        ) from exc
    to_pydatetime = getattr(moment, "to_pydatetime", None)
    return to_pydatetime() if callable(to_pydatetime) else moment


def _is_null(value: object) -> bool:
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _optional_str(value: object) -> str | None:
    if _is_null(value):
        return None
    return str(value).strip() or None


def _id_str(value: object) -> str:
    # A numeric id column with gaps is read as float; 7.0 must stay "7".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
