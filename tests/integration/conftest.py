"""Integration fixtures: a Prefect test harness shared by the session."""

from __future__ import annotations

from collections.abc import Iterator

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
