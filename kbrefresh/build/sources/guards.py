"""Guards against hostile or accidental bad input, shared by the source readers.

Each guard returns the reason a file, id or value is refused (a phrase that follows
the file or row name in the quality report), or ``None`` when it is fine; the readers
turn a reason into a ``LoadProblem`` so every bad file is reported at once.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "binary_reason",
    "doc_id_reason",
    "file_reason",
    "nul_column",
]

# One document is at most 16 MiB of text (a long book is ~2 MiB): a larger file is an
# export or a dump dropped in by mistake, and would cost thousands of embeddings.
MAX_DOCUMENT_BYTES = 16 * 2**20


def file_reason(root: Path, path: Path) -> str | None:
    """Return why ``path`` (found under ``root``) must not be read, or None.

    Refused: a symbolic link that loops or points outside ``root`` (a source must not
    publish files from elsewhere on the machine) and a file over ``MAX_DOCUMENT_BYTES``.
    Checked with ``stat`` before anything is read.
    """
    try:
        info = os.lstat(path)  # one system call for the common case, a regular file
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    size = info.st_size
    if stat.S_ISLNK(info.st_mode):
        try:
            target = path.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports a loop this way, later ones as ELOOP
            return "is a symbolic link that loops"
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a symbolic link that loops"
            return f"cannot be read: {exc.strerror or exc}"
        if not target.is_relative_to(root.resolve()):
            return ("is a symbolic link to outside the source directory; copy the file in "
                    "or make it part of the source another way")
        size = target.stat().st_size
    if size > MAX_DOCUMENT_BYTES:
        return (f"is {size} bytes; expected at most {MAX_DOCUMENT_BYTES} bytes per document "
                "(split it into smaller files)")
    return None


def binary_reason(raw: bytes) -> str | None:
    """Return why ``raw`` is not text (a NUL byte, which PostgreSQL text cannot hold)."""
    offset = raw.find(b"\x00")
    if offset < 0:
        return None
    return f"is a binary file (NUL byte at offset {offset}); expected UTF-8 text"


def doc_id_reason(doc_id: str) -> str | None:
    """Return why ``doc_id`` cannot be a document id, or None.

    Ids are ``/``-separated relative paths of plain segments: no control characters
    (NUL included), no leading ``/``, no empty, ``.`` or ``..`` segment, so an id can
    never climb out of wherever it is used as a path.
    """
    # isprintable() is False for every "C" category (and for spaces but " "): the fast path.
    if not doc_id.isprintable() and any(
            unicodedata.category(ch).startswith("C") for ch in doc_id):
        return f"has id {doc_id!r} that contains control characters"
    parts = doc_id.replace("\\", "/").split("/")
    if doc_id.startswith(("/", "\\")) or os.path.isabs(doc_id) or any(
        part in {"", ".", ".."} for part in parts
    ):
        return (f"has id {doc_id!r} that is not a relative path of plain segments "
                "(no leading '/', no empty, '.' or '..' segment)")
    return None


def nul_column(row: Mapping[object, object]) -> str | None:
    """Return the first column whose text holds a NUL character, or None."""
    for column, value in row.items():
        if isinstance(value, str) and "\x00" in value:
            return str(column)
    return None
