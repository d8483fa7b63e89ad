"""Rollouts on a real PostgreSQL: canary ramp, abort, inconclusive, restart, A/B, staging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kbrefresh import Retriever, store
from kbrefresh.db import connect
from kbrefresh.errors import ConfigError, VersionError
from kbrefresh.release import rollout
from kbrefresh.release.rollout_policy import RolloutPolicy
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tests.support.rollout import FAST, Staged, inject, live_and_candidate

pytestmark = pytest.mark.integration


@pytest.fixture
def staged(settings: Settings, tmp_path: Path) -> Staged:
    return live_and_candidate(settings, tmp_path)


def route(settings: Settings, kb_id: int) -> tuple[int | None, int | None, float]:
    with connect(settings) as conn:
        row = conn.execute("SELECT live_version, canary_version, canary_percent FROM kb_routing "
                           "WHERE kb_id = %s", (kb_id,)).fetchone()
    assert row is not None
    return row["live_version"], row["canary_version"], float(row["canary_percent"])


def status(settings: Settings, kb_id: int, version: int) -> str:
    with connect(settings) as conn:
        return str(store.version_row(conn, kb_id, version).status)


def step(settings: Settings, kb: str, now: datetime | None = None) -> rollout.Transition:
    with connect(settings, autocommit=True) as conn:
        return rollout.run_step(conn, kb, now=now or datetime.now(UTC))


def start(settings: Settings, kb: str, policy: RolloutPolicy = FAST, **kw: object) -> rollout.Transition:
    with connect(settings, autocommit=True) as conn:
        return rollout.start(conn, kb, strategy=str(kw.pop("strategy", "canary")), policy=policy,
                             now=datetime.now(UTC), **kw)  # type: ignore[arg-type]


def test_canary_ramps_5_50_100_then_promotes(settings: Settings, staged: Staged) -> None:
    started = start(settings, "kb")
    assert (started.rollout.candidate, started.rollout.control) == (2, 1)
    assert route(settings, staged.kb_id) == (1, 2, 5.0)
    assert status(settings, staged.kb_id, 2) == "canary"
    actions = []
    for percent in (50.0, 100.0, None):
        inject(settings, staged.kb_id, 2, 30)
        inject(settings, staged.kb_id, 1, 30)
        t = step(settings, "kb")
        actions.append(t.action)
        if percent is not None:
            assert route(settings, staged.kb_id) == (1, 2, percent)
    assert actions == ["advance", "advance", "promote"]
    assert route(settings, staged.kb_id) == (2, None, 0.0)
    assert status(settings, staged.kb_id, 2) == "live"
    assert status(settings, staged.kb_id, 1) == "retired"
    with connect(settings) as conn:
        history = [h.action for h in routing.history(conn, staged.kb_id)]
        logged = [e["action"] for e in rollout.events(conn, t.rollout.id)]
    assert history[:5] == ["swap", "canary-end", "canary-step", "canary-step", "canary-start"]
    assert logged == ["start", "advance", "advance", "promote"]
    assert t.rollout.state == "promoted" and t.event == "kbrefresh.rollout.promoted"


def test_an_injected_error_rate_aborts_and_routes_everyone_back(
    settings: Settings, staged: Staged
) -> None:
    start(settings, "kb")
    inject(settings, staged.kb_id, 2, 40, failed=12)
    inject(settings, staged.kb_id, 1, 40)
    t = step(settings, "kb")
    assert t.action == "abort" and t.event == "kbrefresh.rollout.aborted"
    assert t.detail.startswith("error_rate: 30.0% of 40 searches failed (above 2.0%")
    assert route(settings, staged.kb_id) == (1, None, 0.0)
    assert status(settings, staged.kb_id, 2) == "rejected"
    with connect(settings) as conn:
        assert routing.history(conn, staged.kb_id)[0].action == "canary-abort"
        assert rollout.active_rollout(conn, "kb") is None
        assert store.version_row(conn, staged.kb_id, 2).error.startswith("rollout #1 abort:")


def test_inconclusive_never_promotes(settings: Settings, staged: Staged) -> None:
    start(settings, "kb")
    inject(settings, staged.kb_id, 2, 5)
    later = datetime.now(UTC) + timedelta(days=30)
    for _ in range(3):
        t = step(settings, "kb", later)
        assert t.action == "wait"
        assert "inconclusive (error_rate: 5 searches on the candidate, need 20" in t.detail
    assert route(settings, staged.kb_id) == (1, 2, 5.0)


def test_minimum_step_duration_is_waited_for(settings: Settings, staged: Staged) -> None:
    start(settings, "kb", FAST.model_copy(update={"min_step_seconds": 3600.0}))
    inject(settings, staged.kb_id, 2, 30)
    inject(settings, staged.kb_id, 1, 30)
    now = datetime.now(UTC)
    t = step(settings, "kb", now)
    assert t.action == "wait" and "of the 3600 s minimum elapsed" in t.detail
    assert step(settings, "kb", now + timedelta(seconds=3601)).action == "advance"


def test_a_restart_mid_rollout_resumes_where_it_was(settings: Settings, staged: Staged) -> None:
    start(settings, "kb")
    inject(settings, staged.kb_id, 2, 30)
    assert step(settings, "kb").action == "advance"
    # A new process: nothing in memory, only the rows.
    with connect(settings) as conn:
        again = rollout.active_rollout(conn, "kb")
    assert again is not None and (again.step_index, again.percent, again.state) == (1, 50.0, "running")
    inject(settings, staged.kb_id, 2, 30)
    assert step(settings, "kb").action == "advance"
    assert route(settings, staged.kb_id) == (1, 2, 100.0)


def test_a_second_rollout_on_the_same_kb_is_refused(settings: Settings, staged: Staged) -> None:
    start(settings, "kb")
    with pytest.raises(VersionError, match=r"^version 2 of 'kb' is 'canary'; only a 'candidate'"):
        start(settings, "kb", candidate=2)
    with connect(settings, autocommit=True) as conn:
        conn.execute("UPDATE kb_versions SET status = 'candidate' WHERE version = 2")
    with pytest.raises(VersionError) as err:
        start(settings, "kb", candidate=2)
    assert str(err.value) == ("'kb' already has an active rollout (#1 of v2); "
                              "see `kbrefresh rollout status --kb kb`")


def test_a_rollout_needs_a_passing_verdict_and_a_known_strategy(
    settings: Settings, staged: Staged
) -> None:
    with connect(settings, autocommit=True) as conn:
        conn.execute("UPDATE kb_versions SET verdict = '{\"passed\": false}' WHERE version = 2")
    with pytest.raises(VersionError, match="has no passing validation verdict; run `kbrefresh eval"):
        start(settings, "kb", candidate=2)
    with pytest.raises(ConfigError, match="unknown strategy 'blue'; expected one of: canary, ab"):
        start(settings, "kb", strategy="blue")
    with pytest.raises(VersionError, match="'kb' has no candidate that passed the gate"):
        start(settings, "kb")
    assert route(settings, staged.kb_id) == (1, None, 0.0)


def test_operator_transitions(settings: Settings, staged: Staged) -> None:
    start(settings, "kb", steps=(10.0, 50.0))
    now = datetime.now(UTC)
    with connect(settings, autocommit=True) as conn:
        assert rollout.pause(conn, "kb", now=now, reason="weekend").rollout.state == "paused"
        with pytest.raises(VersionError, match="cannot pause rollout #1 of 'kb': it is 'paused'"):
            rollout.pause(conn, "kb", now=now, reason="again")
        inject(settings, staged.kb_id, 2, 30)
        assert rollout.run_step(conn, "kb", now=datetime.now(UTC)).action == "hold"
        assert rollout.resume(conn, "kb", now=now, reason="monday").rollout.state == "running"
        assert rollout.advance(conn, "kb", now=now, reason="looks fine").rollout.percent == 50.0
        with pytest.raises(VersionError, match="is at its last step .50%.; use `kbrefresh rollout"):
            rollout.advance(conn, "kb", now=now, reason="more")
        done = rollout.promote(conn, "kb", now=now, reason="ship it", actor="alice")
        assert done.rollout.state == "promoted"
        with pytest.raises(VersionError, match="'kb' has no active rollout; start one with"):
            rollout.abort(conn, "kb", now=now, reason="too late")
        actors = [(e["action"], e["actor"]) for e in rollout.events(conn, done.rollout.id)][-1]
    assert actors == ("promote", "alice")
    assert route(settings, staged.kb_id) == (2, None, 0.0)


def test_ab_promotes_the_significantly_better_arm(settings: Settings, staged: Staged) -> None:
    start(settings, "kb", strategy="ab")
    assert route(settings, staged.kb_id) == (1, 2, 50.0)
    inject(settings, staged.kb_id, 2, 300, up=240, down=60)
    inject(settings, staged.kb_id, 1, 300, up=150, down=150)
    t = step(settings, "kb")
    assert t.action == "promote"
    assert t.detail.startswith("the candidate is significantly better on thumbs_up_rate (+0.3 [")
    assert t.analysis is not None
    thumbs = next(c for c in t.analysis["ab"]["comparisons"] if c["metric"] == "thumbs_up_rate")
    assert thumbs["candidate"] == 0.8 and thumbs["control"] == 0.5 and thumbs["p_value"] < 1e-10
    assert route(settings, staged.kb_id) == (2, None, 0.0)


def test_ab_keeps_live_without_a_significant_difference(settings: Settings, staged: Staged) -> None:
    start(settings, "kb", strategy="ab")
    inject(settings, staged.kb_id, 2, 100, up=52, down=48)
    inject(settings, staged.kb_id, 1, 100, up=50, down=50)
    t = step(settings, "kb")
    assert t.action == "keep_live" and t.rollout.state == "kept_live"
    assert t.detail.startswith("no significant difference on thumbs_up_rate (+0.02 [")
    assert route(settings, staged.kb_id) == (1, None, 0.0)
    assert status(settings, staged.kb_id, 2) == "rejected"


def test_ab_waits_for_its_period_and_samples(settings: Settings, staged: Staged) -> None:
    start(settings, "kb", FAST.model_copy(update={"ab_seconds": 7 * 86400.0}), strategy="ab")
    inject(settings, staged.kb_id, 2, 10, up=10)
    t = step(settings, "kb")
    assert t.action == "wait" and t.detail.startswith("A/B at 50%: ")
    t = step(settings, "kb", datetime.now(UTC) + timedelta(days=8))
    assert t.action == "wait"
    assert t.detail == "A/B: 10 candidate and 0 control searches, need 50 per arm"


def test_sessions_split_by_hash_and_a_staged_candidate_is_searchable(
    settings: Settings, staged: Staged
) -> None:
    with Retriever("kb", settings=settings, version=2) as pinned:
        assert {pinned.search("rotate api key", session_id=f"s{i}").version for i in range(5)} == {2}
    start(settings, "kb", steps=(50.0,))
    with Retriever("kb", settings=settings, routing_ttl_seconds=0) as kb:
        served = [kb.search("rotate api key", session_id=f"s{i}").version for i in range(200)]
        again = [kb.search("rotate api key", session_id=f"s{i}").version for i in range(200)]
    assert served == again and 70 < served.count(2) < 130
    with connect(settings, autocommit=True) as conn:
        rollout.abort(conn, "kb", now=datetime.now(UTC), reason="test")
    with pytest.raises(VersionError, match="version 2 of 'kb' is 'rejected'; only a version in"):
        Retriever("kb", settings=settings, version=2)


def test_a_publishing_refresh_is_refused_while_a_rollout_runs(
    settings: Settings, staged: Staged, tmp_path: Path
) -> None:
    from kbrefresh.embedders import OfflineEmbedder
    from kbrefresh.refresh.request import RefreshRequest
    from kbrefresh.refresh.sequence import run_refresh
    from tests.support.rollout import SMOKE_ONLY

    start(settings, "kb")
    with connect(settings) as conn:
        before = [v.version for v in store.list_versions(conn, staged.kb_id)]
    with pytest.raises(VersionError) as err:
        run_refresh(settings, RefreshRequest(kb="kb", source=str(tmp_path / "corpus2")),
                    embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY)
    assert str(err.value) == ("'kb' has rollout #1 of v2 running; nothing else can go live "
                              "until it ends (`kbrefresh rollout status --kb kb`; promote or "
                              "abort it)")
    with connect(settings) as conn:
        assert [v.version for v in store.list_versions(conn, staged.kb_id)] == before
        # the swap itself refuses too (a refresh that started before the rollout did)
        with pytest.raises(VersionError, match=r"^'kb' has rollout #1 of v2 running"):
            routing.swap_live(conn, staged.kb_id, "kb", 1, reason="t", flow_run_id=None)
    with connect(settings, autocommit=True) as conn:
        rollout.promote(conn, "kb", now=datetime.now(UTC), reason="ok")
    assert route(settings, staged.kb_id)[0] == 2
