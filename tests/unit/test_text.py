"""The shared text helpers, pinned to exact outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kbrefresh._text import (
    escape_markdown,
    load_settings_file,
    num,
    redact_url,
    scrub,
    short_hash,
    slug,
    tokens_for_chars,
)
from kbrefresh.errors import ConfigError
from kbrefresh.store import KEPT, SERVABLE, VersionStatus


@pytest.mark.parametrize(("text", "escaped"), [
    ("plain words", "plain words"),
    ("*bold* _it_ `code`", r"\*bold\* \_it\_ \`code\`"),
    ("a | b", r"a \| b"),
    ("[link](http://x)", r"\[link\]\(http://x\)"),
    ("# title\nnext\r\nline", r"\# title next  line"),
    ("<script>!", r"\<script\>\!"),
    ("1.5-2+3 ~x", r"1\.5\-2\+3 \~x"),
    (42, "42"),
])
def test_escape_markdown(text: object, escaped: str) -> None:
    assert escape_markdown(text) == escaped


@pytest.mark.parametrize(("args", "kwargs", "shown"), [
    ((None,), {}, "-"),
    ((0.123456,), {}, "0.1235"),
    ((0.123456, ".3g"), {}, "0.123"),
    ((0.5, ".3f"), {"missing": "–"}, "0.500"),
    ((0.25, "+.2f"), {}, "+0.25"),
    ((-0.25, "+.2f"), {}, "-0.25"),
    ((1234567, ","), {}, "1,234,567"),
    ((None, ","), {"missing": "–"}, "–"),
])
def test_num(args: tuple[object, ...], kwargs: dict[str, str], shown: str) -> None:
    assert num(*args, **kwargs) == shown  # type: ignore[arg-type]


@pytest.mark.parametrize(("url", "redacted"), [
    ("postgresql://u:p%40ss@h:5/db", "postgresql://u:***@h:5/db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
    ("see postgresql://kb:hunter2@db.example/kb now", "see postgresql://kb:***@db.example/kb now"),
    ("no url here", "no url here"),
])
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_scrub() -> None:
    assert scrub("password hunter2 in hunter2", "hunter2") == "password *** in ***"
    assert scrub("nothing", None) == "nothing"
    assert scrub("nothing", "") == "nothing"


@pytest.mark.parametrize(("name", "slugged"), [
    ("helpcenter", "helpcenter"),
    ("help-center-2", "help-center-2"),
    ("Help Center", "help-center-" + short_hash("Help Center")),
    ("help_center", "help-center-" + short_hash("help_center")),
    ("Ünïcode kb", "unicode-kb-" + short_hash("Ünïcode kb")),
    ("日本", short_hash("日本")),
    ("'; DROP TABLE kb; --", "drop-table-kb-" + short_hash("'; DROP TABLE kb; --")),
    ("a" * 41, "a" * 40 + "-" + short_hash("a" * 41)),
])
def test_slug(name: str, slugged: str) -> None:
    assert slug(name) == slugged


def test_slug_pins() -> None:
    assert short_hash("Help Center") == "a78cebc4"
    assert slug("Help Center") == "help-center-a78cebc4"


@pytest.mark.parametrize(("chars", "tokens"), [(0, 0), (3, 1), (4, 1), (5, 2), (4000, 1000)])
def test_tokens_for_chars(chars: int, tokens: int) -> None:
    assert tokens_for_chars(chars) == tokens


@pytest.mark.parametrize(("name", "text", "data"), [
    ("p.toml", "a = 1\n[b]\nc = 'x'\n", {"a": 1, "b": {"c": "x"}}),
    ("p.yaml", "a: 1\nb:\n  c: x\n", {"a": 1, "b": {"c": "x"}}),
    ("p.YML", "", {}),
    ("p.yaml", "- 1\n", [1]),
])
def test_load_settings_file(tmp_path: Path, name: str, text: str, data: object) -> None:
    (tmp_path / name).write_text(text, "utf-8")
    assert load_settings_file(tmp_path / name) == data


@pytest.mark.parametrize(("name", "text", "message"), [
    ("p.json", "{}", "unsupported policy file 'p.json'; expected one of: .toml, .yaml, .yml"),
    ("p.toml", "a = = 1", "p.toml: invalid TOML (Invalid value (at line 1, column 5))"),
    ("p.yaml", "a: [1\n", "p.yaml line 2: invalid YAML (expected ',' or ']', but got '<stream end>')"),
])
def test_load_settings_file_errors(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text, "utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings_file(tmp_path / name)
    assert str(info.value) == message


def test_load_settings_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings_file(tmp_path / "gone.toml", what="check policy")
    assert str(info.value) == (
        f"cannot read check policy file {str(tmp_path / 'gone.toml')!r}: No such file or directory")


def test_version_status_values_are_the_stored_strings() -> None:
    assert [s.value for s in VersionStatus] == [
        "building", "candidate", "rejected", "failed", "live", "canary", "proven", "retired",
        "rolled_back", "archived"]
    assert VersionStatus("rolled_back") is VersionStatus.ROLLED_BACK
    assert VersionStatus.LIVE == "live" and f"{VersionStatus.CANARY}" == "canary"
    assert set(SERVABLE) <= set(KEPT) and VersionStatus.ARCHIVED not in KEPT
    with pytest.raises(ValueError, match="'shiny' is not a valid VersionStatus"):
        VersionStatus("shiny")


def test_status_check_constraint_lists_every_enum_value() -> None:
    migration = (Path(__file__).parents[2] / "sql" / "migrations" / "0006_alter_version_status.sql")
    text = migration.read_text("utf-8")
    assert all(f"'{s.value}'" in text for s in VersionStatus)
