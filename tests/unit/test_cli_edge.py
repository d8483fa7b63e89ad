"""The CLI's edge: bad settings are one line, listings fit 80 columns, --json parses."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from kbrefresh.cli import _common as common
from kbrefresh.cli._common import Col, listing_table
from kbrefresh.cli._views import VERDICT_COLUMNS
from kbrefresh.cli.admin import SIGNAL_COLUMNS
from kbrefresh.cli.main import HISTORY_COLUMNS, HIT_COLUMNS, STATUS_COLUMNS, VERSION_COLUMNS
from kbrefresh.settings import EXPECTED, Settings
from tests.support.cli import BAD_SETTINGS, SECRET, assert_one_error_line, invoke


@pytest.mark.parametrize(("name", "value", "expected"), BAD_SETTINGS)
def test_a_bad_setting_is_one_error_line(name: str, value: str, expected: str) -> None:
    line = assert_one_error_line(invoke(["status"], {f"KBREFRESH_{name}": value}),
                                 f"KBREFRESH_{name}={value!r} is invalid: {expected}")
    assert line == f"error: KBREFRESH_{name}={value!r} is invalid: expected {EXPECTED[name.lower()]}"


def test_every_setting_has_a_bad_value_tested_and_an_expectation() -> None:
    tested = {name.lower() for name, _, _ in BAD_SETTINGS}
    assert set(EXPECTED) == set(Settings.model_fields)
    assert set(Settings.model_fields) - tested == {"database_url", "openai_api_key",
                                                   "notify_webhook_url"}  # secrets: below


@pytest.mark.parametrize("command", [["status"], ["versions", "--kb", "x"], ["demo"],
                                     ["refresh", "--kb", "x", "--source", "."]])
def test_a_bad_database_url_never_shows_its_secret(command: list[str]) -> None:
    url = f"mysql://admin:{SECRET}@db.example.org/kb"
    line = assert_one_error_line(invoke(command, {"KBREFRESH_DATABASE_URL": url}),
                                 "KBREFRESH_DATABASE_URL=(value hidden) is invalid")
    assert SECRET not in line and "db.example.org" not in line


def test_two_bad_settings_are_still_one_line() -> None:
    line = assert_one_error_line(invoke(["status"], {"KBREFRESH_EMBEDDER": "foo",
                                                     "KBREFRESH_KEEP_VERSIONS": "x"}))
    assert line == ("error: KBREFRESH_EMBEDDER='foo' is invalid: expected 'offline' or 'openai'; "
                    "KBREFRESH_KEEP_VERSIONS='x' is invalid: expected an integer from 1 to 100")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--header-template", "{title}"],
         "header_template '{title}' must contain {text}, or the chunk itself would not be embedded"),
        (["--header-template", "{title} {heading}\n{text}"],
         "header_template uses unknown placeholder 'heading'"),
        (["--max-chars", "200", "--overlap-chars", "300"],
         "overlap_chars must be between 0 and max_chars - 1 (199), got 300"),
    ],
)
def test_a_bad_chunker_option_is_one_error_line(option: list[str], message: str) -> None:
    # No database is configured and none is started: the check comes first.
    result = invoke(["refresh", "--kb", "x", "--source", ".", *option],
                    {"KBREFRESH_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert_one_error_line(result, message)


# ---- 80 columns ------------------------------------------------------------------------

LONG_NOTE = ("data quality: 3 documents are shorter than 40 characters (faq/short-answer, "
             "billing/refunds-old, tickets/merge) and the source shrank by 27%")
WHEN = datetime(2026, 11, 27, 17, 5, tzinfo=UTC)
LISTINGS: list[tuple[str, tuple[Col, ...], dict[str, Any]]] = [
    ("versions", VERSION_COLUMNS, {
        "version": 12, "status": "rejected", "dataset_tag": "v12-2026-11-27",
        "embedder": "openai:text-embedding-3-small:1536", "chunks": 50123, "embedded": 1234,
        "reused": 48889, "removed": 1201, "created_at": WHEN, "error": LONG_NOTE}),
    ("verdict", VERDICT_COLUMNS, {
        "rule": "recall@5 [troubleshooting-and-diagnostics] ≥ live − 0.02", "value": 0.8125,
        "live": 0.84375, "delta": -0.03125, "ci": "[-0.061, -0.012]", "n": 128,
        "threshold": 0.82375, "result": "FAIL", "reason": LONG_NOTE}),
    ("history", HISTORY_COLUMNS, {
        "changed_at": WHEN, "action": "rollback", "from_version": 12, "to_version": 11,
        "reason": LONG_NOTE, "changed_by": "kbrefresh-cli",
        "flow_run_id": "0b5f0c2e-9d7e-4a51-a3a8-2f3f1d0c9e11"}),
    ("status", STATUS_COLUMNS, {
        "kb": "helpcenter-nimbus", "live_version": 12, "dataset_tag": "v12-2026-11-27",
        "chunks": 50123, "documents": 7211, "live_at": WHEN, "canary_version": 13,
        "canary_percent": 10, "versions": 4}),
    ("check", SIGNAL_COLUMNS, {
        "signal": "query drift (category) ←", "value": 0.5123, "severity": "severe",
        "action": "within_1_week", "reason": LONG_NOTE}),
    ("query", HIT_COLUMNS, {
        "rank": 1, "similarity": 0.8123, "doc_id": "technical/api/rotate-api-keys",
        "section": "Rotating a key without downtime", "text": LONG_NOTE}),
]


def column_widths(rendered: str) -> list[int]:
    header = next(line for line in rendered.splitlines() if line.startswith("┃"))
    return [len(part) for part in header.strip("┃").split("┃")]


@pytest.mark.parametrize("wide", [False, True], ids=["default", "wide"])
@pytest.mark.parametrize(("name", "cols", "row"), LISTINGS, ids=[n for n, _, _ in LISTINGS])
def test_listings_fit_80_columns_without_one_character_strips(
    name: str, cols: tuple[Col, ...], row: dict[str, Any], wide: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    console = Console(width=80, record=True, color_system=None)
    monkeypatch.setattr(common, "console", console)
    common.print_table(listing_table(f"{name} of 'helpcenter'", cols, [row, row], wide=wide),
                       wide=wide)
    rendered = console.export_text()
    assert max(len(line) for line in rendered.splitlines()) <= (common.WIDE_MAX if wide else 80)
    shown = [c for c in cols if wide or not c.wide]
    widths = column_widths(rendered)
    assert len(widths) == len(shown)
    for col, width in zip(shown, widths, strict=True):
        assert width - 2 >= (16 if col.text else min(len(col.header), 4)), (col.header, rendered)
    if not wide:
        # identifiers and numbers are never wrapped or cut; free text wraps at words only
        for col in shown:
            text = str(row[col.key])
            words = text.split() if col.text else [text if not isinstance(row[col.key], float)
                                                   else f"{row[col.key]:.4g}"]
            for word in words:
                if isinstance(row[col.key], datetime):
                    word = f"{row[col.key]:%Y-%m-%d %H:%M}"
                assert word in rendered, (col.header, word, rendered)


def test_the_versions_note_is_not_a_strip_at_80_columns() -> None:
    console = Console(width=80, record=True, color_system=None)
    console.print(listing_table("versions", VERSION_COLUMNS, [LISTINGS[0][2]]))
    note_lines = [line for line in console.export_text().splitlines() if "│" in line]
    assert len(note_lines) <= 6  # was 80+ one-character lines
    assert not any(re.search(r"│ \S │\s*$", line) for line in note_lines)


def test_json_of_a_listing_parses_with_stable_keys(capsys: pytest.CaptureFixture[str]) -> None:
    from kbrefresh.cli._common import show

    show("versions", VERSION_COLUMNS, [LISTINGS[0][2]], as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert data == [dict(LISTINGS[0][2], created_at=WHEN.isoformat())]
