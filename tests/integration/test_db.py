"""Migrations runner and connection errors against the embedded PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from kbrefresh._text import redact_url
from kbrefresh.db import apply_migrations, connect, load_migrations, migrations_source
from kbrefresh.errors import DatabaseError, MigrationError
from kbrefresh.settings import Settings

pytestmark = pytest.mark.integration


def copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    target.mkdir()
    for source in migrations_source().iterdir():
        if source.name.endswith(".sql"):
            (target / source.name).write_text(source.read_text(encoding="utf-8"), "utf-8")
    return target


def test_the_checkout_reads_its_own_migrations() -> None:
    root = Path(__file__).resolve().parents[2]
    assert Path(str(migrations_source())) == root / "sql" / "migrations"
    assert [m.name for m in load_migrations()] == sorted(
        p.name for p in (root / "sql" / "migrations").glob("*.sql"))


def test_no_migrations_at_all_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a migration", "utf-8")
    with pytest.raises(MigrationError) as exc:
        load_migrations(tmp_path)
    assert str(exc.value) == f"no migrations found in {str(tmp_path)!r}; reinstall kbrefresh"


def test_migrations_apply_once_and_record_checksums(database_url: str, tmp_path: Path) -> None:
    migrations = copy_migrations(tmp_path)
    with psycopg.connect(database_url, autocommit=True) as conn:
        first = apply_migrations(conn, migrations)
        second = apply_migrations(conn, migrations)
        recorded = conn.execute("SELECT name FROM kbrefresh_migrations ORDER BY name").fetchall()
    assert first == sorted(p.name for p in migrations.glob("*.sql")) and second == []
    assert [r[0] for r in recorded] == first


def test_an_edited_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    migrations = copy_migrations(tmp_path)
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn, migrations)
        path = migrations / "0001_create_catalog.sql"
        path.write_text(path.read_text("utf-8") + "\n-- edited\n", "utf-8")
        with pytest.raises(MigrationError) as exc:
            apply_migrations(conn, migrations)
    assert "migration '0001_create_catalog.sql' was edited after it was applied" in str(exc.value)


def test_a_gap_in_migration_numbers_is_refused(tmp_path: Path) -> None:
    migrations = copy_migrations(tmp_path)
    expected = len(list(migrations.glob("*.sql"))) + 1
    (migrations / "0099_add_thing.sql").write_text("SELECT 1;", "utf-8")
    with pytest.raises(MigrationError) as exc:
        load_migrations(migrations)
    assert str(exc.value) == (
        f"migration '0099_add_thing.sql' is out of sequence; expected number {expected:04d}"
    )


def test_a_badly_named_migration_is_refused(tmp_path: Path) -> None:
    migrations = copy_migrations(tmp_path)
    (migrations / "2_bad name.sql").write_text("SELECT 1;", "utf-8")
    with pytest.raises(MigrationError) as exc:
        load_migrations(migrations)
    assert str(exc.value) == "migration file '2_bad name.sql' does not match NNNN_verb_object.sql"


def test_a_failing_migration_applies_nothing(database_url: str, tmp_path: Path) -> None:
    migrations = copy_migrations(tmp_path)
    name = f"{len(list(migrations.glob('*.sql'))) + 1:04d}_break_things.sql"
    (migrations / name).write_text("CREATE TABLE ok_table (x int); SELEC 1;", "utf-8")
    with psycopg.connect(database_url, autocommit=True) as conn:
        with pytest.raises(MigrationError, match=f"migration '{name}' failed"):
            apply_migrations(conn, migrations)
        exists = conn.execute("SELECT to_regclass('kb') IS NOT NULL, to_regclass('ok_table') IS NOT NULL")
        assert exists.fetchone() == (False, False)


def test_unreachable_database_error_hides_the_password(tmp_path: Path) -> None:
    url = "postgresql://kb:s3cret-pw@127.0.0.1:1/nowhere?connect_timeout=2"
    settings = Settings(database_url=url, data_dir=tmp_path)
    with pytest.raises(DatabaseError) as exc, connect(settings):
        pass
    assert "s3cret-pw" not in str(exc.value) and "s3cret-pw" not in repr(exc.value)
    assert str(exc.value).startswith("cannot connect to postgresql://kb:***@127.0.0.1:1/nowhere")


def test_redact_url() -> None:
    assert redact_url("postgresql://u:p%40ss@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_whole_manifests_become_ranges_that_give_back_every_version(
        database_url: str, tmp_path: Path) -> None:
    migrations = copy_migrations(tmp_path)
    ranges = migrations / "0020_store_manifests_as_ranges.sql"
    held = ranges.read_text("utf-8")
    ranges.unlink()
    for later in sorted(migrations.glob("002*.sql")):  # only what came before ranges
        later.unlink()
    manifests = {1: {"a": "h1", "b": "h1"}, 2: {"a": "h1", "b": "h2", "c": "h1"},
                 4: {"a": "h1", "c": "h1"}, 5: {"a": "h1", "b": "h1", "c": "h1"}}
    with psycopg.connect(database_url, autocommit=True) as conn:
        apply_migrations(conn, migrations)
        kb = conn.execute("INSERT INTO kb (name) VALUES ('kb') RETURNING id").fetchone()[0]
        fp = conn.execute("INSERT INTO kb_fingerprints (kb_id, fp_key, spec, dims, table_name)"
                          " VALUES (%s, 'k', '{}', 4, 't') RETURNING id", (kb,)).fetchone()[0]
        for version in range(1, 6):  # v3 failed before its manifest was written
            conn.execute("INSERT INTO kb_versions (kb_id, version, fingerprint_id, status,"
                         " dataset_tag, source) VALUES (%s, %s, %s, 'live', 't', 's')",
                         (kb, version, fp))
            for doc, digest in manifests.get(version, {}).items():
                conn.execute("INSERT INTO kb_version_documents VALUES (%s, %s, %s, %s)",
                             (kb, version, doc, digest))
        ranges.write_text(held, "utf-8")
        assert apply_migrations(conn, migrations) == [ranges.name]
        got = {v: dict(conn.execute(
            "SELECT doc_id, content_hash FROM kb_version_documents WHERE kb_id = %s AND version = %s",
            (kb, v)).fetchall()) for v in manifests}
        stored = conn.execute("SELECT count(*) FROM kb_document_ranges").fetchone()[0]
    assert got == manifests
    # a:h1 [1,-), b:h1 [1,2) and [5,-), b:h2 [2,4), c:h1 [2,-): 5 rows for 11 manifest rows.
    assert stored == 5
