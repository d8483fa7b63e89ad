"""Chunking on the distributed runner: document batches chunked on a local Dask cluster."""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from psycopg import sql

from flows import scheduled_refresh
from kbrefresh import store
from kbrefresh.cli.demo import SAMPLES, apply_change_set
from kbrefresh.db import connect
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.settings import Settings
from tests.integration.test_embed_fanout import task_names

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

# What a refresh's report says; the rest (timings, run ids, tags with dates) may differ.
COUNTS = ("documents", "chunks", "documents_new", "documents_changed", "documents_deleted",
          "chunks_embedded", "texts_embedded", "chunks_reused", "chunks_removed", "full_build",
          "estimated_tokens", "live_version")


def refresh(kb: str, source: Path, policy: Path) -> dict[str, Any]:
    request = RefreshRequest(kb=kb, source=str(source), policy_file=str(policy))
    state = scheduled_refresh(request, return_state=True)
    assert state.is_completed(), state.message
    result: dict[str, Any] = state.result()
    return result | {"flow_run_id": state.state_details.flow_run_id}


def live_rows(settings: Settings, kb: str) -> dict[tuple[str, int], tuple[str, str, list[float]]]:
    """Every live chunk of ``kb``: (doc id, index) -> (content hash, content, embedding)."""
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        fp = store.fingerprint_for_version(conn, kb_id, 1)
        rows = conn.execute(sql.SQL(
            "SELECT doc_id, chunk_index, content_hash, content, embedding FROM {}"
            " WHERE valid_to IS NULL").format(sql.Identifier(fp.table))).fetchall()
    return {(r["doc_id"], r["chunk_index"]): (r["content_hash"], r["content"],
                                              np.asarray(r["embedding"]).tolist()) for r in rows}


@pytest.fixture
def cluster() -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as running, \
            distributed.Client(running) as client:
        yield distributed, running, client


def test_chunking_runs_on_a_local_dask_cluster_with_the_thread_runners_result(
    env: Settings, cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    distributed, running, client = cluster
    corpus = tmp_path / "kb"
    shutil.copytree(SAMPLES / "base", corpus)  # Markdown and HTML: both parsers on workers
    # This test compares runners, not versions: no latency rule to trip on a busy machine.
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules: []\nmax_slice_disparity: []\n", "utf-8")
    monkeypatch.setenv("KBREFRESH_TRACKING", "false")
    monkeypatch.setenv("KBREFRESH_CHUNK_BATCH_DOCS", "10")
    monkeypatch.setenv("KBREFRESH_EMBED_PARALLELISM", "2")
    threads = [refresh("thread-kb", corpus, policy)]
    monkeypatch.setenv("KBREFRESH_TASK_RUNNER", "dask")
    monkeypatch.setenv("KBREFRESH_DASK_ADDRESS", running.scheduler_address)
    streams, on_dask = [], []
    for change in (False, True):
        if change:
            apply_change_set(SAMPLES / "next_month", corpus)
        with distributed.get_task_stream(client) as stream:
            on_dask.append(refresh("dask-kb", corpus, policy))
        streams.append(stream.data)
    monkeypatch.setenv("KBREFRESH_TASK_RUNNER", "thread")
    threads.append(refresh("thread-kb", corpus, policy))

    for thread, dask in zip(threads, on_dask, strict=True):
        assert {k: dask[k] for k in COUNTS} == {k: thread[k] for k in COUNTS}
    assert on_dask[1]["documents_changed"] > 0 and on_dask[1]["chunks_embedded"] > 0
    assert live_rows(env, "dask-kb") == live_rows(env, "thread-kb")

    first, second = (task_names(r["flow_run_id"]) for r in on_dask)
    chunked = [sum(n.startswith("chunk_batch-") for n in names) for names in (first, second)]
    embedded = [sum(n.startswith("embed_batch-") for n in names) for names in (first, second)]
    # 72 documents in batches of 10; the refresh chunks only its 11 new or changed ones.
    assert chunked == [8, 2]
    assert not any(n.startswith("chunk_batch-") for r in threads for n in task_names(r["flow_run_id"]))
    # Every chunk and embed task ran on the cluster's worker processes. prefect-dask names
    # a Dask task after the task's function: chunk_batch, or wrapper_func for embed_batch
    # (a partial has no name).
    assert [Counter(t["key"].split("-")[0] for t in ran) for ran in streams] == [
        {"chunk_batch": c, "wrapper_func": e} for c, e in zip(chunked, embedded, strict=True)]
    assert {t["worker"] for ran in streams for t in ran} <= set(running.scheduler_info["workers"])
