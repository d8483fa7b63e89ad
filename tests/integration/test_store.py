"""The store's manifest query, document diff and typed rows on a real PostgreSQL."""

from __future__ import annotations

import random
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from kbrefresh import store
from kbrefresh.build.sources import load_source
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.retraining.volume import source_volume
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tests.support.corpus import markdown_doc, write_corpus

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)


def old_version_manifest(conn: store.Conn, kb_id: int, version: int) -> dict[str, str]:
    """The query as signals.source_volume and tracking wrote it before the store owned it."""
    return {
        r["doc_id"]: r["content_hash"]
        for r in conn.execute(
            "SELECT doc_id, content_hash FROM kb_version_documents"
            " WHERE kb_id = %s AND version = %s",
            (kb_id, version),
        ).fetchall()
    }


def old_diff(previous: dict[str, str], current: dict[str, str]) -> tuple[int, int, int, int]:
    """The diff as staging.record_documents and signals.source_volume both wrote it."""
    return (
        sum(1 for d in current if d not in previous),
        sum(1 for d, h in current.items() if d in previous and previous[d] != h),
        sum(1 for d, h in current.items() if previous.get(d) == h),
        sum(1 for d in previous if d not in current),
    )


@pytest.fixture
def built(settings: Settings, tmp_path: Path) -> Path:
    """Build and publish v1 of 'kb' from 12 docs, then edit the source: 2 changed, 1 deleted, 2 new."""
    source = tmp_path / "corpus"
    ids = write_corpus(source, 12)
    run_refresh(
        settings,
        RefreshRequest(kb="kb", source=str(source)),
        embedder=OfflineEmbedder(dims=64),
        policy=SMOKE_ONLY,
    )
    rng = random.Random(3)
    for doc_id in ids[:2]:
        (source / f"{doc_id}.md").write_text(markdown_doc("Edited", "general", rng), "utf-8")
    (source / f"{ids[2]}.md").unlink()
    for i in (90, 91):
        (source / f"general/new-{i}.md").write_text(
            markdown_doc(f"New {i}", "general", rng), "utf-8"
        )
    return source


def test_manifest_and_diff_match_the_old_copies(settings: Settings, built: Path) -> None:
    current = {d.doc_id: d.content_hash for d in load_source(str(built)).documents}
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        manifest = store.version_manifest(conn, kb_id, 1)
        old = old_version_manifest(conn, kb_id, 1)
        catalog = store.catalog_manifest(conn, kb_id)
        assert store.manifest_size(conn, kb_id, 1) == 12
        assert store.manifest_size(conn, kb_id, None) is None
        assert store.version_manifest(conn, kb_id, None) == {}
    assert manifest == old and list(manifest) == sorted(old) and len(manifest) == 12
    assert catalog == old  # one build: the catalog is v1's manifest
    changes = store.diff_documents(manifest, current)
    assert (changes.new, changes.changed, changes.unchanged, changes.deleted) == old_diff(
        old, current
    )
    assert changes == store.DocumentChanges(new=2, changed=2, unchanged=9, deleted=1)
    assert changes.new_samples == 4
    volume = source_volume(settings, "kb", str(built), now=datetime.now(UTC))
    assert (volume.new, volume.changed, volume.unchanged, volume.deleted) == (2, 2, 9, 1)
    report = run_refresh(
        settings,
        RefreshRequest(kb="kb", source=str(built)),
        embedder=OfflineEmbedder(dims=64),
        policy=SMOKE_ONLY,
    )
    assert report.version == 2
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        assert store.version_manifest(conn, kb_id, 2) == current
        assert store.catalog_manifest(conn, kb_id) == current


def test_typed_rows_carry_status_and_routing(settings: Settings, built: Path) -> None:
    run_refresh(
        settings,
        RefreshRequest(kb="kb", source=str(built)),
        embedder=OfflineEmbedder(dims=64),
        policy=SMOKE_ONLY,
    )
    with connect(settings, autocommit=True) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        routing.rollback(conn, kb_id, "kb", reason="test")
        versions = store.list_versions(conn, kb_id)
        v2 = store.version_row(conn, kb_id, 2)
        events = routing.history(conn, kb_id)
        [overview] = store.kb_overview(conn)
    assert [(v.version, v.status) for v in versions] == [
        (2, store.VersionStatus.ROLLED_BACK),
        (1, store.VersionStatus.LIVE),
    ]
    assert v2 == versions[0] and v2.passed_gate and v2.fingerprint["dims"] == 64
    assert [(e.action, e.from_version, e.to_version, e.reason) for e in events] == [
        ("rollback", 2, 1, "test"),
        ("swap", 1, 2, "scheduled refresh"),
        ("swap", None, 1, "scheduled refresh"),
    ]
    assert (overview.name, overview.live_version, overview.versions) == ("kb", 1, 2)
    assert overview.counts["documents"] == 12 and overview.canary_percent == 0.0
    assert asdict(overview)["dataset_tag"] == overview.dataset_tag


def test_status_column_takes_every_enum_value_and_nothing_else(
    settings: Settings, built: Path
) -> None:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        for status in store.VersionStatus:
            store.set_status(conn, kb_id, 1, status)
            assert store.version_row(conn, kb_id, 1).status is status
        conn.rollback()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE kb_versions SET status = 'shiny' WHERE kb_id = %s", (kb_id,))


def test_manifests_written_as_ranges_stay_exact_for_every_version(settings: Settings) -> None:
    wanted = {1: {"a": "1", "b": "1"}, 2: {"a": "1", "c": "1"}, 3: {"a": "2", "b": "1"},
              4: {}, 5: {"b": "1", "d": "1"}}
    with connect(settings) as conn:
        kb_id = store.ensure_kb(conn, "kb")
        fp = conn.execute("INSERT INTO kb_fingerprints (kb_id, fp_key, spec, dims, table_name)"
                          " VALUES (%s, 'k', '{}', 4, 't') RETURNING id", (kb_id,)).fetchone()
        conn.execute("CREATE TEMP TABLE m (doc_id text, content_hash text)")
        for version, manifest in wanted.items():
            conn.execute("INSERT INTO kb_versions (kb_id, version, fingerprint_id, status,"
                         " dataset_tag, source) VALUES (%s, %s, %s, 'live', 't', 's')",
                         (kb_id, version, fp["id"]))
            # v2 is written twice (a retried step): the first write must leave no trace.
            for rows in ([{"a": "1", "b": "2", "c": "1"}] if version == 2 else []) + [manifest]:
                conn.execute("TRUNCATE m")
                for doc, digest in rows.items():
                    conn.execute("INSERT INTO m VALUES (%s, %s)", (doc, digest))
                store.write_manifest(conn, kb_id, version,
                                     sql.SQL("SELECT doc_id, content_hash FROM m"))
        got = {v: store.version_manifest(conn, kb_id, v) for v in wanted}
        sizes = {v: store.manifest_size(conn, kb_id, v) for v in wanted}
        rows = conn.execute("SELECT count(*) AS n FROM kb_document_ranges").fetchone()
        conn.rollback()
    assert got == wanted and sizes == {v: len(m) for v, m in wanted.items()}
    # a:1 [1,3) a:2 [3,4) b:1 [1,2) [3,4) [5,-) c:1 [2,3) d:1 [5,-)
    assert rows is not None and rows["n"] == 7


def test_statistics_are_refreshed_only_after_a_large_write(settings: Settings) -> None:
    def estimated(conn: store.Conn) -> float:
        row = conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'stats_probe'").fetchone()
        assert row is not None
        return float(row["reltuples"])

    with connect(settings, autocommit=True) as conn:
        conn.execute("CREATE TABLE stats_probe (n int)")
        conn.execute("INSERT INTO stats_probe SELECT generate_series(1, 1000)")
        assert store.analyze_if_stale(conn, "stats_probe", 1000)  # never analyzed
        assert estimated(conn) == 1000
        conn.execute("INSERT INTO stats_probe SELECT generate_series(1, 100)")
        assert not store.analyze_if_stale(conn, "stats_probe", 100)  # 10 %: still fresh
        assert estimated(conn) == 1000
        conn.execute("INSERT INTO stats_probe SELECT generate_series(1, 101)")
        assert store.analyze_if_stale(conn, "stats_probe", 101)
        assert estimated(conn) == 1201
        assert store.analyze_if_stale(conn, "stats_probe", 0, always_below=10_000)  # small
