"""Embedding fan-out: batches as Prefect tasks under shared rate limits, and on Dask."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from psycopg import sql

from flows import scheduled_refresh
from kbrefresh import store
from kbrefresh.build.ratelimit import bucket
from kbrefresh.db import connect
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.settings import Settings
from tests.support.corpus import write_corpus
from tests.support.openai_server import FakeOpenAIServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

RPM = 240


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(default_dims=64, latency_seconds=0.02) as running:
        yield running


@pytest.fixture
def openai_env(env: Settings, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in {
        "EMBEDDER": "openai", "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "unused",
        "EMBEDDING_MODEL": "fake-embed", "EMBEDDING_DIMS": "64", "EMBED_BATCH_SIZE": "2",
        "EMBED_PARALLELISM": "4", "OPENAI_MAX_RETRIES": "0", "TRACKING": "false",
    }.items():
        monkeypatch.setenv(f"KBREFRESH_{name}", value)
    return Settings()


def refresh(kb: str, source: Path) -> dict[str, Any]:
    state = scheduled_refresh(RefreshRequest(kb=kb, source=str(source)), return_state=True)
    assert state.is_completed(), state.message
    result: dict[str, Any] = state.result()
    return result | {"flow_run_id": state.state_details.flow_run_id}


def task_names(flow_run_id: Any) -> list[str]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    assert all(run.state and run.state.is_completed() for run in runs)
    return [run.name for run in runs]


def live_rows(settings: Settings, kb: str) -> set[tuple[str, int, str]]:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        fp = store.fingerprint_for_version(conn, kb_id, 1)
        rows = conn.execute(sql.SQL(
            "SELECT doc_id, chunk_index, content_hash FROM {} WHERE valid_to IS NULL"
        ).format(sql.Identifier(fp.table))).fetchall()
    return {(r["doc_id"], r["chunk_index"], r["content_hash"]) for r in rows}


def test_two_flow_runs_together_stay_under_the_request_limit(
    openai_env: Settings, server: FakeOpenAIServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KBREFRESH_EMBED_REQUESTS_PER_MINUTE", str(RPM))
    limit = bucket("embed-openai-requests", RPM, 100)
    sources = []
    for seed in (1, 2):
        write_corpus(tmp_path / f"kb{seed}", 16, seed=seed)
        sources.append(tmp_path / f"kb{seed}")

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(refresh, ["rl-a", "rl-b"], sources))

    assert all(r["live_version"] == 1 and r["chunks_embedded"] > 0 for r in reports)
    embeds = [r for r in server.requests if r.path.endswith("/embeddings")]
    # The limit must bind: more requests than the bucket's burst, from two runs.
    assert len(embeds) > limit.slots
    for seconds in (1.0, 2.0, 4.0):
        # 0.5 s of slack: a request reaches the server a little after its slot was granted.
        assert server.most_in_window(seconds) <= limit.admits_at_most(seconds + 0.5), seconds
    with get_client(sync_client=True) as client:
        gcl = client.read_global_concurrency_limit_by_name("embed-openai-requests")
    assert (gcl.limit, gcl.slot_decay_per_second) == (limit.server_limit, limit.server_decay)
    assert (limit.slots, limit.per_second) == (24, 3.6)
    for report in reports:
        names = task_names(report["flow_run_id"])
        assert sum(n.startswith("embed_batch-") for n in names) == -(-report["texts_embedded"] // 2)


def dask_tasks(dask_scheduler: Any) -> dict[str, int]:
    # Tasks that finished with a result in worker memory, per key prefix.
    return {name: prefix.state_counts["memory"]
            for name, prefix in dask_scheduler.task_prefixes.items()}


def test_embedding_fans_out_on_a_local_dask_cluster(
    openai_env: Settings, server: FakeOpenAIServer, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    distributed = pytest.importorskip("distributed")
    write_corpus(tmp_path / "kb", 10, seed=3)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        monkeypatch.setenv("KBREFRESH_TASK_RUNNER", "dask")
        monkeypatch.setenv("KBREFRESH_DASK_ADDRESS", cluster.scheduler_address)
        report = refresh("dask-kb", tmp_path / "kb")
        ran = client.run_on_scheduler(dask_tasks)

    assert report["live_version"] == 1 and report["chunks_embedded"] > 0
    batches = [n for n in task_names(report["flow_run_id"]) if n.startswith("embed_batch-")]
    assert len(batches) == -(-report["texts_embedded"] // 2)
    # prefect-dask names each Dask task after its task's function: wrapper_func for
    # embed_batch (a partial), chunk_batch for the one batch of 10 documents chunked there.
    assert ran == {"wrapper_func": len(batches), "chunk_batch": 1}
    assert len(live_rows(openai_env, "dask-kb")) == report["chunks"]
