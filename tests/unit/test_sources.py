from __future__ import annotations

import os
import sqlite3
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from kbrefresh.build.sources import (
    ACCEPTED_SOURCES,
    LoadProblem,
    LoadResult,
    as_utc_datetime,
    json_safe,
    load_source,
)
from kbrefresh.build.sources.tabular import mask_url
from kbrefresh.errors import ConfigError, SourceError
from kbrefresh.models import Document, sha256_text

MTIME = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    os.utime(path, (MTIME.timestamp(), MTIME.timestamp()))
    return path


def by_id(result: LoadResult) -> dict[str, Document]:
    return {doc.doc_id: doc for doc in result.documents}


# ---- directory sources ------------------------------------------------------------------

REFUNDS = """---
title: Refund policy
category: billing-policies
updated: 2024-05-06
tags: [billing, refunds]
reviewed: 2024-01-02
owner: finance
---

# Refunds

Refunds are issued within 14 days.
"""


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    write(root, "README.md", "# Welcome\n\nStart here.\n")
    write(root, "billing/refunds.md", REFUNDS)
    write(
        root,
        "billing/vat.html",
        "<html><head><title> VAT  rules </title><meta name='category' content='tax'>"
        "<meta name='updated' content='2024-02-03T10:00:00+02:00'>"
        "<meta name='tags' content='tax, vat'></head>"
        "<body><h1>Ignored heading</h1><p>VAT is charged.</p></body></html>",
    )
    write(root, "billing/notes.txt", "Plain notes.\n")
    write(root, "guides/setup/linux.markdown", "No heading here.\n")
    write(root, "guides/old.htm", "<body><h1>Old page</h1><p>Body.</p></body>")
    write(root, "logo.png", b"\x89PNG\r\n")
    write(root, "guides/data.json", "{}")
    write(root, ".hidden/secret.md", "# Secret\n")
    write(root, "billing/.draft.md", "# Draft\n")
    return root


def test_directory_loads_supported_files_sorted_by_id(corpus: Path) -> None:
    result = load_source(str(corpus))
    assert [doc.doc_id for doc in result.documents] == [
        "README",
        "billing/notes",
        "billing/refunds",
        "billing/vat",
        "guides/old",
        "guides/setup/linux",
    ]
    assert result.problems == ()
    assert result.skipped_files == 2
    assert result.source == str(corpus)


@pytest.mark.parametrize(
    ("doc_id", "title", "category", "fmt"),
    [
        ("README", "Welcome", "general", "markdown"),
        ("billing/refunds", "Refund policy", "billing-policies", "markdown"),
        ("billing/vat", "VAT rules", "tax", "html"),
        ("billing/notes", "notes", "billing", "text"),
        ("guides/setup/linux", "linux", "guides", "markdown"),
        ("guides/old", "Old page", "guides", "html"),
    ],
)
def test_directory_titles_categories_and_formats(
    corpus: Path, doc_id: str, title: str, category: str, fmt: str
) -> None:
    doc = by_id(load_source(str(corpus)))[doc_id]
    assert (doc.title, doc.category, doc.format) == (title, category, fmt)


def test_front_matter_is_parsed_and_removed_from_content(corpus: Path) -> None:
    doc = by_id(load_source(str(corpus)))["billing/refunds"]
    assert doc.content == "# Refunds\n\nRefunds are issued within 14 days.\n"
    assert doc.modified_at == datetime(2024, 5, 6, tzinfo=UTC)
    assert dict(doc.metadata) == {
        "tags": ["billing", "refunds"],
        "reviewed": "2024-01-02",
        "owner": "finance",
    }


def test_document_hash_uri_and_mtime(corpus: Path) -> None:
    doc = by_id(load_source(str(corpus)))["billing/notes"]
    assert doc.content == "Plain notes.\n"
    assert doc.content_hash == sha256_text("notes\nbilling\nPlain notes.\n")
    assert doc.uri == (corpus / "billing/notes.txt").resolve().as_uri()
    assert doc.uri.startswith("file:///")
    assert doc.modified_at == MTIME
    assert dict(doc.metadata) == {}


def test_html_meta_gives_category_updated_and_metadata(corpus: Path) -> None:
    doc = by_id(load_source(str(corpus)))["billing/vat"]
    assert doc.modified_at == datetime(2024, 2, 3, 8, 0, tzinfo=UTC)
    assert dict(doc.metadata) == {"tags": "tax, vat"}
    assert doc.content.startswith("<html><head>")


def test_title_change_changes_the_hash(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "---\ntitle: One\n---\nSame body.\n")
    first = load_source(str(tmp_path)).documents[0].content_hash
    write(tmp_path, "a.md", "---\ntitle: Two\n---\nSame body.\n")
    assert load_source(str(tmp_path)).documents[0].content_hash != first


@pytest.mark.parametrize(
    ("content", "title"),
    [
        ("Intro.\n\n# First\n\n# Second\n", "First"),
        ("```\n# not a heading\n```\n\n# Real ##\n", "Real"),
        ("Setext title\n============\n\n# Later\n", "Setext title"),
        ("## Only level two\n", "page"),
        ("    # indented code\n", "page"),
    ],
)
def test_markdown_title_is_the_first_level_one_heading(
    tmp_path: Path, content: str, title: str
) -> None:
    write(tmp_path, "page.md", content)
    assert load_source(str(tmp_path)).documents[0].title == title


def test_crlf_and_bom_do_not_change_content(tmp_path: Path) -> None:
    write(tmp_path, "unix.md", "# T\n\nBody line.\n")
    write(tmp_path, "dos.md", b"\xef\xbb\xbf# T\r\n\r\nBody line.\r\n")
    docs = by_id(load_source(str(tmp_path)))
    assert docs["dos"].content == docs["unix"].content == "# T\n\nBody line.\n"


def test_front_matter_datetime_is_converted_to_utc(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "---\nupdated: 2024-05-06T12:00:00+02:00\n---\nBody.\n")
    write(tmp_path, "b.md", "---\nupdated: '2024-05-06 12:00:00'\n---\nBody.\n")
    docs = by_id(load_source(str(tmp_path)))
    assert docs["a"].modified_at == datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
    assert docs["b"].modified_at == datetime(2024, 5, 6, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rel", "content", "reason"),
    [
        (
            "bad.md",
            b"ok \xff bytes",
            "is not valid UTF-8 (byte b'\\xff' at offset 3); re-save it as UTF-8",
        ),
        (
            "sub/broken.md",
            "---\ntitle: [unclosed\n---\nBody.\n",
            ("has broken front matter: expected ',' or ']', but got '<stream end>' at line 2"),
        ),
        (
            "open.md",
            "---\ntitle: x\nBody without closing fence.\n",
            "has front matter opened with '---' but never closed with '---'",
        ),
        (
            "list.md",
            "---\n- a\n- b\n---\nBody.\n",
            "has front matter that is a list, expected key: value pairs",
        ),
        (
            "when.md",
            "---\nupdated: last tuesday\n---\nBody.\n",
            (
                "has an 'updated' value 'last tuesday' that is not a date; "
                "expected YYYY-MM-DD or an ISO 8601 datetime"
            ),
        ),
    ],
)
def test_unreadable_files_become_problems(
    tmp_path: Path, rel: str, content: str | bytes, reason: str
) -> None:
    write(tmp_path, "good.md", "# Good\n\nFine.\n")
    write(tmp_path, rel, content)
    result = load_source(str(tmp_path))
    assert [doc.doc_id for doc in result.documents] == ["good"]
    assert result.problems == (LoadProblem(path=rel, reason=reason),)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    write(tmp_path, "b.md", b"\xfe")
    write(tmp_path, "a.txt", b"\xff")
    result = load_source(str(tmp_path))
    assert [problem.path for problem in result.problems] == ["a.txt", "b.md"]
    assert result.documents == ()


def test_spec_may_be_a_path_object(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "# A\n\nBody.\n")
    result = load_source(tmp_path)
    assert [doc.doc_id for doc in result.documents] == ["a"]
    assert result.source == str(tmp_path)


def test_same_stem_in_two_formats_keeps_both(tmp_path: Path) -> None:
    write(tmp_path, "faq.md", "# FAQ\n")
    write(tmp_path, "faq.html", "<h1>FAQ</h1>")
    docs = load_source(str(tmp_path)).documents
    assert [(doc.doc_id, doc.format) for doc in docs] == [("faq", "html"), ("faq", "markdown")]


# ---- spec dispatch and errors -----------------------------------------------------------


def test_missing_path_is_a_source_error(tmp_path: Path) -> None:
    spec = str(tmp_path / "nope")
    with pytest.raises(SourceError) as info:
        load_source(spec)
    assert str(info.value) == f"source {spec!r} does not exist; expected {ACCEPTED_SOURCES}"


def test_unsupported_file_type_is_a_source_error(tmp_path: Path) -> None:
    spec = str(write(tmp_path, "docs.json", "[]"))
    with pytest.raises(SourceError) as info:
        load_source(spec)
    assert str(info.value) == (
        f"source {spec!r} has an unsupported file type '.json'; expected {ACCEPTED_SOURCES}"
    )


def test_url_without_query_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"^a SQL source needs a query; pass query="):
        load_source("sqlite:///kb.db")


def test_query_with_a_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_source(str(tmp_path), query="SELECT 1")
    assert str(info.value) == (
        f"query is only used with a SQLAlchemy URL source, not with {str(tmp_path)!r}"
    )


# ---- tabular sources --------------------------------------------------------------------

CSV = (
    "id,text,title,category,updated,format,views,owner\n"
    "007,Seven body,Seven,billing,2024-01-02,markdown,3,ann\n"
    "2,Two body,,,,,,\n"
    "3,,Three,billing,,,,\n"
)


def test_csv_rows_become_documents(tmp_path: Path) -> None:
    spec = str(write(tmp_path, "docs.csv", CSV))
    result = load_source(spec)
    assert [doc.doc_id for doc in result.documents] == ["007", "2"]
    seven, two = result.documents
    assert (seven.title, seven.category, seven.format, seven.content) == (
        "Seven",
        "billing",
        "markdown",
        "Seven body",
    )
    assert seven.uri == f"{spec}#007"
    assert seven.modified_at == datetime(2024, 1, 2, tzinfo=UTC)
    assert dict(seven.metadata) == {"views": 3.0, "owner": "ann"}
    assert seven.content_hash == sha256_text("Seven\nbilling\nSeven body")
    assert (two.title, two.category, two.format, two.modified_at) == ("", "general", "text", None)
    assert dict(two.metadata) == {"views": None, "owner": None}
    assert result.problems == (
        LoadProblem(path=f"{spec}#3", reason="has no text in column 'text'"),
    )
    assert result.skipped_files == 0


def test_custom_column_names(tmp_path: Path) -> None:
    spec = str(write(tmp_path, "docs.csv", "key,body,name\na,Alpha body,Alpha\n"))
    result = load_source(spec, id_column="key", text_column="body", title_column="name")
    (doc,) = result.documents
    assert (doc.doc_id, doc.content, doc.title, dict(doc.metadata)) == (
        "a",
        "Alpha body",
        "Alpha",
        {},
    )


def test_missing_required_columns_are_named(tmp_path: Path) -> None:
    spec = str(write(tmp_path, "docs.csv", "doc,body\n1,x\n"))
    with pytest.raises(SourceError) as info:
        load_source(spec)
    assert str(info.value) == (
        f"source {spec!r} is missing required column(s) 'id', 'text'; found columns: 'doc', 'body'"
    )


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (",body,,", "has no id in column 'id'"),
        ("x,body,pdf,", "has format 'pdf'; expected one of 'text', 'markdown', 'html'"),
        (
            "y,body,,soon",
            (
                "has an 'updated' value 'soon' that is not a date; "
                "expected YYYY-MM-DD or an ISO 8601 datetime"
            ),
        ),
    ],
)
def test_bad_rows_become_problems(tmp_path: Path, row: str, reason: str) -> None:
    spec = str(write(tmp_path, "docs.csv", f"id,text,format,updated\nok,fine,,\n{row}\n"))
    result = load_source(spec)
    assert [doc.doc_id for doc in result.documents] == ["ok"]
    label = row.split(",")[0] or "row-2"
    assert result.problems == (LoadProblem(path=f"{spec}#{label}", reason=reason),)


def test_parquet_with_timestamps_and_lists(tmp_path: Path) -> None:
    path = tmp_path / "docs.parquet"
    frame = pd.DataFrame(
        {
            "id": [10, 11],
            "text": ["<p>Ten</p>", "Eleven"],
            "format": ["html", "text"],
            "updated": pd.to_datetime(["2024-06-01T12:00:00Z", None], utc=True),
            "tags": [["a", "b"], []],
            "seen": pd.to_datetime(["2024-01-01", "2024-01-02"]),
            "score": [0.5, float("nan")],
        }
    )
    frame.to_parquet(path)
    result = load_source(str(path))
    ten, eleven = result.documents
    assert (ten.doc_id, ten.format) == ("10", "html")
    assert ten.modified_at == datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert type(ten.modified_at) is datetime
    assert eleven.modified_at is None
    assert dict(ten.metadata) == {"tags": ["a", "b"], "seen": "2024-01-01T00:00:00", "score": 0.5}
    assert dict(eleven.metadata) == {"tags": [], "seen": "2024-01-02T00:00:00", "score": None}


def test_sql_source(tmp_path: Path) -> None:
    db = tmp_path / "kb.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE docs (doc_id TEXT, body TEXT, updated TEXT, lang TEXT)")
        connection.executemany(
            "INSERT INTO docs VALUES (?, ?, ?, ?)",
            [("b", "Bee", "2024-01-01", "en"), ("a", "Ay", None, "fr"), ("c", None, None, "en")],
        )
    url = f"sqlite:///{db}"
    result = load_source(
        url,
        query="SELECT doc_id AS id, body AS text, updated, lang FROM docs",
    )
    assert [doc.doc_id for doc in result.documents] == ["a", "b"]
    assert result.documents[1].uri == f"{url}#b"
    assert result.documents[1].modified_at == datetime(2024, 1, 1, tzinfo=UTC)
    assert dict(result.documents[0].metadata) == {"lang": "fr"}
    assert result.problems == (LoadProblem(f"{url}#c", "has no text in column 'text'"),)
    assert result.source == url


def test_sql_query_error_names_the_masked_source(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(
        SourceError, match=r"^cannot read source 'sqlite:///.* with the given query: "
    ) as info:
        load_source(url, query="SELECT id, text FROM missing_table")
    assert "no such table: missing_table" in str(info.value)


def test_password_never_appears_in_errors() -> None:
    url = "postgresql+psycopg://bob:s3cret-pw@127.0.0.1:1/kb"
    with pytest.raises(SourceError) as info:
        load_source(url, query="SELECT id, text FROM docs")
    assert "s3cret-pw" not in str(info.value)
    assert "postgresql+psycopg://bob:***@127.0.0.1:1/kb" in str(info.value)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://bob:pw@db:5432/kb", "postgresql+psycopg://bob:***@db:5432/kb"),
        ("postgresql://bob@db/kb", "postgresql://bob@db/kb"),
        ("sqlite:///tmp/kb.db", "sqlite:///tmp/kb.db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_unparseable_url_is_not_echoed() -> None:
    with pytest.raises(SourceError) as info:
        load_source("not a url://user:hunter2@x", query="SELECT 1")
    assert "hunter2" not in str(info.value)
    assert str(info.value).startswith("source looks like a URL but is not a valid SQLAlchemy URL")


# ---- helpers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (date(2024, 1, 2), datetime(2024, 1, 2, tzinfo=UTC)),
        (datetime(2024, 1, 2, 3, 4), datetime(2024, 1, 2, 3, 4, tzinfo=UTC)),
        (
            datetime(2024, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2024, 1, 2, 8, 4, tzinfo=UTC),
        ),
        ("2024-01-02", datetime(2024, 1, 2, tzinfo=UTC)),
        ("2024-01-02T03:04:05Z", datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_as_utc_datetime(value: object, expected: datetime) -> None:
    assert as_utc_datetime(value) == expected
    assert as_utc_datetime(value).tzinfo is UTC


@pytest.mark.parametrize("value", ["yesterday", 20240102, None])
def test_as_utc_datetime_rejects_non_dates(value: object) -> None:
    with pytest.raises(ValueError):
        as_utc_datetime(value)


def test_json_safe() -> None:
    value = {
        "when": date(2024, 1, 2),
        "at": datetime(2024, 1, 2, 3, 4, tzinfo=UTC),
        "nan": float("nan"),
        "nested": [{"n": 1, "flag": True}, ("x", None)],
        "set": {"b", "a"},
        3: Path("p"),
    }
    assert json_safe(value) == {
        "when": "2024-01-02",
        "at": "2024-01-02T03:04:00+00:00",
        "nan": None,
        "nested": [{"n": 1, "flag": True}, ["x", None]],
        "set": ["a", "b"],
        "3": "p",
    }
