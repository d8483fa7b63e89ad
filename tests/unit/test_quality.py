from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from kbrefresh.build.quality import (
    QualityIssue,
    QualityPolicy,
    QualityReport,
    check_documents,
    require_quality,
)
from kbrefresh.build.sources import LoadProblem, LoadResult
from kbrefresh.errors import ConfigError, DataQualityError
from kbrefresh.models import Document, sha256_text

NOW = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)
BODY = "A perfectly ordinary help article body."


def doc(
    doc_id: str,
    content: str = BODY,
    *,
    title: str = "Title",
    fmt: str = "markdown",
    modified_at: datetime | None = NOW - timedelta(days=3),
    content_hash: str | None = None,
) -> Document:
    return Document(
        doc_id=doc_id,
        uri=f"file:///kb/{doc_id}.md",
        title=title,
        category="general",
        content=content,
        format=fmt,
        content_hash=content_hash or sha256_text(doc_id + content),
        modified_at=modified_at,
    )


def result(*docs: Document, problems: tuple[LoadProblem, ...] = ()) -> LoadResult:
    return LoadResult(documents=docs, problems=problems, source="kb/", skipped_files=0)


def check(
    *docs: Document,
    problems: tuple[LoadProblem, ...] = (),
    previous: int | None = None,
    policy: QualityPolicy | None = None,
) -> QualityReport:
    return check_documents(
        result(*docs, problems=problems),
        previous_doc_count=previous,
        policy=policy or QualityPolicy(),
        now=NOW,
    )


# ---- policy -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_shrink": 1.5}, "max_shrink must be a fraction between 0 and 1, got 1.5"),
        ({"max_shrink": -0.1}, "max_shrink must be a fraction between 0 and 1, got -0.1"),
        ({"max_shrink": float("nan")}, "max_shrink must be a fraction between 0 and 1, got nan"),
        ({"max_age_days": 0}, "max_age_days must be a positive number of days or None, got 0"),
        (
            {"max_age_days": float("inf")},
            "max_age_days must be a positive number of days or None, got inf",
        ),
        ({"min_chars": -1}, "min_chars must be a non-negative integer, got -1"),
        ({"min_chars": 2.5}, "min_chars must be a non-negative integer, got 2.5"),
    ],
)
def test_policy_rejects_out_of_range_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        QualityPolicy(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


@pytest.mark.parametrize(
    "kwargs", [{"max_shrink": 0}, {"max_shrink": 1}, {"max_age_days": None}, {"min_chars": 0}]
)
def test_policy_accepts_boundaries(kwargs: dict[str, object]) -> None:
    QualityPolicy(**kwargs)  # type: ignore[arg-type]


# ---- individual checks ------------------------------------------------------------------


def test_clean_source_passes_without_issues() -> None:
    report = check(doc("a"), doc("b"), previous=2)
    assert report.passed
    assert report.issues == ()
    assert (report.doc_count, report.previous_doc_count) == (2, 2)
    assert report.newest_modified_at == NOW - timedelta(days=3)
    require_quality(report)


def test_load_problems_are_errors_naming_the_path() -> None:
    problems = (
        LoadProblem("billing/bad.md", "is not valid UTF-8 (byte b'\\xff' at offset 3)"),
        LoadProblem("docs.csv#7", "has no text in column 'text'"),
    )
    report = check(doc("a"), problems=problems)
    assert report.errors == (
        QualityIssue(
            "load_problem",
            "error",
            "'billing/bad.md' is not valid UTF-8 (byte b'\\xff' at offset 3)",
        ),
        QualityIssue("load_problem", "error", "'docs.csv#7' has no text in column 'text'"),
    )


def test_empty_source_is_an_error() -> None:
    report = check()
    assert report.issues == (
        QualityIssue("empty_source", "error", "source 'kb/' has no documents"),
    )


@pytest.mark.parametrize(
    ("content", "fmt", "message"),
    [
        ("", "markdown", "document 'a' is empty"),
        ("  \n\t ", "text", "document 'a' is empty"),
        (
            "Too short.",
            "text",
            "document 'a' has only 10 characters of text, fewer than the minimum 20",
        ),
        (
            "<html><script>var x = 'a very long script that is not text';</script></html>",
            "html",
            "document 'a' is empty",
        ),
        (
            "<p>Tiny &amp; small</p><style>.a{}</style>",
            "html",
            "document 'a' has only 12 characters of text, fewer than the minimum 20",
        ),
    ],
)
def test_empty_and_short_documents_are_errors(content: str, fmt: str, message: str) -> None:
    report = check(doc("a", content, fmt=fmt))
    assert report.errors == (QualityIssue("too_short", "error", message, "a"),)


def test_html_with_enough_visible_text_passes() -> None:
    assert check(doc("a", f"<html><body><p>{BODY}</p></body></html>", fmt="html")).passed


def test_min_chars_comes_from_the_policy() -> None:
    assert check(doc("a", "Short."), policy=QualityPolicy(min_chars=5)).passed


def test_duplicate_ids_are_errors() -> None:
    first = doc("faq", "One body that is long enough to pass.")
    second = Document(**{**first.__dict__, "uri": "file:///kb/faq.html", "content_hash": "x"})
    report = check(first, second)
    assert report.errors == (
        QualityIssue(
            "duplicate_id",
            "error",
            "doc id 'faq' is used by 2 documents (file:///kb/faq.md, file:///kb/faq.html); "
            "ids must be unique",
            "faq",
        ),
    )


@pytest.mark.parametrize(("fail", "severity"), [(False, "warning"), (True, "error")])
def test_duplicate_content_severity_follows_the_policy(fail: bool, severity: str) -> None:
    docs = (doc("a", content_hash="h"), doc("b", content_hash="h"), doc("c", content_hash="k"))
    report = check(*docs, policy=QualityPolicy(fail_on_duplicate_content=fail))
    assert report.issues == (
        QualityIssue(
            "duplicate_content", severity, "documents 'a', 'b' have identical content", "a"
        ),
    )
    assert report.passed is not fail


def test_missing_title_is_a_warning() -> None:
    report = check(doc("a", title="  "))
    assert report.passed
    assert report.warnings == (
        QualityIssue("missing_title", "warning", "document 'a' has no title", "a"),
    )


def test_stale_source_is_an_error() -> None:
    old = NOW - timedelta(days=400)
    report = check(doc("a", modified_at=old), doc("b", modified_at=old - timedelta(days=9)))
    assert report.newest_modified_at == old
    assert report.errors == (
        QualityIssue(
            "freshness",
            "error",
            "the newest document was modified 2023-12-28, 400.0 days ago, more than the "
            "allowed 365 days; the source may have stopped updating",
        ),
    )


def test_freshness_uses_the_newest_document_and_can_be_disabled() -> None:
    old, fresh = NOW - timedelta(days=900), NOW - timedelta(days=364)
    assert check(doc("a", modified_at=old), doc("b", modified_at=fresh)).passed
    assert check(doc("a", modified_at=old), policy=QualityPolicy(max_age_days=None)).passed


def test_naive_modification_times_are_taken_as_utc() -> None:
    naive = datetime(2025, 1, 30, 12, 0)
    report = check(doc("a", modified_at=naive))
    assert report.newest_modified_at == datetime(2025, 1, 30, 12, 0, tzinfo=UTC)
    assert report.passed


def test_missing_dates_are_a_warning() -> None:
    report = check(doc("a", modified_at=None))
    assert report.newest_modified_at is None
    assert report.issues == (
        QualityIssue(
            "freshness",
            "warning",
            "no document has a modification time, so freshness was not checked",
        ),
    )


def test_mass_deletion_breaker() -> None:
    docs = [doc(f"d{i}") for i in range(40)]
    report = check(*docs, previous=64)
    assert report.errors == (
        QualityIssue(
            "shrinkage",
            "error",
            "source shrank from 64 to 40 documents (-37.5%), more than the allowed 20%; "
            "if this is intended, rerun with a higher max_shrink",
        ),
    )
    assert check(*docs, previous=64, policy=QualityPolicy(max_shrink=0.4)).passed


@pytest.mark.parametrize(
    ("count", "previous", "passed"),
    [(40, 50, True), (39, 50, False), (1, None, True), (5, 0, True), (60, 50, True)],
)
def test_mass_deletion_boundaries(count: int, previous: int | None, passed: bool) -> None:
    report = check(*[doc(f"d{i}") for i in range(count)], previous=previous)
    assert report.passed is passed


def test_everything_is_reported_at_once() -> None:
    report = check(
        doc("a", ""),
        doc("b", title=""),
        problems=(LoadProblem("c.md", "has broken front matter"),),
        previous=10,
    )
    assert [(issue.check, issue.severity) for issue in report.issues] == [
        ("load_problem", "error"),
        ("too_short", "error"),
        ("missing_title", "warning"),
        ("shrinkage", "error"),
    ]


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"^now must be timezone-aware, got datetime\.datetime"):
        check_documents(
            result(doc("a")), previous_doc_count=None, policy=QualityPolicy(), now=datetime.now()
        )


# ---- report rendering and require_quality -----------------------------------------------


def test_require_quality_raises_with_the_report() -> None:
    report = check(doc("a", ""), doc("b", "tiny"))
    with pytest.raises(DataQualityError) as info:
        require_quality(report)
    assert str(info.value) == (
        "data quality checks failed with 2 errors: document 'a' is empty; "
        "document 'b' has only 4 characters of text, fewer than the minimum 20"
    )
    assert info.value.report is report


def test_require_quality_names_at_most_ten_problems() -> None:
    report = check(*[doc(f"d{i:02d}", "") for i in range(13)])
    with pytest.raises(DataQualityError) as info:
        require_quality(report)
    message = str(info.value)
    assert message.startswith("data quality checks failed with 13 errors: document 'd00' is empty;")
    assert "'d09'" in message and "'d10'" not in message
    assert message.endswith("document 'd09' is empty; and 3 more")


def test_warnings_alone_do_not_fail() -> None:
    require_quality(check(doc("a", title="")))


def test_to_dict_is_json_serialisable() -> None:
    report = check(doc("a", title=""), doc("b", ""), previous=2)
    data = report.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "passed": False,
        "doc_count": 2,
        "previous_doc_count": 2,
        "newest_modified_at": "2025-01-28T12:00:00+00:00",
        "error_count": 1,
        "warning_count": 1,
        "issues": [
            {
                "check": "missing_title",
                "severity": "warning",
                "message": "document 'a' has no title",
                "doc_id": "a",
            },
            {
                "check": "too_short",
                "severity": "error",
                "message": "document 'b' is empty",
                "doc_id": "b",
            },
        ],
    }


def test_to_markdown() -> None:
    problems = (LoadProblem("x|y.md", "is not valid UTF-8"),)
    report = check(doc("a", title=""), problems=problems, previous=1)
    assert report.to_markdown() == (
        "## Data quality: failed\n"
        "\n"
        "1 documents (previously 1), newest modified 2025-01-28; 1 errors, 1 warnings.\n"
        "\n"
        "| severity | check | document | message |\n"
        "| --- | --- | --- | --- |\n"
        "| error | load_problem |  | 'x\\|y.md' is not valid UTF-8 |\n"
        "| warning | missing_title | a | document 'a' has no title |\n"
    )


def test_to_markdown_for_a_clean_first_build() -> None:
    report = check(doc("a", modified_at=None), policy=QualityPolicy(max_age_days=None))
    assert report.to_markdown() == (
        "## Data quality: passed\n\n1 documents, newest modified unknown; 0 errors, 0 warnings.\n"
    )
