"""Data-quality checks run on loaded documents before anything is built or published.

``check_documents`` never raises on bad data: it returns a ``QualityReport`` listing
every issue, so one run shows all of them. ``require_quality`` turns a failed report
into a ``DataQualityError``. Checks and their severities:

=================  ========  ======================================================
check              severity  fires when
=================  ========  ======================================================
load_problem       error     a file or row could not be read (encoding, front matter)
empty_source       error     the source has no documents at all
too_short          error     a document is empty or shorter than ``min_chars``
duplicate_id       error     two documents share a ``doc_id``
duplicate_content  warning   documents with different ids have the same content hash
                             (error with ``fail_on_duplicate_content``)
missing_title      warning   a document has no title
freshness          error     the newest document is older than ``max_age_days``
                   warning   no document has a modification time
shrinkage          error     the source lost more than ``max_shrink`` of its documents
=================  ========  ======================================================
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

from kbrefresh.build.sources import LoadResult
from kbrefresh.errors import ConfigError, DataQualityError
from kbrefresh.models import Document

__all__ = [
    "QualityIssue",
    "QualityPolicy",
    "QualityReport",
    "check_documents",
    "document_issues",
    "duplicate_issues",
    "freshness_issues",
    "newest_modified",
    "require_quality",
    "shrinkage_issues",
    "title_issues",
]

logger = logging.getLogger(__name__)

ERROR = "error"
WARNING = "warning"
_SUMMARY_LIMIT = 10
_NON_TEXT_TAGS = frozenset({"script", "style", "noscript", "template"})


@dataclass(frozen=True)
class QualityPolicy:
    """Thresholds for ``check_documents``; ``max_age_days=None`` disables freshness."""

    max_shrink: float = 0.2
    max_age_days: float | None = 365.0
    min_chars: int = 20
    fail_on_duplicate_content: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.max_shrink, int | float) and 0 <= self.max_shrink <= 1):
            raise ConfigError(
                f"max_shrink must be a fraction between 0 and 1, got {self.max_shrink!r}"
            )
        age = self.max_age_days
        if age is not None and not (isinstance(age, int | float) and 0 < age < math.inf):
            raise ConfigError(
                f"max_age_days must be a positive number of days or None, got {age!r}"
            )
        if isinstance(self.min_chars, bool) or not (
            isinstance(self.min_chars, int) and self.min_chars >= 0
        ):
            raise ConfigError(f"min_chars must be a non-negative integer, got {self.min_chars!r}")


@dataclass(frozen=True)
class QualityIssue:
    """One finding; ``severity`` is ``"error"`` (blocks the build) or ``"warning"``."""

    check: str
    severity: str
    message: str
    doc_id: str | None = None


@dataclass(frozen=True)
class QualityReport:
    """Every issue found in one source, plus the counts the checks were based on."""

    issues: tuple[QualityIssue, ...]
    doc_count: int
    previous_doc_count: int | None
    newest_modified_at: datetime | None

    @property
    def passed(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> tuple[QualityIssue, ...]:
        return tuple(issue for issue in self.issues if issue.severity == ERROR)

    @property
    def warnings(self) -> tuple[QualityIssue, ...]:
        return tuple(issue for issue in self.issues if issue.severity == WARNING)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary (for artifacts and tracking)."""
        newest = self.newest_modified_at
        return {
            "passed": self.passed,
            "doc_count": self.doc_count,
            "previous_doc_count": self.previous_doc_count,
            "newest_modified_at": newest.isoformat() if newest is not None else None,
            "error_count": len(self.errors),
            "warning_count": len(self.warnings),
            "issues": [asdict(issue) for issue in self.issues],
        }

    def to_markdown(self) -> str:
        """Return the report as Markdown (a heading, a summary line, an issue table)."""
        verdict = "passed" if self.passed else "failed"
        previous = (
            f" (previously {self.previous_doc_count})"
            if self.previous_doc_count is not None
            else ""
        )
        newest = self.newest_modified_at
        newest_text = newest.date().isoformat() if newest is not None else "unknown"
        lines = [
            f"## Data quality: {verdict}",
            "",
            (
                f"{self.doc_count} documents{previous}, newest modified {newest_text}; "
                f"{len(self.errors)} errors, {len(self.warnings)} warnings."
            ),
        ]
        if self.issues:
            lines += ["", "| severity | check | document | message |", "| --- | --- | --- | --- |"]
            for issue in self.issues:
                cells = (issue.severity, issue.check, issue.doc_id or "", issue.message)
                lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
        return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def check_documents(
    result: LoadResult,
    *,
    previous_doc_count: int | None,
    policy: QualityPolicy,
    now: datetime,
) -> QualityReport:
    """Check loaded documents against ``policy`` and return every issue found.

    Args:
        previous_doc_count: documents in the last build of this knowledge base, for
            the mass-deletion breaker; None on the first build.
        now: the reference time for freshness; must be timezone-aware.

    Raises:
        ConfigError: ``now`` is naive or ``previous_doc_count`` is negative.
    """
    if now.tzinfo is None:
        raise ConfigError(f"now must be timezone-aware, got {now!r}; use datetime.now(UTC)")
    if previous_doc_count is not None and previous_doc_count < 0:
        raise ConfigError(f"previous_doc_count must be 0 or more, got {previous_doc_count!r}")
    docs = result.documents
    issues = [
        QualityIssue("load_problem", ERROR, f"{problem.path!r} {problem.reason}")
        for problem in result.problems
    ]
    if not docs:
        issues.append(
            QualityIssue("empty_source", ERROR, f"source {result.source!r} has no documents")
        )
    issues += document_issues(docs, policy)
    issues += _duplicate_issues(docs, policy)
    newest = newest_modified(docs)
    issues += freshness_issues(len(docs), newest, policy, now)
    issues += shrinkage_issues(len(docs), previous_doc_count, policy)
    report = QualityReport(
        issues=tuple(issues),
        doc_count=len(docs),
        previous_doc_count=previous_doc_count,
        newest_modified_at=newest,
    )
    logger.info(
        "quality of %s: %d documents, %d errors, %d warnings",
        result.source,
        report.doc_count,
        len(report.errors),
        len(report.warnings),
    )
    return report


def require_quality(report: QualityReport) -> None:
    """Raise ``DataQualityError`` (carrying ``report``) unless the report passed."""
    if report.passed:
        return
    errors = report.errors
    shown = "; ".join(issue.message for issue in errors[:_SUMMARY_LIMIT])
    more = len(errors) - _SUMMARY_LIMIT
    suffix = f"; and {more} more" if more > 0 else ""
    noun = "error" if len(errors) == 1 else "errors"
    raise DataQualityError(
        f"data quality checks failed with {len(errors)} {noun}: {shown}{suffix}",
        report=report,
    )


class _HtmlText(HTMLParser):
    """Collect the text of an HTML page outside script/style.

    The stdlib tokenizer alone is about four times faster than building a
    BeautifulSoup tree, and a length check needs no tree.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _NON_TEXT_TAGS:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _NON_TEXT_TAGS and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def visible_length(doc: Document) -> int:
    """Return the length of ``doc``'s text with runs of whitespace counted as one."""
    text = doc.content
    if doc.format == "html":
        parser = _HtmlText()
        parser.feed(text)
        parser.close()
        text = " ".join(parser.parts)
    return len(" ".join(text.split()))


def _visible_at_least(doc: Document, min_chars: int) -> int:
    """Return the visible length, or a lower bound of it when that already reaches ``min_chars``.

    Collapsing whitespace in a prefix never yields more characters than in the whole
    text, so a long enough prefix settles most documents without scanning them all.
    """
    if doc.format != "html":
        prefix = doc.content[: max(8 * min_chars, 256)]
        length = len(" ".join(prefix.split()))
        if length >= min_chars:
            return length
    return visible_length(doc)


def document_issues(docs: Sequence[Document], policy: QualityPolicy) -> list[QualityIssue]:
    issues = []
    for doc in docs:
        length = _visible_at_least(doc, policy.min_chars)
        if length == 0:
            issues.append(
                QualityIssue("too_short", ERROR, f"document {doc.doc_id!r} is empty", doc.doc_id)
            )
        elif length < policy.min_chars:
            message = (
                f"document {doc.doc_id!r} has only {length} characters of text, "
                f"fewer than the minimum {policy.min_chars}"
            )
            issues.append(QualityIssue("too_short", ERROR, message, doc.doc_id))
        issues += title_issues(doc.doc_id, doc.title)
    return issues


def title_issues(doc_id: str, title: str) -> list[QualityIssue]:
    if title.strip():
        return []
    return [QualityIssue("missing_title", WARNING, f"document {doc_id!r} has no title", doc_id)]


def _duplicate_issues(docs: Sequence[Document], policy: QualityPolicy) -> list[QualityIssue]:
    uris_by_id: dict[str, list[str]] = defaultdict(list)
    ids_by_hash: dict[str, list[str]] = defaultdict(list)
    for doc in docs:
        uris_by_id[doc.doc_id].append(doc.uri)
        if doc.doc_id not in ids_by_hash[doc.content_hash]:
            ids_by_hash[doc.content_hash].append(doc.doc_id)
    return duplicate_issues(uris_by_id, ids_by_hash.values(), policy)


def duplicate_issues(
    uris_by_id: Mapping[str, Sequence[str]], ids_by_content: Iterable[Sequence[str]],
    policy: QualityPolicy,
) -> list[QualityIssue]:
    """Return the issues for ids used more than once and for groups of ids sharing content."""
    issues = []
    for doc_id, uris in uris_by_id.items():
        if len(uris) > 1:
            message = (
                f"doc id {doc_id!r} is used by {len(uris)} documents "
                f"({', '.join(uris)}); ids must be unique"
            )
            issues.append(QualityIssue("duplicate_id", ERROR, message, doc_id))
    severity = ERROR if policy.fail_on_duplicate_content else WARNING
    for ids in ids_by_content:
        if len(ids) > 1:
            names = ", ".join(repr(doc_id) for doc_id in ids)
            message = f"documents {names} have identical content"
            issues.append(QualityIssue("duplicate_content", severity, message, ids[0]))
    return issues


def newest_modified(docs: Sequence[Document]) -> datetime | None:
    times = [_aware(doc.modified_at) for doc in docs if doc.modified_at is not None]
    return max(times) if times else None


def _aware(moment: datetime) -> datetime:
    # Documents built by hand may carry naive times; the loaders always write UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def freshness_issues(
    doc_count: int, newest: datetime | None, policy: QualityPolicy, now: datetime
) -> list[QualityIssue]:
    if policy.max_age_days is None or not doc_count:
        return []
    if newest is None:
        message = "no document has a modification time, so freshness was not checked"
        return [QualityIssue("freshness", WARNING, message)]
    age_days = (now - newest).total_seconds() / 86400
    if age_days <= policy.max_age_days:
        return []
    message = (
        f"the newest document was modified {newest.date().isoformat()}, "
        f"{age_days:.1f} days ago, more than the allowed {policy.max_age_days:g} days; "
        "the source may have stopped updating"
    )
    return [QualityIssue("freshness", ERROR, message)]


def shrinkage_issues(
    doc_count: int, previous: int | None, policy: QualityPolicy
) -> list[QualityIssue]:
    if not previous or doc_count >= (1 - policy.max_shrink) * previous:
        return []
    shrink = (previous - doc_count) / previous * 100
    message = (
        f"source shrank from {previous} to {doc_count} documents (-{round(shrink, 1):g}%), "
        f"more than the allowed {round(policy.max_shrink * 100, 1):g}%; "
        "if this is intended, rerun with a higher max_shrink"
    )
    return [QualityIssue("shrinkage", ERROR, message)]
