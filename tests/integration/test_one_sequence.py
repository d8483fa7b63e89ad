"""The CLI path and the flow path run one sequence: same steps, same resulting version."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.sorting import TaskRunSort

from flows import scheduled_refresh
from kbrefresh import store
from kbrefresh.db import connect
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import STEPS, DirectRunner, RefreshHooks, run_refresh
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from tests.integration.test_flows import TOPICS, write_doc

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

COUNTS = ("version", "from_version", "live_version", "documents", "chunks", "documents_new",
          "documents_changed", "documents_deleted", "chunks_embedded", "texts_embedded",
          "chunks_reused", "chunks_removed", "full_build", "estimated_tokens", "archived")


class Recorder(RefreshHooks):
    def __init__(self) -> None:
        self.steps: list[str] = []

    def step_finished(self, step: str, result: object) -> None:
        self.steps.append(step)


def cli_refresh(settings: Settings, kb: str, source: Path) -> tuple[dict[str, Any], list[str]]:
    recorder = Recorder()
    report = run_refresh(settings, RefreshRequest(kb=kb, source=str(source)),
                         runner=DirectRunner(), hooks=recorder)
    return report.as_dict(), recorder.steps


def flow_refresh(kb: str, source: Path) -> tuple[dict[str, Any], list[str]]:
    state = scheduled_refresh(RefreshRequest(kb=kb, source=str(source)), return_state=True)
    assert state.is_completed(), state.message
    run_id = state.state_details.flow_run_id
    assert isinstance(run_id, UUID)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    assert all(run.state and run.state.is_completed() for run in task_runs)
    return state.result(), [run.name for run in task_runs]


def manifest(settings: Settings, kb: str) -> dict[str, str]:
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, kb)
        rows = conn.execute(
            "SELECT doc_id, content_hash FROM kb_version_documents WHERE kb_id = %s AND version = %s",
            (kb_id, routing.live_version(conn, kb_id))).fetchall()
    return {row["doc_id"]: row["content_hash"] for row in rows}


def test_cli_and_flow_take_the_same_steps_to_the_same_version(env: Settings, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    for topic in TOPICS:
        write_doc(corpus, topic)
    for month in (1, 2):
        if month == 2:
            write_doc(corpus, "invoices", extra=" Invoices now also list the VAT number.")
            write_doc(corpus, "analytics")
            (corpus / "privacy.md").unlink()

        cli, cli_steps = cli_refresh(env, "seq-cli", corpus)
        flow, flow_tasks = flow_refresh("seq-flow", corpus)

        assert cli_steps == flow_tasks[:len(STEPS)] == list(STEPS)
        # then the flow hands the published version to the release side
        assert [name.rsplit("-", 1)[0] for name in flow_tasks[len(STEPS):]] == [
            "schedule_monitoring", "send_notice"]
        for summary in (cli, flow):
            assert [k for k in summary["seconds"] if k != "embed_only"] == list(STEPS)
        assert {k: cli[k] for k in COUNTS} == {k: flow[k] for k in COUNTS}
        assert cli["version"] == month and cli["chunks_embedded"] > 0
        assert manifest(env, "seq-cli") == manifest(env, "seq-flow")
    assert cli["chunks_reused"] > 0 and cli["documents_changed"] == 1
    assert len(manifest(env, "seq-cli")) == 8
