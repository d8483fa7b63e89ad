"""The main HNSW segment and the exact delta: search, version filter, rebuild, compaction, halfvec."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from psycopg import sql

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import GateFailed
from kbrefresh.gate.policy import AcceptancePolicy, MetricRule
from kbrefresh.models import ChunkerConfig, Fingerprint
from kbrefresh.refresh import steps
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.serving.search import search_sql, search_version
from kbrefresh.settings import Settings
from kbrefresh.store import segments
from tests.support.corpus import markdown_doc, write_corpus

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
DIMS = 64


def refresh(settings: Settings, source: Path) -> dict[str, Any]:
    report = run_refresh(settings, RefreshRequest(kb="kb", source=str(source)),
                         embedder=OfflineEmbedder(dims=DIMS), policy=SMOKE_ONLY)
    with connect(settings) as conn:
        return dict(store.version_row(conn, 1, report.version).counts)


def edit(source: Path, ids: list[str]) -> None:
    """2 documents changed, 1 deleted, 2 new."""
    rng = random.Random(3)
    for doc_id in ids[:2]:
        (source / f"{doc_id}.md").write_text(markdown_doc("Edited", "general", rng, 3), "utf-8")
    (source / f"{ids[2]}.md").unlink()
    for i in (90, 91):
        (source / f"general/new-{i}.md").write_text(markdown_doc(f"New {i}", "general", rng, 3),
                                                    "utf-8")


@pytest.fixture
def two_versions(settings: Settings, tmp_path: Path) -> tuple[Settings, dict[str, Any]]:
    """v1 (indexed) and v2 whose new rows stay in the exact tail."""
    settings = settings.model_copy(update={"delta_exact_rows": 1000})
    source = tmp_path / "corpus"
    ids = write_corpus(source, 40)
    first = refresh(settings, source)
    assert first["index_action"] == "built" and first["main_upto"] == 1
    edit(source, ids)
    return settings, refresh(settings, source)


def version_rows(conn: store.Conn, fp: store.FingerprintTable, version: int) -> dict[int, Any]:
    rows = conn.execute(
        sql.SQL("SELECT c.id, c.embedding FROM {} c WHERE ").format(sql.Identifier(fp.table))
        + store.in_version(), {"version": version},
    ).fetchall()
    return {int(r["id"]): np.asarray(r["embedding"].to_numpy(), dtype=np.float32) for r in rows}


def exact_top(rows: dict[int, Any], q: Any, k: int) -> list[int]:
    ids = list(rows)
    m = np.stack([rows[i] for i in ids])
    sims = m @ q / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    return [ids[i] for i in np.argsort(-sims, kind="stable")[:k]]


def test_new_rows_stay_in_the_delta_and_searches_are_exact(
    two_versions: tuple[Settings, dict[str, Any]],
) -> None:
    settings, counts = two_versions
    assert counts["index_action"] == "exact" and counts["main_upto"] == 1
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 2)
        assert (fp.main_upto, fp.delta_upto) == (1, None)
        assert store.segment_indexes(conn, fp.table) == [f"{fp.table}_hnsw_1", f"{fp.table}_tail_1"]
        delta = store.delta_rows(conn, fp, 2)
        assert delta == counts["delta_rows"] > 0
        rows = {v: version_rows(conn, fp, v) for v in (1, 2)}
        new_ids = set(rows[2]) - set(rows[1])
        assert len(new_ids) == delta
        rng = np.random.default_rng(11)
        # Queries near new rows (delta) and near old rows (main), plus random ones.
        targets = [rows[2][i] for i in sorted(new_ids)[:4]] + [
            rows[1][i] for i in sorted(rows[1])[:4]] + list(rng.normal(size=(4, DIMS)))
        for q in targets:
            q = np.asarray(q, dtype=np.float32) + rng.normal(scale=0.01, size=DIMS).astype(np.float32)
            for version in (1, 2):
                hits = search_version(conn, fp, version, q, k=8)
                assert [h.chunk_id for h in hits] == exact_top(rows[version], q, 8)
                assert {h.chunk_id for h in hits} <= set(rows[version])  # the filter is exact
            # Searching the table as one segment agrees with the two-segment search.
            assert [h.chunk_id for h in search_version(conn, fp.table, 2, q, k=8)] == [
                h.chunk_id for h in search_version(conn, fp, 2, q, k=8)]


def test_a_search_is_one_statement_using_the_index_for_the_main_segment(
    two_versions: tuple[Settings, dict[str, Any]],
) -> None:
    settings, _ = two_versions
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 2)
        executed: list[str] = []

        class Counting:
            def execute(self, query: Any, params: Any = None) -> Any:
                executed.append(query.as_string(conn) if hasattr(query, "as_string") else query)
                return conn.execute(query, params)

        conn.execute("SELECT set_config('enable_seqscan', 'off', false)")
        search_version(Counting(), fp, 2, np.ones(DIMS, dtype=np.float32), k=5,  # type: ignore[arg-type]
                       session_configured=True)
        assert len(executed) == 1 and executed[0].count("UNION ALL") == 1
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
            sql.SQL("EXPLAIN ") + search_sql(fp, 2),
            {"q": np.ones(DIMS, dtype=np.float32), "k": 5, "version": 2}).fetchall())
        assert f"Index Scan using {fp.table}_hnsw_1" in plan
        assert f"Index Scan using {fp.table}_tail_1" in plan  # the tail's own b-tree
        assert plan.count("_hnsw_1") == 1 and plan.count("_tail_1") == 1
        # A version the index covers has no delta branch.
        assert "UNION ALL" not in search_sql(fp, 1).as_string(conn)


def test_compaction_merges_the_delta_and_keeps_results(
    two_versions: tuple[Settings, dict[str, Any]],
) -> None:
    settings, _ = two_versions
    q = np.random.default_rng(5).normal(size=DIMS).astype(np.float32)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 2)
        before = [h.chunk_id for h in search_version(conn, fp, 2, q, k=10)]
    assert steps.compact_index(settings, "kb", min_share=0.5).action == "exact"  # a few rows
    placed = steps.compact_index(settings, "kb", min_share=0)
    assert (placed.action, placed.main_upto) == ("compacted", 2)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 2)
        assert fp.main_upto == 2 and store.delta_rows(conn, fp, 2) == 0
        assert store.segment_indexes(conn, fp.table) == [f"{fp.table}_hnsw_2", f"{fp.table}_tail_2"]
        assert [h.chunk_id for h in search_version(conn, fp, 2, q, k=10)] == before
        stale = store.FingerprintTable(fp.id, fp.key, fp.dims, fp.table, fp.spec, fp.storage, 1)
        # A reader that cached main_upto=1 still gets the same answer.
        assert [h.chunk_id for h in search_version(conn, stale, 2, q, k=10)] == before
    assert steps.compact_index(settings, "kb", min_share=0).action == "exact"  # nothing left


def test_a_larger_change_gets_its_own_delta_index(settings: Settings, tmp_path: Path) -> None:
    settings = settings.model_copy(update={"delta_exact_rows": 3, "index_build_workers": 1})
    source = tmp_path / "corpus"
    ids = write_corpus(source, 40)
    refresh(settings, source)
    edit(source, ids)
    counts = refresh(settings, source)
    assert (counts["index_action"], counts["main_upto"], counts["delta_upto"]) == ("delta", 1, 2)
    assert counts["delta_rows"] > 3 and counts["index_workers"] == 1
    rng = random.Random(4)
    (source / "general/new-95.md").write_text(markdown_doc("Newer", "general", rng, 1), "utf-8")
    settings = settings.model_copy(update={"delta_exact_rows": 1000})
    assert refresh(settings, source)["index_action"] == "exact"  # v3's row: the exact tail
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 3)
        t = fp.table
        assert (fp.main_upto, fp.delta_upto) == (1, 2)
        assert store.segment_indexes(conn, t) == [f"{t}_dhnsw_1_2", f"{t}_hnsw_1", f"{t}_tail_2"]
        params = {"q": np.ones(DIMS, dtype=np.float32), "k": 5, "version": 3}
        conn.execute("SELECT set_config('enable_seqscan', 'off', false)")
        plan = "\n".join(r["QUERY PLAN"] for r in conn.execute(
            sql.SQL("EXPLAIN ") + search_sql(fp, 3), params).fetchall())
        for index in (f"{t}_hnsw_1", f"{t}_dhnsw_1_2", f"{t}_tail_2"):
            assert plan.count(f"Index Scan using {index} ") == 1, index
        q_rng = np.random.default_rng(8)
        found = wanted = 0
        for version in (1, 2, 3):
            rows = version_rows(conn, fp, version)
            for i in sorted(rows)[-6:]:  # the newest rows: in the delta index and the tail
                q = rows[i] + q_rng.normal(scale=0.01, size=DIMS).astype(np.float32)
                hits = [h.chunk_id for h in search_version(conn, fp, version, q, k=8)]
                assert hits[0] == i and set(hits) <= set(rows)  # the filter stays exact
                found += len(set(hits) & set(exact_top(rows, q, 8)))
                wanted += 8
        assert found / wanted >= 0.9  # two HNSW indexes: approximate, not exact


def test_a_change_larger_than_the_main_index_rebuilds_it(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "corpus"
    write_corpus(source, 20)
    refresh(settings, source)
    write_corpus(source, 20, seed=99)  # every document rewritten
    counts = refresh(settings, source)
    assert (counts["index_action"], counts["main_upto"], counts["delta_upto"]) == ("rebuilt", 2, None)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 2)
        assert store.segment_indexes(conn, fp.table) == [f"{fp.table}_hnsw_2", f"{fp.table}_tail_2"]
        assert store.delta_rows(conn, fp, 2) == 0
        row = conn.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s",
                           (f"{fp.table}_hnsw_2",)).fetchone()
        assert row is not None and row["indexdef"].endswith("WHERE (valid_from <= 2)")


def test_a_table_with_a_full_index_from_before_segments_gets_a_partial_one(
    settings: Settings, tmp_path: Path,
) -> None:
    source = tmp_path / "corpus"
    ids = write_corpus(source, 12)
    refresh(settings, source)
    with connect(settings, autocommit=True) as conn:
        fp = store.fingerprint_for_version(conn, 1, 1)
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(f"{fp.table}_hnsw_1")))
        conn.execute(sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops)").format(
            sql.Identifier(f"{fp.table}_hnsw"), sql.Identifier(fp.table)))
        conn.execute("UPDATE kb_fingerprints SET main_upto = NULL")
    edit(source, ids)
    counts = refresh(settings, source)
    assert (counts["index_action"], counts["main_upto"]) == ("built", 2)
    with connect(settings) as conn:
        assert store.hnsw_indexes(conn, fp.table) == [f"{fp.table}_hnsw_2"]
        assert store.fingerprint_for_version(conn, 1, 2).main_upto == 2


def test_halfvec_storage_round_trips(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "corpus"
    write_corpus(source, 12)
    half = settings.model_copy(update={"embedding_storage": "halfvec"})
    counts = refresh(half, source)
    assert counts["index_action"] == "built"
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 1)
        assert fp.storage == "halfvec" and fp.spec["storage"] == "halfvec"
        column = conn.execute(
            "SELECT format_type(atttypid, atttypmod) AS t FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attname = 'embedding'", (fp.table,)).fetchone()
        assert column is not None and column["t"] == f"halfvec({DIMS})"
        row = conn.execute(sql.SQL("SELECT id, embedding FROM {} ORDER BY id LIMIT 1").format(
            sql.Identifier(fp.table))).fetchone()
        assert row is not None
        stored = np.asarray(row["embedding"].to_numpy(), dtype=np.float32)
        hits = search_version(conn, fp, 1, stored, k=3)
        assert hits[0].chunk_id == row["id"] and hits[0].similarity == pytest.approx(1.0, abs=1e-3)
    # Same embedder and chunker, other storage: another fingerprint, so a full build.
    counts = refresh(settings, source)
    assert counts["index_action"] == "built" and counts["embedded"] == counts["chunks"]
    with connect(settings) as conn:
        assert store.fingerprint_for_version(conn, 1, 2).storage == "vector"


def test_vector_storage_keeps_the_fingerprint_key_of_before() -> None:
    fp = Fingerprint("offline", "m", 64, {"max_tokens": 300})
    assert "storage" not in fp.as_dict()
    assert fp.key == Fingerprint("offline", "m", 64, {"max_tokens": 300}, "vector").key
    assert fp.key != Fingerprint("offline", "m", 64, {"max_tokens": 300}, "halfvec").key


def test_unknown_storage_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="unknown embedding storage 'float8'; expected 'vector' or"):
        Settings(embedding_storage="float8")


def test_index_workers_are_sized_to_a_server_on_this_machine(settings: Settings) -> None:
    import os

    with connect(settings) as conn:
        # The test server listens on a Unix socket: this machine's cores, minus the leader.
        assert store.build_workers(conn, None) == min(8, max((os.cpu_count() or 1) - 1, 0))
        assert store.build_workers(conn, 3) == 3


def test_the_compact_command_merges_and_then_has_nothing_left(
    two_versions: tuple[Settings, dict[str, Any]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from typer.testing import CliRunner

    from kbrefresh.cli import app

    settings, counts = two_versions
    assert settings.database_url is not None
    monkeypatch.setenv("KBREFRESH_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("KBREFRESH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("KBREFRESH_TRACKING", "false")
    monkeypatch.setenv("COLUMNS", "200")
    first = CliRunner().invoke(app, ["compact", "--kb", "kb"])
    assert first.exit_code == 0, first.output
    assert f"merged {counts['delta_rows']} rows of 'kb' into the main HNSW index (up to version 2)" in (
        first.output)
    again = CliRunner().invoke(app, ["compact", "--kb", "kb"])
    assert again.exit_code == 0 and "nothing merged: 0 rows of 'kb' are past the main index" in (
        again.output)


REJECT = AcceptancePolicy(rules=(MetricRule(metric="hit@5", slice="no such slice", lower_bound=1.0),),
                          max_slice_disparity=(), max_size_ratio=None)


def reject(settings: Settings, source: Path) -> None:
    with pytest.raises(GateFailed):
        run_refresh(settings, RefreshRequest(kb="kb", source=str(source)),
                    embedder=OfflineEmbedder(dims=DIMS), policy=REJECT)


def assert_rows_and_search(conn: store.Conn, fp: store.FingerprintTable, version: int) -> None:
    """``version`` has one row per chunk and searches return exactly its nearest rows."""
    dupes = conn.execute(sql.SQL("SELECT count(*) - count(DISTINCT (doc_id, chunk_index)) AS n FROM {} c"
                                 " WHERE ").format(sql.Identifier(fp.table)) + store.in_version(),
                         {"version": version}).fetchone()
    assert dupes is not None and dupes["n"] == 0
    rows = version_rows(conn, fp, version)
    q_rng = np.random.default_rng(5)
    for i in sorted(rows)[:6]:
        q = rows[i] + q_rng.normal(scale=0.01, size=DIMS).astype(np.float32)
        assert [h.chunk_id for h in search_version(conn, fp, version, q, k=8)] == exact_top(rows, q, 8)


@pytest.mark.parametrize(("limit", "action"), [(0, "built"), (10_000, "rebuilt")])
def test_the_build_after_a_rejected_version_undoes_it_without_the_index(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, limit: int, action: str,
) -> None:
    monkeypatch.setattr(segments, "UNDO_DROP_INDEX_ROWS", limit)
    source = tmp_path / "corpus"
    write_corpus(source, 30)
    reject(settings, source)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 1)
        assert store.hnsw_indexes(conn, fp.table) == [f"{fp.table}_hnsw_1"]
        v1 = store.version_stats(conn, fp.table, 1)["chunks"]
    with caplog.at_level(logging.INFO, logger="kbrefresh"):
        counts = refresh(settings, source)
    dropped = [r.getMessage() for r in caplog.records if "index dropped for undo" in r.getMessage()]
    assert len(dropped) == (1 if limit == 0 else 0)
    if dropped:
        assert dropped[0].startswith(f"index dropped for undo: {v1} rows of {fp.table} under HNSW "
                                     f"indexes {fp.table}_hnsw_1 to undo for version 1 (more than 0)")
    assert (counts["index_action"], counts["main_upto"], counts["reused"]) == (action, 2, v1)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 2)
        assert store.segment_indexes(conn, fp.table) == [f"{fp.table}_hnsw_2", f"{fp.table}_tail_2"]
        assert store.version_stats(conn, fp.table, 1)["chunks"] == 0
        assert store.version_stats(conn, fp.table, 2)["chunks"] == v1
        total = conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(fp.table)))
        assert total.fetchone() == {"n": v1}  # v1's rows, reused by v2, are not indexed
        assert_rows_and_search(conn, fp, 2)


def test_live_answers_exactly_while_its_index_is_dropped_for_an_undo(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(segments, "UNDO_DROP_INDEX_ROWS", 0)
    source = tmp_path / "corpus"
    write_corpus(source, 20)
    refresh(settings, source)
    write_corpus(source, 20, seed=99)  # every document rewritten: v2 rebuilds the main index
    reject(settings, source)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 1)
        assert store.hnsw_indexes(conn, fp.table) == [f"{fp.table}_hnsw_2"]
        live_rows = version_rows(conn, fp, 1)
    with steps.refresh_lock(settings, "kb"):
        ticket = steps.begin_version(settings, "kb", steps.fingerprint_for(
            OfflineEmbedder(dims=DIMS), ChunkerConfig()), source=str(source), flow_run_id=None)
    assert (ticket.version, ticket.live_version) == (3, 1)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 1)
        assert (fp.main_upto, fp.delta_upto, store.hnsw_indexes(conn, fp.table)) == (None, None, [])
        assert version_rows(conn, fp, 1).keys() == live_rows.keys()
        assert_rows_and_search(conn, fp, 1)  # exact scans, same answers
    counts = refresh(settings, source)  # resumes v3 and builds one main index
    assert (counts["index_action"], counts["main_upto"]) == ("built", 3)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 3)
        empty = conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE valid_to = 2) AS e, count(*) AS n"
                                     " FROM {} WHERE valid_from = 2").format(sql.Identifier(fp.table)))
        assert empty.fetchone() == {"e": 0, "n": 0}  # v2's rows, reused by v3: deleted
        assert version_rows(conn, fp, 1).keys() == live_rows.keys()
        assert_rows_and_search(conn, fp, 1)
        assert_rows_and_search(conn, fp, 3)
