"""Read a directory tree of Markdown, HTML and plain-text files into documents."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote_from_bytes

import yaml
from bs4 import BeautifulSoup
from bs4.element import Tag
from bs4.filter import SoupStrainer
from markdown_it import MarkdownIt

from kbrefresh._text import load_yaml
from kbrefresh.build.sources import (
    LoadProblem,
    LoadResult,
    as_utc_datetime,
    document_content_hash,
    json_safe,
)
from kbrefresh.build.sources.guards import binary_reason, doc_id_reason, file_reason
from kbrefresh.models import Document

logger = logging.getLogger(__name__)

FORMATS_BY_SUFFIX: Mapping[str, str] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".txt": "text",
}
DEFAULT_CATEGORY = "general"
_FRONT_MATTER_FENCE = "---"
_FRONT_MATTER_CLOSERS = frozenset({"---", "..."})
_HTML_META_IGNORED = frozenset({"viewport", "robots", "generator"})
_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+\S.*$", re.MULTILINE)


class _Problem(Exception):
    """Internal: one file cannot become a document; becomes a LoadProblem."""


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    parser = MarkdownIt("commonmark").enable("table")
    # Only block structure is needed to find the first heading; inline parsing halves speed.
    parser.core.ruler.disable(["inline"])
    return parser


@dataclass(frozen=True)
class SourceFile:
    """One supported file's bytes, read once; ``parse_file`` turns it into a document."""

    path: str
    rel: str  # relative to the root, with "/" separators
    doc_id: str
    uri: str
    fmt: str
    raw: bytes
    mtime_ns: int

    @property
    def modified_at(self) -> datetime:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, tz=UTC)


class DirectoryReader:
    """Walk ``root`` once, yielding each supported file's bytes; unreadable ones become problems."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[LoadProblem] = []
        self.skipped = 0

    def files(self) -> Iterator[SourceFile]:
        # Plain strings, not pathlib: this loop runs for every file of every refresh.
        # The uri is what Path.absolute().as_uri() gives, without a Path per file.
        base = str(self.root.absolute())
        base_uri = "file://" + quote_from_bytes(os.fsencode(base))
        for dirpath, name in _walk(Path(base), self.problems):
            suffix = os.path.splitext(name)[1]
            fmt = FORMATS_BY_SUFFIX.get(suffix.lower())
            if fmt is None:
                self.skipped += 1
                continue
            rel_dir = dirpath[len(base) + 1:].replace(os.sep, "/")
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(dirpath, name)
            doc_id = rel[: len(rel) - len(suffix)]
            # Refused before anything is read: see kbrefresh.build.sources.guards.
            reason = file_reason(Path(base), Path(path)) or doc_id_reason(doc_id)
            if reason is not None:
                self.problems.append(LoadProblem(path=rel, reason=reason))
                continue
            try:
                with open(path, "rb") as handle:
                    raw = handle.read()
                    mtime_ns = os.fstat(handle.fileno()).st_mtime_ns
            except OSError as exc:
                self.problems.append(LoadProblem(
                    path=rel, reason=f"cannot be read: {exc.strerror or exc}"))
                continue
            yield SourceFile(path, rel, doc_id,
                             base_uri + "/" + quote_from_bytes(os.fsencode(rel)), fmt, raw,
                             mtime_ns)

    def take_problems(self) -> list[LoadProblem]:
        """Return the problems found since the last call."""
        problems, self.problems = self.problems, []
        return problems


def parse_file(file: SourceFile) -> tuple[Document, bool] | LoadProblem:
    """Return (document, dated by the file's mtime) or the problem that stops it."""
    try:
        return _load_file(file)
    except _Problem as exc:
        return LoadProblem(path=file.rel, reason=str(exc))


def load_directory(root: Path, *, source: str) -> LoadResult:
    """Load every supported file under ``root`` (recursively, hidden entries ignored)."""
    documents: list[Document] = []
    problems: list[LoadProblem] = []
    reader = DirectoryReader(root)
    for file in reader.files():
        parsed = parse_file(file)
        if isinstance(parsed, LoadProblem):
            problems.append(parsed)
        else:
            documents.append(parsed[0])
    problems += reader.take_problems()
    documents.sort(key=lambda doc: (doc.doc_id, doc.uri))
    problems.sort(key=lambda problem: problem.path)
    logger.info(
        "loaded %d documents from %s (%d problems, %d unsupported files skipped)",
        len(documents),
        source,
        len(problems),
        reader.skipped,
    )
    return LoadResult(
        documents=tuple(documents),
        problems=tuple(problems),
        source=source,
        skipped_files=reader.skipped,
    )


def _walk(root: Path, problems: list[LoadProblem]) -> Iterator[tuple[str, str]]:
    def unlisted(exc: OSError) -> None:
        # os.walk skips unreadable folders silently; their files would just vanish.
        where = Path(exc.filename or root)
        rel = where.relative_to(root).as_posix() if where != root else "."
        problems.append(LoadProblem(path=rel, reason=f"cannot be listed: {exc.strerror}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlisted):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield dirpath, name


def _decode(raw: bytes) -> str:
    reason = binary_reason(raw)
    if reason is not None:
        raise _Problem(reason)
    try:
        # utf-8-sig: strict UTF-8 that also accepts the BOM some editors write.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1]
        raise _Problem(
            f"is not valid UTF-8 (byte {bad!r} at offset {exc.start}); re-save it as UTF-8"
        ) from exc
    # One newline convention, so a checkout with CRLF does not change every hash.
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _load_file(file: SourceFile) -> tuple[Document, bool]:
    text = _decode(file.raw)
    fmt, rel = file.fmt, file.rel
    fields: dict[str, Any] = {}
    title: str | None = None
    if fmt == "markdown":
        fields, text = _split_front_matter(text)
    elif fmt == "html":
        fields, title = _html_fields(text)
    title = _str_field(fields.pop("title", None)) or title
    if title is None and fmt == "markdown":
        title = _markdown_title(text)  # parsing is costly: only without a front-matter title
    title = title or PurePosixPath(rel).stem
    parts = rel.split("/")
    default_category = parts[0] if len(parts) > 1 else DEFAULT_CATEGORY
    category = _str_field(fields.pop("category", None)) or default_category
    updated = fields.pop("updated", None)
    if updated is None:
        modified_at = file.modified_at
    else:
        try:
            modified_at = as_utc_datetime(updated)
        except ValueError as exc:
            raise _Problem(
                f"has an 'updated' value {updated!r} that is not a date; "
                "expected YYYY-MM-DD or an ISO 8601 datetime"
            ) from exc
    return Document(
        doc_id=file.doc_id,
        uri=file.uri,
        title=title,
        category=category,
        content=text,
        format=fmt,
        content_hash=document_content_hash(title, category, text),
        modified_at=modified_at,
        metadata=json_safe(fields),
    ), updated is None


def _str_field(value: object) -> str | None:
    if value is None:
        return None
    return str(value).strip() or None


def _split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Return (front-matter mapping, body) for Markdown that may start with YAML."""
    lines = text.split("\n")
    if lines[0].rstrip() != _FRONT_MATTER_FENCE:
        return {}, text
    for index in range(1, len(lines)):
        if lines[index].rstrip() in _FRONT_MATTER_CLOSERS:
            break
    else:
        raise _Problem("has front matter opened with '---' but never closed with '---'")
    block = "\n".join(lines[1:index])
    try:
        data = load_yaml(block)  # no aliases (YAML bombs), bounded nesting
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        # +2: the mark is 0-based and counts from after the opening '---' line.
        where = f" at line {mark.line + 2}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise _Problem(f"has broken front matter: {problem}{where}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _Problem(
            f"has front matter that is a {type(data).__name__}, expected key: value pairs"
        )
    body = "\n".join(lines[index + 1 :]).lstrip("\n")
    return {str(key): value for key, value in data.items()}, body


def _markdown_title(text: str) -> str | None:
    """Return the text of the first level-1 heading, or None."""
    # Parsing only up to the first "# " line is enough unless that line sits in a code
    # block; block structure depends only on what precedes a line.
    candidate = _ATX_H1.search(text)
    if candidate is not None:
        title = _first_h1(text[: candidate.end()])
        if title is not None:
            return title
    return _first_h1(text)


def _first_h1(text: str) -> str | None:
    tokens = _markdown().parse(text)
    for index, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h1":
            return tokens[index + 1].content.strip() or None
    return None


def _html_fields(text: str) -> tuple[dict[str, Any], str | None]:
    """Return (meta fields, title) from an HTML page's head and first ``h1``."""
    # Building only these tags is several times faster than the whole tree.
    soup = BeautifulSoup(text, "html.parser", parse_only=SoupStrainer(["title", "meta", "h1"]))
    fields: dict[str, Any] = {}
    for meta in soup.find_all("meta"):
        name = meta.get("name")
        content = meta.get("content")
        if isinstance(name, str) and isinstance(content, str):
            key = name.strip().lower()
            if key not in _HTML_META_IGNORED:
                fields.setdefault(key, content.strip())
    title = None
    for tag_name in ("title", "h1"):
        tag = soup.find(tag_name)
        if isinstance(tag, Tag):
            title = " ".join(tag.get_text(" ").split()) or None
            if title:
                break
    return fields, title
