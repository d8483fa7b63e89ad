"""Read a directory tree of Markdown, HTML and plain-text files into documents."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
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
from kbrefresh.build.sources.guards import (
    MAX_DOCUMENT_BYTES,
    binary_reason,
    doc_id_reason,
    file_reason,
)
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


class SourceEntry(NamedTuple):
    """One supported file as listed and stat'ed, not read (a tuple: made per file per refresh)."""

    path: str
    rel: str  # relative to the root, with "/" separators
    doc_id: str
    uri: str
    fmt: str
    link: bool  # a symbolic link (checked to stay under the root), read through
    signature: str  # file_signature of its stat


@dataclass(frozen=True)
class SourceFile:
    """One supported file's bytes, read once; ``parse_file`` turns it into a document."""

    path: str
    rel: str
    doc_id: str
    uri: str
    fmt: str
    raw: bytes
    mtime_ns: int
    # file_signature of the stat taken as it was read, None unless it had settled (see
    # DirectoryReader): only a settled signature may stand in for the bytes next time.
    settled_signature: str | None = None

    @property
    def modified_at(self) -> datetime:
        return datetime.fromtimestamp(self.mtime_ns / 1e9, tz=UTC)


def file_signature(info: os.stat_result) -> str:
    """Inode, size, mtime and ctime, as git's index keeps them to skip unchanged files:
    a write, a replacement (``cp -p`` keeps the mtime, not the inode or ctime), chmod or
    rename all move the ctime, which no user call can set back."""
    return f"{info.st_ino}:{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


# A file changed less than this before the walk began may change again within the same
# timestamp tick unseen (git's "racily clean" files): its signature is not kept.
SETTLE_NS = 1_000_000_000


class DirectoryReader:
    """List each supported file under ``root`` with its stat, or read its bytes; files that
    cannot be listed become problems (``take_problems``), unreadable ones are returned as such."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.problems: list[LoadProblem] = []
        self.skipped = 0
        self.settled_before_ns = time.time_ns() - SETTLE_NS

    def entries(self) -> Iterator[SourceEntry]:
        """Yield every supported file with its stat signature, opening none."""
        # Plain strings, not pathlib: this loop runs for every file of every refresh.
        # The uri is what Path.absolute().as_uri() gives, without a Path per file.
        base = str(self.root.absolute())
        base_uri = "file://" + quote_from_bytes(os.fsencode(base))
        folder, rel_dir, uri_dir = "", "", ""  # computed once per folder
        for dirpath, name, symlink in _walk(base, self.problems):
            dot = name.rfind(".")
            suffix = name[dot:] if dot > 0 else ""  # as os.path.splitext, for one name
            fmt = FORMATS_BY_SUFFIX.get(suffix.lower())
            if fmt is None:
                self.skipped += 1
                continue
            if dirpath != folder:
                folder, rel_dir = dirpath, dirpath[len(base) + 1:].replace(os.sep, "/") + "/"
                rel_dir = "" if rel_dir == "/" else rel_dir
                uri_dir = base_uri + "/" + quote_from_bytes(os.fsencode(rel_dir))
            rel = rel_dir + name
            path = os.path.join(dirpath, name)
            doc_id = rel[: len(rel) - len(suffix)]
            # A symbolic link is resolved and checked before its target is stat'ed (see
            # kbrefresh.build.sources.guards); ids are checked when a file is read.
            reason = file_reason(Path(base), Path(path)) if symlink else None
            if reason is not None:
                self.problems.append(LoadProblem(path=rel, reason=reason))
                continue
            try:
                info = os.stat(path, follow_symlinks=symlink)
            except OSError as exc:
                self.problems.append(LoadProblem(path=rel, reason=f"cannot be read: {exc.strerror}"))
                continue
            yield SourceEntry(path, rel, doc_id, uri_dir + quote_from_bytes(os.fsencode(name)),
                              fmt, symlink, file_signature(info))

    def read(self, entry: SourceEntry) -> SourceFile | LoadProblem:
        """Check the id, then read: no link followed unless it is a checked one (one swapped
        in since the listing fails with ELOOP); sized by fstat. An unchanged file is not
        read: its id was checked when it was (a new loader version changes every signature)."""
        reason = doc_id_reason(entry.doc_id)
        if reason is not None:
            return LoadProblem(path=entry.rel, reason=reason)
        try:
            raw, info = _read(entry.path, follow=entry.link)
        except _Problem as exc:
            return LoadProblem(path=entry.rel, reason=str(exc))
        settled = max(info.st_mtime_ns, info.st_ctime_ns) < self.settled_before_ns
        return SourceFile(entry.path, entry.rel, entry.doc_id, entry.uri, entry.fmt, raw,
                          info.st_mtime_ns, file_signature(info) if settled else None)

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
    for entry in reader.entries():
        file = reader.read(entry)
        parsed = file if isinstance(file, LoadProblem) else parse_file(file)
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


def _read(path: str, *, follow: bool) -> tuple[bytes, os.stat_result]:
    """Return a file's bytes and stat; refuse one over ``MAX_DOCUMENT_BYTES`` before reading."""
    # Non-blocking, so a FIFO named like a document cannot hang the refresh.
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Problem("is a symbolic link that appeared while the source was read; "
                           "refresh again") from exc
        raise _Problem(f"cannot be read: {exc.strerror or exc}") from exc
    with open(fd, "rb", closefd=True) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _Problem("is not a regular file (a device, socket or pipe); remove it")
        if info.st_size > MAX_DOCUMENT_BYTES:
            raise _Problem(f"is {info.st_size} bytes; expected at most {MAX_DOCUMENT_BYTES} "
                           "bytes per document (split it into smaller files)")
        try:
            return handle.read(), info
        except OSError as exc:
            raise _Problem(f"cannot be read: {exc.strerror or exc}") from exc


def _walk(root: str, problems: list[LoadProblem], folder: str | None = None
          ) -> Iterator[tuple[str, str, bool]]:
    """Yield (folder, file name, is a symbolic link) in sorted order, hidden entries skipped:
    ``os.walk`` (links to folders not followed) from ``scandir`` entries, so whether a file
    is a link costs no system call."""
    folder = folder or root
    try:
        with os.scandir(folder) as listing:
            entries = sorted((e for e in listing if not e.name.startswith(".")),
                             key=lambda e: e.name)
    except OSError as exc:
        # An unreadable folder must be reported: its files would just vanish.
        rel = folder[len(root) + 1:].replace(os.sep, "/") or "."
        problems.append(LoadProblem(path=rel, reason=f"cannot be listed: {exc.strerror}"))
        return
    folders: list[str] = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if not is_dir:
            yield folder, entry.name, entry.is_symlink()
        elif not entry.is_symlink():
            folders.append(entry.path)
    for child in folders:
        yield from _walk(root, problems, child)


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
