"""Release steps in a process of their own, for the kill harness to kill at a fault point.

``python -m tests.support.kill_driver rollout-step KB NOW`` runs one ``rollout.run_step``;
``python -m tests.support.kill_driver monitor KB NOW`` runs one post-deploy check that may
roll back (``MONITOR_POLICY``). Settings come from the ``KBREFRESH_*`` environment; NOW is
an ISO timestamp so the caller decides the windows.
"""

from __future__ import annotations

import sys
from datetime import datetime

from kbrefresh.db import connect
from kbrefresh.release import rollout
from kbrefresh.release.policy import ReleasePolicy
from kbrefresh.release.watch import run_monitor_check
from kbrefresh.settings import Settings

# Durations scaled to seconds, as in tests/integration/test_monitor.py; no golden re-run.
MONITOR_POLICY = ReleasePolicy(first_day_interval=2, first_day=24, daily_interval=24,
                               validation_period=168, reference_window=60, golden_check=False)


def main(command: str, kb: str, now: datetime) -> str:
    settings = Settings()
    if command == "rollout-step":
        with connect(settings, autocommit=True) as conn:
            return rollout.run_step(conn, kb, now=now).action
    if command == "monitor":
        return run_monitor_check(settings, kb, policy=MONITOR_POLICY, now=now).action
    raise SystemExit(f"unknown command {command!r}; expected 'rollout-step' or 'monitor'")


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2], datetime.fromisoformat(sys.argv[3])))
