"""The bad-input catalogue: each bad input ends in one error line and publishes nothing.

One knowledge base is built once (v1 live); every case then runs the real CLI against
it with one bad input and checks: exit code 1, one ``error: …`` line on stderr quoting
the bad value, no traceback, the live version unchanged, no new servable version and no
chunk table that the catalog does not know (no orphan).

Already covered elsewhere, not repeated here:

- every bad ``KBREFRESH_*`` setting, before anything exists:
  ``tests/integration/test_cli_database.py::test_a_bad_setting_refuses_a_refresh_before_anything_exists``
  and ``tests/unit/test_cli_edge.py::test_a_bad_setting_is_one_error_line`` (both driven by
  ``tests/support/cli.py`` ``BAD_SETTINGS``; ``test_every_setting_has_a_bad_value_tested…``
  checks the list is complete); secrets' values hidden: ``test_a_bad_database_url_never_shows_its_secret``;
- bad chunker options and a policy file with an unknown key:
  ``tests/integration/test_cli_database.py`` (``test_a_bad_chunker_option_creates_nothing``,
  ``test_a_bad_policy_file_creates_nothing``); every policy shape: ``tests/unit/test_policy.py``;
- golden files (bad JSON/CSV/YAML, wrong types, unknown keys, per file and line):
  ``tests/unit/test_golden.py::test_bad_files_name_file_and_line``;
- per-file and per-row load problems (front matter, dates, formats):
  ``tests/unit/test_sources.py``.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from kbrefresh.cli import app
from tests.support.cli import assert_one_error_line
from tests.support.corpus import write_corpus

pytestmark = pytest.mark.integration

KB = "catalogue"
SERVABLE = ("candidate", "live", "canary", "proven")
# Two levels of aliases are enough to show the refusal; nine would be a billion laughs.
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)
DEEP = "x: " + "[" * 5000 + "]" * 5000 + "\n"
MB = 2**20


@dataclass(frozen=True)
class Ctx:
    env: dict[str, str]
    url: str
    corpus: Path
    tmp: Path


def build_ctx(pg_uri: str, tmp: Path) -> Ctx:
    """Create a database with ``KB`` v1 live, built from an 8-document corpus."""
    name = f"badinputs_{os.getpid()}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = pg_uri.replace("/postgres?", f"/{name}?", 1)
    corpus = tmp / "corpus"
    write_corpus(corpus, n_docs=8)
    env = {"KBREFRESH_DATABASE_URL": url, "KBREFRESH_EMBEDDER": "offline",
           "KBREFRESH_EMBEDDING_DIMS": "64", "KBREFRESH_DATA_DIR": str(tmp / "data"),
           "KBREFRESH_MAINTENANCE_WORK_MEM": "64MB", "KBREFRESH_TRACKING": "false"}
    built = cli(env, "refresh", "--kb", KB, "--source", str(corpus))
    assert built.exit_code == 0, built.output
    return Ctx(env=env, url=url, corpus=corpus, tmp=tmp)


@pytest.fixture(scope="module")
def ctx(pg_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Ctx:
    return build_ctx(pg_uri, tmp_path_factory.mktemp("bad-inputs"))


def cli(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **env})


def published(url: str) -> dict[str, Any]:
    """What readers can see: routing, servable versions, and the chunk tables."""
    with psycopg.connect(url) as conn:
        routing = conn.execute(
            "SELECT k.name, r.live_version, r.canary_version FROM kb k"
            " JOIN kb_routing r ON r.kb_id = k.id ORDER BY k.name").fetchall()
        servable = conn.execute(
            "SELECT kb_id, version FROM kb_versions WHERE status = ANY(%s) ORDER BY 1, 2",
            (list(SERVABLE),)).fetchall()
        tables = {r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE 'kbrefresh\\_chunks\\_%'")}
        known = {r[0] for r in conn.execute("SELECT table_name FROM kb_fingerprints")}
    assert tables <= known, f"orphan chunk tables: {sorted(tables - known)}"
    return {"routing": routing, "servable": servable, "tables": tables}


def source_with(ctx: Ctx, case: str, files: dict[str, bytes | str]) -> Path:
    """A copy of the good corpus plus ``files`` (relative path → content)."""
    root = ctx.tmp / case
    write_corpus(root, n_docs=8)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, "utf-8")
    return root


def sqlite_source(ctx: Ctx, case: str, rows: list[tuple[str, str]]) -> str:
    path = ctx.tmp / f"{case}.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE docs (id TEXT, title TEXT, text TEXT)")
        db.executemany("INSERT INTO docs VALUES (?, ?, ?)",
                       [(i, f"Title {n}", t) for n, (i, t) in enumerate(rows)])
    return f"sqlite:///{path}"


LONG_TEXT = "Rotate the API key from the settings page, then update every client. " * 4


def csv_source(ctx: Ctx, case: str, text: str) -> Path:
    path = ctx.tmp / f"{case}.csv"
    path.write_text(text, "utf-8")
    return path


# ---- the table: case id → (arguments for the CLI, fragments of the one error line) -------

Prepare = Callable[[Ctx], list[str]]


def refresh_args(source: Path | str, *extra: str) -> list[str]:
    return ["refresh", "--kb", KB, "--source", str(source), *extra]


def _binary(ctx: Ctx) -> list[str]:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))
    return refresh_args(source_with(ctx, "binary", {"logo.md": png}))


def _nul_bytes(ctx: Ctx) -> list[str]:
    # Valid UTF-8, but a NUL: PostgreSQL text cannot store it.
    return refresh_args(source_with(ctx, "nul", {"dump.txt": "PK header\x00\x00 binary tail " * 20}))


def _undecodable(ctx: Ctx) -> list[str]:
    return refresh_args(source_with(ctx, "latin1", {"cafe.md": "# Café\n\nMenu du café.".encode(
        "latin-1")}))


HUGE_LINE = "A fifty megabyte export that someone dropped into the docs folder by mistake.\n"
HUGE_BYTES = len(HUGE_LINE) * (50 * MB // len(HUGE_LINE) + 1)


def _huge(ctx: Ctx) -> list[str]:
    return refresh_args(source_with(ctx, "huge", {"export.txt": HUGE_LINE * (HUGE_BYTES // len(
        HUGE_LINE))}))


def _empty_dir(ctx: Ctx) -> list[str]:
    (ctx.tmp / "empty").mkdir(exist_ok=True)
    return refresh_args(ctx.tmp / "empty")


def _symlink_loop(ctx: Ctx) -> list[str]:
    root = source_with(ctx, "loops", {})
    (root / "a.md").symlink_to(root / "b.md")
    (root / "b.md").symlink_to(root / "a.md")
    (root / "general" / "up").symlink_to(root)  # a directory loop: must not be walked forever
    return refresh_args(root)


def _symlink_out(ctx: Ctx) -> list[str]:
    root = source_with(ctx, "escape", {})
    outside = ctx.tmp / "secret.txt"
    outside.write_text("not part of the knowledge base " * 10, "utf-8")
    (root / "secret.txt").symlink_to(outside)
    return refresh_args(root)


def _csv_traversal(ctx: Ctx) -> list[str]:
    rows = "".join(f'"{doc_id}",Title,"{LONG_TEXT}"\n'
                   for doc_id in ("ok-1", "../../etc/passwd", "/etc/shadow", "a/./b", "c//d"))
    return refresh_args(csv_source(ctx, "traversal", "id,title,text\n" + rows))


def _sql_nul_id(ctx: Ctx) -> list[str]:
    return refresh_args(sqlite_source(ctx, "nul_id", [("ok-1", LONG_TEXT), ("a\x00b", LONG_TEXT)]),
                        "--query", "SELECT * FROM docs")


def _sql_nul_text(ctx: Ctx) -> list[str]:
    url = sqlite_source(ctx, "nul_text", [("ok-1", LONG_TEXT), ("ok-2", LONG_TEXT + "\x00")])
    return refresh_args(url, "--query", "SELECT * FROM docs")


def _csv_columns(ctx: Ctx) -> list[str]:
    return refresh_args(csv_source(ctx, "columns", f"key,body\nk1,{LONG_TEXT}\n"))


def _sql_failing(ctx: Ctx) -> list[str]:
    return refresh_args(sqlite_source(ctx, "failing", []), "--query", "SELECT * FROM no_such_table")


def _front_matter_bomb(ctx: Ctx) -> list[str]:
    return refresh_args(source_with(ctx, "fm_bomb", {"bomb.md": f"---\n{BOMB}---\n# Bomb\n\n" +
                                                    LONG_TEXT}))


def _front_matter_deep(ctx: Ctx) -> list[str]:
    return refresh_args(source_with(ctx, "fm_deep", {"deep.md": f"---\n{DEEP}---\n# Deep\n\n" +
                                                    LONG_TEXT}))


def _policy_file(ctx: Ctx, name: str, text: str) -> list[str]:
    path = ctx.tmp / name
    path.write_text(text, "utf-8")
    return refresh_args(source_with(ctx, f"p-{path.stem}", {"new.md": "# New\n\n" + LONG_TEXT}),
                        "--policy", str(path))


def _golden_file(ctx: Ctx, name: str, text: str) -> list[str]:
    path = ctx.tmp / name
    path.write_text(text, "utf-8")
    return ["golden", "load", "--kb", KB, str(path)]


CASES: list[tuple[str, Prepare, tuple[str, ...]]] = [
    ("binary file", _binary, ("logo.md", "is a binary file (NUL byte at offset 8); expected UTF-8 text")),
    ("NUL bytes in UTF-8 text", _nul_bytes, ("dump.txt", "is a binary file (NUL byte at offset 9)")),
    ("undecodable text", _undecodable, ("cafe.md", "is not valid UTF-8 (byte b'\\xe9' at offset 5)")),
    ("50 MB file", _huge, ("export.txt", f"is {HUGE_BYTES} bytes; expected at most 16777216 bytes per document")),
    ("empty directory", _empty_dir, ("/empty' has no documents",)),
    ("symlink loop", _symlink_loop, ("'a.md' is a symbolic link that loops", "'b.md' is a symbolic link that loops")),
    ("symlink out of the source", _symlink_out,
     ("secret.txt", "is a symbolic link to outside the source directory")),
    ("path traversal in doc ids", _csv_traversal,
     ("'../../etc/passwd'", "'/etc/shadow'", "is not a relative path of plain segments")),
    ("NUL in a doc id", _sql_nul_id, ("'a\\x00b'", "contains control characters")),
    ("NUL in a text", _sql_nul_text, ("ok-2", "has a NUL character in column 'text'")),
    ("CSV without required columns", _csv_columns,
     ("is missing required column(s) 'id', 'text'; found columns: 'key', 'body'",)),
    ("failing SQL query", _sql_failing, ("with the given query", "no such table: no_such_table")),
    ("YAML bomb in front matter", _front_matter_bomb,
     ("bomb.md", "has broken front matter: found alias '*a'; YAML aliases are not accepted")),
    ("deep YAML in front matter", _front_matter_deep,
     ("deep.md", "has broken front matter:", "nest")),
    ("YAML bomb in a policy file", lambda c: _policy_file(c, "bomb.yaml", BOMB),
     ("bomb.yaml line 2: invalid YAML (found alias '*a'; YAML aliases are not accepted)",)),
    ("deep YAML in a policy file", lambda c: _policy_file(c, "deep.yaml", DEEP),
     ("deep.yaml line 1: invalid YAML (", "nest")),
    ("policy value of the wrong type", lambda c: _policy_file(c, "k.yaml", "k: five\n"),
     ("k.yaml: invalid acceptance policy: k:", "'five'")),
    ("policy with an unknown key", lambda c: _policy_file(c, "kk.toml", "kk = 5\n"),
     ("kk.toml: invalid acceptance policy: kk: unknown key",)),
    ("golden file with a bad type", lambda c: _golden_file(
        c, "g.jsonl", '{"query": "q", "relevant": ["general/doc-000", 7]}\n'),
     ("g.jsonl line 1: doc ids in 'relevant' must be non-empty strings, got 7",)),
    ("YAML bomb in a golden file", lambda c: _golden_file(c, "g.yaml", "- " + BOMB.replace(
        "\n", "\n  ").rstrip() + "\n"),
     ("g.yaml line 2: invalid YAML (found alias '*a'; YAML aliases are not accepted)",)),
    ("KB name too long", lambda c: ["refresh", "--kb", "k" * 56, "--source", str(c.corpus)],
     (f"kb={'k' * 56!r} is invalid: string should have at most 55 characters",)),
    ("KB name too long in UTF-8", lambda c: ["refresh", "--kb", "知" * 19, "--source",
                                             str(c.corpus)],
     (f"knowledge base name {'知' * 19!r} is 57 bytes; expected at most 55 bytes of UTF-8",)),
    ("KB name with a control character", lambda c: ["refresh", "--kb", "a\nb", "--source",
                                                   str(c.corpus)],
     ("knowledge base name 'a\\nb' contains control characters",)),
    ("KB name of spaces", lambda c: ["refresh", "--kb", "  ", "--source", str(c.corpus)],
     ("knowledge base name '  ' is empty",)),
]


@pytest.mark.parametrize(("prepare", "fragments"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_error_line_and_publishes_nothing(
    ctx: Ctx, prepare: Prepare, fragments: tuple[str, ...]
) -> None:
    before = published(ctx.url)
    result = cli(ctx.env, *prepare(ctx))
    line = assert_one_error_line(result)
    assert [f for f in fragments if f not in line] == [], line
    assert published(ctx.url) == before


@pytest.mark.parametrize("name", ["x'; DROP TABLE kb; --", 'Ünïcødé "KB" 知识库'])
def test_a_hostile_but_printable_kb_name_is_only_ever_a_value(ctx: Ctx, name: str) -> None:
    # Allowed on purpose (validate_kb_name): names reach SQL only as bound values or
    # sql.Identifier, so the build works and every kbrefresh table is still there.
    result = cli(ctx.env, "refresh", "--kb", name, "--source", str(ctx.corpus))
    assert result.exit_code == 0, result.output
    with psycopg.connect(ctx.url) as conn:
        assert conn.execute("SELECT count(*) FROM kb WHERE name = %s", (name,)).fetchone() == (1,)
        view = conn.execute(sql.SQL("SELECT count(DISTINCT doc_id) FROM {}").format(
            sql.Identifier(f"kb_{name}_live"))).fetchone()
    assert view == (8,)


def many_tiny_files(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True)
        (folder / f"{i:06d}.txt").write_text("x", "utf-8")


def tiny_files_case(ctx: Ctx, count: int) -> float:
    root = ctx.tmp / f"tiny-{count}"
    many_tiny_files(root, count)
    before = published(ctx.url)
    started = time.perf_counter()
    result = cli(ctx.env, *refresh_args(root))
    seconds = time.perf_counter() - started
    line = assert_one_error_line(result)
    assert line.startswith(f"error: data quality checks failed with {count} errors: document "
                           "'d000/000000' has only 1 characters of text"), line[:300]
    assert line.endswith(f"; and {count - 10} more") and len(line) < 2000
    assert published(ctx.url) == before
    return seconds


def test_ten_thousand_tiny_files_are_one_line(ctx: Ctx) -> None:
    tiny_files_case(ctx, 10_000)


@pytest.mark.reliability
def test_a_hundred_thousand_tiny_files_are_one_line(ctx: Ctx) -> None:
    tiny_files_case(ctx, 100_000)
