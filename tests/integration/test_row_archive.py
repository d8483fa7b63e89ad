"""Versions a refresh retires beyond keep_versions stay restorable from row segments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from psycopg import sql

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import VersionError
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.release.archive import restore_version
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tests.support.build import refresh
from tests.support.corpus import write_corpus

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)


def rows_of(settings: Settings, kb: str, version: int) -> list[tuple[Any, ...]]:
    """(doc id, chunk index, content hash, rounded vector) of every chunk of ``version``."""
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        table = store.fingerprint_for_version(conn, kb_id, version).table
        found = conn.execute(
            sql.SQL("SELECT c.doc_id, c.chunk_index, c.content_hash, c.embedding FROM {} c WHERE ")
            .format(sql.Identifier(table)) + store.in_version(), {"version": version}).fetchall()
    return sorted((r["doc_id"], r["chunk_index"], r["content_hash"],
                   tuple(np.round(r["embedding"].to_numpy(), 6))) for r in found)


def three_versions(settings: Settings, corpus: Path, dims: int = 64) -> list[tuple[Any, ...]]:
    """v1, then two refreshes that each delete and change a document, keeping one version."""
    ids = write_corpus(corpus, 12)
    run = {"embedder": OfflineEmbedder(dims=dims), "policy": SMOKE_ONLY, "keep_versions": 1}
    refresh(settings, "kb", str(corpus), **run)
    v1 = rows_of(settings, "kb", 1)
    for step in (1, 2):
        (corpus / f"{ids[step]}.md").unlink()
        changed = corpus / f"{ids[step + 5]}.md"
        changed.write_text(changed.read_text("utf-8") + f"\n\nRevised in step {step}.\n", "utf-8")
        refresh(settings, "kb", str(corpus), **run)
    return v1


def test_a_version_retired_by_refreshes_is_restored_row_for_row(settings: Settings,
                                                                tmp_path: Path) -> None:
    v1 = three_versions(settings, tmp_path / "corpus")
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        archives = {r["version"]: r["location"] for r in conn.execute(
            "SELECT version, location FROM kb_archives WHERE kb_id = %s", (kb_id,))}
        segments = conn.execute("SELECT rows, first_version, last_version FROM kb_row_segments"
                                " WHERE kb_id = %s ORDER BY id", (kb_id,)).fetchall()
        table = store.fingerprint_for_version(conn, kb_id, 3).table
        left = conn.execute(sql.SQL("SELECT count(*) AS n FROM {} WHERE valid_to <= 2")
                            .format(sql.Identifier(table))).fetchone()
    assert set(archives) == {1, 2} and all(loc.startswith("rows:") for loc in archives.values())
    # Each segment holds the rows purged by one refresh; none of them is left in the table.
    assert [s["last_version"] for s in segments] == [2, 3] and all(s["rows"] > 0 for s in segments)
    assert left is not None and left["n"] == 0
    assert rows_of(settings, "kb", 3) != v1
    restored = restore_version(settings, "kb", 1, force=True)
    assert (restored.version, restored.live) == (4, True)
    assert rows_of(settings, "kb", 4) == v1


def test_a_lost_segment_stops_the_restore_and_live_stays(settings: Settings,
                                                         tmp_path: Path) -> None:
    three_versions(settings, tmp_path / "corpus")
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        first = conn.execute("SELECT location FROM kb_row_segments WHERE kb_id = %s ORDER BY id"
                             " LIMIT 1", (kb_id,)).fetchone()
    assert first is not None
    Path(first["location"]).unlink()
    with pytest.raises(VersionError, match="cannot be read|missing"):
        restore_version(settings, "kb", 1, force=True)
    with connect(settings) as conn:
        assert routing.live_version(conn, kb_id) == 3
        assert store.version_row(conn, kb_id, 3).status == "live"


def test_a_dropped_chunk_table_is_written_out_whole_first(settings: Settings,
                                                          tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    v1 = three_versions(settings, corpus)
    # A new embedding space: the old table loses its last kept version and is dropped.
    refresh(settings, "kb", str(corpus), embedder=OfflineEmbedder(dims=32), policy=SMOKE_ONLY,
            keep_versions=1)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        old = store.fingerprint_for_version(conn, kb_id, 1).table
        assert not store.table_exists(conn, old)
        open_rows = conn.execute("SELECT count(*) AS n FROM kb_row_segments WHERE kb_id = %s"
                                 " AND table_name = %s AND last_version IS NULL",
                                 (kb_id, old)).fetchone()
    assert open_rows is not None and open_rows["n"] == 1
    restored = restore_version(settings, "kb", 1, force=True)
    assert restored.live
    assert rows_of(settings, "kb", restored.version) == v1


def test_with_tracking_segments_go_to_the_retired_versions_run(settings: Settings,
                                                               tmp_path: Path) -> None:
    tracked = settings.model_copy(update={
        "tracking": True, "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    v1 = three_versions(tracked, tmp_path / "corpus")
    with connect(tracked) as conn:
        kb_id = store.get_kb_id(conn, "kb")
        locations = [r["location"] for r in conn.execute(
            "SELECT location FROM kb_row_segments WHERE kb_id = %s ORDER BY id", (kb_id,))]
        runs = {store.version_row(conn, kb_id, v).mlflow_run_id for v in (1, 2)}
    assert len(locations) == 2
    assert all(loc.startswith("mlflow:") and loc.split(":")[1].split("/")[0] in runs
               for loc in locations)
    restored = restore_version(tracked, "kb", 1, force=True)
    assert rows_of(tracked, "kb", restored.version) == v1
