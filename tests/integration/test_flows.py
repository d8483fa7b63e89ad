"""The Prefect flows end to end: embedded PostgreSQL, offline embedder, Prefect test harness."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import openai
import psycopg
import pytest
from prefect import flow, get_client, task
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import Artifact
from prefect.client.schemas.sorting import ArtifactSort

from flows import RollbackParameters, rollback_kb, scheduled_refresh
from kbrefresh import store
from kbrefresh.build.chunking import chunk_documents
from kbrefresh.build.sources import load_source
from kbrefresh.db import connect
from kbrefresh.errors import (
    BudgetExceeded,
    BuildLockedError,
    ConfigError,
    DatabaseError,
    DataQualityError,
    EmbeddingError,
    GateFailed,
    MigrationError,
)
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.models import ChunkerConfig
from kbrefresh.refresh import steps
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tasks import artifact_key, is_transient
from tasks._common import TASK_OPTIONS

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

TOPICS = ["billing", "invoices", "webhooks", "sso", "exports", "mobile", "macros", "privacy"]


def write_doc(root: Path, topic: str, extra: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{topic}.md").write_text(
        f"# How {topic} works\n\n"
        f"## Overview\n\nThe {topic} page explains what {topic} does for a support team "
        f"and when an administrator should turn it on for the workspace.\n\n"
        f"## Setup\n\nOpen Settings, choose {topic.title()} and follow the three steps; "
        f"changes to {topic} apply to new conversations within a minute.{extra}\n\n"
        f"## Troubleshooting\n\nIf {topic} misbehaves, check the audit log first, then "
        f"contact support with the workspace id and the time of the {topic} problem.\n",
        encoding="utf-8",
    )


def live(settings: Settings, kb: str) -> int | None:
    with connect(settings) as conn:
        return routing.live_version(conn, store.get_kb_id(conn, kb))


def run_refresh(kb: str, source: Path, **overrides: Any) -> tuple[dict[str, Any], UUID]:
    state = scheduled_refresh(RefreshRequest(kb=kb, source=str(source), **overrides),
                              return_state=True)
    assert state.is_completed(), state.message
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    return state.result(), flow_run_id


def failed_refresh(kb: str, source: Path) -> BaseException:
    state = scheduled_refresh(RefreshRequest(kb=kb, source=str(source)), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BaseException)
    return error


def read_artifacts(key: str, flow_run_id: UUID | None = None) -> list[Artifact]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]) if flow_run_id else None,
            ),
            sort=ArtifactSort.CREATED_DESC,
        )


def chunk_keys(source: Path, config: ChunkerConfig | None = None) -> set[tuple[str, int, str]]:
    docs = load_source(str(source)).documents
    return {(c.doc_id, c.chunk_index, c.content_hash)
            for c in chunk_documents(docs, config or ChunkerConfig())}


def test_refresh_builds_swaps_reports_and_refuses_bad_data(
    env: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kb, corpus = "helpcenter-flows", tmp_path / "corpus"
    for topic in TOPICS:
        write_doc(corpus, topic)
    v1_keys = chunk_keys(corpus)

    first, _ = run_refresh(kb, corpus)
    assert (first["version"], first["from_version"], first["live_version"]) == (1, None, 1)
    assert first["documents_new"] == 8 and first["chunks_embedded"] == len(v1_keys)
    assert live(env, kb) == 1

    write_doc(corpus, "invoices", extra=" Invoices now also list the VAT number.")
    write_doc(corpus, "analytics")
    (corpus / "privacy.md").unlink()
    v2_keys = chunk_keys(corpus)
    v1_hashes = {h for _, _, h in v1_keys}

    second, run_id = run_refresh(kb, corpus)
    assert (second["version"], second["from_version"], second["live_version"]) == (2, 1, 2)
    assert (second["documents"], second["documents_new"], second["documents_changed"],
            second["documents_deleted"]) == (8, 1, 1, 1)
    assert second["chunks"] == len(v2_keys)
    assert second["chunks_embedded"] == sum(1 for _, _, h in v2_keys if h not in v1_hashes) > 0
    assert second["chunks_reused"] == len(v2_keys) - second["chunks_embedded"] > 0
    assert second["chunks_removed"] == len(v1_keys - v2_keys) > 0
    assert live(env, kb) == 2

    [summary] = read_artifacts(artifact_key("refresh", kb), run_id)
    markdown = str(summary.data)
    assert "| Live | v1 → v2 |" in markdown
    assert "| Documents | 8 total: 1 new, 1 changed, 1 deleted |" in markdown
    assert (f"| Chunks | {second['chunks']} total: {second['chunks_embedded']} embedded, "
            f"{second['chunks_reused']} reused, {second['chunks_removed']} removed |") in markdown
    assert f"| Dataset tag | {second['dataset_tag'].replace('-', chr(92) + '-')} |" in markdown
    assert "| Archived versions | none |" in markdown
    for step in ("begin_version", "prepare_data", "plan_build", "reuse_unchanged", "embed_changed",
                 "embed_only", "finalize_version", "smoke_check", "validate_candidate",
                 "record_build", "publish_version", "sync_aliases", "total"):
        assert re.search(rf"\| {step} \| \d+\.\d\d \|", markdown), step
    [progress] = read_artifacts(artifact_key("embed", kb), run_id)
    assert progress.type == "progress" and progress.data == 100.0

    empty = tmp_path / "empty"
    empty.mkdir()
    error = failed_refresh(kb, empty)
    assert isinstance(error, DataQualityError) and "has no documents" in str(error)
    assert live(env, kb) == 2

    shrunk = tmp_path / "shrunk"
    shutil.copytree(corpus, shrunk)
    for topic in ("billing", "webhooks", "sso"):
        (shrunk / f"{topic}.md").unlink()
    error = failed_refresh(kb, shrunk)
    assert isinstance(error, DataQualityError)
    assert "source shrank from 8 to 5 documents (-37.5%)" in str(error)
    assert live(env, kb) == 2
    quality = str(read_artifacts(artifact_key("quality", kb))[0].data)
    assert "stopped: bad data" in quality and "| error | shrinkage |" in quality
    assert "live version 2 keeps serving" in quality

    caplog.clear()
    resized, _ = run_refresh(kb, corpus, max_chars=300, overlap_chars=0)
    assert resized["full_build"] and resized["chunks_reused"] == 0
    # The fan-out logs "embedded ..." from the flow run, the steps from their task runs.
    messages = [r.getMessage() for r in caplog.records
                if r.name in ("prefect.task_runs", "prefect.flow_runs")]
    [warning] = [i for i, m in enumerate(messages) if "embedding fingerprint changed" in m]
    assert f"{resized['chunks']} chunks will be embedded" in messages[warning]
    assert warning < next(i for i, m in enumerate(messages) if m.startswith("embedded "))
    assert resized["chunks_embedded"] == resized["chunks"] == len(
        chunk_keys(corpus, ChunkerConfig(max_chars=300, overlap_chars=0)))
    assert (resized["version"], resized["from_version"]) == (5, 2)
    assert live(env, kb) == 5

    back = rollback_kb(RollbackParameters(kb=kb, reason="resize hurt recall"))
    assert back == {"kb": kb, "from_version": 5, "to_version": 2, "reason": "resize hurt recall"}
    assert live(env, kb) == 2
    assert "| Live | v5 → v2 |" in str(read_artifacts(artifact_key("rollback", kb))[0].data)


def test_hostile_kb_name_runs_through_the_flow(env: Settings, tmp_path: Path) -> None:
    kb, corpus = "it's; drop--ünï", tmp_path / "corpus"
    for topic in TOPICS[:6]:
        write_doc(corpus, topic)

    summary, run_id = run_refresh(kb, corpus)

    assert (summary["kb"], summary["live_version"]) == (kb, 1)
    assert live(env, kb) == 1
    for kind in ("refresh", "embed", "smoke"):
        key = artifact_key(kind, kb)
        assert re.fullmatch(r"kbrefresh-[a-z]+-it-s-drop-uni-[0-9a-f]{8}", key)
        assert len(read_artifacts(key, run_id)) == 1
    markdown = str(read_artifacts(artifact_key("refresh", kb), run_id)[0].data)
    assert markdown.startswith("# \"it's; drop\\-\\-ünï\": v1 is live")


def test_a_candidate_failing_the_gate_is_rejected_and_nothing_goes_live(
    env: Settings, tmp_path: Path
) -> None:
    kb, corpus = "gated-kb", tmp_path / "corpus"
    for topic in TOPICS[:6]:
        write_doc(corpus, topic)
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(
        f'{{"query": "how {topic} works", "relevant": ["gone/{topic}"], "set": "smoke"}}\n'
        for topic in TOPICS[:6]
    ), encoding="utf-8")
    load_golden(env, kb, golden)

    error = failed_refresh(kb, corpus)

    assert isinstance(error, GateFailed)
    assert str(error).startswith(f"version 1 of {kb!r} was rejected. First version, no live ")
    assert str(error).endswith("; nothing is published.")
    assert live(env, kb) is None
    with connect(env) as conn:
        [version] = store.list_versions(conn, store.get_kb_id(conn, kb))
    assert version.status == store.VersionStatus.REJECTED
    gate = str(read_artifacts(artifact_key("gate", kb))[0].data)
    assert "**Validation gate: FAILED**" in gate
    assert read_artifacts(artifact_key("refresh", kb)) == []


def test_a_held_lock_fails_the_run_without_building(env: Settings, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for topic in TOPICS[:6]:
        write_doc(corpus, topic)

    with steps.refresh_lock(env, "locked-kb"):
        error = failed_refresh("locked-kb", corpus)

    assert isinstance(error, BuildLockedError)
    assert "another refresh of knowledge base 'locked-kb' is running" in str(error)
    with connect(env) as conn:
        assert store.list_versions(conn, store.get_kb_id(conn, "locked-kb")) == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"kb": "bad\nname"}, "contains control characters"),
        ({"kb": "x" * 56}, "at most 55 characters"),
        ({"overlap_chars": 1200}, "overlap_chars must be between 0 and max_chars - 1 (1199), got 1200"),
        ({"max_shrink": 1.5}, "less than or equal to 1"),
        ({"keep_versions": 0}, "greater than or equal to 1"),
    ],
)
def test_parameters_are_bounded(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RefreshRequest.model_validate({"kb": "kb", "source": "docs"} | params)


def _status_error(status: int, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/embeddings")
    response = httpx.Response(status, request=request, headers=headers)
    return openai.APIStatusError("boom", response=response, body=None)


def _caused(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_caused(DatabaseError("cannot connect"), psycopg.OperationalError("refused")), True),
        (DatabaseError("the pgvector extension is not available"), False),
        (_caused(MigrationError("edited"), psycopg.OperationalError("x")), False),
        (_caused(EmbeddingError("429"), _status_error(429)), True),
        (_caused(EmbeddingError("503"), _status_error(503)), True),
        (_caused(EmbeddingError("429"), _status_error(429, {"Retry-After": "30"})), True),
        # The server asked for longer than the client waits: a task retry in 2 s is refused too.
        (_caused(EmbeddingError("429"), _status_error(429, {"Retry-After": "600"})), False),
        (BudgetExceeded("stopped before embedding batch 3 of 6"), False),
        (_caused(EmbeddingError("401"), _status_error(401)), False),
        (_caused(EmbeddingError("timeout"), openai.APITimeoutError(
            request=httpx.Request("POST", "http://127.0.0.1/v1/embeddings"))), True),
        (EmbeddingError("expected 64 dimensions"), False),
        (DataQualityError("bad data"), False),
        (GateFailed("smoke failed"), False),
        (ConfigError("bad setting"), False),
        (BuildLockedError("locked"), False),
        (psycopg.OperationalError("server closed the connection"), True),
    ],
)
def test_only_transient_errors_are_retried(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_tasks_retry_a_dropped_connection_but_not_bad_data() -> None:
    calls: list[str] = []

    @task(**TASK_OPTIONS | {"retry_delay_seconds": 0})
    def flaky(kind: str) -> str:
        calls.append(kind)
        if kind == "db" and len(calls) < 3:
            raise DatabaseError("cannot connect") from psycopg.OperationalError("refused")
        if kind == "data":
            raise DataQualityError("bad data")
        return "ok"

    @flow
    def run_flaky(kind: str) -> str:
        return flaky(kind)

    assert run_flaky("db") == "ok" and calls == ["db"] * 3
    calls.clear()
    with pytest.raises(DataQualityError):
        run_flaky("data")
    assert calls == ["data"]


def test_the_flow_judges_by_its_policy_file(env: Settings, tmp_path: Path) -> None:
    kb, corpus = "policy-kb", tmp_path / "corpus"
    for topic in TOPICS[:6]:
        write_doc(corpus, topic)
    golden = tmp_path / "golden.jsonl"
    golden.write_text("".join(
        f'{{"query": "how {topic} works", "relevant": ["{topic}"], "set": "smoke"}}\n'
        for topic in TOPICS[:6]
    ), encoding="utf-8")
    load_golden(env, kb, golden)
    strict = tmp_path / "strict.yaml"
    strict.write_text("rules:\n  - metric: latency_p95_ms\n    upper_bound: 0\n", encoding="utf-8")

    state = scheduled_refresh(RefreshRequest(kb=kb, source=str(corpus), policy_file=str(strict)),
                              return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, GateFailed)
    assert str(error).startswith(f"version 1 of {kb!r} was rejected.")
    assert "latency_p95_ms" in str(error)
    assert live(env, kb) is None
    summary, _ = run_refresh(kb, corpus)  # the default policy accepts the same data
    assert (summary["version"], summary["live_version"]) == (2, 2)


def test_a_bad_policy_file_is_refused_before_the_flow_starts(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - metric: hit@5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=re.escape(
            "bad.yaml: invalid acceptance policy: rules[0]: set 'lower_bound', 'upper_bound' "
            "or 'change'")):
        RefreshRequest(kb="kb", source="docs", policy_file=str(bad))
