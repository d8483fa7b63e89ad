"""Swaps under load: every query answered, from one version, while routing moves across fingerprints.

The full-size run (8 Retriever processes, 20 changes, p99 with and without swaps) is
``benchmarks/reliability_load.py``; here a small one checks the same invariants.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders.offline import OfflineEmbedder
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.models import ChunkerConfig
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tests.support import swapload
from tests.support.build import refresh
from tests.support.corpus import write_corpus

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
SMALL = swapload.LoadConfig(retrievers=2, view_readers=1, long_query_seconds=0.5, swaps=4,
                            quiet_seconds=0.5, swap_pause_seconds=0.1, routing_ttl_seconds=0.2,
                            documents=16)


def test_readers_in_other_processes_get_every_answer_from_one_version_during_swaps(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    prepared = swapload.prepare(settings, tmp_path, SMALL)
    result, records = swapload.run(settings, database_url, tmp_path, SMALL, prepared)
    assert result.swaps_done == 4
    assert (result.failed, result.empty, result.mixed) == (0, 0, 0), result.errors
    assert {kind for kind, n in swapload.records_by_phase(records) if n} == {
        "retriever", "view", "long"}
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, swapload.KB)
        changes = [(e.action, e.to_version) for e in routing.history(conn, kb_id, limit=4)][::-1]
    assert changes == [(a, v) for a, v in swapload.route_changes(
        prepared["chain"], prepared["staged"], 4)]


def view_rows(conn: psycopg.Connection[dict[str, object]]) -> list[dict[str, object]]:
    return conn.execute(sql.SQL("SELECT id, doc_id, chunk_index, content, version FROM {}").format(
        sql.Identifier(swapload.VIEW))).fetchall()


def rows_of(settings: Settings, version: int) -> set[tuple[object, ...]]:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, swapload.KB)
        table = store.fingerprint_for_version(conn, kb_id, version).table
        return {(r["doc_id"], r["chunk_index"], r["content"]) for r in conn.execute(sql.SQL(
            "SELECT doc_id, chunk_index, content FROM {} WHERE valid_from <= %s"
            " AND (valid_to IS NULL OR valid_to > %s)").format(sql.Identifier(table)),
            (version, version))}


def test_a_swap_to_another_fingerprint_needs_no_lock_on_the_view_a_reader_holds(
    settings: Settings, database_url: str, tmp_path: Path
) -> None:
    prepared = swapload.prepare(settings, tmp_path, swapload.LoadConfig(swaps=2, documents=12))
    staged, live = prepared["staged"], prepared["chain"]
    with psycopg.connect(database_url, row_factory=dict_row) as holder, \
            psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as reader, \
            connect(settings, autocommit=True) as conn:
        view_rows(holder)  # holds the view's lock until commit, as a long query does
        kb_id = store.get_kb_id(conn, swapload.KB)
        view_oid = conn.execute("SELECT %s::regclass::oid AS o", (swapload.VIEW,)).fetchone()
        # Any DDL on the view would now wait; 1 s is far more than a swap needs.
        conn.execute("SET lock_timeout = '1s'")
        routing.swap_live(conn, kb_id, swapload.KB, staged, reason="test", flow_run_id=None)
        after_swap = view_rows(reader)
        routing.rollback(conn, kb_id, swapload.KB, reason="test")
        after_rollback = view_rows(reader)
        holder.commit()
        # The same view throughout: no swap redefined it (each once did, with an exclusive
        # lock: the deparsed definition never matched the check).
        assert conn.execute("SELECT %s::regclass::oid AS o", (swapload.VIEW,)).fetchone() == view_oid
    for rows, version in ((after_swap, staged), (after_rollback, live)):
        assert {r["version"] for r in rows} == {version}
        assert {(r["doc_id"], r["chunk_index"], r["content"]) for r in rows} == rows_of(
            settings, version)


def test_an_unused_table_leaves_the_view_before_it_is_dropped(
    settings: Settings, tmp_path: Path
) -> None:
    write_corpus(tmp_path / "src", 8)
    embedder = OfflineEmbedder(dims=64)
    first = refresh(settings, swapload.KB, str(tmp_path / "src"), embedder=embedder,
                    policy=SMOKE_ONLY)
    second = refresh(settings, swapload.KB, str(tmp_path / "src"), embedder=embedder,
                     policy=SMOKE_ONLY, keep_versions=1,
                     chunker=ChunkerConfig(max_chars=500, overlap_chars=50))
    assert second.archived == [first.version]
    with connect(settings, autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, swapload.KB)
        names = {r["table_name"] for r in conn.execute(
            "SELECT table_name FROM kb_fingerprints WHERE kb_id = %s", (kb_id,))}
        existing = {n for n in names if store.table_exists(conn, n)}
        assert existing == {store.fingerprint_for_version(conn, kb_id, second.version).table}
        assert {r["version"] for r in view_rows(conn)} == {second.version}
