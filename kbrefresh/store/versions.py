"""Version rows: read them typed, set their status."""

from __future__ import annotations

import json
from typing import Any

from psycopg import sql

from kbrefresh.errors import VersionError
from kbrefresh.store.rows import Conn, VersionInfo, VersionStatus

_SELECT = (
    "SELECT v.*, f.table_name, f.fp_key, f.spec AS fingerprint FROM kb_versions v "
    "JOIN kb_fingerprints f ON f.id = v.fingerprint_id "
)
_JSON_FIELDS = frozenset({"counts", "quality", "smoke", "verdict"})
_SETTABLE = _JSON_FIELDS | {"error", "mlflow_run_id", "finished_at"}


def version_row(conn: Conn, kb_id: int, version: int) -> VersionInfo:
    """Return one version or raise VersionError."""
    row = conn.execute(
        _SELECT + "WHERE v.kb_id = %s AND v.version = %s", (kb_id, version)
    ).fetchone()
    if row is None:
        raise VersionError(f"version {version} does not exist")
    return VersionInfo.from_row(row)


def list_versions(conn: Conn, kb_id: int) -> list[VersionInfo]:
    """Return every version of a knowledge base, newest first."""
    return [
        VersionInfo.from_row(r)
        for r in conn.execute(
            _SELECT + "WHERE v.kb_id = %s ORDER BY v.version DESC", (kb_id,)
        ).fetchall()
    ]


def set_status(conn: Conn, kb_id: int, version: int, status: VersionStatus, **fields: Any) -> None:
    """Set a version's status and any of its JSON/text columns."""
    unknown = set(fields) - _SETTABLE
    if unknown:
        raise ValueError(f"unknown version fields {sorted(unknown)!r}")
    assignments: list[sql.Composable] = [sql.SQL("status = %(status)s")]
    params: dict[str, Any] = {"status": VersionStatus(status), "kb_id": kb_id, "version": version}
    for name, value in fields.items():
        if name in _JSON_FIELDS and value is not None:
            value = json.dumps(value, default=str)
        assignments.append(sql.SQL("{} = %({})s").format(sql.Identifier(name), sql.SQL(name)))
        params[name] = value
    conn.execute(
        sql.SQL("UPDATE kb_versions SET {} WHERE kb_id = %(kb_id)s AND version = %(version)s").format(
            sql.SQL(", ").join(assignments)
        ),
        params,
    )


def refuse_during_rollout(conn: Conn, kb_id: int, kb: str, *, except_version: int | None = None) -> None:
    """Raise if ``kb`` has an active rollout (other than the one delivering ``except_version``).

    A swap in the middle of a canary would change the control the canary is judged
    against; the rollout has to be promoted or aborted first.
    """
    row = conn.execute(
        "SELECT id, candidate, state FROM kb_rollouts WHERE kb_id = %s "
        "AND state IN ('awaiting_approval', 'running', 'paused') ORDER BY id DESC LIMIT 1",
        (kb_id,),
    ).fetchone()
    if row is None or row["candidate"] == except_version:
        return
    raise VersionError(
        f"{kb!r} has rollout #{row['id']} of v{row['candidate']} {row['state']!s}; nothing else can go "
        f"live until it ends (`kbrefresh rollout status --kb {kb}`; promote or abort it)"
    )
