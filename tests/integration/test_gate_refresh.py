"""The validation gate inside real refreshes of the bundled help center, and MLflow records."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from kbrefresh import store
from kbrefresh.cli import app
from kbrefresh.db import connect
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.errors import DataQualityError, GateFailed
from kbrefresh.gate.evaluation import load_golden
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import run_refresh
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from kbrefresh.tracking import runs as records
from kbrefresh.tracking.registry import registered_model_name, registry_state

pytestmark = pytest.mark.integration

SAMPLES = Path(__file__).resolve().parents[2] / "kbrefresh" / "samples" / "helpcenter"
GOLDEN = [SAMPLES / "golden" / f"{name}.jsonl" for name in ("smoke", "technical", "general")]


def help_request(corpus: Path) -> RefreshRequest:
    return RefreshRequest(kb="help", source=str(corpus), reason="refresh")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    target = tmp_path / "helpcenter"
    shutil.copytree(SAMPLES / "base", target)
    return target


@pytest.fixture
def tracked(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={
        "tracking": True, "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "embedding_dims": 1536})


def build_v1(settings: Settings, corpus: Path) -> None:
    run_refresh(settings, help_request(corpus), embedder=OfflineEmbedder(dims=1536))
    for path in GOLDEN:
        assert load_golden(settings, "help", path).unknown_ids == {}


def apply_next_month(corpus: Path) -> None:
    for kind in ("changed", "new"):
        for path in (SAMPLES / "next_month" / kind).rglob("*.*"):
            target = corpus / path.relative_to(SAMPLES / "next_month" / kind)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    for line in (SAMPLES / "next_month" / "deleted.txt").read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            (corpus / line.strip()).unlink()


def test_monthly_refresh_passes_the_gate_and_is_tracked(tracked: Settings, corpus: Path) -> None:
    build_v1(tracked, corpus)
    apply_next_month(corpus)
    report = run_refresh(tracked, help_request(corpus), embedder=OfflineEmbedder(dims=1536))
    assert report.live_version == 2 and report.verdict is not None and report.verdict.passed
    assert report.golden == "golden sets ['general', 'smoke', 'technical']"
    assert not report.verdict.first_version and report.warnings == []
    slices = {r.slice for r in report.verdict.rules}
    assert {"general", "technical"} <= slices

    client = mlflow.MlflowClient(tracking_uri=tracked.mlflow_tracking_uri)
    run = client.get_run(report.mlflow_run_id or "")
    assert run.data.params["dataset_tag"] == report.dataset_tag
    assert run.data.metrics["count.embedded"] == report.chunks_embedded
    assert run.data.metrics["gate.passed"] == 1.0
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "model_card.md", "verdict.json", "verdict.md", "metrics.png", "quality.json"}
    assert registry_state(tracked, "help") == {"champion": 2, "challenger": None}
    name = registered_model_name("help")
    assert client.get_model_version_by_alias(name, "champion").tags["kb_version"] == "2"

    with connect(tracked, autocommit=True) as conn:
        routing.rollback(conn, store.get_kb_id(conn, "help"), "help", reason="test")
    assert records.sync_aliases(tracked, "help") is None
    assert registry_state(tracked, "help") == {"champion": 1, "challenger": None}


def test_a_candidate_worse_on_one_slice_is_rejected_and_live_keeps_serving(
    settings: Settings, corpus: Path
) -> None:
    build_v1(settings, corpus)
    # Technical answers vanish from their documents: titles stay, bodies become filler.
    for path in (corpus / "technical").rglob("*.md"):
        head = path.read_text("utf-8").split("\n# ", 1)[0]
        path.write_text(head + "\n# Notes\n\nThis page is being rewritten. " * 3, "utf-8")
    with pytest.raises(GateFailed) as exc:
        run_refresh(settings, help_request(corpus), embedder=OfflineEmbedder(dims=1536))
    assert str(exc.value).startswith("version 2 of 'help' was rejected. Candidate failed ")
    assert "[technical]" in str(exc.value) and "the live version keeps serving" in str(exc.value)
    with connect(settings) as conn:
        kb_id = store.get_kb_id(conn, "help")
        assert routing.live_version(conn, kb_id) == 1
        row = store.version_row(conn, kb_id, 2)
    assert row.status == store.VersionStatus.REJECTED and row.verdict is not None
    assert row.verdict["passed"] is False
    failed = [r for r in row.verdict["rules"] if not r["passed"]]
    assert any(r["slice"] == "technical" for r in failed)


def test_eval_command_prints_the_verdict(settings: Settings, corpus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_v1(settings, corpus)
    monkeypatch.setenv("KBREFRESH_DATABASE_URL", settings.database_url.get_secret_value())  # type: ignore[union-attr]
    monkeypatch.setenv("KBREFRESH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("KBREFRESH_TRACKING", "false")
    monkeypatch.setenv("COLUMNS", "200")
    result = CliRunner().invoke(app, ["eval", "--kb", "help", "--against", "none"])
    assert result.exit_code == 0, result.output
    assert "validation gate: PASSED (golden sets ['general', 'smoke', 'technical'])" in result.output
    assert "hit@5 ≥ 0.5" in result.output
    bad = CliRunner().invoke(app, ["eval", "--kb", "help", "--against", "yesterday"])
    assert bad.exit_code == 1
    assert "--against 'yesterday' is not 'live', 'none' or a version number" in bad.output


def test_a_build_refused_for_bad_data_is_still_an_mlflow_run(tracked: Settings, corpus: Path) -> None:
    build_v1(tracked, corpus)
    for path in sorted(corpus.rglob("*.md"))[:30]:
        path.unlink()
    with pytest.raises(DataQualityError):
        run_refresh(tracked, help_request(corpus), embedder=OfflineEmbedder(dims=1536))
    client = mlflow.MlflowClient(tracking_uri=tracked.mlflow_tracking_uri)
    with connect(tracked) as conn:
        row = store.version_row(conn, store.get_kb_id(conn, "help"), 2)
    run = client.get_run(row.mlflow_run_id)
    assert run.data.tags["status"] == "failed" and run.data.tags["error"] == "DataQualityError"
    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert paths == {"error.txt", "quality.json"}
    assert registry_state(tracked, "help") == {"champion": 1, "challenger": None}
