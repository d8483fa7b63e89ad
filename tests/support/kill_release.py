"""Kill a rollout step and a monitor rollback mid-way; run them again; say what happened.

Both return plain dicts (the tests assert on them, ``benchmarks/reliability_kill.py``
reports them). Readers search the live version throughout.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.release import rollout
from kbrefresh.release.candidate import stage_candidate
from kbrefresh.release.watch import run_monitor_check
from tests.support.kill import KB, KillRig, driver_cmd, run, settings_from, start_readers, timed
from tests.support.kill_checks import routing_row, slow_traffic
from tests.support.kill_driver import MONITOR_POLICY
from tests.support.rollout import FAST, SMOKE_ONLY, inject


def kill_rollout_step(rig: KillRig) -> dict[str, Any]:
    """Canary at 5%, passing traffic; kill the step that advances it; step again."""
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
        after_kill = routing_row(rig.database_url)
        with connect(settings, autocommit=True) as conn:
            moved, seconds = timed(lambda: rollout.run_step(conn, KB, now=datetime.now(UTC)))
        after_step = routing_row(rig.database_url)
    finally:
        seen = readers.stop()
    with connect(settings) as conn:
        actions = [e["action"] for e in rollout.events(conn, started.rollout.id)]
    return {"killed": killed.returncode, "after_kill": after_kill, "action": moved.action,
            "after_step": after_step, "actions": actions, "candidate": staged.version,
            "readers": seen, "recover_s": seconds}


def kill_monitor_rollback(rig: KillRig) -> dict[str, Any]:
    """v2 live with 6.2 s searches; kill the check that rolls it back; check again."""
    settings = settings_from(rig.env())
    rig.refresh_here()
    rig.change_source()
    rig.refresh_here()
    slow_traffic(rig.database_url, 2, datetime.now(UTC), 2000)
    readers = start_readers(rig.reader_env(), rig.work)
    try:
        killed = run(driver_cmd("monitor", datetime.now(UTC)), rig.env(fault="monitor_judged"))
        live_after_kill = routing_row(rig.database_url)[0]
        result, seconds = timed(lambda: run_monitor_check(
            settings, KB, policy=MONITOR_POLICY, now=datetime.now(UTC)))
    finally:
        seen = readers.stop()
    with connect(settings) as conn:
        checks = conn.execute("SELECT outcome, action FROM monitor_checks ORDER BY id").fetchall()
    return {"killed": killed.returncode, "live_after_kill": live_after_kill,
            "action": result.action, "live_after": routing_row(rig.database_url)[0],
            "checks": checks, "readers": seen, "recover_s": seconds}
