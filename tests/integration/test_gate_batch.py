"""Batched gate searches return what one search per query returns, segment by segment."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from psycopg import sql

from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate import batch
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.serving.search import search_version
from kbrefresh.settings import Settings
from tests.support.corpus import markdown_doc, write_corpus

pytestmark = pytest.mark.integration

SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
DIMS = 64
K = 12


def refresh(settings: Settings, source: Path) -> int:
    return run_refresh(settings, RefreshRequest(kb="kb", source=str(source)),
                       embedder=OfflineEmbedder(dims=DIMS), policy=SMOKE_ONLY).version


def edit(source: Path, ids: list[str], seed: int) -> None:
    """2 documents changed, 1 deleted, 2 new."""
    rng = random.Random(seed)
    for doc_id in ids[:2]:
        path = source / f"{doc_id}.md"
        if path.exists():
            path.write_text(markdown_doc(f"Edited {seed}", "general", rng, 3), "utf-8")
    (source / f"{ids[2 + seed]}.md").unlink()
    for i in (90 + 2 * seed, 91 + 2 * seed):
        (source / f"general/new-{i}.md").write_text(markdown_doc(f"New {i}", "general", rng, 3),
                                                    "utf-8")


def queries(conn: store.Conn, fp: store.FingerprintTable, version: int) -> np.ndarray:
    """Vectors near the version's newest rows and its oldest ones, and random ones."""
    rows = conn.execute(sql.SQL(
        "SELECT c.embedding FROM {} c WHERE ").format(sql.Identifier(fp.table))
        + store.in_version() + sql.SQL(" ORDER BY c.valid_from DESC, c.id"),
        {"version": version}).fetchall()
    near = [np.asarray(r["embedding"].to_numpy(), dtype=np.float32) for r in rows]
    rng = np.random.default_rng(5)
    picked = near[:6] + near[-6:] + list(rng.normal(size=(6, DIMS)).astype(np.float32))
    return np.stack([q + rng.normal(scale=0.01, size=DIMS).astype(np.float32) for q in picked])


def assert_same_as_single_searches(conn: store.Conn, fp: store.FingerprintTable,
                                   version: int, vectors: np.ndarray) -> None:
    tail = batch.read_tail(conn, fp, version)
    for with_tail, k in ((tail, K), (None, K), (tail, 1)):  # the tail in memory, in the statement
        got = batch.search_many(conn, fp, version, vectors, k, with_tail)
        assert len(got) == len(vectors)
        for q, hits in zip(vectors, got, strict=True):
            single = search_version(conn, fp, version, q, k)
            assert [(h[0], h[1]) for h in hits] == [(h.chunk_id, h.doc_id) for h in single]
            assert np.allclose([h[2] for h in hits], [h.similarity for h in single], atol=1e-6)


@pytest.mark.parametrize("storage", ["vector", "halfvec"])
def test_batched_searches_equal_single_searches_on_main_and_tail(
    settings: Settings, tmp_path: Path, storage: str,
) -> None:
    settings = settings.model_copy(update={"delta_exact_rows": 1000, "embedding_storage": storage})
    source = tmp_path / "corpus"
    ids = write_corpus(source, 40)
    assert refresh(settings, source) == 1
    edit(source, ids, 0)
    assert refresh(settings, source) == 2
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 2)
        assert (fp.main_upto, fp.delta_upto, fp.storage) == (1, None, storage)
        tail = batch.read_tail(conn, fp, 2)
        assert tail is not None and len(tail.ids) == store.delta_rows(conn, fp, 2) > 0
        assert batch.read_tail(conn, fp, 1) is None  # the main index covers all of v1
        for version in (1, 2):
            assert_same_as_single_searches(conn, fp, version, queries(conn, fp, 2))


def test_batched_searches_equal_single_searches_with_a_delta_index(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings.model_copy(update={"compact_share": 10})  # no merge after publish
    source = tmp_path / "corpus"
    ids = write_corpus(source, 40)
    assert refresh(settings.model_copy(update={"delta_exact_rows": 1000}), source) == 1
    edit(source, ids, 0)
    assert refresh(settings.model_copy(update={"delta_exact_rows": 0}), source) == 2
    edit(source, ids, 1)
    exact_tail = settings.model_copy(update={"delta_exact_rows": 1000})
    assert refresh(exact_tail, source) == 3
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 3)
        assert (fp.main_upto, fp.delta_upto) == (1, 2)  # main, delta and a tail past them
        vectors = queries(conn, fp, 3)
        for version in (2, 3):
            assert_same_as_single_searches(conn, fp, version, vectors)
        monkeypatch.setattr(batch, "MAX_TAIL_ROWS", 1)
        assert batch.read_tail(conn, fp, 3) is None  # too big to hold: in the statement
        assert_same_as_single_searches(conn, fp, 3, vectors)


def test_a_batch_of_no_queries_runs_nothing(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "corpus"
    write_corpus(source, 6)
    refresh(settings, source)
    with connect(settings) as conn:
        fp = store.fingerprint_for_version(conn, 1, 1)
        assert batch.search_many(conn, fp, 1, np.zeros((0, DIMS), dtype=np.float32), K, None) == []
