"""MLflow tracking and registry against a real SQLite store and the embedded PostgreSQL."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from kbrefresh import store
from kbrefresh.db import connect, describe_database
from kbrefresh.embedders import OfflineEmbedder
from kbrefresh.gate.evaluation import GateOutcome, load_golden
from kbrefresh.gate.policy import AcceptancePolicy
from kbrefresh.refresh.request import RefreshRequest
from kbrefresh.refresh.sequence import RefreshReport, run_refresh
from kbrefresh.serving import routing
from kbrefresh.settings import Settings
from kbrefresh.tracking.registry import (
    TrackingError,
    experiment_name,
    gate_metrics,
    log_build,
    register_version,
    registered_model_name,
    registry_state,
    set_aliases,
    sync_registry,
    tracking_uri,
)
from kbrefresh.tracking.reports import (
    comparison_markdown,
    metrics_chart,
    model_card,
    outcome_from_dict,
)
from tests.support.corpus import write_corpus

pytestmark = pytest.mark.integration

# About tracking mechanics: retrieval quality on a random corpus is noise.
SMOKE_ONLY = AcceptancePolicy(rules=(), max_slice_disparity=(), max_size_ratio=None)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "it's; drop--ü/x"


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite tracking store for the module: creating its schema takes seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


@pytest.fixture
def tracked(settings: Settings, store_uri: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a SQLite tracking store; the environment lets a loaded model reach the DB."""
    assert settings.database_url is not None
    monkeypatch.setenv("KBREFRESH_DATABASE_URL", settings.database_url.get_secret_value())
    monkeypatch.setenv("KBREFRESH_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    return settings.model_copy(update={"mlflow_tracking_uri": store_uri})


def build(settings: Settings, kb: str, corpus: Path) -> RefreshReport:
    return run_refresh(settings, RefreshRequest(kb=kb, source=str(corpus)),
                       embedder=OfflineEmbedder(dims=64), policy=SMOKE_ONLY)


def write_golden(corpus: Path, path: Path) -> Path:
    """One known-item query per document (its title), sliced by category."""
    lines = []
    for doc in sorted(corpus.rglob("*.md")):
        title = re.search(r"^title: (.+)$", doc.read_text("utf-8"), re.MULTILINE)
        assert title is not None
        doc_id = doc.relative_to(corpus).with_suffix("").as_posix()
        lines.append(json.dumps({"query": title.group(1), "relevant": [doc_id],
                                 "slice": doc_id.split("/")[0], "set": "titles"}))
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def stored(settings: Settings, kb: str, version: int) -> tuple[store.VersionInfo, GateOutcome]:
    with connect(settings) as conn:
        row = store.version_row(conn, store.get_kb_id(conn, kb), version)
    assert row.verdict is not None
    return row, outcome_from_dict(dict(row.verdict))


def manifest(settings: Settings, kb: str, version: int) -> list[tuple[str, str]]:
    with connect(settings) as conn:
        return list(store.version_manifest(conn, store.get_kb_id(conn, kb), version).items())


def track(settings: Settings, kb: str, report: RefreshReport, tmp_path: Path) -> tuple[str, str]:
    """Log and register one build the way the refresh flow does; return (run id, model version)."""
    row, outcome = stored(settings, kb, report.version)
    chart = metrics_chart(outcome.evaluation, tmp_path / f"chart-v{report.version}.png")
    counts = {"documents": report.documents, "chunks": report.chunks,
              "chunks_embedded": report.chunks_embedded, "chunks_reused": report.chunks_reused,
              "chunks_removed": report.chunks_removed, "estimated_tokens": report.estimated_tokens}
    card = model_card(kb=kb, version=report.version, dataset_tag=report.dataset_tag,
                      fingerprint=dict(row.fingerprint), counts=counts, outcome=outcome,
                      built_at=datetime.now(UTC), source=row.source)
    run_id = log_build(
        settings, kb=kb, version=report.version,
        params={"fingerprint": dict(row.fingerprint), "chunker": row.fingerprint["chunker"]},
        metrics={**{f"count.{k}": v for k, v in counts.items()},
                 **{f"seconds.{k}": v for k, v in report.seconds.items()},
                 "cost.estimated_usd": 0.0, **gate_metrics(outcome)},
        artifacts={"model_card.md": card, "verdict.json": outcome.as_dict(),
                   "gate_report.md": comparison_markdown(kb, report.version, outcome,
                                                         "charts/metrics.png"),
                   "charts/metrics.png": chart},
        manifest=manifest(settings, kb, report.version), dataset_tag=report.dataset_tag, source=row.source,
        tags={"trigger": "test", "origin_db": "postgresql://kb:hunter2@db.example/kb"},
    )
    model_version = register_version(settings, kb=kb, version=report.version, run_id=run_id,
                                     table=row.table_name, fingerprint=dict(row.fingerprint))
    return run_id, model_version


def champion_version(client: MlflowClient, kb: str) -> str:
    return str(client.get_model_version_by_alias(registered_model_name(kb), "champion").version)


def predict_versions(kb: str, alias: str) -> set[int]:
    model = mlflow.pyfunc.load_model(f"models:/{registered_model_name(kb)}@{alias}")
    hits = model.predict(["account billing invoice", "webhook token"], params={"k": 3})
    assert len(hits) == 6
    return set(hits["version"])


def test_builds_are_tracked_registered_and_follow_routing(
    tracked: Settings, tmp_path: Path
) -> None:
    kb = "docs"
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 12)
    load_golden(tracked, kb, write_golden(corpus, tmp_path / "golden.jsonl"))
    v1 = build(tracked, kb, corpus)
    run_id, mv1 = track(tracked, kb, v1, tmp_path)
    client = MlflowClient(tracking_uri(tracked), registry_uri=tracking_uri(tracked))

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "kbrefresh/docs"
    params, metrics = run.data.params, run.data.metrics
    assert params["dataset_tag"] == v1.dataset_tag
    assert params["database"] == describe_database(tracked)
    assert json.loads(params["fingerprint"])["dims"] == 64
    assert "hunter2" not in json.dumps([params, run.data.tags])
    assert run.data.tags["origin_db"] == "postgresql://kb:***@db.example/kb"
    assert metrics["count.chunks"] == v1.chunks
    assert {"gate.passed", "gate.candidate.hit_5", "gate.candidate.hit_5.technical",
            "gate.candidate.ndcg_10.general"} <= metrics.keys()
    assert {a.path for a in client.list_artifacts(run_id)} >= {
        "model_card.md", "verdict.json", "gate_report.md", "charts"}
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == v1.dataset_tag
    assert json.loads(dataset_input.dataset.profile)["num_rows"] == 12

    chart = (tmp_path / "chart-v1.png").read_bytes()
    assert chart.startswith(PNG_MAGIC)
    card = Path(client.download_artifacts(run_id, "model_card.md", str(tmp_path))).read_text()
    assert v1.dataset_tag in card and f"| Chunks | {v1.chunks} |" in card
    assert "| Documents | 12 |" in card

    model_version = client.get_model_version(registered_model_name(kb), mv1)
    assert model_version.tags["kb"] == kb
    assert model_version.tags["kb_version"] == "1"
    assert model_version.tags["table"].startswith("kbrefresh_chunks_")
    assert json.loads(model_version.tags["fingerprint"])["provider"] == "offline"
    assert register_version(tracked, kb=kb, version=1, run_id=run_id, table="x",
                            fingerprint={}) == mv1  # idempotent

    set_aliases(tracked, kb=kb, champion=1, challenger=None)
    assert champion_version(client, kb) == mv1
    assert predict_versions(kb, "champion") == {1}

    (corpus / "technical" / "doc-001.md").write_text(
        "---\ntitle: Webhook retries\ncategory: technical\n---\n# Webhook retries\n\n"
        + "Webhook deliveries retry with exponential backoff for a day. " * 8, "utf-8")
    v2 = build(tracked, kb, corpus)
    _, mv2 = track(tracked, kb, v2, tmp_path)
    assert sync_registry(tracked, kb) == ["docs: champion 1 -> 2"]
    assert champion_version(client, kb) == mv2
    assert predict_versions(kb, "champion") == {2}

    with connect(tracked, autocommit=True) as conn:
        routing.rollback(conn, store.get_kb_id(conn, kb), kb)
    assert sync_registry(tracked) == ["docs: champion 2 -> 1"]
    assert registry_state(tracked, kb) == {"champion": 1, "challenger": None}
    assert champion_version(client, kb) == mv1
    assert sync_registry(tracked) == []


def test_hostile_name_is_registered_from_routing_alone(tracked: Settings, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 8)
    build(tracked, HOSTILE, corpus)

    # No run was logged for v1: sync_registry logs a minimal one and registers it.
    assert sync_registry(tracked, HOSTILE) == [f"{HOSTILE}: champion none -> 1"]
    name = registered_model_name(HOSTILE)
    assert re.fullmatch(r"kbrefresh-it-s-drop-u-x-[0-9a-f]{8}", name)
    assert experiment_name(HOSTILE) == "kbrefresh/" + name.removeprefix("kbrefresh-")
    assert registry_state(tracked, HOSTILE) == {"champion": 1, "challenger": None}
    assert predict_versions(HOSTILE, "champion") == {1}
    row, _ = stored(tracked, HOSTILE, 1)
    run = MlflowClient(tracking_uri(tracked)).get_run(str(row.mlflow_run_id))
    assert run.data.tags["kb"] == HOSTILE
    assert run.data.tags["kbrefresh.origin"] == "sync_registry"
    assert run.inputs.dataset_inputs[0].dataset.name == row.dataset_tag

    with pytest.raises(TrackingError) as caught:
        set_aliases(tracked, kb=HOSTILE, champion=1, challenger=7)
    assert str(caught.value) == (
        f"version 7 of {HOSTILE!r} is not registered in MLflow model {name!r}; "
        "register it first or run sync_registry"
    )
    assert registry_state(tracked, HOSTILE) == {"champion": 1, "challenger": None}


def test_failed_logging_ends_the_run_as_failed(tracked: Settings, tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="could not log build v1 of 'gone'") as caught:
        log_build(tracked, kb="gone", version=1, params={}, metrics={"m": 1.0},
                  artifacts={"missing.png": tmp_path / "missing.png"}, manifest=[],
                  dataset_tag="gone-1", source="/nowhere", tags={})
    assert isinstance(caught.value.__cause__, OSError)
    assert mlflow.active_run() is None
    client = MlflowClient(tracking_uri(tracked))
    experiment = client.get_experiment_by_name("kbrefresh/gone")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"
