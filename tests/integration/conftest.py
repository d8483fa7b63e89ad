"""Integration fixtures: a Prefect test harness shared by the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[str]:
    """Run flows against a temporary Prefect server (SQLite); yield its API URL.

    Not autouse: only tests that run flows or deploy pay for the server start.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness did not set PREFECT_API_URL"
        yield url


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path) -> Any:
    """Point the tasks' ``Settings()`` at this test's database, offline 64-d embeddings."""
    from kbrefresh.settings import Settings

    monkeypatch.setenv("KBREFRESH_DATABASE_URL", database_url)
    monkeypatch.setenv("KBREFRESH_EMBEDDER", "offline")
    monkeypatch.setenv("KBREFRESH_EMBEDDING_DIMS", "64")
    monkeypatch.setenv("KBREFRESH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KBREFRESH_MAINTENANCE_WORK_MEM", "64MB")
    return Settings()
