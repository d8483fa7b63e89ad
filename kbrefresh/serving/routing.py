"""Which version serves: swap, rollback, history, the SQL view, retention.

The ``kb_routing`` row is the source of truth. A swap or a rollback is one short
transaction that updates it (no DDL, so readers never queue behind a lock); the
``kb_<name>_live`` view reads the routing row and only needs DDL when the live
version moves to another chunk table (a new embedding fingerprint).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from kbrefresh._faults import fault_point
from kbrefresh.errors import DatabaseError, VersionError
from kbrefresh.store import (
    KEPT,
    SERVABLE,
    Conn,
    RoutingEvent,
    VersionStatus,
    fingerprint_for_version,
    purge_dead_rows,
    refuse_during_rollout,
    table_exists,
    version_row,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteChange:
    action: str
    from_version: int | None
    to_version: int


def live_version(conn: Conn, kb_id: int) -> int | None:
    row = conn.execute("SELECT live_version FROM kb_routing WHERE kb_id = %s", (kb_id,)).fetchone()
    return None if row is None or row["live_version"] is None else int(row["live_version"])


def require_rows(conn: Conn, kb_id: int, kb_name: str, version: int) -> None:
    """Refuse a version whose chunk rows were undone (rejected, rolled back) or purged (archived).

    Searching it would find nothing and report hit@5 = 0 instead of saying why.
    """
    row = version_row(conn, kb_id, version)
    if row.reverted_at is not None or row.status == VersionStatus.ARCHIVED:
        how = "archived and its rows purged" if row.status == VersionStatus.ARCHIVED else (
            f"{row.status.value} and its rows were undone")
        raise VersionError(
            f"version {version} of {kb_name!r} is {how}; it can no longer be evaluated, "
            f"queried or rolled back to; see `kbrefresh versions --kb {kb_name}`"
        )


def live_view_name(kb_name: str) -> str:
    return f"kb_{kb_name}_live"


def swap_live(
    conn: Conn, kb_id: int, kb_name: str, version: int, *, reason: str, flow_run_id: str | None
) -> RouteChange:
    """Make ``version`` (a candidate that passed its checks) live in one short transaction."""
    # Any DDL first: the view covers the candidate's table before routing names it.
    ensure_live_view(conn, kb_id, kb_name, also=version)
    with conn.transaction():
        current = _lock_routing(conn, kb_id)
        refuse_during_rollout(conn, kb_id, kb_name, except_version=version)
        row = version_row(conn, kb_id, version)
        if row.status != VersionStatus.CANDIDATE:
            raise VersionError(
                f"version {version} of {kb_name!r} is {row.status.value!r}; "
                "only a 'candidate' can go live"
            )
        if not row.passed_gate:
            raise VersionError(
                f"version {version} of {kb_name!r} has no passing validation verdict; "
                f"run `kbrefresh eval --kb {kb_name} --version {version}` to see why"
            )
        _route(conn, kb_id, current, version, "swap", reason, flow_run_id,
               old_status=VersionStatus.RETIRED)
        fault_point("swap_routed")
    return RouteChange("swap", current, version)


def rollback(
    conn: Conn,
    kb_id: int,
    kb_name: str,
    *,
    to_version: int | None = None,
    reason: str = "manual rollback",
    flow_run_id: str | None = None,
) -> RouteChange:
    """Route back to the previous live version (or ``to_version``); the current one is rolled back."""
    ensure_live_view(conn, kb_id, kb_name, also=to_version)  # normally nothing to do
    with conn.transaction():
        current = _lock_routing(conn, kb_id)
        if current is None:
            raise VersionError(f"knowledge base {kb_name!r} has no live version to roll back")
        target = to_version if to_version is not None else _previous(conn, kb_id, current)
        if target is None:
            raise VersionError(
                f"knowledge base {kb_name!r} has no earlier version kept to roll back to "
                f"(live is {current}); see `kbrefresh versions --kb {kb_name}`"
            )
        require_rows(conn, kb_id, kb_name, target)
        status = version_row(conn, kb_id, target).status
        if status != VersionStatus.RETIRED or target == current:
            raise VersionError(
                f"cannot roll back {kb_name!r} to version {target}: it is {status.value!r}; "
                "expected a retired version that is still kept"
            )
        if not table_exists(conn, fingerprint_for_version(conn, kb_id, target).table):
            raise VersionError(f"the chunks of version {target} were dropped; cannot roll back")
        _route(conn, kb_id, current, target, "rollback", reason, flow_run_id,
               old_status=VersionStatus.ROLLED_BACK)
        # The version's query adapters leave with it.
        conn.execute("DELETE FROM kb_query_adapters WHERE kb_id = %s AND version = %s",
                     (kb_id, current))
    return RouteChange("rollback", current, target)


def set_canary(
    conn: Conn, kb_id: int, kb_name: str, version: int | None, percent: float, *,
    action: str, reason: str, flow_run_id: str | None,
) -> None:
    """Send ``percent`` of sessions to ``version`` (None and 0 stop the canary) in one short transaction."""
    if not 0 <= percent <= 100 or (version is None) != (percent == 0):
        raise VersionError(
            f"canary of {kb_name!r}: version {version!r} at {percent!r}%; expected a version "
            "with a percent above 0 and at most 100, or none at 0"
        )
    with conn.transaction():
        current = _lock_routing(conn, kb_id)
        if version is not None:
            row = version_row(conn, kb_id, version)
            if row.status not in ("candidate", "canary") or version == current:
                raise VersionError(
                    f"version {version} of {kb_name!r} is {row.status.value!r}; only a 'candidate' "
                    "or 'canary' other than live can take canary traffic"
                )
            if not (row.verdict or {}).get("passed"):
                raise VersionError(
                    f"version {version} of {kb_name!r} has no passing validation verdict; "
                    f"run `kbrefresh eval --kb {kb_name} --version {version}` to see why"
                )
        conn.execute(
            "UPDATE kb_routing SET canary_version = %s, canary_percent = %s, updated_at = now() "
            "WHERE kb_id = %s",
            (version, percent, kb_id),
        )
        conn.execute(
            "INSERT INTO kb_routing_history (kb_id, action, from_version, to_version, reason, "
            "flow_run_id) VALUES (%s, %s, %s, %s, %s, %s)",
            (kb_id, action, current, version, f"{reason} ({percent:g}%)", flow_run_id),
        )


def _lock_routing(conn: Conn, kb_id: int) -> int | None:
    # A short lock_timeout: a swap must never sit in a queue that readers join.
    conn.execute("SET LOCAL lock_timeout = '5s'")
    row = conn.execute(
        "SELECT live_version FROM kb_routing WHERE kb_id = %s FOR UPDATE", (kb_id,)
    ).fetchone()
    if row is None:
        raise VersionError(f"knowledge base id {kb_id} has no routing row")
    return None if row["live_version"] is None else int(row["live_version"])


def _previous(conn: Conn, kb_id: int, current: int) -> int | None:
    row = conn.execute(
        "SELECT max(version) AS v FROM kb_versions WHERE kb_id = %s AND status = %s "
        "AND version < %s",
        (kb_id, VersionStatus.RETIRED, current),
    ).fetchone()
    return None if row is None or row["v"] is None else int(row["v"])


def _route(
    conn: Conn,
    kb_id: int,
    current: int | None,
    target: int,
    action: str,
    reason: str,
    flow_run_id: str | None,
    *,
    old_status: VersionStatus,
) -> None:
    conn.execute(
        "UPDATE kb_routing SET live_version = %s, updated_at = now() WHERE kb_id = %s",
        (target, kb_id),
    )
    if current is not None:
        conn.execute(
            "UPDATE kb_versions SET status = %s, retired_at = now() WHERE kb_id = %s AND version = %s",
            (old_status, kb_id, current),
        )
    conn.execute(
        "UPDATE kb_versions SET status = %s, live_at = now(), retired_at = NULL "
        "WHERE kb_id = %s AND version = %s",
        (VersionStatus.LIVE, kb_id, target),
    )
    conn.execute(
        "INSERT INTO kb_routing_history (kb_id, action, from_version, to_version, reason, "
        "flow_run_id) VALUES (%s, %s, %s, %s, %s, %s)",
        (kb_id, action, current, target, reason, flow_run_id),
    )


def history(conn: Conn, kb_id: int, limit: int = 20) -> list[RoutingEvent]:
    """Return the newest ``limit`` routing changes, newest first."""
    return [
        RoutingEvent.from_row(r)
        for r in conn.execute(
            "SELECT action, from_version, to_version, reason, flow_run_id, changed_by, changed_at "
            "FROM kb_routing_history WHERE kb_id = %s ORDER BY id DESC LIMIT %s",
            (kb_id, limit),
        ).fetchall()
    ]


# Each repoint attempt makes new readers of the view queue behind it for at most this
# long; a long reader only delays the repoint (retried), never stalls readers for its length.
VIEW_LOCK_TIMEOUT = "100ms"
VIEW_ATTEMPTS = 60


def _view_tables(conn: Conn, kb_id: int, also: int | None = None) -> list[tuple[int, str, str]]:
    """Return (fingerprint id, table, storage) of every fingerprint a kept version uses."""
    rows = conn.execute(
        "SELECT f.id, f.table_name, f.storage FROM kb_fingerprints f WHERE f.kb_id = %s AND ("
        " f.id = (SELECT v.fingerprint_id FROM kb_versions v WHERE v.kb_id = %s AND v.version = %s)"
        " OR EXISTS (SELECT 1 FROM kb_versions v WHERE v.fingerprint_id = f.id"
        " AND v.status = ANY(%s))) ORDER BY f.id",
        (kb_id, kb_id, also, list(KEPT)),
    ).fetchall()
    return [(int(r["id"]), str(r["table_name"]), str(r["storage"])) for r in rows
            if table_exists(conn, str(r["table_name"]))]


def _view_dependencies(conn: Conn, view: str) -> set[str] | None:
    row = conn.execute("SELECT to_regclass(quote_ident(%s)) AS oid", (view,)).fetchone()
    if row is None or row["oid"] is None:
        return None
    return {str(r["name"]) for r in conn.execute(
        "SELECT DISTINCT c.relname AS name FROM pg_rewrite w JOIN pg_depend d ON d.objid = w.oid"
        " JOIN pg_class c ON c.oid = d.refobjid WHERE w.ev_class = quote_ident(%s)::regclass"
        " AND d.refobjid <> w.ev_class", (view,)).fetchall()}


def ensure_live_view(
    conn: Conn, kb_id: int, kb_name: str, *, also: int | None = None, exact: bool = False,
    attempts: int = VIEW_ATTEMPTS,
) -> None:
    """Make ``kb_<name>_live`` cover every kept chunk table (plus ``also``'s); DDL only when that set changes.

    Each table is one branch of a ``UNION ALL`` that keeps only rows of the live version,
    and only while the live version's fingerprint is that table's. A statement reads one
    routing row, so a swap or rollback (even to another fingerprint's table) changes what
    the view returns atomically, with no DDL: a reader never sees rows of another table
    labelled with the live version, nor an empty view while a repoint waits for a lock.
    A table no kept version uses stays in the view (its branch returns nothing) unless
    ``exact``: only dropping the table needs it gone, so swaps and rollbacks never shrink it.
    """
    view = live_view_name(kb_name)
    tables = _view_tables(conn, kb_id, also)
    if not tables:
        return
    deps = _view_dependencies(conn, view)
    wanted = {t for _, t, _ in tables} | {"kb_routing", "kb_versions"}
    if deps is not None and (deps == wanted or (not exact and deps >= wanted)):
        return
    mixed = len({storage for _, _, storage in tables}) > 1
    branches = [sql.SQL(
        "SELECT c.id, c.doc_id, c.chunk_index, c.content, c.metadata, c.embedding{cast},"
        " r.live_version AS version FROM {table} c JOIN kb_routing r ON r.kb_id = {kb_id}"
        " JOIN kb_versions v ON v.kb_id = r.kb_id AND v.version = r.live_version"
        " AND v.fingerprint_id = {fp} WHERE c.valid_from <= r.live_version"
        " AND (c.valid_to IS NULL OR c.valid_to > r.live_version)"
    ).format(cast=sql.SQL("::vector AS embedding" if mixed and storage != "vector" else ""),
             table=sql.Identifier(table), kb_id=sql.Literal(kb_id), fp=sql.Literal(fp))
        for fp, table, storage in tables]
    statement = sql.SQL(
        "DROP VIEW IF EXISTS {view}; CREATE VIEW {view} AS {body};"
        # The view is what SQL consumers read: the reader role needs it as much as the tables.
        " DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'kbrefresh_reader') THEN"
        " GRANT SELECT ON {view} TO kbrefresh_reader; END IF; END $$"
    ).format(view=sql.Identifier(view), body=sql.SQL(" UNION ALL ").join(branches))
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(
                    sql.Literal(VIEW_LOCK_TIMEOUT)))
                conn.execute(statement)
            logger.info("view %s now covers %s (attempt %d)", view,
                        ", ".join(t for _, t, _ in tables), attempt)
            return
        except psycopg.errors.LockNotAvailable as exc:
            if attempt == attempts:
                raise DatabaseError(
                    f"could not redefine view {view!r}: readers held it for {attempts} tries; "
                    "routing serves the right version meanwhile, rerun `kbrefresh status` later"
                ) from exc
            time.sleep(min(0.02 * attempt, 0.5))


def retire_old_versions(
    conn: Conn, kb_id: int, keep: int, *,
    purge: Callable[[Conn, str, int | None], int] | None = None,
    on_archived: Callable[[Conn, list[int]], None] | None = None,
) -> list[int]:
    """Archive retired versions beyond the ``keep`` newest (live included) and purge their rows.

    ``purge(conn, table, oldest_kept)`` deletes rows no kept version uses (``oldest_kept``
    None: every row, the table is dropped next); the default deletes them, the release
    room's writes them to row segments first. ``on_archived`` records the archived versions.
    """
    purge = purge or (lambda c, table, oldest: purge_dead_rows(c, table, oldest) if oldest
                      is not None else 0)
    live = live_version(conn, kb_id)
    rows = conn.execute(
        "SELECT v.version, v.status, f.table_name FROM kb_versions v "
        "JOIN kb_fingerprints f ON f.id = v.fingerprint_id WHERE v.kb_id = %s "
        "AND v.status = ANY(%s) ORDER BY v.version DESC",
        (kb_id, list(KEPT)),
    ).fetchall()
    servable = [r for r in rows if r["status"] in SERVABLE]
    kept_servable = [r for r in servable if r["version"] == live][:1]
    kept_servable += [r for r in servable if r["version"] != live][: max(keep - 1, 0)]
    kept = {int(r["version"]) for r in kept_servable} | {
        int(r["version"]) for r in rows if r["status"] not in SERVABLE
    }
    archived = [int(r["version"]) for r in servable if int(r["version"]) not in kept]
    with conn.transaction():
        for version in archived:
            conn.execute(
                "UPDATE kb_versions SET status = %s WHERE kb_id = %s AND version = %s",
                (VersionStatus.ARCHIVED, kb_id, version),
            )
        tables = {r["table_name"] for r in rows}
        for table in tables:
            versions = [int(r["version"]) for r in rows if r["table_name"] == table and int(r["version"]) in kept]
            if versions and table_exists(conn, table):
                purged = purge(conn, table, min(versions))
                logger.info("purged %d rows no kept version uses from %s", purged, table)
        if on_archived is not None and archived:
            on_archived(conn, archived)
    unused = _unused_tables(conn, kb_id)
    if unused:
        _drop_tables(conn, kb_id, unused, purge)
    return archived


def _drop_tables(conn: Conn, kb_id: int, tables: list[str],
                 purge: Callable[[Conn, str, int | None], int]) -> None:
    # The view must stop naming a table before it can be dropped; when readers keep the
    # view busy the tables stay (no version routes to them) and the next retire drops them.
    row = conn.execute("SELECT name FROM kb WHERE id = %s", (kb_id,)).fetchone()
    try:
        if row is not None:
            ensure_live_view(conn, kb_id, str(row["name"]), exact=True)
    except DatabaseError as exc:
        logger.warning("kept unused chunk tables %s: %s", ", ".join(tables), exc)
        return
    with conn.transaction():
        for table in tables:
            if table_exists(conn, table):
                purge(conn, table, None)  # the rows of archived versions, written out or not
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
            logger.info("dropped chunk table %s: no kept version uses it", table)


def _unused_tables(conn: Conn, kb_id: int) -> list[str]:
    return [
        str(r["table_name"])
        for r in conn.execute(
            "SELECT f.table_name FROM kb_fingerprints f WHERE f.kb_id = %s AND NOT EXISTS ("
            " SELECT 1 FROM kb_versions v WHERE v.fingerprint_id = f.id"
            " AND v.status = ANY(%s))",
            (kb_id, list(KEPT)),
        ).fetchall()
    ]
