"""Full re-embeds through the OpenAI Batch API: submit, poll, load, resume, fall back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from kbrefresh.db import connect
from kbrefresh.embedders import make_embedder
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh import embed_steps, steps
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshReport, run_refresh
from kbrefresh.settings import Settings
from tests.integration.test_refresh import chunk_hashes, version_rows
from tests.support.corpus import write_corpus
from tests.support.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.integration


class Killed(Exception):
    """Stands in for kill -9 while the flow waits on the provider."""


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(default_dims=64) as running:
        yield running


@pytest.fixture
def batch_settings(settings: Settings, server: FakeOpenAIServer) -> Settings:
    return settings.model_copy(update={
        "embedder": "openai", "openai_base_url": server.base_url,
        "openai_api_key": SecretStr("unused"), "embedding_model": "fake-embed",
        "embedding_dims": 64, "openai_max_retries": 0, "embed_batch_size": 4,
        "embed_batch_api": True, "embed_batch_api_min_texts": 1,
        "embed_batch_api_poll_seconds": 0.001,
    })


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    write_corpus(tmp_path / "corpus", 12, seed=5)
    return tmp_path / "corpus"


def refresh(settings: Settings, corpus: Path) -> RefreshReport:
    return run_refresh(settings, RefreshRequest(kb="kb", source=str(corpus)))


def synced_texts(server: FakeOpenAIServer) -> set[str]:
    return {text for r in server.requests if r.path.endswith("/embeddings") for text in r.inputs}


def jobs(settings: Settings) -> list[tuple[int, str, str]]:
    with connect(settings) as conn:
        rows = conn.execute(
            "SELECT version, provider_batch_id, status FROM kb_embed_jobs ORDER BY version, job_no"
        ).fetchall()
    return [(r["version"], r["provider_batch_id"], r["status"]) for r in rows]


def staged_texts(corpus: Path) -> set[str]:
    from kbrefresh.build.chunking import chunk_documents
    from kbrefresh.build.sources import load_source

    return {c.embed_text for c in chunk_documents(load_source(str(corpus)).documents,
                                                  ChunkerConfig())}


def test_full_build_goes_through_one_provider_batch(
    batch_settings: Settings, server: FakeOpenAIServer, corpus: Path
) -> None:
    report = refresh(batch_settings, corpus)

    assert report.live_version == 1 and report.texts_embedded == len(staged_texts(corpus))
    assert version_rows(batch_settings, "kb", 1) == chunk_hashes(corpus)
    [batch_id] = server.batches
    assert jobs(batch_settings) == [(1, batch_id, "loaded")]
    # Only the smoke checks' queries went to the synchronous endpoint, no chunk text.
    assert not synced_texts(server) & staged_texts(corpus)


def test_a_crash_while_polling_resumes_the_same_batch(
    batch_settings: Settings, server: FakeOpenAIServer, corpus: Path
) -> None:
    server.batch_polls = 3
    embedder = make_embedder(batch_settings)
    fp = steps.fingerprint_for(embedder, ChunkerConfig())

    def killed(seconds: float) -> None:
        raise Killed("the worker died")

    with steps.refresh_lock(batch_settings, "kb"):  # a run that dies without any cleanup
        ticket = steps.begin_version(batch_settings, "kb", fp, source=str(corpus), flow_run_id=None)
        steps.prepare_data(batch_settings, ticket, str(corpus))
        plan = steps.plan_build(batch_settings, ticket)
        steps.reuse_unchanged(batch_settings, ticket)
        with pytest.raises(Killed):
            embed_steps.embed_with_batch_api(batch_settings, ticket, plan, embedder=embedder,
                                             sleep=killed)
    [batch_id] = server.batches
    assert jobs(batch_settings) == [(1, batch_id, "submitted")]

    report = refresh(batch_settings, corpus)

    assert report.resumed and report.live_version == 1
    assert list(server.batches) == [batch_id]  # polled again, not submitted twice
    assert len([r for r in server.requests if r.path == "/v1/files"]) == 1
    assert jobs(batch_settings) == [(1, batch_id, "loaded")]
    assert version_rows(batch_settings, "kb", 1) == chunk_hashes(corpus)
    assert not synced_texts(server) & staged_texts(corpus)


@pytest.mark.parametrize("breakage", ["failed", "expired", "no batch api"])
def test_a_failed_batch_falls_back_to_the_synchronous_api(
    batch_settings: Settings, server: FakeOpenAIServer, corpus: Path, breakage: str
) -> None:
    if breakage == "no batch api":
        server.batch_api = False
    else:
        server.batch_outcome = breakage

    report = refresh(batch_settings, corpus)

    assert report.live_version == 1 and report.texts_embedded == len(staged_texts(corpus))
    assert version_rows(batch_settings, "kb", 1) == chunk_hashes(corpus)
    assert synced_texts(server) >= staged_texts(corpus)
    expected = [] if breakage == "no batch api" else [(1, next(iter(server.batches)), "failed")]
    assert jobs(batch_settings) == expected
